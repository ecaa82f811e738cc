"""Send compiled pipelines to a Kubeflow Pipelines endpoint (make submit / make schedule).

    python -m pipelines.submit run --host URL --experiment EXP --package build/full.yaml key=value ...
    python -m pipelines.submit schedule --host URL --experiment EXP --package build/retrain.yaml \
        --cron "0 0 3 * * *" [key=value ...]

`run` checks the endpoint and the pipeline's required parameters, then hands over to
`kfp run create -e EXP -f PACKAGE key=value ...`. `schedule` creates a recurring run with
the kfp client: a 6-field cron (seconds first), at most one run at a time, no catch-up of
missed runs. KFP evaluates cron in its scheduler's time zone, UTC unless the cluster's
`CRON_SCHEDULE_TIMEZONE` says otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml

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


def check_params(package: Path, params: dict[str, str]) -> None:
    """Every given parameter exists in the compiled pipeline; every required one is given."""
    if not package.is_file():
        raise SubmitError(f"{package} not found; run `make compile` first")
    spec = next(yaml.safe_load_all(package.read_text()))
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise SubmitError(f"{package.name} has no parameter(s) {', '.join(unknown)}; its parameters: {', '.join(sorted(declared))}")
    missing = sorted(name for name, d in declared.items() if "defaultValue" not in d and not d.get("isOptional") and name not in params)
    if missing:
        raise SubmitError(
            f"{package.name} needs {', '.join(missing)}; pass them as PARAMS=\"{missing[0]}=...\" "
            "(dataset_version: the hash `trashseg data versions` lists)"
        )


def check_cron(cron: str) -> str:
    fields = cron.split()
    if len(fields) != 6:
        raise SubmitError(
            f"CRON={cron!r} has {len(fields)} fields; KFP needs 6 (seconds minutes hours day-of-month month "
            "day-of-week), e.g. \"0 0 3 * * *\" for 03:00 UTC daily"
        )
    return " ".join(fields)


def submit_run(host: str, experiment: str, package: Path, params: dict[str, str]) -> int:
    check_endpoint(host)
    check_params(package, params)
    kfp_cli = Path(sys.executable).with_name("kfp")
    command = [str(kfp_cli), "--endpoint", host, "run", "create", "-e", experiment, "-f", str(package)]
    command += [f"{key}={value}" for key, value in params.items()]
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, check=False).returncode


def schedule_run(host: str, experiment: str, package: Path, cron: str, params: dict[str, str], name: str) -> int:
    check_endpoint(host)
    check_params(package, params)
    cron = check_cron(cron)
    import kfp

    client = kfp.Client(host=host)
    experiment_id = client.create_experiment(experiment).experiment_id
    recurring = client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=name,
        description=f"{package.name} on cron '{cron}' (UTC)",
        cron_expression=cron,
        max_concurrency=1,
        no_catchup=True,
        params=params,
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
        p.add_argument("--package", required=True, type=Path, help="compiled pipeline YAML")
        p.add_argument("params", nargs="*", help="pipeline parameters as key=value")
        if action == "schedule":
            p.add_argument("--cron", required=True, help='6-field cron, seconds first (e.g. "0 0 3 * * *")')
            p.add_argument("--name", default="trashseg-retrain", help="recurring run name")
    args = parser.parse_args(argv)
    try:
        params = parse_assignments(args.params, what="pipeline parameter", example="dataset_version=<hash>")
        if args.action == "run":
            return submit_run(args.host, args.experiment, args.package, params)
        return schedule_run(args.host, args.experiment, args.package, args.cron, params, args.name)
    except UserError as error:  # SubmitError, or a malformed key=value (ConfigError)
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
