"""Confusions & labels: a clickable confusion matrix and the likely-mislabeled finder."""

from __future__ import annotations

import numpy as np
import streamlit as st

from trashseg.viewer import logic
from trashseg.viewer.context import ViewerContext, mask_of

CELL_IMAGES = 8


@st.cache_data(max_entries=32, show_spinner="Accumulating the confusion matrix ...")
def _matrix(_ctx: ViewerContext, key: tuple, split: str, source: str) -> np.ndarray:
    chosen = next(s for s in _ctx.sources_for(split) if s.name == source)
    names = [e.file_name for e in _ctx.images(split)]
    return logic.split_confusion(chosen, names, _ctx.truth, _ctx.classes.names)


@st.cache_data(max_entries=32, show_spinner="Searching for likely wrong labels ...")
def _suspects(_ctx: ViewerContext, key: tuple, split: str, confidence: float, min_share: float) -> list[logic.Suspect]:
    names = [e.file_name for e in _ctx.images(split)]
    return logic.likely_mislabeled(_ctx.models_for(split), names, _ctx.truth, confidence=confidence, min_share=min_share)


@st.cache_data(max_entries=64, show_spinner="Finding the images behind the cell ...")
def _cell_images(_ctx: ViewerContext, key: tuple, split: str, source: str, true_class: int,
                 predicted: int) -> list[tuple[str, int]]:
    chosen = next(s for s in _ctx.sources_for(split) if s.name == source)
    names = [e.file_name for e in _ctx.images(split)]
    return logic.confusion_cell(chosen, names, _ctx.truth, true_class, predicted)


def _key(ctx: ViewerContext) -> tuple:
    return (ctx.sources.data, tuple(ctx.sources.predictions), ctx.sources.ensemble)


def render(ctx: ViewerContext) -> None:
    split = ctx.split_choice("conf_split")
    sources = ctx.sources_for(split)
    if not sources:
        st.info(f"No prediction folder covers the {split} split; start the viewer with --predictions DIR or --ensemble DIR.")
        return
    matrix_tab, suspects_tab = st.tabs(["Confusion matrix", "Likely mislabeled"])
    with matrix_tab:
        _confusions(ctx, split, sources)
    with suspects_tab:
        _mislabeled(ctx, split)


def _confusions(ctx: ViewerContext, split: str, sources: list[logic.Source]) -> None:
    import pandas as pd

    names = list(ctx.classes.names)
    source = st.selectbox("Predictions of", [s.name for s in sources], key="conf_source")
    matrix = _matrix(ctx, _key(ctx), split, source)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    st.caption("Rows: truth, columns: prediction; share of each true class. Select a cell to see its images.")
    frame = pd.DataFrame(share.round(3), index=names, columns=names)
    event = st.dataframe(frame, key="conf_matrix", on_select="rerun", selection_mode="single-cell")
    cells = event.selection.get("cells", []) if event else []
    left, right = st.columns(2)
    default_true, default_pred = (cells[0][0], names.index(cells[0][1])) if cells else _worst_cell(matrix)
    true_class = names.index(left.selectbox("True class", names, index=default_true, key=f"conf_true_{default_true}"))
    predicted = names.index(right.selectbox("Predicted as", names, index=default_pred, key=f"conf_pred_{default_pred}"))
    chosen = next(s for s in sources if s.name == source)
    hits = _cell_images(ctx, _key(ctx), split, source, true_class, predicted)
    st.write(f"**{int(matrix[true_class, predicted])}** pixels of {names[true_class]} predicted as "
             f"{names[predicted]}, in **{len(hits)}** image(s)")
    columns = st.columns(4)
    for index, (file_name, count) in enumerate(hits[:CELL_IMAGES]):
        prediction = mask_of(chosen.folder, file_name)
        pixels = logic.cell_pixels(prediction, ctx.truth(file_name), true_class, predicted)
        picture = logic.overlay(ctx.image(file_name), prediction, ctx.palette, highlight=pixels)
        columns[index % 4].image(picture, caption=f"{file_name}: {count} px", width="stretch")
    ctx.legend()


def _worst_cell(matrix: np.ndarray) -> tuple[int, int]:
    """The largest off-diagonal cell: the most common confusion."""
    off = matrix.copy()
    np.fill_diagonal(off, -1)
    true_class, predicted = np.unravel_index(int(off.argmax()), off.shape)
    return int(true_class), int(predicted)


def _mislabeled(ctx: ViewerContext, split: str) -> None:
    models = ctx.models_for(split)
    if not models:
        st.info("The finder needs the models' own prediction folders (--predictions DIR ...).")
        return
    left, right = st.columns(2)
    confidence = left.slider("Every model at least this sure", 0.5, 1.0, 0.9, 0.01, key="mis_conf")
    min_share = right.slider("Over at least this share of the image", 0.0, 0.5, 0.02, 0.01, key="mis_share")
    suspects = _suspects(ctx, _key(ctx), split, confidence, min_share)
    names = ctx.classes.names
    st.write(f"**{len(suspects)}** likely mislabeled image(s): {len(models)} model(s) agree against the label")
    if not suspects:
        return
    st.dataframe([{"image": s.file_name, "pixels": s.pixels, "share": round(s.share, 4),
                   "label": names[s.label], "models say": names[s.predicted]} for s in suspects])
    columns = st.columns(4)
    for index, suspect in enumerate(suspects[:CELL_IMAGES]):
        truth = ctx.truth(suspect.file_name)
        columns[index % 4].image(logic.overlay(ctx.image(suspect.file_name), truth, ctx.palette),
                                 caption=f"{suspect.file_name}: label {names[suspect.label]}, "
                                         f"models say {names[suspect.predicted]}", width="stretch")
    ctx.legend()
