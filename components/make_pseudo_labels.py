"""make_pseudo_labels: confident ensemble predictions on test images -> a training Dataset."""


from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def make_pseudo_labels(
    ensemble: Input[Dataset],
    dataset: Input[Dataset],
    pseudo_settings: list[str],
    pseudo_dataset: Output[Dataset],
) -> int:
    """`pseudo_settings`: `key=value` overrides of PseudoLabelConfig. Returns the images kept."""
    from trashseg.steps import pseudo_label_step

    return pseudo_label_step(ensemble.path, dataset.path, pseudo_dataset.path, settings=pseudo_settings)
