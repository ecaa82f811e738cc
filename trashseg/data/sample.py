"""A deterministic synthetic trash dataset in COCO format: the embedded default data.

    OUT/train.json, OUT/val.json   images + polygon (a few crowd RLE) annotations
    OUT/test.json                  images only, `annotations: []` (like the real test set)
    OUT/<split>/<id>.jpg           JPEGs; file_name (`<split>/<id>.jpg`) is relative to OUT

Each of the 10 foreground classes of the default taxonomy has its own shape, colour and
texture (with mild jitter), bold enough that tiny models learn them in a few CPU epochs.
Objects overlap; some are small; Battery and Clothing are rarer, as in the real data.
Objects are drawn largest first, so the picture agrees pixel for pixel with the mask
painted in descending area order. Same arguments -> byte-identical files.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trashseg.data.classes import DEFAULT_TAXONOMY
from trashseg.data.coco import decode_rle
from trashseg.errors import DataError
from trashseg.fileio import write_text
from trashseg.progress import Progress

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# A sample is for tests and demos: bounded so a typo cannot fill the disk (1e10 pixels is
# about 3 GB of JPEGs) or allocate one image beyond memory.
MAX_IMAGES = 100_000
MAX_SIZE = 4096
MAX_TOTAL_PIXELS = 10**10
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}  # train gets the rest
JPEG_QUALITY = 92
MIN_OBJECT_AREA_SHARE = 0.0015  # smaller objects are re-drawn: they would vanish in a 1/4-scale mask
CROWD_PROBABILITY = 0.15  # share of General trash / Plastic bag objects stored as crowd RLE


def _unit_circle(points: int) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


# Shapes in unit coordinates (about [-1, 1]); y points down, so negative y is the top.
def _jagged_blob(rng: np.random.Generator) -> np.ndarray:
    angles = np.sort(rng.uniform(0, 2 * np.pi, 14))
    radii = rng.uniform(0.55, 1.0, 14)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _wavy_blob(rng: np.random.Generator) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    radii = 0.8 + 0.2 * np.sin(5 * angles + rng.uniform(0, 2 * np.pi))
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _fixed(points: list[tuple[float, float]]) -> Callable[[np.random.Generator], np.ndarray]:
    array = np.asarray(points, dtype=float)
    return lambda rng: array


SHAPES: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "jagged_blob": _jagged_blob,
    "sheet": _fixed([(-0.7, -1.0), (0.7, -1.0), (0.7, 1.0), (-0.7, 1.0)]),
    "carton": _fixed([(-0.6, -0.5), (0.0, -1.0), (0.6, -0.5), (0.6, 1.0), (-0.6, 1.0)]),
    "disc": lambda rng: _unit_circle(28) * np.array([1.0, rng.uniform(0.85, 1.0)]),
    "bottle": _fixed(
        [(-0.18, -1.0), (0.18, -1.0), (0.18, -0.55), (0.45, -0.3), (0.45, 1.0), (-0.45, 1.0), (-0.45, -0.3), (-0.18, -0.55)]
    ),
    "hexagon": lambda rng: _unit_circle(6),
    "block": _fixed([(-0.65, -0.9), (0.65, -0.9), (0.9, -0.65), (0.9, 0.65), (0.65, 0.9), (-0.65, 0.9), (-0.9, 0.65), (-0.9, -0.65)]),
    "wavy_blob": _wavy_blob,
    "cell": _fixed([(-0.32, -1.0), (0.32, -1.0), (0.32, 1.0), (-0.32, 1.0)]),
    "shirt": _fixed(
        [(-0.3, -1.0), (0.3, -1.0), (1.0, -0.6), (0.8, -0.2), (0.45, -0.4), (0.45, 1.0), (-0.45, 1.0), (-0.45, -0.4), (-0.8, -0.2), (-1.0, -0.6)]
    ),
}


# Textures: brightness factor from local unit coordinates (u across, v along the object).
def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]] = {
    "speckle": lambda u, v, rng: 0.55 + 0.45 * (rng.random(u.shape) > 0.5),
    "ruled": lambda u, v, rng: 1.0 - 0.45 * (_frac(v * 5) < 0.18),
    "checker": lambda u, v, rng: 0.7 + 0.3 * ((np.floor(u * 4) + np.floor(v * 4)) % 2),
    "rings": lambda u, v, rng: 0.75 + 0.25 * np.sin(np.hypot(u, v) * 14),
    "diagonal": lambda u, v, rng: 0.7 + 0.3 * (_frac((u + v) * 3) < 0.5),
    "dots": lambda u, v, rng: 1.0 - 0.5 * (np.hypot(_frac(u * 2) - 0.5, _frac(v * 2) - 0.5) < 0.26),
    "smooth": lambda u, v, rng: 0.93 + 0.07 * rng.random(u.shape),
    "waves": lambda u, v, rng: 0.75 + 0.25 * np.sin(v * 10 + 2 * np.sin(u * 6)),
    "band": lambda u, v, rng: np.ones(u.shape),  # colour comes from the two-tone rule below
    "plaid": lambda u, v, rng: 1.0 - 0.3 * (_frac(u * 4) < 0.2) - 0.3 * (_frac(v * 4) < 0.2),
}


@dataclass(frozen=True)
class ClassLook:
    shape: str
    texture: str
    colour: tuple[int, int, int]
    radius: tuple[float, float]  # as a share of the image size
    weight: float  # relative frequency of the class among random objects


# Index = class id - 1 = COCO category id - 1, in DEFAULT_TAXONOMY order.
LOOKS: tuple[ClassLook, ...] = (
    ClassLook("jagged_blob", "speckle", (120, 95, 55), (0.09, 0.2), 1.4),  # General trash
    ClassLook("sheet", "ruled", (236, 230, 212), (0.12, 0.26), 1.2),  # Paper
    ClassLook("carton", "checker", (205, 165, 110), (0.1, 0.2), 0.9),  # Paper pack
    ClassLook("disc", "rings", (165, 172, 185), (0.07, 0.15), 0.9),  # Metal
    ClassLook("bottle", "diagonal", (50, 150, 75), (0.1, 0.2), 0.8),  # Glass
    ClassLook("hexagon", "dots", (40, 90, 215), (0.08, 0.18), 1.2),  # Plastic
    ClassLook("block", "smooth", (250, 250, 250), (0.08, 0.18), 0.8),  # Styrofoam
    ClassLook("wavy_blob", "waves", (225, 80, 175), (0.14, 0.28), 1.2),  # Plastic bag
    ClassLook("cell", "band", (28, 28, 30), (0.05, 0.08), 0.15),  # Battery
    ClassLook("shirt", "plaid", (200, 30, 40), (0.16, 0.3), 0.2),  # Clothing
)
BATTERY_CAP = (245, 140, 20)
CROWD_CATEGORIES = (1, 8)  # General trash, Plastic bag: amorphous piles, as crowd regions
SMALL_PROBABILITY = 0.25  # chance an object is drawn at small scale
SMALL_RADIUS = (0.04, 0.07)


def split_sizes(images: int) -> dict[str, int]:
    val = max(1, round(images * SPLIT_FRACTIONS["val"]))
    test = max(1, round(images * SPLIT_FRACTIONS["test"]))
    return {"train": images - val - test, "val": val, "test": test}


def generate_sample_dataset(
    out_dir: str | Path,
    images: int = 60,
    size: int = 256,
    seed: int = 0,
    *,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the synthetic dataset; returns the annotation file of each split."""
    if not 3 <= images <= MAX_IMAGES:
        raise DataError(f"--images {images}: expected at least 3 (one per split) and at most {MAX_IMAGES} images")
    if not 32 <= size <= MAX_SIZE:
        raise DataError(f"--size {size}: expected at least 32 and at most {MAX_SIZE} pixels")
    if images * size * size > MAX_TOTAL_PIXELS:
        raise DataError(
            f"--images {images} at --size {size} is {images * size * size:.3g} pixels, over the {MAX_TOTAL_PIXELS:.0e} "
            "a sample dataset may hold (it would fill the disk): fewer or smaller images"
        )
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(
            f"{out_dir} is not empty; choose an empty or new folder, or pass --overwrite to replace the sample files in it"
        )
    categories = [{"id": k, "name": DEFAULT_TAXONOMY[k], "supercategory": "trash"} for k in range(1, len(DEFAULT_TAXONOMY))]
    sizes = split_sizes(images)
    progress = Progress(images, "sample-data", unit="img", logger=log)
    paths = {}
    image_id = 0
    annotation_id = 0
    for split in SPLITS:
        image_records, annotation_records = [], []
        for index in range(sizes[split]):
            # One generator per image: any image can be reproduced on its own.
            rng = np.random.default_rng([seed, image_id])
            file_name = f"{split}/{index:06d}.jpg"  # relative to OUT, like the reference data's batch folders
            picture, objects = _draw_image(rng, size, _object_classes(rng, index))
            target = out_dir / file_name
            target.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            Image.fromarray(picture).save(buffer, format="JPEG", quality=JPEG_QUALITY)
            target.write_bytes(buffer.getvalue())
            image_records.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
            for obj in objects:
                annotation_records.append({"id": annotation_id, "image_id": image_id, **obj})
                annotation_id += 1
            image_id += 1
            progress.update(1)
        data = {
            "info": {"description": f"trashseg synthetic sample ({split})", "seed": seed, "version": "1"},
            "licenses": [],
            "images": image_records,
            "categories": categories,
            "annotations": annotation_records if split != "test" else [],
        }
        paths[split] = out_dir / f"{split}.json"
        write_text(paths[split], json.dumps(data, separators=(",", ":")) + "\n")
    return paths


