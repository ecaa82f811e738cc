"""make submit / make schedule: endpoint, parameter and cron checks before anything is sent."""

import socket

import pytest

from pipelines.cluster import ClusterSettings
from pipelines.compile import compile_pipelines
from pipelines.submit import (
    SubmitError,
    check_cron,
    check_endpoint,
    check_params,
    main,
    parse_params,
)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    return compile_pipelines(tmp_path_factory.mktemp("build"), ClusterSettings())


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens once the socket is closed


def test_unreachable_endpoint_fails_clearly(packages, capsys):
    host = closed_port_url()
    with pytest.raises(SubmitError, match="no Kubeflow Pipelines endpoint is reachable") as error:
        check_endpoint(host, timeout=2)
    assert host in str(error.value) and "port-forward" in str(error.value)
    code = main(["run", "--host", host, "--experiment", "x", "--package", str(packages["full"]), "dataset_version=abc"])
    assert code == 2 and "no Kubeflow Pipelines endpoint" in capsys.readouterr().err
    code = main(["schedule", "--host", host, "--experiment", "x", "--package", str(packages["retrain"]), "--cron", "0 0 3 * * *"])
    assert code == 2
    with pytest.raises(SubmitError, match="not a URL"):
        check_endpoint("localhost:8080")


def test_parameters_are_checked_against_the_package(packages):
    full = packages["full"]
    with pytest.raises(SubmitError, match="needs dataset_version"):
        check_params(full, {})
    with pytest.raises(SubmitError, match="no parameter\\(s\\) dataset_hash; its parameters: .*dataset_version"):
        check_params(full, {"dataset_hash": "x", "dataset_version": "y"})
    check_params(full, {"dataset_version": "y", "iterations": "10"})
    check_params(packages["retrain"], {})  # the scheduled pipeline needs nothing
    with pytest.raises(SubmitError, match="make compile"):
        check_params(full.parent / "missing.yaml", {})
    assert parse_params(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(SubmitError, match="key=value"):
        parse_params(["dataset_version"])


def test_cron_needs_six_fields():
    assert check_cron("0  0 3 * * *") == "0 0 3 * * *"
    with pytest.raises(SubmitError, match="has 5 fields; KFP needs 6"):
        check_cron("0 3 * * *")
