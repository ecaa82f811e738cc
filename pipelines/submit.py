"""Send compiled pipelines to a Kubeflow Pipelines endpoint (make submit / make schedule).

    python -m pipelines.submit run --host URL --experiment EXP [--namespace NS] --package build/full.yaml key=value ...
    python -m pipelines.submit schedule --host URL --experiment EXP [--namespace NS] --package build/retrain.yaml \
        --cron "0 0 3 * * *" [key=value ...]

Both check the endpoint, then convert each key=value to the type the compiled pipeline
declares for it: the API server rejects a parameter of the wrong JSON type, and the
`kfp run create` CLI guesses types (a dataset version "0123" would arrive as the number
123), so both go through the kfp client with typed arguments. `run` starts one run;
`schedule` creates a recurring run: a 6-field cron (seconds first), at most one run at a
time, no catch-up of missed runs. KFP evaluates cron in its scheduler's time zone, UTC
unless the cluster's `CRON_SCHEDULE_TIMEZONE` says otherwise. `--namespace` is the
Kubeflow profile namespace on multi-user deployments (the experiment, and so its runs, live there).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kfp_server_api.exceptions import ApiException

from pipelines.cluster import DEFAULT_SETTINGS
from trashseg.config import parse_assignments
from trashseg.errors import UserError

HEALTH_PATH = "/apis/v2beta1/healthz"
PROBE_TIMEOUT_S = 5.0


class SubmitError(UserError):
    """Something to tell the user, with the fix; exits with status 2."""


def check_endpoint(host: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail with a clear message unless a KFP API server answers at `host`."""
    if not host.startswith(("http://", "https://")):
        raise SubmitError(f"KFP_HOST={host!r} is not a URL; expected e.g. http://localhost:8080 or https://kubeflow.example.com/pipeline")
    url = host.rstrip("/") + HEALTH_PATH
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            return  # it answers; the kfp client handles authentication
        raise SubmitError(f"the KFP endpoint {host} answered {error.code} at {HEALTH_PATH}; is KFP_HOST the pipelines API (…/pipeline)?") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SubmitError(
            f"no Kubeflow Pipelines endpoint is reachable at {host} ({reason}). "
            "Set KFP_HOST to your cluster's pipelines API, or port-forward it first: "
            "kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80 (then KFP_HOST=http://localhost:8080)"
        ) from None


def _integer(value: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9][0-9_]*", value.strip()):
        raise ValueError(value)
    return int(value)


def _double(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):  # JSON has no NaN/inf
        raise ValueError(value)
    return number


def _boolean(value: str) -> bool:
    word = value.strip().lower()
    if word not in ("true", "false"):
        raise ValueError(value)
    return word == "true"


def _json(kind: type) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        parsed = json.loads(value)
        if not isinstance(parsed, kind):
            raise ValueError(value)
        return parsed

    return parse


# KFP's parameterType -> (what the value must be, converter from the command-line string, example)
PARAMETER_TYPES: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "STRING": ("a string", str, "abc"),
    "NUMBER_INTEGER": ("an integer", _integer, "80000"),
    "NUMBER_DOUBLE": ("a number", _double, "0.25"),
    "BOOLEAN": ("true or false", _boolean, "true"),
    "LIST": ("a JSON list", _json(list), '\'["a","b"]\''),
    "STRUCT": ("a JSON object", _json(dict), '\'{"key": "value"}\''),
}


def typed_value(name: str, value: str, parameter_type: str) -> Any:
    """The command-line string `value` as the JSON type KFP declares for parameter `name`."""
    if parameter_type not in PARAMETER_TYPES:
        raise SubmitError(f"parameter {name} has type {parameter_type}, which make submit cannot pass; supported: {', '.join(PARAMETER_TYPES)}")
    expected, convert, example = PARAMETER_TYPES[parameter_type]
    try:
        return convert(value)
    except ValueError:
        raise SubmitError(
            f"parameter {name}={value!r} is not {expected}: the pipeline declares it {parameter_type}; "
            f"pass e.g. {name}={example}"
        ) from None


def pipeline_spec(package: Path) -> dict:
    if not package.is_file():
        raise SubmitError(f"{package} not found; run `make compile` first")
    return next(yaml.safe_load_all(package.read_text()))


def typed_params(package: Path, params: dict[str, str]) -> dict[str, Any]:
    """Every given parameter exists in the compiled pipeline and every required one is given;
    each value converted to the type the pipeline declares for it."""
    spec = pipeline_spec(package)
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise SubmitError(f"{package.name} has no parameter(s) {', '.join(unknown)}; its parameters: {', '.join(sorted(declared))}")
    missing = sorted(name for name, d in declared.items() if "defaultValue" not in d and not d.get("isOptional") and name not in params)
    if missing:
        raise SubmitError(
            f"{package.name} needs {', '.join(missing)}; pass them as PARAMS=\"{missing[0]}=...\" "
            "(dataset_version: the version `trashseg data versions` lists)"
        )
    return {name: typed_value(name, value, declared[name]["parameterType"]) for name, value in params.items()}


