"""Pipeline steps as plain functions: what each KFP component calls (one call per component).

Each function takes local paths and plain values and does one step of the pipelines
(pipelines/full.py, pipelines/retrain.py) by calling the library: pulling a dataset
version, training with checkpoints mirrored to the object store, registering a bundle...
Nothing here imports kfp; components/ hold only typed signatures around these calls, and
the component tests call them with real files.

The KFP run id reaches every MLflow run through the `KFP_RUN_ID` environment variable
(trashseg.tracking reads it): the pipelines set it on every task, the local runner sets
it for its whole run. Passing it as a parameter instead would make every run's cache key
unique and disable KFP's caching.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trashseg.errors import ConfigError, DataError
from trashseg.fileio import write_text
from trashseg.secrets import redact
from trashseg.tracking import KFP_RUN_ID_ENV, TrackingConfig

if TYPE_CHECKING:
    from trashseg.training import TrainConfig

log = logging.getLogger(__name__)

# New labelled batches are merged into this annotation file of a dataset version, so the
# version's val.json, the holdout every model is compared on, stays fixed.
MERGE_INTO = "train.json"


@dataclass(frozen=True)
class RunContext:
    """Where a step records to MLflow, and which pipeline stage it is."""

    tracking_uri: str
    experiment: str
    stage: str

    def tracking(self) -> TrackingConfig:
        return TrackingConfig(uri=self.tracking_uri or None, experiment=self.experiment)

    def tags(self) -> dict[str, str]:
        return {"kfp.stage": self.stage}


# ---------------------------------------------------------------------------- data


def prepare_step(
    data_store: str,
    dataset_version: str,
    out_dir: str | Path,
    *,
    report_path: str | Path,
    stats_html_path: str | Path,
    val_fraction: float,
    seed: int,
) -> str:
    """Pull dataset version `dataset_version` from `data_store`, prepare it into `out_dir`.

    The version is the content hash; the prepared data is re-hashed and must match, so a
    cache hit on this parameter can only ever mean the same data. Returns the hash.
    """
    from trashseg.data.prepare import REPORT_MARKDOWN, prepare_dataset
    from trashseg.html_reports import stats_html
    from trashseg.storage import open_store, pull_dataset

    check_version(dataset_version)
    store = open_store(data_store)
    with tempfile.TemporaryDirectory(prefix="trashseg-pull-") as work:
        source = Path(work) / "source"
        pull_dataset(store, dataset_version, source)
        result = prepare_dataset(source, out_dir, val_fraction=val_fraction, seed=seed)
    if result.dataset_version != dataset_version:
        raise DataError(
            f"dataset version {dataset_version} of {data_store} hashes to {result.dataset_version} after download; "
            "the stored version was altered — repair it from a good copy with `trashseg data push --repair FOLDER`"
        )
    shutil.copyfile(Path(out_dir) / REPORT_MARKDOWN, report_path)
    stats_html(Path(out_dir) / "stats", stats_html_path, title=f"Dataset {dataset_version[:12]}")
    return result.dataset_version


def check_version(dataset_version: str) -> None:
    if dataset_version == "latest" or len(dataset_version) != 64 or not all(c in "0123456789abcdef" for c in dataset_version):
        raise ConfigError(
            f"dataset version {dataset_version!r} is not a content hash (64 hex digits); pipelines take the exact "
            "version (see `trashseg data versions`), never 'latest', so KFP's cache keys on the data itself"
        )


def holdout_id(dataset_dir: str | Path, split: str = "val") -> str:
    """Content hash of a split's annotation file and masks: scores are compared only on equal ids."""
    from trashseg.data.layout import PreparedDataset

    dataset = PreparedDataset(dataset_dir)
    digest = hashlib.sha256(dataset.split_file(split).read_bytes())
    for sample in dataset.samples(split):
        if not sample.mask.is_file():
            raise DataError(f"holdout split {split!r} of {dataset.root} has no mask for {sample.file_name}")
        digest.update(sample.file_name.encode() + b"\0" + sample.mask.read_bytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainStepResult:
    val_miou: float  # NaN when no validation ran
    metrics: dict[str, float]
    model_metadata: dict[str, str] = field(default_factory=dict)


def train_step(
    dataset_dir: str | Path,
    model_dir: str | Path,
    *,
    architecture: str,
    iterations: int,
    image_size: int,
    dataset_version: str,
    settings: Sequence[str],
    checkpoint_store: str,
    run: RunContext,
    pseudo_dataset_dir: str | Path | None = None,
    pseudo_ratio: float = 0.0,
    init_bundle_dir: str | Path | None = None,
    weights_store: str = "",
    processes: int | None = None,
) -> TrainStepResult:
    """Train one architecture into `model_dir`, with one process per GPU of the task.

    `settings`: `key=value` overrides of TrainConfig. With `checkpoint_store` and a KFP run
    id, each checkpoint is mirrored to `<store>/<run id>/<stage>-<architecture>/` as it is
    written, and a retried task resumes from there (resume is exact: it reaches the same
    weights), so a preempted node loses at most one `checkpoint_interval`.
    `init_bundle_dir`: a registered bundle whose checkpoint for this architecture
    initialises the model (fine-tuning). `processes`: default `launch.processes_per_task()`;
    with more than one, rank 0 writes the checkpoints, the MLflow run and the mirror.
    `weights_store`: where pretrained starts are mirrored (`trashseg weights mirror`); a hub id
    in the config is read from there, with no network. A TrainJob node runs the same code
    (`trashseg.trainjob.node`).
    """
    from trashseg.launch import processes_per_task

    job = plan_training(
        dataset_dir, model_dir, architecture=architecture, iterations=iterations, image_size=image_size,
        settings=settings, checkpoint_store=checkpoint_store, run_id=os.environ.get(KFP_RUN_ID_ENV, ""), run=run,
        pseudo_dataset_dir=pseudo_dataset_dir, pseudo_ratio=pseudo_ratio, init_bundle_dir=init_bundle_dir,
        weights_store=weights_store,
    )
    resume = pull_mirrored_checkpoint(job.mirror_uri, job.prefix, model_dir)
    train_mirrored(job, resume=resume, processes=processes or processes_per_task())
    return _train_step_result(Path(model_dir), architecture, dataset_version)


@dataclass(frozen=True)
class TrainJob:
    """One architecture's training as each of its processes runs it (picklable: it goes to the workers)."""

    config: TrainConfig
    dataset_dir: str
    model_dir: str
    pseudo_dataset_dir: str | None
    tags: dict[str, str]
    mirror_uri: str  # `<checkpoint_store>/<run id>`; "" = checkpoints not mirrored
    prefix: str  # `<stage>-<architecture>`, the job's folder in the mirror
    weights_store: str | None


def plan_training(
    dataset_dir: str | Path,
    model_dir: str | Path,
    *,
    architecture: str,
    iterations: int,
    image_size: int,
    settings: Sequence[str],
    checkpoint_store: str,
    run_id: str,
    run: RunContext,
    pseudo_dataset_dir: str | Path | None = None,
    pseudo_ratio: float = 0.0,
    init_bundle_dir: str | Path | None = None,
    weights_store: str = "",
    tags: Mapping[str, str] | None = None,
) -> TrainJob:
    """The resolved TrainConfig, MLflow tags and mirror of a training step (a KFP pod or a TrainJob node)."""
    from trashseg.registry import ModelBundle

    config = train_config(architecture, iterations, image_size, settings, run,
                          pseudo_ratio=pseudo_ratio if pseudo_dataset_dir is not None else None)
    all_tags = {**(tags or {}), **run.tags()}  # train() tags the run with dataset.version from the dataset itself
    if init_bundle_dir is not None:
        # The path is the same on a retry (and on every node), so the resolved config still matches on resume.
        config = dataclasses.replace(config, pretrained=str(ModelBundle.open(init_bundle_dir).model_dir(architecture)))
        all_tags["init.bundle"] = str(init_bundle_dir)
    return TrainJob(
        config, str(dataset_dir), str(model_dir), pseudo_dataset_dir and str(pseudo_dataset_dir), all_tags,
        checkpoint_mirror_uri(checkpoint_store, run_id), f"{run.stage}-{architecture}", weights_store or None,
    )


def train_config(architecture: str, iterations: int, image_size: int, settings: Sequence[str], run: RunContext, *,
                 pseudo_ratio: float | None = None) -> TrainConfig:
    """The step's TrainConfig: `settings` (`key=value`) over the architecture's defaults; the run
    context says where runs are recorded, while a `tracking.enabled=false` setting still holds."""
    from trashseg.config import load_config
    from trashseg.training import TrainConfig

    overrides = [f"architecture={architecture}", f"iterations={iterations}", f"image_size={image_size}", *settings]
    if pseudo_ratio is not None:
        overrides.append(f"pseudo_ratio={pseudo_ratio}")
    config = load_config(TrainConfig, None, overrides)
    return dataclasses.replace(config, tracking=dataclasses.replace(run.tracking(), enabled=config.tracking.enabled))


def checkpoint_mirror_uri(checkpoint_store: str, run_id: str) -> str:
    """Where this run's checkpoints are mirrored, `<store>/<run id>`; "" without a store or run id."""
    if not checkpoint_store or not run_id:
        if checkpoint_store:
            log.warning("%s is not set: checkpoints are not mirrored to %s", KFP_RUN_ID_ENV, checkpoint_store)
        return ""
    return f"{checkpoint_store.rstrip('/')}/{run_id}"


def pull_mirrored_checkpoint(mirror_uri: str, prefix: str, model_dir: str | Path) -> bool:
    """Download the job's mirrored folder into `model_dir` when it holds a last.pt; whether it did."""
    from trashseg.checkpoints import LAST_CHECKPOINT
    from trashseg.storage import open_store

    mirror = open_store(mirror_uri) if mirror_uri else None
    if mirror is None or not mirror.exists(f"{prefix}/{LAST_CHECKPOINT}"):
        return False
    log.info("resuming from the checkpoint mirrored at %s", mirror.uri(prefix))
    mirror.get_folder(prefix, model_dir)
    return True


def train_mirrored(job: TrainJob, *, resume: bool, processes: int) -> None:
    """Train `job` in `processes` processes (under torchrun: in this one), unless `resume` finds it
    complete; then rank 0 mirrors the rest of the output folder (e.g. a local MLflow store)."""
    from trashseg.checkpoints import BEST_CHECKPOINT, LAST_CHECKPOINT
    from trashseg.launch import run_per_process

    # A retry may find training already complete in the mirror.
    if resume and _completed_iterations(Path(job.model_dir)) >= job.config.iterations:
        return
    run_per_process(_train_process, (job, resume), processes)
    if job.mirror_uri and int(os.environ.get("RANK", "0")) == 0:
        from trashseg.storage import open_store

        _mirror_files(open_store(job.mirror_uri), Path(job.model_dir), job.prefix, exclude=(LAST_CHECKPOINT, BEST_CHECKPOINT))


def _train_process(job: TrainJob, resume: bool):
    """One process of a training step (every rank); `train` calls the mirror hook on rank 0 only."""
    from trashseg.storage import open_store
    from trashseg.training import train

    hook = _CheckpointMirror(open_store(job.mirror_uri), Path(job.model_dir), job.prefix) if job.mirror_uri else None
    return train(job.config, job.dataset_dir, job.model_dir, pseudo_dataset=job.pseudo_dataset_dir, resume=resume,
                 tags=job.tags, on_checkpoint=hook, weights_store=job.weights_store)


class _CheckpointMirror:
    """`train`'s on_checkpoint hook: uploads each checkpoint as it is written, after the config
    and class table it needs, so the mirror's last.pt always has what a resume reads."""

    def __init__(self, mirror, model_dir: Path, prefix: str) -> None:
        self.mirror, self.model_dir, self.prefix = mirror, model_dir, prefix
        self.meta_mirrored = False

    def __call__(self, path: Path, iteration: int) -> None:
        if not self.meta_mirrored:
            _mirror_files(self.mirror, self.model_dir, self.prefix, only=("config.json", "classes.json"))
            self.meta_mirrored = True
        self.mirror.put_file(path, f"{self.prefix}/{path.name}")
        log.info("mirrored %s (iteration %d) to %s", path.name, iteration, self.mirror.uri(self.prefix))


def _mirror_files(mirror, folder: Path, prefix: str, *, only: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and (not only or name in only) and name not in exclude:
            mirror.put_file(path, f"{prefix}/{name}")


def _train_step_result(model_dir: Path, architecture: str, dataset_version: str) -> TrainStepResult:
    """The step's outputs, read back from the checkpoint (the same whether trained now or found mirrored)."""
    from trashseg.checkpoints import LAST_CHECKPOINT, load_checkpoint_state, resolve_checkpoint

    final = load_checkpoint_state(model_dir / LAST_CHECKPOINT)
    best = final["best_miou"] if final["best_miou"] is not None else math.nan
    metrics = {"iterations": float(final["iteration"])}
    if not math.isnan(best):
        metrics["val_miou"] = best
    metadata = {
        "architecture": architecture,
        "checkpoint": resolve_checkpoint(model_dir).name,
        "dataset_version": dataset_version,
        "mlflow_run_id": final.get("mlflow_run_id") or "",
    }
    return TrainStepResult(best, metrics, metadata)


def check_weights_step(architectures: Sequence[str], settings: Sequence[str], weights_store: str) -> list[str]:
    """Before any GPU task: every pretrained start the training tasks will read (each
    architecture's default, or `pretrained=` in `settings`) must be mirrored in `weights_store`.
    Raises a ConfigError naming the `trashseg weights mirror` commands; returns the starts."""
    from trashseg.config import load_config
    from trashseg.storage import open_store
    from trashseg.training import TrainConfig
    from trashseg.weights import NO_PRETRAINED, require_mirrors

    starts = sorted({
        start
        for architecture in architectures
        if (start := load_config(TrainConfig, None, [f"architecture={architecture}", *settings]).pretrained) != NO_PRETRAINED
        and not Path(start).exists()
    })
    if starts:
        require_mirrors(starts, open_store(weights_store))
    log.info("pretrained starts mirrored in %s: %s", weights_store, ", ".join(starts) or "none needed")
    return starts


def _completed_iterations(model_dir: Path) -> int:
    from trashseg.checkpoints import LAST_CHECKPOINT, load_checkpoint_state

    return int(load_checkpoint_state(model_dir / LAST_CHECKPOINT)["iteration"])


# ---------------------------------------------------------------------------- inference


def predict_step(
    model_dir: str | Path, dataset_dir: str | Path, outputs: dict[str, str | Path], *, processes: int | None = None
) -> int:
    """Predict each split in `outputs` (split -> folder) with a training output folder's
    checkpoint, building the model once, the images shared among one process per GPU
    (`processes`: default `launch.processes_per_task()`); returns the image count over all splits."""
    from trashseg.launch import processes_per_task
    from trashseg.predict import predict_splits

    written = predict_splits(model_dir, dataset_dir, outputs, processes=processes or processes_per_task())
    return sum(len(p.file_names) for p in written.values())


def evaluate_step(prediction_dir: str | Path, dataset_dir: str | Path, split: str, html_path: str | Path, *, title: str):
    """Score a prediction folder on `split` and write its HTML report; returns the
    `trashseg.html_reports.EvaluationResult` (scalars, class names, confusion matrix)."""
    from trashseg.html_reports import evaluation_report

    return evaluation_report(prediction_dir, dataset_dir, split, html_path, title=title)


# ---------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class EnsembleStepResult:
    val_miou: float
    selected_stage: str
    metrics: dict[str, float]


def final_predictions(ensemble_dir: str | Path, split: str) -> Path:
    path = Path(ensemble_dir) / "final" / split
    if not path.is_dir():
        raise DataError(f"{ensemble_dir} has no final predictions for split {split!r} ({path}); run the ensemble first")
    return path


def ensemble_step(
    val_dirs: Sequence[str | Path],
    test_dirs: Sequence[str | Path],
    dataset_dir: str | Path,
    out_dir: str | Path,
    *,
    report_md: str | Path,
    report_html: str | Path,
    settings: Sequence[str],
) -> EnsembleStepResult:
    """The recipe (vote, CRF, consensus, gating) into `out_dir`; reports copied out."""
    from trashseg.config import load_config
    from trashseg.ensemble.config import EnsembleConfig
    from trashseg.ensemble.recipe import run_recipe

    config = load_config(EnsembleConfig, None, settings)
    result = run_recipe(val_dirs, test_dirs, dataset_dir, out_dir, config)
    shutil.copyfile(result.report_files["markdown"], report_md)
    shutil.copyfile(result.report_files["html"], report_html)
    # The held-out (cross-fit) scores are the ones that count downstream: round selection and
    # registry promotion compare them; the in-sample figure is reported beside them.
    selected = result.scores[result.selected_stage]
    metrics = {f"val_miou/{stage}": s.miou for stage, s in result.scores.items() if not math.isnan(s.miou)}
    metrics["val_miou"] = selected.miou
    metrics["val_pixel_accuracy"] = selected.pixel_accuracy
    in_sample = result.in_sample_scores.get(result.selected_stage)
    if in_sample is not None and not math.isnan(in_sample.miou):
        metrics["val_miou_in_sample"] = in_sample.miou
    return EnsembleStepResult(selected.miou, result.selected_stage, metrics)


def pseudo_label_step(ensemble_dir: str | Path, dataset_dir: str | Path, out_dir: str | Path, *, settings: Sequence[str]) -> int:
    """Pseudo-label dataset: labels from the ensemble's final predictions, confidence from its
    pre-CRF soft vote (CRF marginals are overconfident). Returns the images kept."""
    from trashseg.config import load_config
    from trashseg.ensemble.config import SOFT_VOTE
    from trashseg.pseudo_labels import PseudoLabelConfig, make_pseudo_labels

    config = load_config(PseudoLabelConfig, None, settings)
    confidence_dir = Path(ensemble_dir) / "stages" / SOFT_VOTE / config.split
    if not confidence_dir.is_dir():
        raise DataError(f"{ensemble_dir} has no {SOFT_VOTE} predictions for split {config.split!r} ({confidence_dir}); "
                        "run the ensemble on that split first")
    result = make_pseudo_labels(
        final_predictions(ensemble_dir, config.split), dataset_dir, out_dir, config, confidence_dir=confidence_dir
    )
    return len(result.kept)


def select_round_step(
    ensemble_dirs: Sequence[tuple[str, str | Path]], selection_path: str | Path, markdown_path: str | Path, *, run: RunContext
) -> str:
    """Keep the round whose ensemble has the best held-out val mIoU (`ensemble_dirs`: (round
    name, ensemble folder) pairs, earliest round first). Writes round_selection.json to
    `selection_path` and Markdown, records both in an MLflow run; returns the kept round."""
    from trashseg.rounds import SELECTION_FILE, RoundScore, choose_round
    from trashseg.tracking import TrackedRun

    choice = choose_round([RoundScore.from_ensemble(name, folder) for name, folder in ensemble_dirs])
    choice.save(selection_path)
    write_text(markdown_path, choice.to_markdown())
    log.info("%s", choice.reason)
    tags = {**run.tags(), "trashseg.step": SELECT_ROUND_STEP, **choice.tags()}
    with TrackedRun(run.tracking(), Path(selection_path).parent, run_name="select-round", tags=tags) as tracked, \
            tempfile.TemporaryDirectory(prefix="trashseg-round-") as work:
        tracked.log_metrics({f"val_miou/{r.name}": r.miou for r in choice.rounds if math.isfinite(r.miou)}, step=0)
        tracked.log_artifact(choice.save(Path(work) / SELECTION_FILE))  # under its own name, for the status step
    return choice.selected


SELECT_ROUND_STEP = "select-round"


def submission_step(ensemble_dir: str | Path, dataset_dir: str | Path, out_path: str | Path, *, split: str = "test") -> int:
    """Write the CSV from the ensemble's final test predictions and validate it; returns rows."""
    from trashseg.data.layout import PreparedDataset
    from trashseg.submission import validate_submission, write_submission_from_predictions

    annotations = PreparedDataset(dataset_dir).split_file(split)
    rows = write_submission_from_predictions(final_predictions(ensemble_dir, split), annotations, out_path)
    validate_submission(out_path, annotations)
    return rows


# ---------------------------------------------------------------------------- registry


def bundle_step(model_dirs: Sequence[str | Path], dataset_dir: str | Path, bundle_dir: str | Path, *, dataset_version: str) -> list[str]:
    """One bundle of a round's training outputs, each found by the architecture in its config."""
    from trashseg.data.layout import PreparedDataset
    from trashseg.registry import write_bundle

    models: dict[str, str | Path] = {}
    for model_dir in model_dirs:
        architecture = json.loads((Path(model_dir) / "config.json").read_text())["architecture"]
        if architecture in models:
            raise DataError(f"two trained models of architecture {architecture!r} given ({models[architecture]}, {model_dir})")
        models[architecture] = model_dir
    classes = PreparedDataset(dataset_dir).classes()
    return list(write_bundle(models, bundle_dir, dataset_version=dataset_version, class_names=classes.names).architectures)


def register_step(
    bundle_dir: str | Path,
    dataset_dir: str | Path,
    decision_path: str | Path,
    *,
    score: float,
    model_name: str,
    min_improvement: float,
    run: RunContext,
    round_selection_path: str | Path | None = None,
) -> bool:
    """Register the bundle as challenger; promote it if better on the val holdout.
    `round_selection_path`: the run's round choice (round_selection.json); the decision and
    the MLflow run say which round this bundle is and by how much it won."""
    from trashseg.registry import register_and_promote
    from trashseg.rounds import RoundChoice

    choice = RoundChoice.load(round_selection_path) if round_selection_path else None
    decision = register_and_promote(
        bundle_dir,
        model_name=model_name,
        score=score,
        holdout_id=holdout_id(dataset_dir),
        tracking=run.tracking(),
        run_tags={**run.tags(), **(choice.tags() if choice else {})},
        min_improvement=min_improvement,
    )
    write_text(decision_path, decision.to_markdown() + (f"\n{choice.to_markdown()}" if choice else ""))
    log.info("%s%s", decision.reason, f"; {choice.reason}" if choice else "")
    return decision.promoted


@dataclass(frozen=True)
class ChampionInfo:
    version: str
    dataset_version: str
    architectures: list[str]


def fetch_champion_step(model_name: str, tracking_uri: str, out_dir: str | Path) -> ChampionInfo:
    from trashseg.registry import TAG_DATASET, fetch_champion

    champion = fetch_champion(model_name, out_dir, tracking_uri=tracking_uri)
    return ChampionInfo(champion.version, champion.tags[TAG_DATASET], list(champion.bundle.architectures))


# ---------------------------------------------------------------------------- retraining


@dataclass(frozen=True)
class InboxCheck:
    base_version: str  # the dataset version the champion was trained on
    batches: list[str]  # complete inbox batches that version does not include


def check_inbox_step(data_store: str, model_name: str, tracking_uri: str) -> InboxCheck:
    """New labelled batches since the champion's dataset version."""
    from trashseg.registry import CHAMPION, TAG_DATASET, RegistryError, find_champion
    from trashseg.storage import new_batches, open_store

    champion = find_champion(model_name, tracking_uri)
    if champion is None:
        raise RegistryError(
            f"registered model {model_name!r} has no {CHAMPION!r} at {redact(tracking_uri)}; run the full pipeline first"
        )
    base = champion.tags[TAG_DATASET]
    batches = new_batches(open_store(data_store), base)
    log.info("champion v%s was trained on %s; new inbox batches: %s", champion.version, base, batches or "none")
    return InboxCheck(base, batches)


def merge_inbox_step(data_store: str, base_version: str) -> str:
    """Merge every new inbox batch into `base_version`; returns the new version (its hash)."""
    from trashseg.storage import absorb_inbox, open_store

    with tempfile.TemporaryDirectory(prefix="trashseg-merge-") as work:
        manifest = absorb_inbox(open_store(data_store), base_version, work, into=MERGE_INTO)
    if manifest is None:
        raise DataError(f"no new inbox batches for dataset version {base_version} in {data_store}; nothing to merge")
    return manifest.version


# The states an exit handler receives once a run is over (NO_NEW_DATA: retrain's early end).
FINAL_PIPELINE_STATES = ("SUCCEEDED", "FAILED", "CANCELLED", "CANCELED", "NO_NEW_DATA")


def record_status_step(pipeline: str, state: str, error: str, summary_path: str | Path, *, run: RunContext, details: str = "") -> str:
    """An MLflow run holding how a pipeline run ended, and the same as Markdown. The state is
    recorded as it arrives; one that is not final is marked so, never read as success."""
    from trashseg.tracking import TrackedRun

    final = state in FINAL_PIPELINE_STATES
    heading = f"## {pipeline}: {state}" + ("" if final else " (not a final state)")
    if not final:
        # KFP backends before 2.17 hand the exit handler RUNNING: the state of the run while
        # the handler starts, not how its tasks ended.
        details = (
            f"The KFP backend passed `{state}` to the exit handler instead of the run's final state "
            "(backends before 2.17 do). This record does not say the run succeeded: read the run's "
            "state in the KFP UI or API." + (f"\n\n{details}" if details else "")
        )
    choice = _round_choice_of_this_run(run, Path(summary_path).parent)
    if choice is not None:
        details = f"{details}\n\n{choice.to_markdown()}" if details else choice.to_markdown()
    summary = f"{heading}\n\n" + (f"{details}\n\n" if details else "") + (f"Error: `{error}`\n" if error else "")
    # The failed task's error text may quote a URI with its password (a tracking or store URI).
    write_text(summary_path, redact(summary))
    tags = {
        **run.tags(), "trashseg.step": "status", "pipeline": pipeline, "pipeline.state": state,
        "pipeline.state_final": str(final).lower(), **(choice.tags() if choice else {}),
    }
    with TrackedRun(run.tracking(), Path(summary_path).parent, run_name=f"{pipeline}-{state.lower()}", tags=tags) as tracked:
        tracked.log_artifact(summary_path)
    return state


def _round_choice_of_this_run(run: RunContext, default_dir: Path):
    """The round choice the select-round step recorded in MLflow for this KFP run, or None
    (no round selection ran, or no KFP run id to find it by)."""
    from mlflow.tracking import MlflowClient

    from trashseg.rounds import SELECTION_FILE, RoundChoice
    from trashseg.tracking import resolve_tracking_uri

    run_id = os.environ.get(KFP_RUN_ID_ENV, "")
    if not run_id:
        return None
    client = MlflowClient(tracking_uri=resolve_tracking_uri(run.tracking_uri or None, default_dir))
    experiment = client.get_experiment_by_name(run.experiment)
    if experiment is None:
        return None
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`kfp.run_id` = '{run_id}' and tags.`trashseg.step` = '{SELECT_ROUND_STEP}'",
        max_results=1,
    )
    if not found:
        return None
    with tempfile.TemporaryDirectory(prefix="trashseg-round-") as work:
        return RoundChoice.load(client.download_artifacts(found[0].info.run_id, SELECTION_FILE, work))
