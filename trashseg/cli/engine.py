"""`trashseg train | predict | evaluate | architectures`; see trashseg/cli/__init__.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trashseg.cli import int_in
from trashseg.device import AMP_CHOICES
from trashseg.errors import ConfigError
from trashseg.launch import MAX_PROCESSES

# Ceilings of the numeric options, as TrainConfig and predict check them (their modules import
# torch, which `--help` must not wait for).
MAX_STEPS = 10**7
MAX_IMAGE_SIZE = 4096
MAX_BATCH_SIZE = 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train one architecture on a prepared dataset (works under torchrun)",
        description="Train on DATASET's train split, validate on val, write checkpoints to --out.",
    )
    train.add_argument("--config", help="YAML/JSON TrainConfig file (optional: defaults otherwise)")
    train.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set lr=1e-4 --set augment.hflip=0 (repeatable)",
    )
    train.add_argument("--data", required=True, help="prepared dataset folder (output of `trashseg prepare`)")
    train.add_argument("--out", required=True, help="output folder for checkpoints, config and local MLflow store")
    train.add_argument("--pseudo", help="pseudo-label dataset folder mixed in at config pseudo_ratio")
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    train.add_argument(
        "--stop-after", type=int_in(1, MAX_STEPS), metavar="N",
        help="end after N iterations keeping the full schedule (a time-boxed run; continue with --resume)",
    )
    train.add_argument(
        "--continue-from", metavar="RUN_DIR",
        help="start a NEW run in --out that trains a finished run's weights on to a longer schedule "
        "(with --continue-to; the config defaults to RUN_DIR/config.json). Not a resume: --resume continues "
        "an interrupted run in its own folder",
    )
    train.add_argument("--continue-to", type=int_in(1, MAX_STEPS), metavar="ITERATIONS",
                       help=f"the longer schedule's total iterations (at most {MAX_STEPS})")
    train.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="extra MLflow run tag (repeatable)"
    )
    train.set_defaults(func=run_train)

    predict = subparsers.add_parser("predict", help="write class probabilities and masks for a split")
    predict.add_argument("--checkpoint", required=True, help="best.pt or last.pt from `trashseg train`")
    predict.add_argument("--data", required=True, help="prepared dataset folder")
    predict.add_argument("--split", default="test", help="split to predict (default: test)")
    predict.add_argument("--out", required=True, help="prediction folder to write")
    predict.add_argument("--batch-size", type=int_in(1, MAX_BATCH_SIZE), default=4,
                         help=f"images per forward pass, 1 to {MAX_BATCH_SIZE} (default: %(default)s)")
    predict.add_argument("--tta-flip", action="store_true", help="also predict the horizontal mirror")
    predict.add_argument(
        "--tta-scales", default="1.0", help="comma-separated scale factors of the training size, e.g. 0.75,1,1.25"
    )
    predict.add_argument("--amp", choices=AMP_CHOICES, default="auto")
    predict.add_argument("--dtype", choices=("uint8", "float16"), default="uint8", help="stored probability type")
    predict.add_argument(
        "--processes", type=int_in(1, MAX_PROCESSES), default=1, metavar="N",
        help=f"one process per GPU, each predicting every N-th image (1 to {MAX_PROCESSES})"
    )
    predict.set_defaults(func=run_predict)

    evaluate = subparsers.add_parser("evaluate", help="score a prediction folder against a split's masks")
    evaluate.add_argument("--predictions", required=True, help="prediction folder from `trashseg predict`")
    evaluate.add_argument("--data", required=True, help="prepared dataset folder")
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("--metrics", help="metrics JSON to write (default: PREDICTIONS/metrics.json)")
    evaluate.add_argument("--html", help="HTML page to write, as the pipeline's evaluate step (default: PREDICTIONS/report.html)")
    evaluate.set_defaults(func=run_evaluate)

    architectures = subparsers.add_parser(
        "architectures",
        help="list architectures: parameter counts, default starting checkpoint, default lr and weight decay",
    )
    architectures.add_argument(
        "--gflops", action="store_true",
        help="also count inference GFLOPs (FLOPs, 2 per multiply-add) per image; a few seconds per full-size model",
    )
    architectures.add_argument("--image-size", type=int_in(32, MAX_IMAGE_SIZE), default=512,
                               help=f"square image side for --gflops, 32 to {MAX_IMAGE_SIZE} (default: %(default)s)")
    architectures.add_argument("--only", nargs="+", metavar="NAME", help="these architectures only")
    architectures.set_defaults(func=run_architectures)


def _parse_scales(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--tta-scales {text!r}: expected comma-separated numbers, e.g. 0.75,1,1.25") from None


def run_train(args: argparse.Namespace) -> int:
    import os

    from trashseg.config import parse_assignments
    from trashseg.training import train

    config = _train_config(args)
    result = train(
        config, args.data, args.out, pseudo_dataset=args.pseudo, resume=args.resume, tags=parse_assignments(args.tag, what="--tag", example="team=vision"),
        stop_after=args.stop_after,
    )
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    print(json.dumps({
        "output_dir": str(result.output_dir),
        "last_checkpoint": str(result.last_checkpoint),
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "best_miou": result.best_miou,
        "best_iteration": result.best_iteration,
        "mlflow_run_id": result.mlflow_run_id,
    }, indent=2))
    return 0


def _train_config(args: argparse.Namespace):
    from trashseg.config import load_config
    from trashseg.training import TrainConfig

    if (args.continue_from is None) != (args.continue_to is None):
        raise ConfigError("--continue-from RUN_DIR and --continue-to ITERATIONS go together: give both or neither")
    if args.continue_from is None:
        return load_config(TrainConfig, args.config, args.overrides)
    if args.resume:
        raise ConfigError(
            "--continue-from with --resume: a continued schedule starts a new run; to resume an interrupted "
            "continued run, pass --resume with its own --config (OUT/config.json) and no --continue-from"
        )
    base = args.config or str(Path(args.continue_from) / "config.json")
    overrides = [*args.overrides, f"iterations={args.continue_to}", f"continue_from={args.continue_from}"]
    return load_config(TrainConfig, base, overrides)


def run_predict(args: argparse.Namespace) -> int:
    from trashseg.predict import predict

    predictions = predict(
        args.checkpoint, args.data, args.split, args.out, batch_size=args.batch_size, tta_flip=args.tta_flip,
        tta_scales=_parse_scales(args.tta_scales), amp=args.amp, dtype=args.dtype, processes=args.processes,
    )
    print(f"{len(predictions.file_names)} predictions written to {predictions.root}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from trashseg.html_reports import evaluation_report

    html_path = Path(args.html) if args.html else Path(args.predictions) / "report.html"
    metrics_path = args.metrics or Path(args.predictions) / "metrics.json"
    result = evaluation_report(args.predictions, args.data, args.split, html_path,
                               title=f"Evaluation of {args.predictions}", metrics_path=metrics_path)
    print(f"mIoU {result.miou:.4f}  pixel accuracy {result.scalars.get('pixel_accuracy', float('nan')):.4f}")
    for name in result.class_names:
        print(f"  {name:<20} {result.scalars.get(f'iou/{name}', float('nan')):.4f}")
    print(f"metrics: {metrics_path}\npage: {html_path}")
    return 0


def run_architectures(args: argparse.Namespace) -> int:
    from trashseg.models import architecture_spec, architecture_table
    from trashseg.models.complexity import inference_gflops

    rows = architecture_table(names=args.only)
    gflops = f" {'GFLOPs@' + str(args.image_size):>12}" if args.gflops else ""
    note = "  (FLOPs: 2 per multiply-add)" if args.gflops else ""
    print(f"{'architecture':<32} {'params':>10}{gflops} {'lr':>7} {'wd':>5}  pretrained (default start){note}")
    for name, params in rows:
        spec = architecture_spec(name)
        line = f"{name:<32} {params / 1e6:9.2f}M"
        if args.gflops:  # printed as counted: the whole table takes a minute or two on CPU
            line += f" {inference_gflops(name, args.image_size):12.4g}"
        line += f" {spec.training.lr:7.0e} {spec.training.weight_decay:5.2g}  {spec.default_pretrained or 'none'}"
        print(line, flush=True)
    return 0
