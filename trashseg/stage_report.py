"""The recipe's stage report: val mIoU and per-class IoU of every model and stage.

Written as report.json (the numbers), report.md (a table), report.png (a chart) and
report.html (table + chart inline, the pipeline's HTML artifact). The Markdown and HTML
also show the soft-vote weights (given or fitted) and the per-class gating decision.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from trashseg.fileio import save_figure, write_text
from trashseg.metrics import SegmentationScores


def write_stage_report(
    out_dir: str | Path,
    scores: Mapping[str, SegmentationScores],
    stages: Sequence[str],
    *,
    selected: str,
    pinned: bool = False,
    details: Mapping | None = None,
) -> dict[str, Path]:
    """Write the four report files for `stages` (in that row order); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_names = list(scores[stages[0]].class_names)
    paths = {
        "json": out / "report.json",
        "markdown": out / "report.md",
        "png": out / "report.png",
        "html": out / "report.html",
    }
    data = {
        "selected_stage": selected,
        "selection": "pinned" if pinned else "best val mIoU",
        "class_names": class_names,
        "stages": [{"name": stage, **scores[stage].to_dict()} for stage in stages],
        **(dict(details) if details else {}),
    }
    write_text(paths["json"], json.dumps(data, indent=2) + "\n")
    write_text(
        paths["markdown"], _markdown(scores, stages, class_names, selected, pinned) + _details_markdown(details or {})
    )
    _chart(scores, stages, class_names, selected, paths["png"])
    write_text(
        paths["html"], _html(scores, stages, class_names, selected, pinned, paths["png"], _details_html(details or {}))
    )
    return paths


def _cell(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4f}"


def _markdown(scores, stages, class_names, selected, pinned) -> str:
    header = ["stage", "mIoU", "pixel acc", *class_names]
    lines = [
        "# Ensemble stages on the validation split\n",
        f"Selected: **{selected}** ({'pinned' if pinned else 'best val mIoU'}).\n",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for stage in stages:
        s = scores[stage]
        name = f"**{stage}**" if stage == selected else stage
        cells = [
            name,
            _cell(s.miou),
            _cell(s.pixel_accuracy),
            *(_cell(s.iou[c]) for c in class_names),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _details_rows(details: Mapping) -> tuple[list[list[str]], list[list[str]]]:
    """(weight rows, gating rows) of the ensemble's fitted weights and per-class gating decision."""
    weights = [[name, f"{float(w):.3f}"] for name, w in (details.get("weights") or {}).items()]
    gating = details.get("gating") or {}
    decisions = [
        [name, row["source"], _cell(_nan(row["iou_ensemble"])), _cell(_nan(row["iou_refined"]))]
        for name, row in gating.get("classes", {}).items()
    ]
    return weights, decisions


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def _gating_header(details: Mapping) -> list[str]:
    gating = details["gating"]
    return ["class", "takes", f"val IoU {gating['ensemble_stage']}", f"val IoU {gating['refined_stage']}"]


def _details_markdown(details: Mapping) -> str:
    weights, decisions = _details_rows(details)
    lines = []
    if weights:
        lines += ["", "## Soft-vote weights per model", "", "| model | weight |", "|---|---|"]
        lines += [f"| {name} | {weight} |" for name, weight in weights]
    if decisions:
        header = _gating_header(details)
        lines += ["", "## Gating: each class's source (decided on val)", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in decisions]
    return "\n".join(lines) + ("\n" if lines else "")


def _details_html(details: Mapping) -> str:
    weights, decisions = _details_rows(details)

    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    parts = []
    if weights:
        parts.append("<h3>Soft-vote weights per model</h3>" + table(["model", "weight"], weights))
    if decisions:
        parts.append("<h3>Gating: each class's source (decided on val)</h3>"
                     + table(_gating_header(details), decisions))
    return "".join(parts)


def _chart(scores, stages, class_names, selected, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(max(8, 0.9 * len(class_names) + 2), 8), gridspec_kw={"height_ratios": [1, 2]}
    )
    mious = [np.nan_to_num(scores[s].miou) for s in stages]
    colours = ["tab:orange" if s == selected else "tab:blue" for s in stages]
    top.barh(range(len(stages)), mious, color=colours)
    top.set_yticks(range(len(stages)), stages)
    top.invert_yaxis()
    top.set_xlabel("val mIoU")
    for i, value in enumerate(mious):
        top.text(value, i, f" {value:.4f}", va="center", fontsize=8)
    width = 0.8 / len(stages)
    x = np.arange(len(class_names))
    for i, stage in enumerate(stages):
        ious = [np.nan_to_num(scores[stage].iou[c]) for c in class_names]
        bottom.bar(x + i * width - 0.4 + width / 2, ious, width, label=stage)
    bottom.set_xticks(x, class_names, rotation=30, ha="right")
    bottom.set_ylabel("val IoU")
    bottom.set_ylim(0, 1)
    bottom.legend(fontsize=7, ncols=min(len(stages), 4))
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
    plt.close(figure)


def _html(scores, stages, class_names, selected, pinned, png: Path, details_html: str = "") -> str:
    image = base64.b64encode(png.read_bytes()).decode("ascii")
    head = "".join(
        f"<th>{html.escape(c)}</th>" for c in ["stage", "mIoU", "pixel acc", *class_names]
    )
    rows = []
    for stage in stages:
        s = scores[stage]
        cells = [_cell(s.miou), _cell(s.pixel_accuracy), *(_cell(s.iou[c]) for c in class_names)]
        style = ' style="font-weight:bold;background:#fff3d6"' if stage == selected else ""
        rows.append(
            f"<tr{style}><td>{html.escape(stage)}</td>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Ensemble stages</title>"
        "<style>table{border-collapse:collapse;font:13px sans-serif}td,th{border:1px solid #ccc;"
        "padding:3px 6px;text-align:right}td:first-child{text-align:left}</style></head><body>"
        f"<h2>Ensemble stages on the validation split</h2><p>Selected: <b>{html.escape(selected)}</b> "
        f"({'pinned' if pinned else 'best val mIoU'})</p><table><tr>{head}</tr>{''.join(rows)}</table>"
        f"{details_html}<p><img alt='stage chart' src='data:image/png;base64,{image}'></p></body></html>\n"
    )
