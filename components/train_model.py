"""train_model: train (or fine-tune) one architecture -> Model + Metrics."""


from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.train, install_kfp_package=False)
def train_model(
    dataset: Input[Dataset],
    architecture: str,
    iterations: int,
    image_size: int,
    dataset_version: str,
    train_settings: list[str],
    checkpoint_store: str,
    tracking_uri: str,
    experiment: str,
    model: Output[Model],
    metrics: Output[Metrics],
    stage: str = "base",
    pseudo_dataset: Input[Dataset] = None,
    pseudo_ratio: float = 0.0,
    init_bundle: Input[Model] = None,
    weights_store: str = "",
) -> float:
    """`train_settings`: `key=value` overrides of TrainConfig. `checkpoint_store`: where
    checkpoints are mirrored, so a retried task resumes instead of starting over.
    `pseudo_dataset`: pseudo-labelled data, `pseudo_ratio` of each batch; `init_bundle`: a registered bundle whose
    weights for this architecture initialise training (fine-tuning); `weights_store`: where
    pretrained starts are mirrored (read offline). Returns val mIoU."""
    from trashseg.steps import RunContext, train_step

    result = train_step(
        dataset.path,
        model.path,
        architecture=architecture,
        iterations=iterations,
        image_size=image_size,
        dataset_version=dataset_version,
        settings=train_settings,
        checkpoint_store=checkpoint_store,
        run=RunContext(tracking_uri, experiment, stage),
        pseudo_dataset_dir=pseudo_dataset.path if pseudo_dataset else None,
        pseudo_ratio=pseudo_ratio,
        init_bundle_dir=init_bundle.path if init_bundle else None,
        weights_store=weights_store,
    )
    model.metadata.update(result.model_metadata)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    return result.val_miou
