"""Predictions: one image across every model and ensemble stage, disagreement, ranking."""

from __future__ import annotations

import numpy as np
import streamlit as st

from trashseg.ensemble.config import CONSENSUS, CRF
from trashseg.viewer import logic
from trashseg.viewer.context import ViewerContext, mask_of

COLUMNS = 4
RANKED_SHOWN = 50


@st.cache_data(max_entries=32, show_spinner="Scoring the split ...")
def _ranking(_ctx: ViewerContext, key: tuple, split: str, by: str, source: str) -> list[tuple[str, float]]:
    names = [e.file_name for e in _ctx.images(split)]
    return logic.rank_images(names, _ctx.sources_for(split), _ctx.truth, _ctx.classes.num_classes, by=by, source=source)


def render(ctx: ViewerContext) -> None:
    split = ctx.split_choice("pred_split")
    sources = ctx.sources_for(split)
    if not sources:
        st.info(f"No prediction folder covers the {split} split; start the viewer with --predictions DIR or --ensemble DIR.")
        return
    st.write(f"**{len(sources)}** prediction sources on {split}: {', '.join(s.name for s in sources)}")
    labelled = bool(ctx.images(split)) and ctx.dataset.mask_path(ctx.images(split)[0].file_name).is_file()
    order = st.radio("Order", ["file order", "worst IoU", "most disagreement"], horizontal=True, key="pred_order")
    names = [e.file_name for e in ctx.images(split)]
    if order == "worst IoU" and labelled:
        source = st.selectbox("IoU of", [s.name for s in sources], key="pred_rank_source")
        ranked = _ranking(ctx, _key(ctx), split, "worst_iou", source)
        names = [n for n, _ in ranked]
        st.dataframe([{"image": n, "mIoU": round(v, 4)} for n, v in ranked[:RANKED_SHOWN]], height=200)
    elif order == "most disagreement":
        ranked = _ranking(ctx, _key(ctx), split, "disagreement", "")
        names = [n for n, _ in ranked]
        st.dataframe([{"image": n, "disagreement": round(v, 4)} for n, v in ranked[:RANKED_SHOWN]], height=200)
    file_name = st.selectbox("Image", names, key="pred_image")
    restored = st.checkbox("Highlight the pixels consensus restored after CRF", key="pred_restored")
    _compare(ctx, file_name, sources, labelled, restored)


def _key(ctx: ViewerContext) -> tuple:
    """Cache key for a ranking: the folders shown (their contents do not change while viewed)."""
    return (ctx.sources.data, tuple(ctx.sources.predictions), ctx.sources.ensemble)


def _compare(ctx: ViewerContext, file_name: str, sources: list[logic.Source], labelled: bool, restored: bool) -> None:
    image = ctx.image(file_name)
    truth = ctx.truth(file_name) if labelled else None
    masks = {s.name: mask_of(s.folder, file_name) for s in sources if s.has(file_name)}
    highlight = None
    if restored and CRF in masks and CONSENSUS in masks:
        highlight = logic.restored_pixels(masks[CRF], masks[CONSENSUS])
        st.write(f"consensus restored **{int(highlight.sum())}** pixel(s) of this image")
    elif restored:
        st.info("Needs the crf and consensus stages (pass --ensemble with both enabled).")
    ctx.legend()
    panels = [("image", image, None)]
    if truth is not None:
        panels.append(("truth", logic.overlay(image, truth, ctx.palette), None))
    for name, mask in masks.items():
        score = logic.image_miou(mask, truth, ctx.classes.num_classes) if truth is not None else None
        caption = name if score is None else f"{name}: mIoU {score:.3f}"
        panels.append((caption, logic.overlay(image, mask, ctx.palette, highlight=highlight), score))
    if len(masks) > 1:
        disagreement = logic.disagreement(list(masks.values()))
        heat = (np.stack([disagreement] * 3, axis=-1) * 255).astype(np.uint8)
        panels.append((f"disagreement (mean {disagreement.mean():.3f})",
                       logic.resize_nearest_to(heat, image.shape[:2]), None))
    columns = st.columns(COLUMNS)
    for index, (caption, picture, _) in enumerate(panels):
        columns[index % COLUMNS].image(picture, caption=caption, width="stretch")
    if truth is not None:
        st.dataframe([{"source": n, "mIoU": round(logic.image_miou(m, truth, ctx.classes.num_classes), 4)}
                      for n, m in masks.items()])
