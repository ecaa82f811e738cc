"""bundle_models: one round's trained models (one per architecture) -> one Model bundle."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def bundle_models(
    models: Input[list[Model]],
    dataset: Input[Dataset],
    dataset_version: str,
    bundle: Output[Model],
) -> list[str]:
    """The bundle is what the registry stores and retrain fine-tunes. Returns its architectures."""
    from trashseg.steps import bundle_step

    return bundle_step([m.path for m in models], dataset.path, bundle.path, dataset_version=dataset_version)
