"""fetch_champion: the champion bundle (weights to fine-tune) and its architectures."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Model, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def fetch_champion(
    model_name: str, tracking_uri: str, bundle: Output[Model]
) -> NamedTuple("Champion", [("version", str), ("dataset_version", str), ("architectures", list[str])]):
    """Download the champion bundle (the weights to fine-tune) and list its architectures."""
    from collections import namedtuple

    from trashseg.steps import fetch_champion_step

    info = fetch_champion_step(model_name, tracking_uri, bundle.path)
    return namedtuple("Champion", ["version", "dataset_version", "architectures"])(
        info.version, info.dataset_version, info.architectures
    )
