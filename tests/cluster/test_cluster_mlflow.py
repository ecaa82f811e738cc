"""A real `mlflow server` with proxied artifacts on S3 (moto): what the cluster runs, locally.

The server alone holds S3 credentials (as in manifests/base/mlflow.yaml); the client logs
over HTTP with none, and its artifacts land in the bucket.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cluster_helpers import FAKE_KEY, FAKE_SECRET, S3_REGION, new_bucket, s3_settings

from trashseg.storage import S3Store


@pytest.fixture
def mlflow_server_on_s3(start_mlflow_server, moto_endpoint, tmp_path):
    """The server alone gets S3 credentials and the endpoint, as on the cluster."""
    bucket = new_bucket(moto_endpoint)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))},
        "MLFLOW_S3_ENDPOINT_URL": f"http://{moto_endpoint}",
        "AWS_ACCESS_KEY_ID": FAKE_KEY,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "AWS_DEFAULT_REGION": S3_REGION,
    }
    with start_mlflow_server(tmp_path, f"s3://{bucket}/mlflow", env) as url:
        yield url, bucket


def test_run_artifacts_land_in_the_bucket(mlflow_server_on_s3, moto_endpoint, tmp_path, monkeypatch):
    import mlflow

    url, bucket = mlflow_server_on_s3
    for name in list(os.environ):  # the client has no S3 access at all
        if name.startswith("AWS_") or name == "MLFLOW_S3_ENDPOINT_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    report = tmp_path / "report.md"
    report.write_text("# mIoU 0.42\n")

    client = mlflow.MlflowClient(tracking_uri=url)
    experiment_id = client.create_experiment("cluster-test")
    run = client.create_run(experiment_id, tags={"kfp_run_id": "run-123"})
    client.log_metric(run.info.run_id, "miou", 0.42)
    client.log_artifact(run.info.run_id, str(report), artifact_path="reports")
    client.set_terminated(run.info.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied, not direct S3

    store = S3Store(bucket, settings=s3_settings(moto_endpoint))
    keys = [o.object_name for o in store.client.list_objects(bucket, prefix="mlflow/", recursive=True)]
    matches = [k for k in keys if run.info.run_id in k and k.endswith("reports/report.md")]
    assert matches, f"report.md not in s3://{bucket}/mlflow/: {keys}"
    body = store.client.get_object(bucket, matches[0])
    try:
        assert body.read() == b"# mIoU 0.42\n"
    finally:
        body.close()
        body.release_conn()
    # and the client reads it back through the server
    back = Path(client.download_artifacts(run.info.run_id, "reports/report.md", str(tmp_path / "dl")))
    assert back.read_text() == "# mIoU 0.42\n"
    assert client.get_run(run.info.run_id).data.metrics["miou"] == 0.42
