"""Which training round the run keeps: the base round or the pseudo-label round.

Pseudo-label retraining does not always help (the local demo loses 0.03 val mIoU with it),
so the run compares the rounds' ensembles on their held-out val mIoU (the cross-fitted
figure of each recipe's stage report) and keeps the better one. A tie keeps the earlier,
simpler round. The choice is written as round_selection.json (read by the registry step,
the run status and the demo summary) and as Markdown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from trashseg.errors import DataError
from trashseg.fileio import write_text

SELECTION_FILE = "round_selection.json"


@dataclass(frozen=True)
class RoundScore:
    """One round's ensemble as its stage report scored it."""

    name: str  # e.g. "base", "pseudo"
    miou: float  # held-out val mIoU of the ensemble's selected stage (NaN: not scored)
    miou_in_sample: float
    stage: str  # the ensemble's selected stage
    scoring: str  # how `miou` was obtained

    @classmethod
    def from_ensemble(cls, name: str, ensemble_dir: str | Path) -> RoundScore:
        path = Path(ensemble_dir) / "report" / "report.json"
        if not path.is_file():
            raise DataError(f"round {name!r}: {ensemble_dir} has no stage report ({path}); run the ensemble first")
        report = json.loads(path.read_text())
        return cls(name, _number(report.get("selected_miou")), _number(report.get("selected_miou_in_sample")),
                   str(report["selected_stage"]), str(report.get("scoring", "")))


@dataclass(frozen=True)
class RoundChoice:
    selected: str
    runner_up: str | None
    margin: float  # selected round's held-out mIoU minus the runner-up's (NaN when not comparable)
    rounds: tuple[RoundScore, ...]

    @property
    def reason(self) -> str:
        chosen = self.score(self.selected)
        if self.runner_up is None:
            return f"round {self.selected} is the only round (held-out val mIoU {chosen.miou:.4f})"
        other = self.score(self.runner_up)
        if self.margin == 0:
            return (f"round {self.selected} kept: it ties round {other.name} at held-out val mIoU "
                    f"{chosen.miou:.4f}, and the earlier round wins a tie")
        return (f"round {self.selected} won by {self.margin:+.4f} held-out val mIoU "
                f"({chosen.miou:.4f} vs {other.miou:.4f} for round {other.name})")

    def score(self, name: str) -> RoundScore:
        return next(r for r in self.rounds if r.name == name)

    def to_dict(self) -> dict:
        return {
            "selected": self.selected,
            "runner_up": self.runner_up,
            "margin": _json_float(self.margin),
            "reason": self.reason,
            "rounds": [{**asdict(r), "miou": _json_float(r.miou), "miou_in_sample": _json_float(r.miou_in_sample)}
                       for r in self.rounds],
        }

    def to_markdown(self) -> str:
        lines = [f"## Round kept: **{self.selected}**", "", self.reason + ".", "",
                 "| round | held-out val mIoU | in-sample val mIoU | ensemble stage |", "|---|---|---|---|"]
        for r in self.rounds:
            name = f"**{r.name}**" if r.name == self.selected else r.name
            lines.append(f"| {name} | {_cell(r.miou)} | {_cell(r.miou_in_sample)} | {r.stage} |")
        return "\n".join(lines) + "\n"

    def tags(self) -> dict[str, str]:
        """MLflow tags naming the kept round and its margin."""
        return {"round.selected": self.selected, "round.runner_up": self.runner_up or "",
                "round.margin": "" if math.isnan(self.margin) else f"{self.margin:.6f}"}

    def save(self, path: str | Path) -> Path:
        write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> RoundChoice:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"no round selection at {path}; run the round selection step first")
        data = json.loads(path.read_text())
        rounds = tuple(RoundScore(r["name"], _number(r["miou"]), _number(r["miou_in_sample"]), r["stage"], r["scoring"])
                       for r in data["rounds"])
        return cls(data["selected"], data["runner_up"], _number(data["margin"]), rounds)


def choose_round(rounds: Sequence[RoundScore]) -> RoundChoice:
    """The round with the highest held-out val mIoU; a tie (or NaN everywhere) keeps the earliest."""
    if not rounds:
        raise DataError("no rounds to choose from; give at least one round's ensemble")
    names = [r.name for r in rounds]
    if len(set(names)) != len(names):
        raise DataError(f"round names must be unique, got {names}")
    ranked = sorted(rounds, key=lambda r: (-(r.miou if math.isfinite(r.miou) else -math.inf), names.index(r.name)))
    best = ranked[0]
    if len(ranked) == 1:
        return RoundChoice(best.name, None, math.nan, tuple(rounds))
    runner_up = ranked[1]
    margin = best.miou - runner_up.miou if math.isfinite(best.miou) and math.isfinite(runner_up.miou) else math.nan
    return RoundChoice(best.name, runner_up.name, margin, tuple(rounds))


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _json_float(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def _cell(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:.4f}"
