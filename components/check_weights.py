"""check_weights: before any GPU task, every pretrained start must be mirrored in the store."""

from kfp import dsl

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def check_weights(architectures: list[str], train_settings: list[str], weights_store: str) -> list[str]:
    """Fails with the `trashseg weights mirror` commands to run when a start is missing from
    `weights_store`. Returns the hub ids the training tasks will read from there."""
    from trashseg.steps import check_weights_step

    return check_weights_step(architectures, train_settings, weights_store)
