"""What the viewer shows: a prepared dataset, prediction folders, an ensemble output,
a submission CSV and an MLflow tracking URI.

Locations may be local or `s3://`; s3 ones are fetched once (checksummed, through
`trashseg.storage.fetch`) into a cache folder keyed by the location, and then read lazily
from disk like local ones. The Streamlit process gets the sources as JSON in an
environment variable, since `streamlit run` passes no Python objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trashseg.errors import DataError

SOURCES_ENV = "TRASHSEG_VIEWER_SOURCES"
CACHE_ENV = "TRASHSEG_VIEWER_CACHE"


@dataclass(frozen=True)
class ViewerSources:
    data: str  # a prepared dataset folder (the `prepare` step's output)
    predictions: tuple[str, ...] = ()  # prediction folders (one model, one split each)
    ensemble: str | None = None  # an ensemble output (OUT/stages/<stage>/<split>, gating.json)
    submission: str | None = None  # a submission CSV
    tracking_uri: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ViewerSources:
        data = json.loads(text)
        data["predictions"] = tuple(data.get("predictions") or ())
        return cls(**data)

    def check_local(self) -> None:
        """Refuse a local location that is missing or of the wrong kind, before any server
        starts (s3:// locations are fetched, and checked, when a page opens them)."""
        from trashseg.storage import is_s3

        folders = [("DATA", self.data), *(("--predictions", p) for p in self.predictions), ("--ensemble", self.ensemble)]
        for option, location in [*folders, ("--submission", self.submission)]:
            if location is None or is_s3(location):
                continue
            path = Path(location)
            want_folder = option != "--submission"
            if not (path.is_dir() if want_folder else path.is_file()):
                state = "does not exist" if not path.exists() else f"is not a {'folder' if want_folder else 'file'}"
                kind = "a prepared dataset folder" if option == "DATA" else "an existing " + ("folder" if want_folder else "CSV file")
                raise DataError(f"trashseg view {option} {location}: {state}; expected {kind}")

    @classmethod
    def from_env(cls) -> ViewerSources:
        text = os.environ.get(SOURCES_ENV)
        if not text:
            raise DataError(f"{SOURCES_ENV} is not set; start the viewer with `trashseg view DATA`")
        return cls.from_json(text)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "trashseg-viewer-cache")


def local_copy(location: str) -> Path:
    """A local path for `location`: itself when local, else a cached download of it."""
    from trashseg.storage import fetch, is_s3

    if not is_s3(location):
        return fetch(location, location)  # checks that it exists; no copy
    key = hashlib.sha256(location.encode()).hexdigest()[:16]
    dest = cache_dir() / key / location.rstrip("/").rpartition("/")[2]
    done = dest.parent / ".complete"
    if not done.is_file():
        fetch(location, dest)
        done.touch()
    return dest


def latest_demo_sources(out: str | Path) -> ViewerSources:
    """The newest `make demo` run under OUT (pipelines/local.py's layout: OUT/kfp/<run>/<task>/)."""
    out = Path(out)
    runs = sorted((out / "kfp").glob("*/"), key=lambda p: p.stat().st_mtime) if (out / "kfp").is_dir() else []
    if not runs:
        raise DataError(f"no demo run under {out}/kfp; run `make demo` first (or pass DATA to `trashseg view`)")
    run = runs[-1]

    def newest(pattern: str) -> list[Path]:
        return sorted(run.glob(pattern), key=lambda p: p.stat().st_mtime)

    datasets = [p for p in newest("**/prepare-data*/dataset") if (p / "classes.json").is_file()]
    if not datasets:
        raise DataError(f"{run} has no prepare-data output; is it a complete `make demo` run?")
    predictions = [p for p in newest("**/predict*/*predictions") if (p / "predictions.json").is_file()]
    ensembles = [p for p in newest("**/ensemble-crf*/ensemble") if (p / "stages").is_dir()]
    submissions = newest("**/make-submission*/submission")
    db = out / "mlflow.db"
    return ViewerSources(
        data=str(datasets[0]),
        predictions=tuple(str(p) for p in predictions),
        ensemble=str(ensembles[-1]) if ensembles else None,
        submission=str(submissions[-1]) if submissions else None,
        tracking_uri=f"sqlite:///{db.resolve()}" if db.is_file() else None,
    )
