"""Turn a COCO source folder into a `PreparedDataset` (the pipeline's `prepare` step).

    SOURCE/train.json [SOURCE/val.json] [SOURCE/test.json]   + images at their file_name

Everything is validated before anything is written: fatal problems in any file raise one
`DataError` listing all of them. Recoverable problems skip the record, and every skipped
record is listed in ROOT/report.json and ROOT/report.md. Without a val.json, train is
split into train/val (stratified on class presence, seeded).

ROOT/dataset.json holds the content hash of the source (annotation files and image
bytes), which the pipeline passes on as a parameter so KFP's cache never serves results
computed from other data.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trashseg.data.coco import CocoDataset, load_coco, write_coco
from trashseg.data.layout import PreparedDataset
from trashseg.data.masks import write_masks
from trashseg.data.splits import train_val_split
from trashseg.data.stats import compute_stats, write_stats
from trashseg.data.version import ANNOTATION_FILES, dataset_hash
from trashseg.errors import DataError
from trashseg.fileio import write_text
from trashseg.progress import Progress

log = logging.getLogger(__name__)

REPORT_MARKDOWN = "report.md"
MAX_MARKDOWN_SKIPPED = 50  # report.md lists this many skipped records; report.json has all


@dataclass(frozen=True)
class PrepareResult:
    root: Path
    dataset_version: str  # the content hash (trashseg.data.version.dataset_hash)
    images: dict[str, int]  # split -> kept images
    annotations: dict[str, int]  # split -> kept annotations
    skipped: dict[str, int] = field(default_factory=dict)  # split -> skipped records
    class_names: tuple[str, ...] = ()
    val_from_train: bool = False


def prepare_dataset(
    source: str | Path,
    out_dir: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    image_root: str | Path | None = None,
) -> PrepareResult:
    """Validate SOURCE and write the prepared layout to OUT (which must be empty or new)."""
    source, out = Path(source), PreparedDataset(out_dir)
    _check_folders(source, out)
    datasets = _load_all(source, image_root)
    splits, origin = _split_sources(datasets, val_fraction, seed)
    val_from_train = "val" not in datasets
    class_table = datasets["train"].class_table
    _write_splits(out, class_table, splits, origin, datasets)
    report = {"classes": class_table.to_json(), "files": {name: ds.report.to_dict() for name, ds in datasets.items()}}
    write_text(out.report_file, json.dumps(report, indent=2) + "\n")
    stats = _write_labelled_stats(out, splits, class_table)

    digest = dataset_hash(source, image_root)
    images = {name: len(data["images"]) for name, data in splits.items()}
    annotations = {name: len(data.get("annotations", [])) for name, data in splits.items()}
    meta = {
        "hash": digest,
        "source": str(source),
        "splits": images,
        "annotations": annotations,
        "val_from_train": val_from_train,
        "val_fraction": val_fraction if val_from_train else None,
        "seed": seed,
    }
    write_text(out.dataset_file, json.dumps(meta, indent=2) + "\n")
    result = PrepareResult(
        root=out.root,
        dataset_version=digest,
        images=images,
        annotations=annotations,
        skipped={name: len(ds.report.skipped) for name, ds in datasets.items()},
        class_names=class_table.names,
        val_from_train=val_from_train,
    )
    write_text(out.root / REPORT_MARKDOWN, markdown_report(result, datasets, stats))
    log.info("prepared %s: %s images, hash %s", out.root, images, digest[:12])
    return result


def _check_folders(source: Path, out: PreparedDataset) -> None:
    if not (source / "train.json").is_file():
        raise DataError(
            f"{source} has no train.json; a source folder holds train.json and optionally val.json and test.json"
        )
    if out.root.exists() and any(out.root.iterdir()):
        raise DataError(f"output folder {out.root} is not empty; choose a new or empty folder (nothing was written)")


def _split_sources(datasets: dict[str, CocoDataset], val_fraction: float, seed: int):
    """(split name -> COCO dict, split name -> the dataset its images come from); val is
    split off train when the source has no val.json."""
    train = datasets["train"]
    splits: dict[str, dict[str, Any]] = {}
    val_from_train = "val" not in datasets
    if val_from_train:
        split = train_val_split(train, val_fraction, seed)
        splits["train"], splits["val"] = train.subset(split.train), train.subset(split.val)
    else:
        splits["train"], splits["val"] = train.data, datasets["val"].data
    if "test" in datasets:
        splits["test"] = datasets["test"].data
    origin = {"train": train, "val": train if val_from_train else datasets["val"], "test": datasets.get("test")}
    return splits, origin


def _write_splits(out: PreparedDataset, class_table, splits, origin, datasets) -> None:
    """classes.json, each split's annotation file and images, and masks of the labelled splits."""
    out.root.mkdir(parents=True, exist_ok=True)
    class_table.save(out.classes_file)
    for name, data in splits.items():
        write_coco(data, out.split_file(name))
        _copy_images(origin[name], data["images"], out)
    # A test file with `annotations: []` is unlabelled (the competition's test set): no masks.
    test_labelled = "test" in datasets and datasets["test"].report.annotations_total > 0
    for name in ["train", "val"] + (["test"] if test_labelled else []):
        write_masks(load_coco(out.split_file(name), out.root / "images"), out)


