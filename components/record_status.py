"""record_status: the exit handler; records how the pipeline run ended (also on failure)."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def record_status(
    status: dsl.PipelineTaskFinalStatus,
    pipeline: str,
    tracking_uri: str,
    experiment: str,
    summary: Output[Markdown],
) -> str:
    """Writes the final state (and error, if any) to MLflow and a Markdown artifact."""
    from trashseg.steps import RunContext, record_status_step

    return record_status_step(
        pipeline,
        status.state,
        status.error_message or "",
        summary.path,
        run=RunContext(tracking_uri, experiment, "status"),
    )
