"""The viewer's logic, free of Streamlit so that it is unit-testable and reusable.

Images and masks are decoded lazily (one file when it is shown); everything that scans
a split (per-image scores, finders) takes the file names to scan, so pages can page.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trashseg.data.layout import PreparedDataset
from trashseg.errors import DataError
from trashseg.metrics import IGNORE_INDEX, ConfusionMatrix
from trashseg.predictions import PredictionSet
from trashseg.submission import SUBMISSION_SIZE, VALUES_PER_ROW

THUMBNAIL_SIZE = 192


# ----------------------------------------------------------------- listing and search


@dataclass(frozen=True)
class ImageEntry:
    file_name: str
    split: str
    width: int
    height: int
    classes: frozenset[int]  # class ids of its annotations
    objects: int
    smallest_area: float | None  # pixels of its smallest annotation


def list_images(dataset: PreparedDataset, split: str) -> list[ImageEntry]:
    """The split's images with what search needs, read from its annotation file only."""
    path = dataset.split_file(split)
    if not path.is_file():
        raise DataError(f"split {split!r} not found in {dataset.root}; available: {', '.join(dataset.splits())}")
    coco = json.loads(path.read_text())
    to_class = dataset.classes().category_to_class
    per_image: dict[int, list[dict]] = {}
    for annotation in coco.get("annotations", []):
        per_image.setdefault(annotation["image_id"], []).append(annotation)
    entries = []
    for image in coco.get("images", []):
        annotations = per_image.get(image["id"], [])
        areas = [float(a.get("area", 0.0)) for a in annotations]
        entries.append(
            ImageEntry(
                image["file_name"], split, int(image["width"]), int(image["height"]),
                frozenset(to_class[a["category_id"]] for a in annotations if a["category_id"] in to_class),
                len(annotations), min(areas) if areas else None,
            )
        )
    return entries


def search_images(
    entries: Iterable[ImageEntry],
    *,
    name: str = "",
    classes: Sequence[int] = (),
    min_objects: int = 0,
    max_objects: int | None = None,
    smaller_than: float | None = None,
) -> list[ImageEntry]:
    """Entries whose file name contains `name`, that hold all `classes`, whose object count
    lies in [min_objects, max_objects], and (with `smaller_than`) that have an object under
    that many pixels."""
    needle = name.strip().lower()
    wanted = set(classes)
    return [
        e for e in entries
        if needle in e.file_name.lower()
        and wanted <= e.classes
        and e.objects >= min_objects
        and (max_objects is None or e.objects <= max_objects)
        and (smaller_than is None or (e.smallest_area is not None and e.smallest_area < smaller_than))
    ]


