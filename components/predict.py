"""predict: one model's class probabilities for val and test -> two Datasets (prediction folders)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.train, install_kfp_package=False)
def predict(
    model: Input[Model],
    dataset: Input[Dataset],
    val_predictions: Output[Dataset],
    test_predictions: Output[Dataset],
) -> int:
    """`model`: a train_model output. Both splits in one task: one process start and one
    model build instead of two. Returns the number of images predicted."""
    from trashseg.steps import predict_step

    return predict_step(model.path, dataset.path, {"val": val_predictions.path, "test": test_predictions.path})
