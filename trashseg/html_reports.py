"""Self-contained HTML reports for pipeline artifacts (the KFP UI shows them in its compare view).

Images are embedded as base64 PNGs: a KFP HTML artifact is one file, links to siblings
would not resolve.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trashseg.fileio import write_text

DEFAULT_OVERLAYS = 4
OVERLAY_ALPHA = 0.55


@dataclass(frozen=True)
class EvaluationResult:
    miou: float
    scalars: dict[str, float]  # finite values only: miou, pixel_accuracy, iou/<class>
    class_names: list[str]
    matrix: list[list[int]]  # matrix[true][predicted], pixels


def evaluation_report(
    prediction_dir: str | Path,
    dataset_dir: str | Path,
    split: str,
    html_path: str | Path,
    *,
    title: str,
    overlays: int = DEFAULT_OVERLAYS,
    metrics_path: str | Path | None = None,
) -> EvaluationResult:
    """Score `prediction_dir` on `split` and write an HTML page: scores, per-class IoU chart,
    confusion matrix and overlays (image / truth / prediction, with a colour legend) of the
    first `overlays` images. `metrics_path`: also keep evaluate's metrics JSON there."""
    from trashseg.data.layout import PreparedDataset
    from trashseg.legend import legend, legend_html
    from trashseg.predict import evaluate

    with tempfile.TemporaryDirectory(prefix="trashseg-eval-") as work:
        # evaluate() writes its JSON next to the predictions by default; those are an input here.
        scores = evaluate(prediction_dir, dataset_dir, split, metrics_path=metrics_path or Path(work) / "metrics.json")
    scalars = {"miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy}
    scalars.update({f"iou/{name}": value for name, value in scores.iou.items()})
    scalars = {key: float(value) for key, value in scalars.items() if math.isfinite(value)}

    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{_cell(scores.iou[name])}</td><td>{_cell(scores.accuracy[name])}</td></tr>"
        for name in scores.class_names
    )
    page = [
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}</head><body>",
        f"<h2>{html.escape(title)} — {html.escape(split)}</h2>",
        f"<p>mIoU <b>{_cell(scores.miou)}</b>, pixel accuracy <b>{_cell(scores.pixel_accuracy)}</b></p>",
        _img(_iou_chart(scores.class_names, [scores.iou[n] for n in scores.class_names]), "per-class IoU"),
        "<table><tr><th>class</th><th>IoU</th><th>accuracy</th></tr>" + rows + "</table>",
        "<h3>Confusion matrix (rows: truth, columns: prediction; share of each true class)</h3>",
        _img(_confusion_chart(scores.class_names, np.asarray(scores.matrix)), "confusion matrix"),
        "<h3>Samples: image | truth | prediction</h3>",
        legend_html(legend(PreparedDataset(dataset_dir).classes())),
        *(_img(png, name) for name, png in _overlays(prediction_dir, dataset_dir, split, overlays)),
        "</body></html>",
    ]
    write_text(html_path, "\n".join(page) + "\n")
    return EvaluationResult(scores.miou, scalars, list(scores.class_names), [list(map(int, r)) for r in scores.matrix])


def stats_html(stats_dir: str | Path, html_path: str | Path, *, title: str) -> None:
    """One page with a prepared dataset's statistics plots and its stats.json."""
    stats_dir = Path(stats_dir)
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}</head><body>"]
    parts.append(f"<h2>{html.escape(title)}</h2>")
    for png in sorted(stats_dir.glob("*.png")):
        parts.append(f"<h3>{html.escape(png.stem.replace('_', ' '))}</h3>")
        parts.append(_img(png.read_bytes(), png.stem))
    stats_file = stats_dir / "stats.json"
    if stats_file.is_file():
        summary = json.dumps(json.loads(stats_file.read_text()), indent=1)
        parts.append(f"<h3>stats.json</h3><pre>{html.escape(summary)}</pre>")
    parts.append("</body></html>")
    write_text(html_path, "\n".join(parts) + "\n")


_STYLE = "<style>body{font-family:sans-serif} td,th{padding:2px 8px;text-align:right} img{max-width:100%}</style>"


def _cell(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:.4f}"


def _img(png: bytes, alt: str) -> str:
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'></p>"


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: pipeline containers have no display
    import matplotlib.pyplot as plt

    return plt


def _iou_chart(names: list[str], values: list[float]) -> bytes:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(len(names)), [v if math.isfinite(v) else 0.0 for v in values])
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    return _figure_png(fig)


def _confusion_chart(names: list[str], matrix: np.ndarray) -> bytes:
    plt = _pyplot()
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(shares, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image)
    return _figure_png(fig)


def _overlays(prediction_dir, dataset_dir, split: str, count: int):
    from PIL import Image

    from trashseg.data.io import read_image, read_mask
    from trashseg.data.layout import PreparedDataset
    from trashseg.predictions import PredictionSet

    dataset = PreparedDataset(dataset_dir)
    classes = dataset.classes()
    palette = classes.palette()
    predictions = PredictionSet.open(prediction_dir)
    for sample in dataset.samples(split)[:count]:
        image = read_image(sample.image)
        truth = read_mask(sample.mask, classes.num_classes)
        predicted = predictions.mask(sample.file_name)
        panels = [image, _blend(image, truth, palette), _blend(image, predicted, palette)]
        buffer = io.BytesIO()
        Image.fromarray(np.concatenate(panels, axis=1)).save(buffer, format="PNG")
        yield sample.file_name, buffer.getvalue()


def _blend(image: np.ndarray, mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    colours = np.zeros_like(image)
    known = mask < len(palette)  # 255 (ignore) stays uncoloured
    colours[known] = palette[mask[known]]
    blended = image.astype(np.float32) * (1 - OVERLAY_ALPHA) + colours.astype(np.float32) * OVERLAY_ALPHA
    blended[~known] = image[~known]
    return blended.astype(np.uint8)
