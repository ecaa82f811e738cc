"""record_no_new_data: the early end of a retrain run, recorded in MLflow and as Markdown."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def record_no_new_data(
    base_version: str, tracking_uri: str, experiment: str, summary: Output[Markdown]
) -> str:
    """The early end of a retrain run: recorded in MLflow and as Markdown."""
    from trashseg.steps import RunContext, record_status_step

    return record_status_step(
        "retrain",
        "NO_NEW_DATA",
        "",
        summary.path,
        run=RunContext(tracking_uri, experiment, "retrain-check"),
        details=f"No new labelled batches in the inbox since dataset version `{base_version}`; nothing retrained.",
    )
