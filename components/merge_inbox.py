"""merge_inbox: new labelled batches + the base version -> a new dataset version (new hash)."""

from kfp import dsl

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def merge_inbox(data_store: str, base_version: str) -> str:
    """Merge the new batches into a new dataset version; returns its hash."""
    from trashseg.steps import merge_inbox_step

    return merge_inbox_step(data_store, base_version)
