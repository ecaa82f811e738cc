"""The results a local run ends with, read from its task folders (OUT/kfp/<run>/<task>/):
each model's and each ensemble stage's val mIoU per round, the selected stage, the
selected round where the pipeline records one, and the registry decision."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

STAGE_REPORT = "ensemble/report/report.json"  # an ensemble-crf task's stage report
EXECUTOR_OUTPUT = "executor_output.json"


def _json(path: Path):
    """A JSON file's content, or None when it is missing or unreadable (a task that did not finish)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _score(value) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and not math.isnan(value) else "-"


def results_table(run_dir: str | Path, round_names: Sequence[str] = ()) -> str:
    """`round_names`: what each ensemble task's round is (e.g. base, pseudo), in pipeline
    order; the columns are named by their task folders when it does not match their number."""
    run_dir = Path(run_dir)
    rounds = [(path.parents[2].name, report) for path in _in_pipeline_order(run_dir.glob(f"*/{STAGE_REPORT}"))
              if isinstance(report := _json(path), dict)]
    lines = ["results (val mIoU):"]
    if rounds and len(round_names) == len(rounds):
        tasks = ", ".join(f"{name} = {task}" for name, (task, _) in zip(round_names, rounds, strict=True))
        rounds = [(name, report) for name, (_, report) in zip(round_names, rounds, strict=True)]
        lines += _stage_rows(rounds) + [f"  rounds (ensemble tasks): {tasks}"]
    elif rounds:
        lines += _stage_rows(rounds)
    else:
        lines.append("  no ensemble stage report (the run stopped before the ensemble)")
    lines += _selected_round(run_dir, rounds)
    lines += _registry(run_dir)
    return "\n".join(lines)


def _in_pipeline_order(report_paths) -> list[Path]:
    """kfp.local numbers repeated tasks in pipeline order: ensemble-crf, ensemble-crf-2, ... -10."""
    def task_number(path: Path) -> tuple[str, int]:
        name, _, number = path.parents[2].name.rpartition("-")
        return (name, int(number)) if number.isdigit() else (path.parents[2].name, 1)

    return sorted(report_paths, key=task_number)


def _stage_rows(rounds: list[tuple[str, dict]]) -> list[str]:
    """Rows: models, then stages, each with one column per round (ensemble task)."""
    scores: dict[str, dict[str, float]] = {}  # row -> round -> mIoU
    models: list[str] = []
    for round_name, report in rounds:
        models += [m for m in report.get("models", []) if isinstance(m, str) and m not in models]
        for stage in report.get("stages", []):
            if not isinstance(stage, dict) or "name" not in stage:
                continue
            # Besides `miou`, any other *miou score (e.g. a held-out one) gets its own row.
            for key in sorted(k for k in stage if k.endswith("miou")):
                row = stage["name"] if key == "miou" else f"{stage['name']} ({key})"
                scores.setdefault(row, {})[round_name] = stage[key]
    names = [name for name, _ in rounds]
    selected = [str(report.get("selected_stage", "-")) for _, report in rounds]
    width = max([len(r) for r in scores] + [24]) + 2
    column = max(len(v) for v in [*names, *selected, "0.0000"]) + 2  # a selected model's name may be long

    def row(label: str, values: list[str], indent: int = 4) -> str:
        return f"{' ' * indent}{label:{width + 2 - indent}s}" + "".join(f"{v:>{column}s}" for v in values)

    lines = [row("", names, indent=2)]
    model_rows = [r for r in scores if r.split(" (")[0] in models]
    for header, rows in (("models", model_rows), ("ensemble stages", [r for r in scores if r not in model_rows])):
        lines.append(f"  {header}")
        lines += [row(r, [_score(scores[r].get(n)) for n in names]) for r in rows]
    lines.append(row("selected stage", selected, indent=2))
    return lines


def _selected_round(run_dir: Path, rounds: list[tuple[str, dict]]) -> list[str]:
    """Where the pipeline records which round it kept: a `*round*` key in a stage report, or
    the outputs of a task named for it (e.g. select-round)."""
    lines = []
    for round_name, report in rounds:
        for key, value in report.items():
            if "round" in key and not isinstance(value, dict | list):
                lines.append(f"  {key} ({round_name}): {value}")
    for task in sorted(p for p in run_dir.glob("*") if p.is_dir() and re.search(r"round|select", p.name)):
        output = _json(task / EXECUTOR_OUTPUT) or {}
        values = output.get("parameterValues", {}) if isinstance(output, dict) else {}
        if values:
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            lines.append(f"  selected round ({task.name}): {shown}")
    return lines


def _registry(run_dir: Path) -> list[str]:
    lines = []
    for decision in sorted(run_dir.glob("*/register-model*/decision")) + sorted(run_dir.glob("register-model*/decision")):
        text = decision.read_text()
        heading = next((line for line in text.splitlines() if line.startswith("#")), "")
        reason = re.search(r"^\| reason \| (.*) \|$", text, re.MULTILINE)
        summary = heading.lstrip("# ").replace("**", "").replace("Model registry: ", "")
        lines.append(f"  registry: {summary}" + (f" ({reason.group(1)})" if reason else ""))
    return lines or ["  registry: no decision (the run stopped before register)"]
