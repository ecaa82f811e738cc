"""`trashseg` data subcommands: sample-data, validate-data, masks, split, stats, prepare."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands (each sets `func` to a function taking the parsed args)."""
    from trashseg.cli import int_in
    from trashseg.data.sample import MAX_IMAGES, MAX_SIZE, MAX_TOTAL_PIXELS

    sample = subparsers.add_parser(
        "sample-data",
        help="write a deterministic synthetic COCO trash dataset",
        description="Write OUT/{train,val,test}.json and JPEGs under OUT/<split>/ "
        "(70/15/15 split; test has no annotations). Same arguments give byte-identical files.",
    )
    sample.add_argument("out", type=Path, metavar="OUT", help="output folder (new or empty)")
    sample.add_argument("--images", type=int_in(3, MAX_IMAGES), default=60,
                        help=f"number of images over all splits, 3 to {MAX_IMAGES}; images x size^2 at most "
                        f"{MAX_TOTAL_PIXELS:.0e} pixels (default: %(default)s)")
    sample.add_argument("--size", type=int_in(32, MAX_SIZE), default=256,
                        help=f"image width and height in pixels, 32 to {MAX_SIZE} (default: %(default)s)")
    sample.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0, help="random seed (default: %(default)s)")
    sample.add_argument("--overwrite", action="store_true", help="allow a non-empty OUT (replaces the sample files)")
    sample.set_defaults(func=sample_data)

    validate = subparsers.add_parser(
        "validate-data",
        help="check a COCO annotation file and list every problem",
        description="Print the problems found, counted per reason with the first examples "
        "(--report FILE lists every record with its reason). Exit status 2 when the file is "
        "unusable (fatal problems, or no image left after skipping); 0 when it is usable.",
    )
    validate.add_argument("annotations", type=Path, metavar="ANNOTATIONS", help="COCO .json file")
    _image_root_option(validate)
    validate.add_argument("--report", type=Path, help="also write the full report as JSON to this path")
    validate.add_argument(
        "--unlabelled", action="store_true", help="the file is an unlabelled test set (no 'annotations' key needed)"
    )
    validate.set_defaults(func=validate_data)

    masks = subparsers.add_parser(
        "masks",
        help="write semantic class-id masks (PNG) from COCO instances",
        description="Paint each image's annotations in descending area order (small objects on "
        "top) into OUT/masks/<file_name>.png; also writes OUT/classes.json and OUT/report.json.",
    )
    masks.add_argument("annotations", type=Path, metavar="ANNOTATIONS", help="COCO .json file")
    masks.add_argument("out", type=Path, metavar="OUT", help="output folder")
    _image_root_option(masks)
    masks.set_defaults(func=write_masks_command)
    _register_preparation(subparsers)


def _register_preparation(subparsers: argparse._SubParsersAction) -> None:
    """The subcommands that split a COCO file, count its statistics, or prepare a dataset."""
    from trashseg.cli import int_in

    split = subparsers.add_parser(
        "split",
        help="stratified train/val split or group k-fold of a COCO file",
        description="Images are stratified on the set of classes they contain. With --folds K: "
        "OUT/fold_<k>/{train,val}.json and OUT/folds.json. Without it: OUT/train.json and "
        "OUT/val.json from --val-fraction. file_names are kept, so pass --image-root (the "
        "source file's folder) when using the written files.",
    )
    split.add_argument("annotations", type=Path, metavar="ANNOTATIONS", help="COCO .json file")
    split.add_argument("out", type=Path, metavar="OUT", help="output folder")
    split.add_argument("--folds", type=int_in(2, 100), help="number of folds for k-fold, 2 to 100")
    split.add_argument("--val-fraction", type=float, default=0.2, help="share of images for val, without --folds (default: %(default)s)")
    split.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0, help="random seed (default: %(default)s)")
    _image_root_option(split)
    split.set_defaults(func=split_command)

    stats = subparsers.add_parser(
        "stats",
        help="dataset statistics as JSON and PNG plots",
        description="Pixel share and instance count per class, objects per image, annotation "
        "area as a share of the image, mean colour per class -> OUT/stats.json and OUT/*.png.",
    )
    stats.add_argument("annotations", type=Path, metavar="ANNOTATIONS", help="COCO .json file")
    stats.add_argument("out", type=Path, metavar="OUT", help="output folder")
    _image_root_option(stats)
    stats.set_defaults(func=stats_command)

    prepare = subparsers.add_parser(
        "prepare",
        help="validate a COCO source folder and write the prepared dataset layout",
        description="SOURCE holds train.json and optionally val.json and test.json. Writes "
        "classes.json, splits/, images/, masks/, report.json, report.md, stats/ and "
        "dataset.json (content hash) to OUT. Without val.json, train is split by --val-fraction.",
    )
    prepare.add_argument("source", type=Path, metavar="SOURCE", help="folder with the annotation files")
    prepare.add_argument("out", type=Path, metavar="OUT", help="output folder (new or empty)")
    prepare.add_argument(
        "--val-fraction",
        type=float,
        help="val share, between 0 and 1, split off train.json; only for a SOURCE without val.json (default: 0.2)",
    )
    prepare.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0, help="seed of the train/val split (default: %(default)s)")
    prepare.add_argument("--image-root", type=Path, help="folder the file_names are relative to (default: SOURCE)")
    prepare.set_defaults(func=prepare_command)