def retry_window_warning(package: Path, arguments: dict[str, Any]) -> str | None:
    """A warning when `iterations` needs a longer training retry window than the package was
    compiled with (the window is fixed at compile time; see pipelines/cluster.py)."""
    if "iterations" not in arguments:
        return None
    spec = pipeline_spec(package)
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    every = [task for dag in dags for task in dag["tasks"].values()]
    windows = [int(task["retryPolicy"]["backoffMaxDuration"].removesuffix("s")) for task in every if "retryPolicy" in task]
    # ENGINE=trainjob: each launcher's TrainJob timeout plays that part
    windows += [
        int(job["runtimeValue"]["constant"]["timeout_s"]) for task in every
        if "runtimeValue" in (job := task.get("inputs", {}).get("parameters", {}).get("job", {}))
    ]
    needed = DEFAULT_SETTINGS.retry_window_s(arguments["iterations"])
    if not windows or min(windows) >= needed:
        return None
    return (
        f"iterations={arguments['iterations']} needs a training retry window of {needed} s (with ENGINE=trainjob: "
        f"the TrainJob timeout), but "
        f"{package.name} was compiled with {min(windows)} s: a retry after that is never started. "
        f"Recompile with make compile MAX_ITERATIONS={arguments['iterations']}"
    )


def check_cron(cron: str) -> str:
    fields = cron.split()
    if len(fields) != 6:
        raise SubmitError(
            f"CRON={cron!r} has {len(fields)} fields; KFP needs 6 (seconds minutes hours day-of-month month "
            "day-of-week), e.g. \"0 0 3 * * *\" for 03:00 UTC daily"
        )
    return " ".join(fields)


def warn_retry_window(package: Path, arguments: dict[str, Any]) -> None:
    warning = retry_window_warning(package, arguments)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def kfp_client(host: str):
    import kfp

    return kfp.Client(host=host)


def submit_run(host: str, experiment: str, package: Path, params: dict[str, str], namespace: str | None = None) -> int:
    check_endpoint(host)
    arguments = typed_params(package, params)
    warn_retry_window(package, arguments)
    run = kfp_client(host).create_run_from_pipeline_package(
        str(package), arguments=arguments, experiment_name=experiment, namespace=namespace
    )
    print(f"run {run.run_id} of {package.name} in experiment {experiment!r}" + (f" (namespace {namespace})" if namespace else ""))
    return 0


def schedule_run(
    host: str, experiment: str, package: Path, cron: str, params: dict[str, str], name: str, namespace: str | None = None
) -> int:
    check_endpoint(host)
    arguments = typed_params(package, params)
    warn_retry_window(package, arguments)
    cron = check_cron(cron)
    client = kfp_client(host)
    # a recurring run lives in its experiment's namespace
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    recurring = client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=name,
        description=f"{package.name} on cron '{cron}' (UTC)",
        cron_expression=cron,
        max_concurrency=1,
        no_catchup=True,
        params=arguments,
        pipeline_package_path=str(package),
    )
    print(f"recurring run {recurring.recurring_run_id} ({name}): '{cron}' UTC, max concurrency 1, no catch-up")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.submit", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for action in ("run", "schedule"):
        p = sub.add_parser(action)
        p.add_argument("--host", required=True, help="the KFP API endpoint (KFP_HOST)")
        p.add_argument("--experiment", required=True, help="KFP experiment name (EXPERIMENT)")
        p.add_argument("--namespace", default="", help="Kubeflow profile namespace on multi-user clusters (NAMESPACE)")
        p.add_argument("--package", required=True, type=Path, help="compiled pipeline YAML")
        p.add_argument("params", nargs="*", help="pipeline parameters as key=value")
        if action == "schedule":
            p.add_argument("--cron", required=True, help='6-field cron, seconds first (e.g. "0 0 3 * * *")')
            p.add_argument("--name", default="trashseg-retrain", help="recurring run name")
    args = parser.parse_args(argv)
    try:
        params = parse_assignments(args.params, what="pipeline parameter", example="dataset_version=<hash>")
        namespace = args.namespace or None
        if args.action == "run":
            return submit_run(args.host, args.experiment, args.package, params, namespace)
        return schedule_run(args.host, args.experiment, args.package, args.cron, params, args.name, namespace)
    except UserError as error:  # SubmitError, or a malformed key=value (ConfigError)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ApiException as error:  # the API server refused the request; its body says why
        print(f"error: the KFP API at {args.host} answered {error.status} {error.reason}: {error.body}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
