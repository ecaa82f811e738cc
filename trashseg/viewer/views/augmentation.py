"""Augmentation: one image through the training augmentation, settings edited on the page.

The sample goes through trashseg.train_data's own per-sample loader (`TrainSamples`: copy-
paste, then `TrainTransform` from the `TrainConfig`), so what is shown is what trains.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import streamlit as st

from trashseg.errors import UserError
from trashseg.viewer import logic
from trashseg.viewer.context import ViewerContext

VARIANTS = 4


def augmented(ctx: ViewerContext, file_name: str, split: str, config, seeds) -> list[tuple[np.ndarray, np.ndarray]]:
    """(uint8 image, mask) per seed, as the training loader produces them."""
    from trashseg.augment import TrainTransform
    from trashseg.train_data import TrainSamples, resolve_class_ids

    samples = ctx.dataset.samples(split)
    index = next(i for i, s in enumerate(samples) if s.file_name == file_name)
    num_classes = ctx.classes.num_classes
    copy_paste_ids = resolve_class_ids(config.copy_paste_classes, ctx.classes)
    # Donors as training picks them (images holding a pasted class), from the annotations.
    holding = {e.file_name for e in ctx.images(split) if e.classes & set(copy_paste_ids)}
    donors = [s for s in samples if s.file_name in holding]
    loader = TrainSamples([SimpleNamespace(samples=samples)], num_classes,
                          TrainTransform(config.augment, config.image_size), config.seed,
                          copy_paste_ids, donors, config.augment.copy_paste)
    out = []
    for seed in seeds:
        image, mask = loader[(0, index, seed)]  # uint8 CHW: training normalises on the device
        out.append((np.ascontiguousarray(image.numpy().transpose(1, 2, 0)), mask.numpy()))
    return out


def settings_config(image_size: int, scale: tuple[float, float], crop: int, hflip: float, jitter: float,
                    copy_paste_classes: list[str], copy_paste: float):
    """A TrainConfig from the page's settings, validated by its own checks."""
    from trashseg.config import from_mapping
    from trashseg.training import TrainConfig

    return from_mapping(TrainConfig, {
        "image_size": image_size,
        "copy_paste_classes": list(copy_paste_classes),
        "augment": {"scale_range": list(scale), "crop_size": crop or None, "hflip": hflip,
                    "color_jitter": jitter, "copy_paste": copy_paste},
    })


def render(ctx: ViewerContext) -> None:
    split = ctx.split_choice("aug_split", prefer="train")
    names = [e.file_name for e in ctx.images(split)]
    if not names:
        st.info(f"The {split} split has no images.")
        return
    file_name = st.selectbox("Image", names, key="aug_image")
    left, right = st.columns(2)
    image_size = left.number_input("image_size", 32, 2048, min(512, ctx.image(file_name).shape[0]), 16, key="aug_size")
    scale = left.slider("scale_range", 0.25, 3.0, (0.5, 2.0), 0.05, key="aug_scale")
    crop = left.number_input("crop_size (0 = image_size)", 0, 2048, 0, 16, key="aug_crop")
    hflip = right.slider("hflip probability", 0.0, 1.0, 0.5, 0.05, key="aug_hflip")
    jitter = right.slider("colour jitter probability", 0.0, 1.0, 0.8, 0.05, key="aug_jitter")
    classes = right.multiselect("copy_paste_classes", ctx.classes.names[1:], key="aug_cp_classes")
    paste = right.slider("copy_paste probability", 0.0, 1.0, 0.5, 0.05, key="aug_cp")
    first_seed = st.number_input("First sample position", 0, 10**6, 0, key="aug_seed")
    try:
        config = settings_config(int(image_size), scale, int(crop), hflip, jitter, classes, paste)
        results = augmented(ctx, file_name, split, config, range(int(first_seed), int(first_seed) + VARIANTS))
    except UserError as error:
        st.error(str(error))
        return
    st.write(f"{VARIANTS} training samples of {file_name} at {results[0][0].shape[1]}x{results[0][0].shape[0]}")
    ctx.legend()
    columns = st.columns(VARIANTS + 1)
    columns[0].image(logic.overlay(ctx.image(file_name), ctx.truth(file_name), ctx.palette), caption="original",
                     width="stretch")
    for column, (seed, (image, mask)) in zip(columns[1:], enumerate(results, start=int(first_seed)), strict=True):
        column.image(logic.overlay(image, mask, ctx.palette), caption=f"position {seed}", width="stretch")