def _image_root_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image-root",
        type=Path,
        help="folder the images' file_names are relative to (default: the annotation file's folder)",
    )


def _load_usable(annotations: Path, image_root: Path | None, *, report_path: Path | None, unlabelled: bool = False):
    """Load and validate; print the summary; raise `DataError` when no image is left.

    The terminal gets counts per reason and a few examples (a dataset without its images
    would otherwise print one line per image and per annotation); `report_path` is where
    the full list is written."""
    from trashseg.data.coco import load_coco
    from trashseg.errors import DataError

    dataset = load_coco(annotations, image_root, unlabelled=unlabelled)  # fatal problems -> exit 2
    report = dataset.report
    reason = report.nothing_usable()
    if report_path is not None:
        report.save(report_path)
    print(report.terminal_summary(full_report=report_path))
    if not dataset.class_table.is_identity:
        print("class ids (0 is Background):\n  " + "\n  ".join(dataset.class_table.mapping_lines()))
    if reason:
        raise DataError(f"{annotations}: nothing usable remains: {reason}")
    return dataset


def sample_data(args: argparse.Namespace) -> int:
    from trashseg.data.sample import generate_sample_dataset

    paths = generate_sample_dataset(args.out, images=args.images, size=args.size, seed=args.seed, overwrite=args.overwrite)
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def validate_data(args: argparse.Namespace) -> int:
    _load_usable(args.annotations, args.image_root, report_path=args.report, unlabelled=args.unlabelled)
    return 0


def write_masks_command(args: argparse.Namespace) -> int:
    from trashseg.data.layout import PreparedDataset
    from trashseg.data.masks import write_masks

    out = PreparedDataset(args.out)
    out.root.mkdir(parents=True, exist_ok=True)
    dataset = _load_usable(args.annotations, args.image_root, report_path=out.report_file)
    count = write_masks(dataset, out)
    dataset.class_table.save(out.classes_file)
    print(f"wrote {count} masks under {out.root / 'masks'}")
    return 0


def split_command(args: argparse.Namespace) -> int:
    from trashseg.data.splits import kfold_splits, train_val_split, write_kfold, write_split

    Path(args.out).mkdir(parents=True, exist_ok=True)
    dataset = _load_usable(args.annotations, args.image_root, report_path=Path(args.out) / "report.json")
    if args.folds is not None:
        splits = kfold_splits(dataset, args.folds, args.seed)
        write_kfold(dataset, splits, args.out)
        for k, split in enumerate(splits):
            print(f"fold {k}: train {len(split.train)} images, val {len(split.val)} images")
    else:
        split = train_val_split(dataset, args.val_fraction, args.seed)
        write_split(dataset, split, args.out)
        print(f"train {len(split.train)} images, val {len(split.val)} images")
    return 0


def stats_command(args: argparse.Namespace) -> int:
    from trashseg.data.stats import dataset_stats, write_stats

    Path(args.out).mkdir(parents=True, exist_ok=True)
    dataset = _load_usable(args.annotations, args.image_root, report_path=Path(args.out) / "report.json")
    written = write_stats(dataset_stats(dataset), args.out)
    print(f"wrote {', '.join(p.name for p in written)} to {args.out}")
    return 0


def prepare_command(args: argparse.Namespace) -> int:
    from trashseg.data.classes import ClassTable
    from trashseg.data.prepare import check_val_fraction, prepare_dataset
    from trashseg.errors import UserError

    check_val_fraction(args.val_fraction)
    if args.val_fraction is not None and (args.source / "val.json").is_file():
        raise UserError(
            f"--val-fraction {args.val_fraction} does not apply: {args.source} has its own val.json, which is "
            "used as the val split; drop the option, or remove val.json to split val off train.json"
        )
    result = prepare_dataset(
        args.source, args.out, val_fraction=args.val_fraction, seed=args.seed, image_root=args.image_root
    )
    print(
        f"prepared {result.root}: images {result.images}, skipped {result.skipped} "
        f"(every record with its reason: {result.root / 'report.json'}), hash {result.dataset_version}"
    )
    classes = ClassTable.load(result.root / "classes.json")
    if not classes.is_identity:
        print("class ids (0 is Background):\n  " + "\n  ".join(classes.mapping_lines()))
    return 0
