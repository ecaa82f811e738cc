"""The exit handler records the state KFP hands it as it is; RUNNING (backends before 2.17) is
never presented as success."""

from pathlib import Path

import pytest
from kfp.dsl import Markdown, PipelineTaskFinalStatus
from mlflow.tracking import MlflowClient

from components.record_status import record_status


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"  # one database: its set-up is slow


def record(tmp_path, tracking_uri, state, error=""):
    summary = Markdown(name="summary", uri=str(tmp_path / state / "summary.md"), metadata={})
    Path(summary.path).parent.mkdir(parents=True, exist_ok=True)
    returned = record_status.python_func(
        status=PipelineTaskFinalStatus(
            state=state, pipeline_job_resource_name="run", pipeline_task_name="exit-handler-1",
            error_code=None, error_message=error or None,
        ),
        pipeline="full", tracking_uri=tracking_uri, experiment="status", summary=summary,
    )
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("status").experiment_id], filter_string=f"tags.`pipeline.state` = '{state}'"
    )
    return returned, Path(summary.path).read_text(), run.data.tags


@pytest.fixture(autouse=True)
def run_id(monkeypatch):
    monkeypatch.setenv("KFP_RUN_ID", "exit-status-test")


def test_running_is_recorded_as_it_arrives_and_not_as_success(tmp_path, tracking_uri):
    returned, summary, tags = record(tmp_path, tracking_uri, "RUNNING")
    assert returned == "RUNNING" and tags["pipeline.state"] == "RUNNING"
    assert tags["pipeline.state_final"] == "false"
    assert summary.startswith("## full: RUNNING (not a final state)")
    assert "before 2.17" in summary and "does not say the run succeeded" in summary
    assert "SUCCEEDED" not in summary


def test_final_states_are_recorded_plainly(tmp_path, tracking_uri):
    returned, summary, tags = record(tmp_path, tracking_uri, "SUCCEEDED")
    assert returned == "SUCCEEDED" and tags["pipeline.state_final"] == "true"
    assert summary == "## full: SUCCEEDED\n\n"
    _, summary, tags = record(tmp_path, tracking_uri, "FAILED", error="train-model: out of memory")
    assert tags["pipeline.state_final"] == "true" and "out of memory" in summary and "not a final" not in summary


def test_a_failed_tasks_error_is_redacted_in_the_summary_and_its_mlflow_artifact(tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # its own store: the one FAILED run in it
    secret = "p@ss-w0rd"  # a password holding @: redacted whole, not up to its first @
    error = f"train-model: cannot reach http://alice:{secret}@mlflow:5000/api (postgresql://bob:{secret}@db/x)"
    _, summary, _ = record(tmp_path, tracking_uri, "FAILED", error=error)
    assert "ss-w0rd" not in summary and "http://alice:***@mlflow:5000/api" in summary
    assert "postgresql://bob:***@db/x" in summary
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("status").experiment_id])
    artifact = Path(client.download_artifacts(run.info.run_id, "summary.md", str(tmp_path / "dl")))
    assert "ss-w0rd" not in artifact.read_text() and "alice:***@" in artifact.read_text()
