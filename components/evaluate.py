"""evaluate: score a prediction folder -> Metrics, ClassificationMetrics, HTML report."""

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.base, install_kfp_package=False)
def evaluate(
    predictions: Input[Dataset],
    dataset: Input[Dataset],
    split: str,
    title: str,
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    subfolder: str = "",
) -> float:
    """mIoU, per-class IoU and pixel accuracy; the confusion matrix with class names; an HTML
    page with the per-class chart and sample overlays. `subfolder`: where the prediction
    folder lies inside `predictions` (e.g. `final/val` of an ensemble). Returns mIoU."""
    import os

    from trashseg.steps import evaluate_step

    result = evaluate_step(os.path.join(predictions.path, subfolder), dataset.path, split, report.path, title=title)
    for name, value in result.scalars.items():
        metrics.log_metric(name, value)
    confusion.log_confusion_matrix(result.class_names, result.matrix)
    return result.miou
