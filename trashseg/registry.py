"""Model registry: what a registered model holds, and when a new version becomes champion.

A registered version is a *bundle*: the checkpoints of every architecture of one ensemble
plus a manifest, so the retrain pipeline can fine-tune exactly what is in production.

    BUNDLE/bundle.json                manifest: architectures, dataset hash, class names, score
    BUNDLE/models/<architecture>/     that architecture's training output, as train wrote it

Every new version gets the alias `challenger`. It also gets `champion` only when it beats
the current champion's score *on the same holdout* by more than `min_improvement`: either
the champion's score measured in the same pipeline run (retrain.py does that), or the
score recorded on the champion when it was registered against the same holdout id.
Scores on different holdouts are never compared.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from trashseg.errors import ConfigError, DataError, UserError
from trashseg.fileio import write_text
from trashseg.tracking import TrackingConfig

CHAMPION = "champion"
CHALLENGER = "challenger"
BUNDLE_FILE = "bundle.json"
BUNDLE_ARTIFACT_PATH = "bundle"
# Version tags the promotion decision reads back; one name each, used everywhere.
TAG_SCORE = "holdout_miou"
TAG_HOLDOUT = "holdout_id"
TAG_DATASET = "dataset_version"
TAG_ARCHITECTURES = "architectures"


class RegistryError(UserError):
    """The registry does not hold what was asked for (e.g. no champion yet)."""


@dataclass(frozen=True)
class ModelBundle:
    root: Path
    architectures: tuple[str, ...]
    dataset_version: str
    class_names: tuple[str, ...]

    @classmethod
    def open(cls, root: str | Path) -> ModelBundle:
        root = Path(root)
        manifest = root / BUNDLE_FILE
        if not manifest.is_file():
            raise DataError(f"{root} is not a model bundle (no {BUNDLE_FILE}); bundles are written by write_bundle")
        meta = json.loads(manifest.read_text())
        return cls(root, tuple(meta["architectures"]), meta["dataset_version"], tuple(meta["class_names"]))

    def model_dir(self, architecture: str) -> Path:
        if architecture not in self.architectures:
            raise DataError(
                f"model bundle {self.root} has no architecture {architecture!r}; "
                f"it holds: {', '.join(self.architectures)}"
            )
        return self.root / "models" / architecture


def write_bundle(
    models: Mapping[str, str | Path],
    out_dir: str | Path,
    *,
    dataset_version: str,
    class_names: Sequence[str],
) -> ModelBundle:
    """Copy each architecture's training output folder into one bundle folder."""
    if not models:
        raise DataError("a model bundle needs at least one trained model; got none")
    out_dir = Path(out_dir)
    for architecture, model_dir in models.items():
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise DataError(f"trained model of {architecture!r} not found at {model_dir} (expected a folder)")
        shutil.copytree(model_dir, out_dir / "models" / architecture, dirs_exist_ok=True)
    manifest = {
        "architectures": list(models),
        "dataset_version": dataset_version,
        "class_names": list(class_names),
    }
    write_text(out_dir / BUNDLE_FILE, json.dumps(manifest, indent=2) + "\n")
    return ModelBundle.open(out_dir)


@dataclass(frozen=True)
class PromotionDecision:
    model_name: str
    version: str
    score: float
    holdout_id: str
    champion_version: str | None  # the champion before this decision
    champion_score: float | None
    promoted: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        verdict = "promoted to **champion**" if self.promoted else "kept as **challenger**"
        champion = (
            f"v{self.champion_version} ({_fmt(self.champion_score)})" if self.champion_version else "none"
        )
        return (
            f"## Model registry: {self.model_name} v{self.version} {verdict}\n\n"
            f"| | |\n|---|---|\n"
            f"| holdout | `{self.holdout_id}` |\n"
            f"| this version's holdout mIoU | {_fmt(self.score)} |\n"
            f"| champion before | {champion} |\n"
            f"| reason | {self.reason} |\n"
        )


def decide_promotion(
    score: float,
    holdout_id: str,
    champion_version: str | None,
    champion_tags: Mapping[str, str],
    *,
    champion_score: float | None = None,
    min_improvement: float = 0.0,
) -> tuple[bool, float | None, str]:
    """(promote?, the champion score compared against, why). Pure: no registry access."""
    if not 0 <= min_improvement < math.inf:  # NaN would make every comparison False
        raise ConfigError(f"min_improvement={min_improvement}: expected a finite value >= 0, e.g. 0.005")
    if not math.isfinite(score):
        return False, None, f"this version's holdout score is {score}; only a finite score can be promoted"
    if champion_version is None:
        return True, None, "there is no champion yet"
    if champion_score is None:
        recorded_holdout = champion_tags.get(TAG_HOLDOUT)
        if recorded_holdout != holdout_id or TAG_SCORE not in champion_tags:
            return (
                False,
                None,
                f"the champion was scored on holdout {recorded_holdout!r}, this version on {holdout_id!r}; "
                "scores on different holdouts are not compared (evaluate the champion on this holdout, "
                "as retrain.py does, and pass its score)",
            )
        champion_score = float(champion_tags[TAG_SCORE])
    if score > champion_score + min_improvement:
        return True, champion_score, (
            f"{_fmt(score)} beats the champion's {_fmt(champion_score)} by more than {min_improvement:g}"
        )
    return False, champion_score, (
        f"{_fmt(score)} does not beat the champion's {_fmt(champion_score)} by more than {min_improvement:g}"
    )


