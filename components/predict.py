"""predict: one model's class probabilities for one split -> Dataset (a prediction folder)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import DEFAULT_IMAGES


@dsl.component(base_image=DEFAULT_IMAGES.train, install_kfp_package=False)
def predict(
    model: Input[Model],
    dataset: Input[Dataset],
    split: str,
    predictions: Output[Dataset],
) -> int:
    """`model`: a train_model output. Returns the number of images predicted."""
    from trashseg.steps import predict_step

    return predict_step(model.path, dataset.path, split, predictions.path)
