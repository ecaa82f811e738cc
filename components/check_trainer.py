"""check_trainer: before any GPU is requested, Kubeflow Trainer must be able to run TrainJobs here."""

from kfp import dsl

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def check_trainer(runtime: str) -> str:
    """Fails naming the missing piece and its fix (the TrainJob CRD, the TrainingRuntime
    `runtime`, or the runner's RBAC) in the task's own namespace. Returns a summary."""
    from trashseg.trainjob.launcher import preflight_step

    return preflight_step(runtime)
