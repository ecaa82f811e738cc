"""prepare_data: validate a COCO dataset, paint masks, split, statistics -> Dataset + report."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def prepare_data(
    source: str,
    dataset_version: str,
    val_fraction: float,
    seed: int,
    dataset: Output[Dataset],
    report: Output[Markdown],
    stats: Output[HTML],
) -> str:
    """`source`: the data store (local folder or s3:// URI) holding dataset versions.
    `dataset_version`: the version to pull (its content hash, verified against the data;
    it keys KFP's cache) or "latest". Returns the verified version."""
    from trashseg.steps import prepare_step

    return prepare_step(
        source,
        dataset_version,
        dataset.path,
        report_path=report.path,
        stats_html_path=stats.path,
        val_fraction=val_fraction,
        seed=seed,
    )