def _write_labelled_stats(out: PreparedDataset, splits, class_table) -> dict[str, Any]:
    """Statistics of the labelled splits (train and val), written to OUT/stats."""
    labelled_images = [im for name in ("train", "val") for im in splits[name]["images"]]
    annotations_by_image: dict[int, list[dict]] = {}
    for name in ("train", "val"):
        for annotation in splits[name].get("annotations", []):
            annotations_by_image.setdefault(annotation["image_id"], []).append(annotation)
    stats = compute_stats(
        labelled_images,
        lambda image_id: annotations_by_image.get(image_id, []),
        class_table,
        lambda image: out.image_path(image["file_name"]),
    )
    stats["splits"] = ["train", "val"]
    write_stats(stats, out.stats_dir)
    return stats


def _load_all(source: Path, image_root: str | Path | None) -> dict[str, CocoDataset]:
    """Load every annotation file; collect the fatal problems of all files before raising."""
    datasets: dict[str, CocoDataset] = {}
    errors: list[str] = []
    for file in ANNOTATION_FILES:
        path = source / file
        if not path.is_file():
            continue
        try:
            datasets[path.stem] = load_coco(
                path, image_root if image_root is not None else source, unlabelled=path.stem == "test"
            )
        except DataError as error:
            errors.append(str(error))
    if not errors:
        errors += _cross_file_problems(datasets) + _unusable_problems(datasets)
    if errors:
        raise DataError("\n".join(errors) + "\nNothing was written.")
    return datasets


def _cross_file_problems(datasets: dict[str, CocoDataset]) -> list[str]:
    problems = []
    train_categories = _category_names(datasets["train"])
    for name, ds in datasets.items():
        categories = _category_names(ds)
        if name != "train" and categories and categories != train_categories:
            problems.append(
                f"{ds.path}: categories {categories} differ from train.json's {train_categories}; "
                "every split must use the same categories"
            )
    seen: dict[str, str] = {}
    for name, ds in datasets.items():
        for image in ds.images:
            other = seen.setdefault(image["file_name"], name)
            if other != name:
                problems.append(
                    f"image {image['file_name']!r} is in both {other}.json and {name}.json; "
                    "an image must belong to one split"
                )
    return problems


def _unusable_problems(datasets: dict[str, CocoDataset]) -> list[str]:
    """Splits that validation emptied: training on them would fail later, or learn nothing."""
    problems = []
    for name, ds in datasets.items():
        reason = ds.report.nothing_usable()
        if reason:
            problems.append(f"{ds.path}: nothing usable remains: {reason}")
        elif name == "train" and not ds.annotations:
            kept = "none of its annotations passed validation" if ds.report.annotations_total else "it has no annotations"
            problems.append(
                f"{ds.path}: {kept}; a training split needs labelled objects (every mask would be background)"
            )
    return problems


def _category_names(dataset: CocoDataset) -> dict[int, str]:
    return {c["id"]: c["name"] for c in dataset.categories}


def _copy_images(dataset: CocoDataset, images: list[dict], out: PreparedDataset) -> None:
    progress = Progress(len(images), "copy images", unit="img", logger=log)
    for image in images:
        target = out.image_path(image["file_name"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dataset.image_path(image), target)
        progress.update(1)


def markdown_report(result: PrepareResult, datasets: dict[str, CocoDataset], stats: dict[str, Any]) -> str:
    """A short summary for the KFP Markdown visualisation."""
    lines = [
        "# Dataset report",
        "",
        f"- content hash: `{result.dataset_version}`",
        f"- classes: {len(result.class_names)} ({', '.join(result.class_names)})",
        "- val: " + ("split from train.json (stratified)" if result.val_from_train else "from val.json"),
        "",
        "| split | images | annotations |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {n} | {result.annotations[name]} |" for name, n in result.images.items()]
    category_of = dict(enumerate(datasets["train"].class_table.category_ids))
    lines += [
        "",
        "## Classes (train + val)",
        "",
        "Class ids are contiguous after Background (0); the COCO category id each came from is listed.",
        "",
        "| id | COCO category id | class | instances | images | pixel share |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {c['id']} | {_category_cell(category_of.get(c['id']))} | {c['name']} | {c['instances']} | "
        f"{c['images']} | {100 * c['pixel_share']:.2f}% |"
        for c in stats["classes"]
    ]
    skipped = [(name, s) for name, ds in datasets.items() for s in ds.report.skipped]
    lines += ["", f"## Skipped records: {len(skipped)}", ""]
    if not skipped:
        lines.append("None: every record passed validation.")
    for name, record in skipped[:MAX_MARKDOWN_SKIPPED]:
        lines.append(f"- {name}.json {record.kind} {record.id}: {record.reason}")
    if len(skipped) > MAX_MARKDOWN_SKIPPED:
        lines.append(f"- ... and {len(skipped) - MAX_MARKDOWN_SKIPPED} more (all in report.json)")
    return "\n".join(lines) + "\n"


def _category_cell(category_id: int | None) -> str:
    return "-" if category_id is None else str(category_id)

