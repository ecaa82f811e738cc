"""`trashseg` recipe subcommands: ensemble, crf, pseudo-label, submission, validate-submission."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("trashseg")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands (each sets `func` to a function taking the parsed args)."""
    formatter = argparse.ArgumentDefaultsHelpFormatter

    ensemble = subparsers.add_parser(
        "ensemble",
        help="ensemble models' predictions, DenseCRF, consensus overwrite, gating, stage report",
        description="Score every model and stage (soft vote, hard vote, crf, consensus, gating) "
        "on the val split and write OUT/final/<split> from the best (or --set pinned_stage=...). "
        "Also OUT/stages/, OUT/report/ (JSON, Markdown, PNG, HTML) and OUT/gating.json. "
        "Give each model's val and test prediction folders in the same order.",
        formatter_class=formatter,
    )
    ensemble.add_argument("--val", nargs="+", type=Path, required=True, metavar="PRED", help="val prediction folders, one per model")
    ensemble.add_argument("--test", nargs="+", type=Path, required=True, metavar="PRED", help="test prediction folders, same model order")
    ensemble.add_argument("--data", type=Path, required=True, help="prepared dataset folder (images, val masks)")
    ensemble.add_argument("--out", type=Path, required=True, help="output folder")
    _config_options(ensemble, "EnsembleConfig, e.g. consensus_k=3 crf.iterations=5 weights=[2,1]")
    ensemble.set_defaults(func=ensemble_command)

    crf = subparsers.add_parser(
        "crf",
        help="DenseCRF on a prediction folder",
        description="Refine every image's probabilities with DenseCRF (Gaussian + bilateral "
        "terms) in parallel worker processes; writes a new prediction folder.",
        formatter_class=formatter,
    )
    crf.add_argument("predictions", type=Path, metavar="PRED", help="prediction folder")
    crf.add_argument("--data", type=Path, required=True, help="prepared dataset folder holding the images")
    crf.add_argument("--out", type=Path, required=True, help="output prediction folder")
    _config_options(crf, "CrfConfig, e.g. iterations=5 bilateral_srgb=10 workers=4")
    crf.set_defaults(func=crf_command)

    pseudo = subparsers.add_parser(
        "pseudo-label",
        help="pseudo-label dataset from confident ensemble predictions",
        description="Pixels whose class probability is >= tau keep their class, the rest get 255; "
        "images with too few confident pixels are left out. Writes a prepared dataset (split "
        "'train') with lineage.json, for `trashseg train --pseudo`.",
        formatter_class=formatter,
    )
    pseudo.add_argument("predictions", type=Path, metavar="PRED", help="final prediction folder of the unlabelled split")
    pseudo.add_argument("--data", type=Path, required=True, help="prepared dataset the predictions are of")
    pseudo.add_argument("--out", type=Path, required=True, help="new output folder")
    pseudo.add_argument(
        "--confidence", type=Path, metavar="PRED", default=None,
        help="prediction folder whose probabilities give each pixel's confidence, e.g. the ensemble's "
        "stages/soft_vote/test (CRF marginals are overconfident); default: PRED's own",
    )
    _config_options(pseudo, "PseudoLabelConfig, e.g. tau=0.95 min_confident_fraction=0.3 split=test")
    pseudo.set_defaults(func=pseudo_label_command)

    submission = subparsers.add_parser(
        "submission",
        help="write the submission CSV from a prediction folder",
        description="One row per image of ANNOTATIONS, in its order: image_id (= file_name) and "
        "the 256x256 nearest-neighbour resized mask, row-major, space-separated. The written "
        "file is validated before the command returns.",
        formatter_class=formatter,
    )
    submission.add_argument("predictions", type=Path, metavar="PRED", help="prediction folder of the test split")
    submission.add_argument("--annotations", type=Path, required=True, help="test COCO file (e.g. DATASET/splits/test.json)")
    submission.add_argument("--out", type=Path, required=True, help="CSV path to write")
    submission.set_defaults(func=submission_command)

    validate = subparsers.add_parser(
        "validate-submission",
        help="check a submission CSV against the test annotation file",
        description="Checks the header, one row per test image in annotation order, no duplicate "
        "or unknown ids, 65,536 integers per row and class ids from the file's categories. "
        "Lists every bad row; exit status 2 when any.",
        formatter_class=formatter,
    )
    validate.add_argument("csv", type=Path, metavar="CSV", help="submission file")
    validate.add_argument("--annotations", type=Path, required=True, help="test COCO file (e.g. DATASET/splits/test.json)")
    validate.set_defaults(func=validate_submission_command)


def _config_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--config", type=Path, help="YAML/JSON config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"override a config field of {what} (repeatable)",
    )


def ensemble_command(args: argparse.Namespace) -> int:
    from trashseg.config import load_config
    from trashseg.ensemble.config import EnsembleConfig
    from trashseg.ensemble.recipe import run_recipe

    config = load_config(EnsembleConfig, args.config, args.overrides)
    result = run_recipe(args.val, args.test, args.data, args.out, config)
    print(f"val mIoU: {result.scoring}; in-sample beside it")
    for stage in result.stages:
        print(f"{stage:>20}  val mIoU {result.scores[stage].miou:.4f}  (in-sample {result.in_sample_scores[stage].miou:.4f})")
    print(f"selected {result.selected_stage}; final predictions in {args.out / 'final'}; report {result.report_files['html']}")
    return 0


def crf_command(args: argparse.Namespace) -> int:
    from trashseg.config import load_config
    from trashseg.crf import CrfConfig, crf_prediction_set

    config = load_config(CrfConfig, args.config, args.overrides)
    result = crf_prediction_set(args.predictions, args.data, args.out, config)
    print(f"refined {len(result.file_names)} image(s) -> {args.out}")
    return 0


def pseudo_label_command(args: argparse.Namespace) -> int:
    from trashseg.config import load_config
    from trashseg.pseudo_labels import PseudoLabelConfig, make_pseudo_labels

    config = load_config(PseudoLabelConfig, args.config, args.overrides)
    result = make_pseudo_labels(args.predictions, args.data, args.out, config, confidence_dir=args.confidence)
    print(
        f"kept {len(result.kept)}, dropped {len(result.dropped)} image(s), {result.kept_pixel_share:.1%} of their "
        f"pixels labelled -> {result.dataset_dir} (lineage {result.lineage_file})"
    )
    return 0


def submission_command(args: argparse.Namespace) -> int:
    from trashseg.submission import validate_submission, write_submission_from_predictions

    rows = write_submission_from_predictions(args.predictions, args.annotations, args.out)
    validate_submission(args.out, args.annotations)
    print(f"wrote {rows} row(s) to {args.out} (validated)")
    return 0


def validate_submission_command(args: argparse.Namespace) -> int:
    from trashseg.submission import validate_submission

    submission = validate_submission(args.csv, args.annotations)
    print(f"{args.csv}: valid, {len(submission.file_names)} row(s)")
    return 0
