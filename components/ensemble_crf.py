"""ensemble_crf: soft vote + DenseCRF + consensus overwrite -> Dataset + stage report + Metrics."""


from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def ensemble_crf(
    val_predictions: Input[list[Dataset]],
    test_predictions: Input[list[Dataset]],
    dataset: Input[Dataset],
    ensemble_settings: list[str],
    ensemble: Output[Dataset],
    report: Output[Markdown],
    report_html: Output[HTML],
    metrics: Output[Metrics],
) -> float:
    """`ensemble_settings`: `key=value` overrides of EnsembleConfig. `ensemble` holds every
    stage and `final/<split>` (the stage chosen on val). Returns its held-out (cross-fitted)
    validation mIoU; `metrics` also has the in-sample one."""
    from trashseg.steps import ensemble_step

    result = ensemble_step(
        [p.path for p in val_predictions],
        [p.path for p in test_predictions],
        dataset.path,
        ensemble.path,
        report_md=report.path,
        report_html=report_html.path,
        settings=ensemble_settings,
    )
    ensemble.metadata["selected_stage"] = result.selected_stage
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    return result.val_miou
