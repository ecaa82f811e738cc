"""select_round: keep the training round whose ensemble scores best on held-out val."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def select_round(
    base_ensemble: Input[Dataset],
    pseudo_ensemble: Input[Dataset],
    tracking_uri: str,
    experiment: str,
    selection: Output[Artifact],
    report: Output[Markdown],
) -> str:
    """Compares the two rounds' held-out val mIoU (a tie keeps the base round). `selection`
    is round_selection.json: the kept round, the margin, each round's scores. Returns the
    kept round, "base" or "pseudo"."""
    from trashseg.steps import RunContext, select_round_step

    return select_round_step(
        [("base", base_ensemble.path), ("pseudo", pseudo_ensemble.path)],
        selection.path,
        report.path,
        run=RunContext(tracking_uri, experiment, "select-round"),
    )