def page_of(items: Sequence, page: int, per_page: int) -> list:
    """Items of 0-based `page`; the page is clamped to the last one."""
    if per_page < 1:
        raise DataError(f"per_page={per_page}: expected >= 1")
    pages = max(1, -(-len(items) // per_page))
    page = min(max(page, 0), pages - 1)
    return list(items[page * per_page : (page + 1) * per_page])


def page_count(total: int, per_page: int) -> int:
    return max(1, -(-total // per_page))


# ----------------------------------------------------------------- images and overlays


def read_rgb(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def read_labels(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def thumbnail(picture: np.ndarray, size: int = THUMBNAIL_SIZE, quality: int = 85) -> bytes:
    """A JPEG of `picture` whose longer side is at most `size` (grids show these, not the originals)."""
    image = Image.fromarray(picture)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def colourise(mask: np.ndarray, palette: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
    """(H, W, 3) colours of a class-id map; ignore (255) and unselected classes black."""
    keep = mask < len(palette)
    if classes is not None:
        keep &= np.isin(mask, np.asarray(list(classes), dtype=mask.dtype))
    colours = np.zeros((*mask.shape, 3), dtype=np.uint8)
    colours[keep] = palette[mask[keep]]
    return colours


def overlay(
    image: np.ndarray, mask: np.ndarray, palette: np.ndarray, *, alpha: float = 0.55,
    classes: Sequence[int] | None = None, highlight: np.ndarray | None = None,
) -> np.ndarray:
    """The image with the mask's class colours blended in where a selected class is
    (default: every class but Background, which would only darken the picture).

    `highlight` (bool H, W) outlines pixels in white, e.g. the ones a confusion cell counts."""
    if mask.shape != image.shape[:2]:
        mask = resize_nearest_to(mask, image.shape[:2])
    if classes is None:
        classes = range(1, len(palette))
    shown = mask < len(palette)
    if classes is not None:
        shown &= np.isin(mask, np.asarray(list(classes), dtype=mask.dtype))
    out = image.astype(np.float32)
    colours = colourise(mask, palette, classes).astype(np.float32)
    out[shown] = out[shown] * (1 - alpha) + colours[shown] * alpha
    if highlight is not None:
        if highlight.shape != image.shape[:2]:
            highlight = resize_nearest_to(highlight.astype(np.uint8), image.shape[:2]).astype(bool)
        out[highlight & ~_eroded(highlight)] = 255
    return out.astype(np.uint8)


def _eroded(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def resize_nearest_to(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = (np.arange(shape[0]) * mask.shape[0]) // shape[0]
    cols = (np.arange(shape[1]) * mask.shape[1]) // shape[1]
    return mask[rows[:, None], cols[None, :]]


def draw_outlines(image: np.ndarray, annotations: Sequence[Mapping], palette: np.ndarray,
                  category_to_class: Mapping[int, int], classes: Sequence[int] | None = None) -> np.ndarray:
    """Per-instance COCO outlines (each annotation's own boundary, so overlapping objects stay apart)."""
    from trashseg.data.coco import decode_rle, segmentation_rle

    out = image.copy()
    height, width = image.shape[:2]
    for annotation in annotations:
        cls = category_to_class.get(annotation["category_id"])
        if cls is None or (classes is not None and cls not in classes):
            continue
        region = decode_rle(segmentation_rle(annotation["segmentation"], height, width)).astype(bool)
        edge = region & ~_eroded(_eroded(region))  # 2 px: still visible in a thumbnail
        out[edge] = palette[cls]
    return out


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------- predictions


@dataclass(frozen=True)
class Source:
    """One column of the Predictions page: a model or an ensemble stage on one split."""

    name: str
    folder: PredictionSet

    def has(self, file_name: str) -> bool:
        return self.folder.mask_path(file_name).is_file()


def model_sources(prediction_dirs: Sequence[str | Path], file_names: Sequence[str]) -> list[Source]:
    """The prediction folders that cover `file_names` (one split), named by architecture."""
    wanted = set(file_names)
    sources, seen = [], {}
    for directory in prediction_dirs:
        folder = PredictionSet.open(directory)
        if not wanted & set(folder.file_names):
            continue
        base = str(folder.source.get("architecture") or Path(directory).name)
        seen[base] = seen.get(base, 0) + 1
        sources.append(Source(base if seen[base] == 1 else f"{base} #{seen[base]}", folder))
    return sources


def stage_sources(ensemble_dir: str | Path | None, split: str) -> list[Source]:
    """The ensemble output's stages on `split` (soft vote, hard vote, CRF, consensus, gating)."""
    from trashseg.ensemble.config import ENSEMBLE_STAGES

    if not ensemble_dir:
        return []
    stages = Path(ensemble_dir) / "stages"
    return [
        Source(stage, PredictionSet.open(stages / stage / split))
        for stage in ENSEMBLE_STAGES
        if (stages / stage / split / "predictions.json").is_file()
    ]


def disagreement(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Per pixel, the share of masks that differ from the pixel's majority label (0 = all agree)."""
    if not masks:
        raise DataError("disagreement needs at least one mask")
    stack = np.stack([np.asarray(m, dtype=np.int64) for m in masks])
    counts = np.zeros((int(stack.max()) + 1, *stack.shape[1:]), dtype=np.int32)
    for mask in stack:
        _count_into(counts, mask)
    return 1.0 - counts.max(axis=0) / len(masks)


def _count_into(counts: np.ndarray, mask: np.ndarray) -> None:
    flat = counts.reshape(counts.shape[0], -1)
    flat[mask.reshape(-1), np.arange(mask.size)] += 1


def image_miou(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """mIoU of one image (the split metric's formula on its pixels only)."""
    matrix = ConfusionMatrix(num_classes)
    matrix.update(_match(prediction, truth), truth)
    return matrix.compute().miou


def _match(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return prediction if prediction.shape == truth.shape else resize_nearest_to(prediction, truth.shape)


def rank_images(
    file_names: Sequence[str],
    sources: Sequence[Source],
    truth_of: Callable[[str], np.ndarray],
    num_classes: int,
    *,
    by: str = "worst_iou",
    source: str | None = None,
) -> list[tuple[str, float]]:
    """(file_name, score) sorted worst first: `worst_iou` = lowest mIoU of `source` (default
    the first), `disagreement` = highest mean disagreement between all sources."""
    if not sources:
        raise DataError("no prediction folders cover this split; pass --predictions or --ensemble")
    if by == "worst_iou":
        chosen = next((s for s in sources if s.name == source), sources[0])
        scored = [(n, image_miou(chosen.folder.mask(n), truth_of(n), num_classes)) for n in file_names if chosen.has(n)]
        return sorted(scored, key=lambda item: (np.nan_to_num(item[1], nan=2.0), item[0]))
    if by == "disagreement":
        scored = []
        for n in file_names:
            masks = [s.folder.mask(n) for s in sources if s.has(n)]
            if masks:
                scored.append((n, float(disagreement(masks).mean())))
        return sorted(scored, key=lambda item: (-item[1], item[0]))
    raise DataError(f"rank by {by!r}: expected 'worst_iou' or 'disagreement'")


def restored_pixels(crf_mask: np.ndarray, consensus_mask: np.ndarray) -> np.ndarray:
    """Pixels the consensus overwrite changed after CRF (bool H, W)."""
    return np.asarray(crf_mask) != np.asarray(consensus_mask)


# ----------------------------------------------------------------- confusions and labels


def split_confusion(source: Source, file_names: Sequence[str], truth_of: Callable[[str], np.ndarray],
                    class_names: Sequence[str]) -> np.ndarray:
    """The split's confusion matrix (trashseg.metrics, as `evaluate` computes it)."""
    matrix = ConfusionMatrix(len(class_names), class_names)
    for name in file_names:
        if source.has(name):
            truth = truth_of(name)
            matrix.update(_match(source.folder.mask(name), truth), truth)
    return matrix.matrix


def confusion_cell(source: Source, file_names: Sequence[str], truth_of: Callable[[str], np.ndarray],
                   true_class: int, predicted_class: int) -> list[tuple[str, int]]:
    """(file_name, pixels) of images with pixels of `true_class` predicted as `predicted_class`, most first."""
    hits = []
    for name in file_names:
        if source.has(name):
            count = int(cell_pixels(source.folder.mask(name), truth_of(name), true_class, predicted_class).sum())
            if count:
                hits.append((name, count))
    return sorted(hits, key=lambda item: (-item[1], item[0]))


def cell_pixels(prediction: np.ndarray, truth: np.ndarray, true_class: int, predicted_class: int) -> np.ndarray:
    return (truth == true_class) & (_match(prediction, truth) == predicted_class)


@dataclass(frozen=True)
class Suspect:
    file_name: str
    pixels: int  # pixels where every model agrees, confidently, against the label
    share: float  # of the image's labelled pixels
    label: int  # the most common label among them
    predicted: int  # what the models agree on there


def likely_mislabeled(
    sources: Sequence[Source],
    file_names: Sequence[str],
    truth_of: Callable[[str], np.ndarray],
    *,
    confidence: float = 0.9,
    min_share: float = 0.02,
) -> list[Suspect]:
    """Images where all models agree, each with probability >= `confidence`, on a class other
    than the label over at least `min_share` of the labelled pixels; most suspicious first."""
    if len(sources) < 1:
        raise DataError("the likely-mislabeled finder needs at least one model's prediction folder")
    suspects = []
    for name in file_names:
        if not all(s.has(name) for s in sources):
            continue
        truth = truth_of(name)
        agreed, confident = None, None
        for source in sources:
            probs = source.folder.probs(name)
            if probs.shape[1:] != truth.shape:
                probs = np.stack([resize_nearest_to(p, truth.shape) for p in probs])
            label = probs.argmax(axis=0)
            sure = probs.max(axis=0) >= confidence
            agreed = label if agreed is None else np.where(agreed == label, agreed, -1)
            confident = sure if confident is None else confident & sure
        labelled = truth != IGNORE_INDEX
        wrong = labelled & confident & (agreed >= 0) & (agreed != truth)
        count = int(wrong.sum())
        share = count / max(int(labelled.sum()), 1)
        if count and share >= min_share:
            pairs = truth[wrong].astype(np.int64) * 256 + agreed[wrong]
            top = int(np.bincount(pairs).argmax())
            suspects.append(Suspect(name, count, share, top // 256, top % 256))
    return sorted(suspects, key=lambda s: (-s.share, s.file_name))


# ----------------------------------------------------------------- submissions


def submission_index(path: str | Path) -> list[tuple[str, int]]:
    """(image_id, byte offset of its row) for every row, without parsing the 65,536 values."""
    rows = []
    with Path(path).open("rb") as handle:
        header = handle.readline()
        if not header.startswith(b"image_id,"):
            raise DataError(f"{path}: header {header[:40]!r} is not 'image_id,PredictionString'")
        offset = handle.tell()
        for line in handle:
            image_id = line.split(b",", 1)[0].decode()
            if image_id.startswith('"'):  # quoted: parse it with the csv module
                import csv

                image_id = next(csv.reader([line.decode()]))[0]
            rows.append((image_id, offset))
            offset += len(line)
    return rows


def decode_submission_row(path: str | Path, offset: int) -> tuple[str, np.ndarray]:
    """One row at `offset` decoded into (image_id, (256, 256) uint8 class map)."""
    import csv

    with Path(path).open("rb") as handle:
        handle.seek(offset)
        line = handle.readline().decode()
    image_id, text = next(csv.reader([line]))
    values = np.array(text.split(), dtype=np.int64)
    if values.size != VALUES_PER_ROW:
        raise DataError(f"{path}: row {image_id!r} has {values.size} values, expected {VALUES_PER_ROW} (256x256)")
    if values.min() < 0 or values.max() > 254:
        raise DataError(f"{path}: row {image_id!r} holds class ids outside 0..254")
    return image_id, values.astype(np.uint8).reshape(SUBMISSION_SIZE, SUBMISSION_SIZE)


def submission_findings(path: str | Path, annotation_file: str | Path) -> list[str]:
    """The validator's problems with a submission (empty when it is valid)."""
    from trashseg.submission import SubmissionError, validate_submission

    try:
        validate_submission(path, annotation_file)
    except SubmissionError as error:
        lines = str(error).splitlines()
        return [line.strip() for line in lines[1:-1]] or [lines[0]]
    return []


def image_for_submission(image: np.ndarray) -> np.ndarray:
    """The test image at the submission's 256x256 (nearest neighbour, as the masks)."""
    return resize_nearest_to(image, (SUBMISSION_SIZE, SUBMISSION_SIZE))
