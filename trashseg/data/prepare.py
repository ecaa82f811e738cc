"""Turn a COCO source folder into a `PreparedDataset` (the pipeline's `prepare` step).

    SOURCE/train.json [SOURCE/val.json] [SOURCE/test.json]   + images at their file_name

Everything is validated before anything is written: fatal problems in any file raise one
`DataError` listing all of them. Recoverable problems skip the record, and every skipped
record is listed in ROOT/report.json and ROOT/report.md. Without a val.json, train is
split into train/val (stratified on class presence, seeded).

OUT is complete or marked unfinished, never silently half-written: `.unfinished` is
written first and removed after dataset.json, which is written last; a failure removes
everything this run wrote (OUT itself when it created it). A killed run leaves the
marker, every consumer refuses such a folder, and the next prepare into it clears it.

Memory stays near one parsed copy of the annotation files: splits, masks, statistics and
the content hash all work from the records already loaded, never re-reading a file.

ROOT/dataset.json holds the content hash of the source (annotation files and image
bytes), which the pipeline passes on as a parameter so KFP's cache never serves results
computed from other data.
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trashseg.data.coco import CocoDataset, load_coco, output_key, write_coco
from trashseg.data.jsonio import write_json
from trashseg.data.layout import PreparedDataset
from trashseg.data.masks import write_masks
from trashseg.data.splits import train_val_split
from trashseg.data.stats import compute_stats, write_stats
from trashseg.data.version import ANNOTATION_FILES, dataset_hash
from trashseg.errors import DataError
from trashseg.fileio import atomic_path, write_text
from trashseg.progress import Progress

log = logging.getLogger(__name__)

REPORT_MARKDOWN = "report.md"
MAX_MARKDOWN_SKIPPED = 50  # report.md lists this many skipped records; report.json has all
DEFAULT_VAL_FRACTION = 0.2
# What prepare writes into OUT (a rerun into an unfinished OUT removes exactly these).
_OUTPUT_NAMES = frozenset(
    {"classes.json", "splits", "images", "masks", "report.json", REPORT_MARKDOWN, "stats", "dataset.json", ".unfinished"}
)


@dataclass(frozen=True)
class PrepareResult:
    root: Path
    dataset_version: str  # the content hash (trashseg.data.version.dataset_hash)
    images: dict[str, int]  # split -> kept images
    annotations: dict[str, int]  # split -> kept annotations
    skipped: dict[str, int] = field(default_factory=dict)  # split -> skipped records
    class_names: tuple[str, ...] = ()
    val_from_train: bool = False
    notes: tuple[str, ...] = ()  # facts a reader must know (e.g. an option that did not apply)


def check_val_fraction(val_fraction: float | None) -> None:
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise DataError(
            f"val fraction {val_fraction} is out of range: expected a share strictly between 0 and 1 (e.g. 0.2)"
        )


def prepare_dataset(
    source: str | Path,
    out_dir: str | Path,
    *,
    val_fraction: float | None = None,
    seed: int = 0,
    image_root: str | Path | None = None,
) -> PrepareResult:
    """Validate SOURCE and write the prepared layout to OUT (new, empty, or left unfinished
    by an earlier prepare). `val_fraction` (default 0.2) splits val off train when SOURCE has
    no val.json; with a val.json it does not apply, and a given value is reported as unused."""
    source, out = Path(source), PreparedDataset(out_dir)
    check_val_fraction(val_fraction)
    _check_folders(source, out)
    datasets = _load_all(source, image_root)
    created = not out.root.exists()
    try:
        out.root.mkdir(parents=True, exist_ok=True)
        write_text(out.unfinished_file, "prepare is writing this folder; it is not a dataset until this file is gone\n")
        result = _write_dataset(source, out, datasets, val_fraction, seed, image_root)
        out.unfinished_file.unlink()
    except BaseException:
        _remove_outputs(out, created)
        raise
    log.info("prepared %s: %s images, hash %s", out.root, result.images, result.dataset_version[:12])
    return result


def _write_dataset(source: Path, out: PreparedDataset, datasets, val_fraction, seed, image_root) -> PrepareResult:
    val_from_train = "val" not in datasets
    notes = []
    if not val_from_train and val_fraction is not None:
        notes.append(f"val fraction {val_fraction} not used: the source has its own val.json")
        log.warning("%s has val.json: the val fraction %s does not apply and was ignored", source, val_fraction)
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    splits, origin = _split_sources(datasets, fraction, seed)
    class_table = datasets["train"].class_table
    _write_splits(out, class_table, splits, origin, datasets)
    report = {"classes": class_table.to_json(), "files": {name: ds.report.to_dict() for name, ds in datasets.items()}}
    write_json(out.report_file, report, indent=2)
    stats = _write_labelled_stats(out, splits, class_table)

    file_names = frozenset().union(*(ds.file_names for ds in datasets.values()))
    digest = dataset_hash(source, image_root, file_names=file_names)
    images = {name: len(data["images"]) for name, data in splits.items()}
    annotations = {name: len(data.get("annotations", [])) for name, data in splits.items()}
    result = PrepareResult(
        root=out.root,
        dataset_version=digest,
        images=images,
        annotations=annotations,
        skipped={name: len(ds.report.skipped) for name, ds in datasets.items()},
        class_names=class_table.names,
        val_from_train=val_from_train,
        notes=tuple(notes),
    )
    write_text(out.root / REPORT_MARKDOWN, markdown_report(result, datasets, stats))
    meta = {
        "hash": digest,
        "source": str(source),
        "splits": images,
        "annotations": annotations,
        "val_from_train": val_from_train,
        "val_fraction": fraction if val_from_train else None,
        "seed": seed,
    }
    write_json(out.dataset_file, meta, indent=2)  # last: its presence says the folder is complete
    return result


def _check_folders(source: Path, out: PreparedDataset) -> None:
    if not (source / "train.json").is_file():
        raise DataError(
            f"{source} has no train.json; a source folder holds train.json and optionally val.json and test.json"
        )
    if out.root.exists() and not out.root.is_dir():
        raise DataError(f"output folder {out.root} is a file; choose a new or empty folder")
    if not out.root.exists() or not any(out.root.iterdir()):
        return
    if not out.unfinished_file.exists():
        raise DataError(
            f"output folder {out.root} is not empty; choose a new or empty folder (this run wrote nothing)"
        )
    strangers = sorted(p.name for p in out.root.iterdir() if p.name not in _OUTPUT_NAMES)
    if strangers:
        raise DataError(
            f"output folder {out.root} holds an unfinished prepare and also {', '.join(strangers[:5])}, which "
            "prepare did not write; move those away or choose a new folder (this run wrote nothing)"
        )
    log.warning("%s holds the leftovers of an unfinished prepare; removing them", out.root)
    _remove_outputs(out, created=False)


def _remove_outputs(out: PreparedDataset, created: bool) -> None:
    """Remove what prepare wrote into OUT (OUT itself when this run created it); best effort,
    so the error that stopped the run is the one reported."""
    if created:
        shutil.rmtree(out.root, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        for path in out.root.iterdir():
            if path.name not in _OUTPUT_NAMES:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


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
        # From the records in memory: `origin` holds every annotation of these images.
        write_masks(origin[name], out, splits[name]["images"])


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
    seen: dict[str, tuple[str, str]] = {}  # output key -> (split, file_name)
    for name, ds in datasets.items():
        for image in ds.images:
            other, other_name = seen.setdefault(output_key(image["file_name"]), (name, image["file_name"]))
            if other != name:
                same = "" if other_name == image["file_name"] else f" (as {other_name!r}: the same file or mask)"
                problems.append(
                    f"image {image['file_name']!r} is in both {other}.json{same} and {name}.json; "
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
        with atomic_path(out.image_path(image["file_name"])) as partial:  # never a cut copy under the real name
            shutil.copyfile(dataset.image_path(image), partial)
        progress.update(1)


def markdown_report(result: PrepareResult, datasets: dict[str, CocoDataset], stats: dict[str, Any]) -> str:
    """A short summary for the KFP Markdown visualisation."""
    lines = [
        "# Dataset report",
        "",
        f"- content hash: `{result.dataset_version}`",
        f"- classes: {len(result.class_names)} ({', '.join(markdown_text(n) for n in result.class_names)})",
        "- val: " + ("split from train.json (stratified)" if result.val_from_train else "from val.json"),
        *(f"- note: {markdown_text(note)}" for note in result.notes),
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
        f"| {c['id']} | {_category_cell(category_of.get(c['id']))} | {markdown_text(c['name'])} | {c['instances']} | "
        f"{c['images']} | {100 * c['pixel_share']:.2f}% |"
        for c in stats["classes"]
    ]
    skipped = [(name, s) for name, ds in datasets.items() for s in ds.report.skipped]
    lines += ["", f"## Skipped records: {len(skipped)}", ""]
    if not skipped:
        lines.append("None: every record passed validation.")
    for name, record in skipped[:MAX_MARKDOWN_SKIPPED]:
        lines.append(f"- {name}.json {markdown_text(record.label)}: {markdown_text(record.reason)}")
    if len(skipped) > MAX_MARKDOWN_SKIPPED:
        lines.append(f"- ... and {len(skipped) - MAX_MARKDOWN_SKIPPED} more (all in report.json)")
    return "\n".join(lines) + "\n"


def _category_cell(category_id: int | None) -> str:
    return "-" if category_id is None else str(category_id)


# Characters that start Markdown syntax inside a line (emphasis, code, links, table cells).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def markdown_text(text: str) -> str:
    """`text` as literal Markdown on one line: HTML escaped, Markdown punctuation and table
    pipes backslash-escaped, line breaks as spaces (class names and file_names are data)."""
    one_line = " ".join(str(text).split())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(one_line, quote=False))
