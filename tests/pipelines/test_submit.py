"""make submit / make schedule: endpoint, parameter and cron checks, and the typed payload that reaches the API."""

import socket

import pytest

from pipelines.cluster import ClusterSettings
from pipelines.compile import compile_pipelines
from pipelines.submit import (
    SubmitError,
    check_cron,
    check_endpoint,
    main,
    retry_window_warning,
    typed_params,
    typed_value,
)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    return compile_pipelines(tmp_path_factory.mktemp("build"), ClusterSettings(engine="pod"))


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


def test_parameters_are_checked_against_the_package(packages, capsys):
    full = packages["full"]
    with pytest.raises(SubmitError, match="needs dataset_version"):
        typed_params(full, {})
    with pytest.raises(SubmitError, match="no parameter\\(s\\) dataset_hash; its parameters: .*dataset_version"):
        typed_params(full, {"dataset_hash": "x", "dataset_version": "y"})
    assert typed_params(packages["retrain"], {}) == {}  # the scheduled pipeline needs nothing
    with pytest.raises(SubmitError, match="make compile"):
        typed_params(full.parent / "missing.yaml", {})
    argv = ["run", "--host", "http://127.0.0.1:9", "--experiment", "e", "--package", str(full), "dataset_version"]
    assert main(argv) == 2  # a malformed parameter is refused before the endpoint is tried
    assert "pipeline parameter 'dataset_version' must look like key=value" in capsys.readouterr().err


def test_values_take_the_types_the_package_declares(packages):
    given = {
        "dataset_version": "0123", "iterations": "80000", "val_fraction": "1e-1", "split_seed": "-3",
        "pseudo_round": "False", "architectures": '["segformer-b0"]', "model_name": "42",
    }
    assert typed_params(packages["full"], given) == {
        "dataset_version": "0123", "iterations": 80000, "val_fraction": 0.1, "split_seed": -3,
        "pseudo_round": False, "architectures": ["segformer-b0"], "model_name": "42",
    }
    refused = {
        "iterations": ("8e4", "an integer", "NUMBER_INTEGER"),
        "image_size": ("512.0", "an integer", "NUMBER_INTEGER"),
        "val_fraction": ("nan", "a number", "NUMBER_DOUBLE"),
        "pseudo_round": ("yes", "true or false", "BOOLEAN"),
        "architectures": ("segformer-b0,segformer-b1", "a JSON list", "LIST"),
        "train_settings": ('{"lr": 1}', "a JSON list", "LIST"),
    }
    for name, (value, expected, declared) in refused.items():
        with pytest.raises(SubmitError) as error:
            typed_params(packages["full"], {"dataset_version": "v", name: value})
        assert f"parameter {name}={value!r} is not {expected}" in str(error.value)
        assert declared in str(error.value) and f"pass e.g. {name}=" in str(error.value)
    assert typed_value("extra", '{"a": [1]}', "STRUCT") == {"a": [1]}
    with pytest.raises(SubmitError, match="'\\[1\\]' is not a JSON object"):
        typed_value("extra", "[1]", "STRUCT")


def test_a_longer_run_than_the_compiled_retry_window_is_flagged(packages):
    assert retry_window_warning(packages["full"], {"iterations": 80_000}) is None
    assert retry_window_warning(packages["full"], {"dataset_version": "v"}) is None
    warning = retry_window_warning(packages["full"], {"iterations": 200_000})
    assert "iterations=200000 needs a training retry window" in warning and "MAX_ITERATIONS=200000" in warning


def test_cron_needs_six_fields():
    assert check_cron("0  0 3 * * *") == "0 0 3 * * *"
    with pytest.raises(SubmitError, match="has 5 fields; KFP needs 6"):
        check_cron("0 3 * * *")


CREATED = "2026-01-01T00:00:00Z"


