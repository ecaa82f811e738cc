"""check_inbox: the champion's dataset version and the new inbox batches it does not include."""

from typing import NamedTuple

from kfp import dsl

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def check_inbox(
    data_store: str, model_name: str, tracking_uri: str
) -> NamedTuple("InboxCheck", [("base_version", str), ("new_batches", int), ("batches", list[str])]):
    """The champion's dataset version and the inbox batches it does not include."""
    from collections import namedtuple

    from trashseg.steps import check_inbox_step

    check = check_inbox_step(data_store, model_name, tracking_uri)
    return namedtuple("InboxCheck", ["base_version", "new_batches", "batches"])(
        check.base_version, len(check.batches), check.batches
    )
