"""make_submission: the ensemble's final test predictions -> the competition CSV (validated)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def make_submission(
    ensemble: Input[Dataset],
    dataset: Input[Dataset],
    submission: Output[Artifact],
) -> int:
    """Writes the CSV and validates it against the test annotation file. Returns the rows."""
    from trashseg.steps import submission_step

    return submission_step(ensemble.path, dataset.path, submission.path)
