"""Dataset statistics: the exploratory numbers the original team needed, as JSON and plots.

Per class: pixel share (from the semantic masks, so overlaps count once, as trained),
instance count, annotation area as a share of its image, and mean RGB colour of the
class's pixels. Per image: the number of objects.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trashseg.data.classes import ClassTable
from trashseg.data.coco import CocoDataset, segmentation_area
from trashseg.data.images import read_rgb
from trashseg.data.masks import semantic_mask
from trashseg.fileio import save_figure, write_text
from trashseg.progress import Progress

log = logging.getLogger(__name__)

STATS_FILE = "stats.json"
AREA_SHARE_BINS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def compute_stats(
    images: Sequence[Mapping],
    annotations_of: Callable[[int], Sequence[Mapping]],
    class_table: ClassTable,
    image_path: Callable[[Mapping], Path],
) -> dict[str, Any]:
    """Statistics over `images`; `annotations_of(image_id)` gives an image's annotations."""
    n = class_table.num_classes
    category_to_class = class_table.category_to_class
    pixels = np.zeros(n, dtype=np.int64)
    colour_sums = np.zeros((n, 3), dtype=np.float64)
    instances = np.zeros(n, dtype=np.int64)
    images_with = np.zeros(n, dtype=np.int64)
    area_shares: list[list[float]] = [[] for _ in range(n)]
    objects_per_image = []
    progress = Progress(len(images), "stats", unit="img", logger=log)
    for image in images:
        height, width = image["height"], image["width"]
        annotations = annotations_of(image["id"])
        objects_per_image.append(len(annotations))
        for annotation in annotations:
            cls = category_to_class[annotation["category_id"]]
            instances[cls] += 1
            area = segmentation_area(annotation["segmentation"], height, width)
            area_shares[cls].append(area / float(height * width))
        mask = semantic_mask(annotations, height, width, category_to_class)
        counts = np.bincount(mask.ravel(), minlength=n)
        pixels += counts
        images_with += counts > 0
        rgb = read_rgb(image_path(image)).astype(np.float64).reshape(-1, 3)
        for channel in range(3):
            colour_sums[:, channel] += np.bincount(mask.ravel(), weights=rgb[:, channel], minlength=n)
        progress.update(1)

    total_pixels = int(pixels.sum())
    classes = []
    for cls, name in enumerate(class_table.names):
        shares = np.asarray(area_shares[cls])
        classes.append(
            {
                "id": cls,
                "name": name,
                "pixels": int(pixels[cls]),
                "pixel_share": float(pixels[cls] / total_pixels) if total_pixels else 0.0,
                "instances": int(instances[cls]),
                "images": int(images_with[cls]),
                "mean_rgb": (colour_sums[cls] / pixels[cls]).round(2).tolist() if pixels[cls] else None,
                "area_share": _summary(shares),
            }
        )
    all_shares = np.concatenate([np.asarray(s) for s in area_shares]) if any(area_shares) else np.zeros(0)
    histogram, _ = np.histogram(all_shares, bins=AREA_SHARE_BINS)
    return {
        "images": len(images),
        "annotations": int(sum(objects_per_image)),
        "pixels": total_pixels,
        "classes": classes,
        "objects_per_image": {
            **_summary(np.asarray(objects_per_image, dtype=float)),
            "histogram": np.bincount(np.asarray(objects_per_image, dtype=np.int64)).tolist() if images else [],
        },
        "area_share_histogram": {"bins": list(AREA_SHARE_BINS), "counts": histogram.tolist()},
    }


def _summary(values: np.ndarray) -> dict[str, float | int | None]:
    if values.size == 0:
        return {"count": 0, "mean": None, "median": None, "min": None, "max": None}
    return {
        "count": int(values.size),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def dataset_stats(dataset: CocoDataset) -> dict[str, Any]:
    return compute_stats(dataset.images, dataset.annotations_of, dataset.class_table, dataset.image_path)


def write_stats(stats: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """OUT/stats.json plus one PNG per plot; returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")  # headless: pipeline containers have no display
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / STATS_FILE
    write_text(json_path, json.dumps(stats, indent=2) + "\n")
    written = [json_path]
    classes = stats["classes"]
    names = [c["name"] for c in classes]

    def bar_plot(file: str, values: list[float], title: str, ylabel: str) -> None:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.bar(range(len(values)), values)
        ax.set_xticks(range(len(values)), names if len(values) == len(names) else None, rotation=45, ha="right")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        save_figure(fig, out_dir / file, dpi=80)
        plt.close(fig)
        written.append(out_dir / file)

    bar_plot("pixel_share.png", [c["pixel_share"] for c in classes], "Pixel share per class", "share of all pixels")
    bar_plot("instances.png", [c["instances"] for c in classes], "Instances per class", "annotations")
    _swatch_plot(classes, out_dir / "mean_colour.png", plt)
    written.append(out_dir / "mean_colour.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    histogram = stats["objects_per_image"]["histogram"]
    ax.bar(range(len(histogram)), histogram)
    ax.set_title("Objects per image")
    ax.set_xlabel("annotations in the image")
    ax.set_ylabel("images")
    fig.tight_layout()
    save_figure(fig, out_dir / "objects_per_image.png", dpi=80)
    plt.close(fig)
    written.append(out_dir / "objects_per_image.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = stats["area_share_histogram"]["bins"]
    labels = [f"<{b:g}" for b in bins[1:]]
    ax.bar(range(len(labels)), stats["area_share_histogram"]["counts"])
    ax.set_xticks(range(len(labels)), labels, rotation=45)
    ax.set_title("Annotation area as a share of its image")
    ax.set_ylabel("annotations")
    fig.tight_layout()
    save_figure(fig, out_dir / "area_share.png", dpi=80)
    plt.close(fig)
    written.append(out_dir / "area_share.png")
    return written


def _swatch_plot(classes: list[dict], path: Path, plt) -> None:
    """One colour swatch per class, labelled with its name and RGB (no value axis to misread)."""
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(classes) + 0.8))
    for row, cls in enumerate(classes):
        rgb = cls["mean_rgb"]
        colour = tuple(v / 255.0 for v in rgb) if rgb else (1.0, 1.0, 1.0)
        ax.add_patch(plt.Rectangle((0, row), 1, 0.85, facecolor=colour, edgecolor="#888"))
        label = f"{cls['name']}  rgb({', '.join(f'{v:.0f}' for v in rgb)})" if rgb else f"{cls['name']}  (no pixels)"
        ax.text(1.1, row + 0.42, label, va="center", fontsize=9)
    ax.set_xlim(0, 4)
    ax.set_ylim(len(classes), 0)
    ax.axis("off")
    ax.set_title("Mean colour per class")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    plt.close(fig)
