"""Training's MLflow glue (rank 0): the run opened or reopened with its tags, and closed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from trashseg.config import save_config
from trashseg.train_data import DataStreams
from trashseg.train_state import OutputPaths, TrainState

if TYPE_CHECKING:
    from trashseg.training import TrainConfig

log = logging.getLogger(__name__)


def pseudo_lineage_tags(pseudo_dataset: str | Path) -> dict[str, str]:
    """Which models, ensemble, tau and images made the pseudo-labels (`trashseg pseudo-label`
    records them); a pseudo-label folder made by other means trains, with a warning."""
    from trashseg.data.layout import PreparedDataset
    from trashseg.pseudo_labels import lineage_tags

    if not PreparedDataset(pseudo_dataset).lineage_file.is_file():
        log.warning("%s has no lineage.json (it was not made by `trashseg pseudo-label`): this run's MLflow "
                    "tags cannot say which models made its pseudo-labels", pseudo_dataset)
        return {"pseudo.dataset": str(Path(pseudo_dataset).resolve())}
    return lineage_tags(pseudo_dataset)


def start_tracking(config: TrainConfig, data: DataStreams, state: TrainState, output_dir: Path, tags):
    """Rank 0: write config.json and classes.json, and open (or reopen) the MLflow run."""
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, output_dir / "config.json")
    data.classes.save(output_dir / "classes.json")
    if not config.tracking.enabled:
        return None
    from trashseg.tracking import TrackedRun, git_sha

    run_tags = {
        "architecture": config.architecture,
        "dataset": str(data.dataset.root),
        "dataset.version": data.dataset.dataset_version(),
        "git.sha": git_sha(),
        "trashseg.step": "train",
        **(tags or {}),
    }
    tracked = TrackedRun(
        config.tracking, output_dir, run_name=f"train-{config.architecture}", tags=run_tags, resume_run_id=state.run_id
    )
    if state.run_id is None:
        tracked.log_config(config)
        start = state.pretrained_load.params() if state.pretrained_load else {"pretrained.checkpoint": "none (random init)"}
        tracked.log_params(start)
    state.run_id = tracked.run_id
    return tracked


def finish_tracking(tracked, status: str, state: TrainState, paths: OutputPaths, end: int) -> None:
    if status != "FAILED":
        if state.best_miou is not None:
            tracked.log_metrics({"val/best_miou": state.best_miou}, step=state.best_iteration or end)
        for name in ("config.json", "classes.json"):
            tracked.log_artifact(paths.root / name)
        tracked.log_artifact(paths.best if paths.best.exists() else paths.last, "checkpoint")
    tracked.end(status)


