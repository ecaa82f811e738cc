"""fetch_champion: the champion bundle (weights to fine-tune) and its architectures."""

from kfp import dsl
from kfp.dsl import Model, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def fetch_champion(model_name: str, tracking_uri: str, bundle: Output[Model]) -> list[str]:
    """Download the champion's bundle; returns its architectures (the retrain loop's items)."""
    from trashseg.steps import fetch_champion_step

    info = fetch_champion_step(model_name, tracking_uri, bundle.path)
    bundle.metadata.update({"version": info.version, "dataset_version": info.dataset_version})
    return info.architectures
