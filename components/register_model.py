"""register_model: register a model bundle as challenger; promote to champion only if better."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def register_model(
    bundle: Input[Model],
    dataset: Input[Dataset],
    score: float,
    model_name: str,
    min_improvement: float,
    tracking_uri: str,
    experiment: str,
    decision: Output[Markdown],
    round_selection: Input[Artifact] = None,
) -> bool:
    """`score`: the ensemble's held-out mIoU on the dataset's val split (the holdout). Promoted
    to champion only if it beats the champion's score on the same holdout by more than
    `min_improvement`. `round_selection`: which round this bundle is and by how much it won
    (select_round's output). Returns whether it was promoted."""
    from trashseg.steps import RunContext, register_step

    return register_step(
        bundle.path,
        dataset.path,
        decision.path,
        score=score,
        model_name=model_name,
        min_improvement=min_improvement,
        run=RunContext(tracking_uri, experiment, "register"),
        round_selection_path=round_selection.path if round_selection else None,
    )
