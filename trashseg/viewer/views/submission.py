"""Submission: one row of a submission CSV decoded over its test image; the validator's findings."""

from __future__ import annotations

import streamlit as st

from trashseg.viewer import logic
from trashseg.viewer.context import ViewerContext


@st.cache_data(max_entries=8, show_spinner="Indexing the submission ...")
def _index(path: str, mtime: float) -> list[tuple[str, int]]:
    return logic.submission_index(path)


@st.cache_data(max_entries=8, show_spinner="Validating the submission ...")
def _findings(path: str, mtime: float, annotation_file: str) -> list[str]:
    return logic.submission_findings(path, annotation_file)


def render(ctx: ViewerContext) -> None:
    import os

    path = ctx.submission_file
    if not path:
        st.info("No submission given; start the viewer with --submission CSV.")
        return
    mtime = os.stat(path).st_mtime
    rows = _index(path, mtime)
    st.write(f"**{len(rows)}** rows in {ctx.sources.submission}")
    splits = ctx.dataset.splits()
    split = st.selectbox("Test split", splits, index=splits.index("test") if "test" in splits else 0, key="sub_split")
    findings = _findings(path, mtime, str(ctx.dataset.split_file(split)))
    if findings:
        st.error(f"The validator found {len(findings)} problem(s):\n\n" + "\n".join(f"- {f}" for f in findings))
    else:
        st.success(f"Valid: one row per {split} image, in order, class ids in range.")
    if not rows:
        return
    labels = [f"{i + 1}: {image_id}" for i, (image_id, _) in enumerate(rows)]
    choice = st.selectbox("Row", range(len(rows)), format_func=labels.__getitem__, key="sub_row")
    image_id, class_map = logic.decode_submission_row(path, rows[choice][1])
    opacity = st.slider("Opacity", 0.0, 1.0, 0.55, 0.05, key="sub_opacity")
    present = sorted(int(v) for v in set(class_map.ravel().tolist()))
    st.write(f"{image_id}: 256x256 mask, classes {', '.join(ctx.classes.names[i] for i in present if i < ctx.classes.num_classes)}")
    ctx.legend(present)
    left, right = st.columns(2)
    # PNG, not the JPEG Streamlit picks for arrays: the mask's colours stay exact.
    left.image(logic.png_bytes(logic.colourise(class_map, ctx.palette)), caption="decoded mask", width="stretch",
               output_format="PNG")
    image_path = ctx.dataset.image_path(image_id)
    if image_path.is_file():
        small = logic.image_for_submission(ctx.image(image_id))
        right.image(logic.overlay(small, class_map, ctx.palette, alpha=opacity), caption="over the test image",
                    width="stretch")
    else:
        right.warning(f"{image_id} is not an image of {ctx.dataset.root}")
