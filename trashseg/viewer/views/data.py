"""Data: browse images with masks and instance outlines, search, statistics, validation report."""

from __future__ import annotations

import json

import streamlit as st

from trashseg.legend import hex_colour, legend_html
from trashseg.viewer import logic
from trashseg.viewer.context import ViewerContext

PER_PAGE = 12
COLUMNS = 4
MAX_REPORT_IMAGES = 12  # skipped records shown on their image


def render(ctx: ViewerContext) -> None:
    browse, stats, report = st.tabs(["Browse", "Statistics", "Validation report"])
    with browse:
        _browse(ctx)
    with stats:
        _statistics(ctx)
    with report:
        _validation_report(ctx)


def _browse(ctx: ViewerContext) -> None:
    names = ctx.classes.names
    split = ctx.split_choice("data_split", prefer="train")
    entries = ctx.images(split)
    left, middle, right = st.columns(3)
    name = left.text_input("File name contains", key="data_name")
    wanted = middle.multiselect("Has classes", names[1:], key="data_classes")
    small = right.number_input("Has an object under N px (0 = any)", min_value=0, value=0, step=50, key="data_small")
    low, high = st.slider("Objects per image", 0, max([e.objects for e in entries] + [1]),
                          (0, max([e.objects for e in entries] + [1])), key="data_objects")
    matches = logic.search_images(
        entries, name=name, classes=[names.index(n) for n in wanted], min_objects=low,
        max_objects=high, smaller_than=float(small) if small else None,
    )
    st.write(f"**{len(matches)}** of {len(entries)} images match")
    left, middle, right = st.columns(3)
    shown = left.multiselect("Overlay classes", names, default=list(names[1:]), key="data_overlay")
    opacity = middle.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="data_opacity")
    outlines = right.checkbox("Instance outlines", value=True, key="data_outlines")
    page = st.number_input(f"Page (of {logic.page_count(len(matches), PER_PAGE)})", 1,
                           logic.page_count(len(matches), PER_PAGE), 1, key="data_page") - 1
    ctx.legend([names.index(n) for n in shown])
    annotations = _annotations_by_file(str(ctx.dataset.split_file(split))) if outlines else {}
    classes = [names.index(n) for n in shown]
    columns = st.columns(COLUMNS)
    for index, entry in enumerate(logic.page_of(matches, page, PER_PAGE)):
        tile = ctx.tile(entry.file_name, tuple(classes), opacity, annotations if outlines else None)
        columns[index % COLUMNS].image(tile, caption=f"{entry.file_name} ({entry.objects} objects)", width="stretch")
    if matches:
        chosen = st.selectbox("Full size", [e.file_name for e in logic.page_of(matches, page, PER_PAGE)], key="data_full")
        picture = logic.overlay(ctx.image(chosen), ctx.truth(chosen), ctx.palette, alpha=opacity, classes=classes)
        if outlines:
            picture = logic.draw_outlines(picture, annotations.get(chosen, []), ctx.palette,
                                          ctx.classes.category_to_class, classes)
        st.image(picture, caption=chosen)


@st.cache_data(max_entries=8, show_spinner=False)
def _annotations_by_file(split_file: str) -> dict[str, list[dict]]:
    coco = json.loads(open(split_file).read())
    names = {im["id"]: im["file_name"] for im in coco.get("images", [])}
    out: dict[str, list[dict]] = {}
    for annotation in coco.get("annotations", []):
        out.setdefault(names.get(annotation["image_id"], ""), []).append(annotation)
    return out


def _statistics(ctx: ViewerContext) -> None:
    import pandas as pd

    path = ctx.dataset.stats_dir / "stats.json"
    if not path.is_file():
        st.info(f"No statistics in {ctx.dataset.stats_dir}; `trashseg prepare` writes them.")
        return
    stats = json.loads(path.read_text())
    classes = stats["classes"]
    st.write(f"{stats['images']} images, {stats['annotations']} annotations")
    table = pd.DataFrame({
        "class": [c["name"] for c in classes],
        "pixel share": [c["pixel_share"] for c in classes],
        "instances": [c["instances"] for c in classes],
        "images": [c["images"] for c in classes],
    }).set_index("class")
    left, right = st.columns(2)
    left.subheader("Class pixel share")
    left.bar_chart(table["pixel share"])
    right.subheader("Instances per class")
    right.bar_chart(table["instances"])
    left, right = st.columns(2)
    histogram = stats["objects_per_image"]["histogram"]
    left.subheader("Objects per image")
    left.bar_chart(pd.DataFrame({"images": histogram}, index=pd.Index(range(len(histogram)), name="objects")))
    bins = stats["area_share_histogram"]["bins"]
    right.subheader("Annotation area share")
    right.bar_chart(pd.DataFrame({"annotations": stats["area_share_histogram"]["counts"]},
                                 index=pd.Index([f"<{b:g}" for b in bins[1:]], name="share of image")))
    st.subheader("Mean colour per class")
    st.html(legend_html([
        (f"{c['name']} rgb({', '.join(f'{v:.0f}' for v in c['mean_rgb'])})", hex_colour(c["mean_rgb"]))
        for c in classes if c["mean_rgb"]
    ]))


def _validation_report(ctx: ViewerContext) -> None:
    if not ctx.dataset.report_file.is_file():
        st.info("No validation report (report.json) in this dataset.")
        return
    files = json.loads(ctx.dataset.report_file.read_text()).get("files", {})
    records = [(split, r) for split, report in files.items() for r in report.get("skipped", [])]
    st.write(f"**{len(records)}** skipped record(s)")
    if not records:
        return
    st.dataframe([{"file": s, "kind": r["kind"], "id": r["id"], "image_id": r.get("image_id"), "reason": r["reason"]}
                  for s, r in records], width="stretch")
    shown = 0
    for split, record in records:
        image_id = record.get("image_id") if record["kind"] == "annotation" else record["id"]
        file_name = _file_name(str(ctx.dataset.split_file(split)), image_id)
        if file_name and ctx.dataset.image_path(file_name).is_file() and shown < MAX_REPORT_IMAGES:
            st.image(ctx.image(file_name), caption=f"{file_name}: {record['kind']} {record['id']}: {record['reason']}",
                     width=320)
            shown += 1


@st.cache_data(max_entries=64, show_spinner=False)
def _file_name(split_file: str, image_id) -> str | None:
    if image_id is None:
        return None
    try:
        coco = json.loads(open(split_file).read())
    except FileNotFoundError:
        return None
    return next((im["file_name"] for im in coco.get("images", []) if im["id"] == image_id), None)