class RecordingKfpApi:
    """A KFP API endpoint on 127.0.0.1 that answers what the kfp client calls for a run and a recurring
    run, and records each request; lets the tests read what would reach a cluster."""

    def __init__(self):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, body, status=200):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                api.requests.append(("GET", self.path, None))
                path = self.path.split("?")[0]
                if path == "/apis/v2beta1/healthz":
                    return self._reply({"multi_user": False})
                if path == "/apis/v2beta1/experiments":
                    return self._reply({"experiments": [], "total_size": 0})
                if path.startswith("/apis/v2beta1/runs/"):
                    return self._reply({"run_id": path.rsplit("/", 1)[1], "display_name": "r", "state": "PENDING", "created_at": CREATED})
                return self._reply({"error": "not found"}, 404)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                api.requests.append(("POST", self.path, body))
                if self.path == "/apis/v2beta1/experiments":
                    return self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
                if self.path == "/apis/v2beta1/runs":
                    return self._reply({"run_id": "run-1", "display_name": body["display_name"], "state": "PENDING", "created_at": CREATED})
                if self.path == "/apis/v2beta1/recurringruns":
                    return self._reply({"recurring_run_id": "rr-1", "display_name": body["display_name"], "created_at": CREATED})
                return self._reply({"error": "not found"}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def posted(self, path):
        return [body for method, p, body in self.requests if method == "POST" and p == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def kfp_api():
    api = RecordingKfpApi()
    yield api
    api.close()


def test_submit_sends_typed_parameters_in_the_namespace(packages, kfp_api):
    code = main(["run", "--host", kfp_api.url, "--experiment", "nightly", "--namespace", "team-a",
                 "--package", str(packages["full"]), "dataset_version=0123", "iterations=80000", "pseudo_round=false"])
    assert code == 0
    (experiment,) = kfp_api.posted("/apis/v2beta1/experiments")
    assert experiment["display_name"] == "nightly" and experiment["namespace"] == "team-a"
    lookups = [path for method, path, _ in kfp_api.requests if method == "GET" and path.startswith("/apis/v2beta1/experiments")]
    assert lookups and all("namespace=team-a" in path for path in lookups)
    (run,) = kfp_api.posted("/apis/v2beta1/runs")
    assert run["experiment_id"] == "exp-1"
    # a numeric-looking version stays the string the spec declares; numbers and booleans are JSON typed
    assert run["runtime_config"]["parameters"] == {"dataset_version": "0123", "iterations": 80000, "pseudo_round": False}
    # the compiled package travels whole: the pipeline and its Kubernetes settings
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "trashseg-full"
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-train-model"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_a_value_that_does_not_fit_is_refused_before_anything_is_sent(packages, kfp_api, capsys):
    code = main(["run", "--host", kfp_api.url, "--experiment", "e", "--package", str(packages["full"]),
                 "dataset_version=0123", "iterations=80k"])
    assert code == 2
    assert "parameter iterations='80k' is not an integer" in capsys.readouterr().err
    assert not [request for request in kfp_api.requests if request[0] == "POST"]


def test_schedule_creates_one_recurring_run_without_catch_up(packages, kfp_api):
    code = main(["schedule", "--host", kfp_api.url, "--experiment", "retrain", "--namespace", "team-a",
                 "--package", str(packages["retrain"]), "--cron", "0 0 3 * * *", "iterations=500", "min_improvement=0"])
    assert code == 0
    assert kfp_api.posted("/apis/v2beta1/experiments")[0]["namespace"] == "team-a"
    (recurring,) = kfp_api.posted("/apis/v2beta1/recurringruns")
    # typed as the spec declares them (the API server refuses a string for an integer)
    assert recurring["runtime_config"]["parameters"] == {"iterations": 500, "min_improvement": 0.0}
    assert isinstance(recurring["runtime_config"]["parameters"]["min_improvement"], float)
    assert recurring["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert int(recurring["max_concurrency"]) == 1 and recurring["no_catchup"] is True
    assert recurring["experiment_id"] == "exp-1" and recurring["mode"] == "ENABLE"
    assert recurring["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "trashseg-retrain"