def _object_classes(rng: np.random.Generator, index: int) -> list[int]:
    """Class ids for one image: the first images of every split cycle through all classes
    (so each split holds every class), the rest are drawn by class weight."""
    n_classes = len(LOOKS)
    forced = [(2 * index) % n_classes + 1, (2 * index + 1) % n_classes + 1] if 2 * index < n_classes else []
    weights = np.array([look.weight for look in LOOKS])
    extra = rng.choice(n_classes, size=int(rng.integers(2, 6)) - len(forced) // 2, p=weights / weights.sum()) + 1
    return forced + [int(c) for c in extra]


def _draw_image(rng: np.random.Generator, size: int, classes: list[int]) -> tuple[np.ndarray, list[dict]]:
    from pycocotools import mask as mask_utils

    base = (rng.uniform(95, 135) + rng.uniform(-8, 8, 3)).astype(np.float32)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    gradient = np.float32(rng.uniform(-10, 10)) * ramp[:, None] + np.float32(rng.uniform(-10, 10)) * ramp[None, :]
    # float32 noise: the background is most of the generation time at 512 px.
    picture = rng.standard_normal((size, size, 3), dtype=np.float32)
    picture *= 5
    picture += gradient[:, :, None]
    picture += base

    objects = []
    for category in classes:
        look = LOOKS[category - 1]
        for _attempt in range(10):
            obj = _place_object(rng, size, look, objects)
            rle = mask_utils.frPyObjects([obj["polygon"]], size, size)[0]
            area = int(mask_utils.area(rle))
            if area >= MIN_OBJECT_AREA_SHARE * size * size:
                objects.append({**obj, "category_id": category, "rle": rle, "area": area})
                break
    # Largest first: small objects end up on top, as in masks painted by descending area.
    objects.sort(key=lambda o: -o["area"])
    annotations = []
    for obj in objects:
        _paint(picture, obj, rng)
        x, y, w, h = (round(float(v), 2) for v in mask_utils.toBbox(obj["rle"]))
        crowd = obj["category_id"] in CROWD_CATEGORIES and rng.random() < CROWD_PROBABILITY
        segmentation = (
            {"size": [size, size], "counts": obj["rle"]["counts"].decode("ascii")} if crowd else [obj["polygon"]]
        )
        annotations.append(
            {
                "category_id": obj["category_id"],
                "segmentation": segmentation,
                "area": float(obj["area"]),
                "bbox": [x, y, w, h],
                "iscrowd": int(crowd),
            }
        )
    return np.clip(picture, 0, 255).astype(np.uint8), annotations


def _place_object(rng: np.random.Generator, size: int, look: ClassLook, placed: list[dict]) -> dict:
    small = look.radius[1] <= SMALL_RADIUS[1] or rng.random() < SMALL_PROBABILITY
    radius = rng.uniform(*(SMALL_RADIUS if small else look.radius)) * size
    if placed and rng.random() < 0.35:  # next to or on top of an earlier object: overlaps
        anchor = placed[int(rng.integers(len(placed)))]
        centre = np.asarray(anchor["centre"]) + rng.uniform(-0.6, 0.6, 2) * anchor["radius"]
    else:
        centre = rng.uniform(0.12, 0.88, 2) * size
    angle = rng.uniform(0, 2 * np.pi)
    unit = SHAPES[look.shape](rng)
    cos, sin = math.cos(angle), math.sin(angle)
    xs = centre[0] + radius * (unit[:, 0] * cos - unit[:, 1] * sin)
    ys = centre[1] + radius * (unit[:, 0] * sin + unit[:, 1] * cos)
    points = np.clip(np.stack([xs, ys], axis=1), 0, size).round(1)
    return {
        "polygon": [float(v) for v in points.ravel()],
        "centre": (float(centre[0]), float(centre[1])),
        "radius": float(radius),
        "angle": float(angle),
        "colour": np.clip(np.asarray(look.colour, dtype=float) + rng.uniform(-14, 14, 3), 0, 255),
    }


def _paint(picture: np.ndarray, obj: dict, rng: np.random.Generator) -> None:
    from pycocotools import mask as mask_utils

    x, y, w, h = (int(v) for v in mask_utils.toBbox(obj["rle"]))
    size = picture.shape[0]
    rows, cols = slice(y, min(y + h + 1, size)), slice(x, min(x + w + 1, size))
    inside = decode_rle(obj["rle"])[rows, cols]
    ys, xs = np.mgrid[rows, cols]
    dx, dy = xs[inside] + 0.5 - obj["centre"][0], ys[inside] + 0.5 - obj["centre"][1]
    cos, sin = math.cos(obj["angle"]), math.sin(obj["angle"])
    u = (dx * cos + dy * sin) / obj["radius"]
    v = (-dx * sin + dy * cos) / obj["radius"]
    look = LOOKS[obj["category_id"] - 1]
    factor = TEXTURES[look.texture](u, v, rng)
    colour = np.broadcast_to(obj["colour"], (u.size, 3)).copy()
    if look.texture == "band":  # Battery: dark body with a bright cap at one end
        colour[v < -0.55] = BATTERY_CAP
    region = picture[rows, cols]
    region[inside] = colour * factor[:, None] + 4 * rng.standard_normal((u.size, 3), dtype=np.float32)
