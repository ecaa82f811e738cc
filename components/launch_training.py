"""launch_training: train one architecture as a Kubeflow Trainer TrainJob -> Model + Metrics.

The ENGINE=trainjob twin of train_model: the same inputs, typed outputs and return value,
from a small CPU task that launches, watches and collects the TrainJob.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def launch_training(
    dataset: Input[Dataset],
    architecture: str,
    iterations: int,
    image_size: int,
    dataset_version: str,
    train_settings: list[str],
    checkpoint_store: str,
    tracking_uri: str,
    experiment: str,
    job: dict,
    task: str,
    model: Output[Model],
    metrics: Output[Metrics],
    stage: str = "base",
    pseudo_dataset: Input[Dataset] = None,
    pseudo_ratio: float = 0.0,
    init_bundle: Input[Model] = None,
    weights_store: str = "",
) -> float:
    """As train_model; `job`: the TrainJob's per-node resources, placement, runtime and timeout
    (`trashseg.trainjob.objects.JobSettings`, set at compile time); `task`: the task's name, a
    label of the job. Returns val mIoU."""
    from trashseg.steps import RunContext
    from trashseg.trainjob.launcher import launch_train_step

    result = launch_train_step(
        dataset.path,
        model.path,
        architecture=architecture,
        iterations=iterations,
        image_size=image_size,
        dataset_version=dataset_version,
        settings=train_settings,
        checkpoint_store=checkpoint_store,
        run=RunContext(tracking_uri, experiment, stage),
        job=job,
        task=task,
        pseudo_dataset_dir=pseudo_dataset.path if pseudo_dataset else None,
        pseudo_ratio=pseudo_ratio,
        init_bundle_dir=init_bundle.path if init_bundle else None,
        weights_store=weights_store,
    )
    model.metadata.update(result.model_metadata)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    return result.val_miou