def register_and_promote(
    bundle_dir: str | Path,
    *,
    model_name: str,
    score: float,
    holdout_id: str,
    tracking: TrackingConfig | None = None,
    run_tags: Mapping[str, str] | None = None,
    champion_score: float | None = None,
    min_improvement: float = 0.0,
) -> PromotionDecision:
    """Log the bundle to an MLflow run, register it as `challenger`, promote it if better.

    `champion_score`: the current champion's score measured on this same holdout in this
    run; when None, the score recorded on the champion is used if its holdout id matches.
    The MLflow store is `tracking`'s (default: $MLFLOW_TRACKING_URI, else a SQLite file
    beside the bundle), like every other trashseg run.
    """
    from trashseg.tracking import TrackedRun

    bundle = ModelBundle.open(bundle_dir)
    tags = {**dict(run_tags or {}), "trashseg.step": "register", TAG_HOLDOUT: holdout_id}
    with TrackedRun(tracking or TrackingConfig(), bundle.root.parent, run_name=f"register-{model_name}", tags=tags) as run:
        client = run.client
        _ensure_registered_model(client, model_name)
        champion = _version_by_alias(client, model_name, CHAMPION)
        run.log_metrics({TAG_SCORE: score}, step=0)
        run.flush()
        client.log_artifacts(run.run_id, str(bundle.root), BUNDLE_ARTIFACT_PATH)
        artifact_uri = client.get_run(run.run_id).info.artifact_uri
        kfp_tags = {k: v for k, v in client.get_run(run.run_id).data.tags.items() if k.startswith("kfp.")}
        version = client.create_model_version(
            model_name,
            source=f"{artifact_uri}/{BUNDLE_ARTIFACT_PATH}",
            run_id=run.run_id,
            tags={
                TAG_SCORE: repr(float(score)),
                TAG_HOLDOUT: holdout_id,
                TAG_DATASET: bundle.dataset_version,
                TAG_ARCHITECTURES: ",".join(bundle.architectures),
                **kfp_tags,
            },
        ).version
        version = str(version)
        client.set_registered_model_alias(model_name, CHALLENGER, version)

        promote, compared, reason = decide_promotion(
            score,
            holdout_id,
            str(champion.version) if champion else None,
            champion.tags if champion else {},
            champion_score=champion_score,
            min_improvement=min_improvement,
        )
        if promote:
            client.set_registered_model_alias(model_name, CHAMPION, version)
        client.set_model_version_tag(model_name, version, "promoted", str(promote).lower())
        client.set_model_version_tag(model_name, version, "decision", reason)
        run.set_tags({"registered_version": version, "promoted": str(promote).lower()})
    return PromotionDecision(
        model_name=model_name,
        version=version,
        score=float(score),
        holdout_id=holdout_id,
        champion_version=str(champion.version) if champion else None,
        champion_score=compared,
        promoted=promote,
        reason=reason,
    )


@dataclass(frozen=True)
class Champion:
    version: str
    bundle: ModelBundle
    tags: dict[str, str]


def find_champion(model_name: str, tracking_uri: str):
    """The champion's ModelVersion (tags, source), or None."""
    from mlflow import MlflowClient

    from trashseg.tracking import client_uri

    return _version_by_alias(MlflowClient(tracking_uri=client_uri(tracking_uri)), model_name, CHAMPION)


def fetch_champion(model_name: str, out_dir: str | Path, *, tracking_uri: str) -> Champion:
    """Download the champion's bundle into `out_dir`."""
    import mlflow

    from trashseg.tracking import client_uri

    tracking_uri = client_uri(tracking_uri)  # no password in the messages below, nor in MLflow's
    champion = find_champion(model_name, tracking_uri)
    if champion is None:
        raise RegistryError(
            f"registered model {model_name!r} has no {CHAMPION!r} version at {tracking_uri}; "
            "run the full pipeline once (it registers and promotes the first model) before retraining"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    downloaded = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=champion.source, dst_path=str(out_dir), tracking_uri=tracking_uri)
    )
    if downloaded != out_dir:  # download_artifacts nests the bundle folder under dst_path
        for item in downloaded.iterdir():
            shutil.move(str(item), out_dir / item.name)
        downloaded.rmdir()
    return Champion(version=str(champion.version), bundle=ModelBundle.open(out_dir), tags=dict(champion.tags))


def _ensure_registered_model(client, model_name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(model_name, description="trashseg ensemble bundles (champion/challenger)")


def _version_by_alias(client, model_name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        return None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
