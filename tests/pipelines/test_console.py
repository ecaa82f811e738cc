"""The local runner's terminal: status lines from kfp.local's output, the log file, the results table."""

import io
import json
import logging
import re
import sys
import threading

import pytest

from pipelines.console import TaskConsole
from pipelines.run_summary import results_table


def _kfp_task(
    name: str, architecture: str | list | None, lines: int, finish: str | None = "SUCCESS", depth: int = 1
) -> None:
    """What kfp.local prints for one task, from the thread that runs it (colours included;
    the executor's lines indented by 4 per nested group)."""
    pad = "    " * depth
    print(f"00:00:01.000 - INFO - Executing task \x1b[96m'{name}'\x1b[0m")
    print(f"{pad}{{")
    print(f'{pad}    "inputs": {{')
    for value in [architecture] if isinstance(architecture, str) else architecture or []:
        print(f'{pad}        "metadata": {{"architecture": "{value}"}}')
    print(f"{pad}    }}")
    print(f"{pad}}}")
    for i in range(lines):
        print(f"{pad}[KFP Executor] {name} progress {i}")
    if finish:
        print(f"00:00:02.000 - INFO - Task \x1b[96m'{name}'\x1b[0m finished with status \x1b[92m{finish}\x1b[0m")


def test_one_status_line_per_task_start_and_end_and_everything_in_the_log(tmp_path):
    terminal = io.StringIO()
    with TaskConsole(tmp_path / "logs" / "run.log", terminal=terminal) as console:
        _kfp_task("prepare-data", None, 3)
        workers = [threading.Thread(target=_kfp_task, args=("train-model", arch, 50)) for arch in ("a1", "a2")]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        _kfp_task("bundle-models", ["a1", "a2"], 1)  # several architectures: none named
        print("12:00:00 INFO trashseg.local: MLflow store ready")
    console.close()
    shown = terminal.getvalue().splitlines()
    assert all(re.match(r"\[\d+:\d\d\] ", line) for line in shown)
    assert not any("progress" in line for line in shown)  # executor logs stay in the file
    texts = [line.split("] ", 1)[1] for line in shown]
    assert texts[0] == f"full logs: {tmp_path / 'logs' / 'run.log'}   (VERBOSE=1 shows them here)"
    assert texts[1] == "start  prepare-data" and re.fullmatch(r"done   prepare-data  \d+\.\d s", texts[2])
    for arch in ("a1", "a2"):  # each parallel task is told apart by its architecture
        assert f"start  train-model ({arch})" in texts
        assert any(re.fullmatch(rf"done   train-model \({arch}\)  \d+\.\d s", t) for t in texts)
    assert "start  bundle-models" in texts and texts[-1] == "MLflow store ready"
    log = (tmp_path / "logs" / "run.log").read_text()
    assert log.count("progress") == 104 and "Executing task" in log
    assert [t.label for t in console.finished].count("train-model (a1)") == 1
    assert "share" in console.time_table() and "train-model (a2)" in console.time_table()


def test_handlers_made_during_the_run_still_write_after_it(tmp_path, capsys):
    with TaskConsole(tmp_path / "run.log", terminal=io.StringIO()) as console:
        handler = logging.StreamHandler(sys.stderr)  # as a library imported mid-run makes one
    console.close()
    handler.handle(logging.makeLogRecord({"msg": "after the run"}))
    err = capsys.readouterr().err
    assert "after the run\n" in err and "Logging error" not in err


def test_a_failed_task_shows_the_end_of_its_log(tmp_path):
    terminal = io.StringIO()
    console = TaskConsole(tmp_path / "run.log", terminal=terminal)
    with pytest.raises(RuntimeError), console:
        _kfp_task("predict", "a1", 60, finish=None)
        raise RuntimeError("Task \x1b[96m'predict'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m")
    console.close()
    shown = terminal.getvalue()
    assert re.search(r"\] FAILED predict \(a1\)  \d+\.\d s", shown)
    assert "    | " in shown and "progress 59" in shown and "progress 0\n" not in shown  # the tail only
    assert f"all of them are in {tmp_path / 'run.log'}" in shown


def test_the_start_line_is_shown_when_the_task_starts(tmp_path):
    terminal = io.StringIO()
    with TaskConsole(tmp_path / "run.log", terminal=terminal) as console:
        for depth in (1, 3):  # a task inside an exit handler and a condition is indented deeper
            _kfp_task(f"evaluate-{depth}", None, 2, finish=None, depth=depth)
            assert terminal.getvalue().splitlines()[-1].endswith(f"] start  evaluate-{depth}")  # before it ends
    console.close()


def test_the_architecture_is_named_when_another_task_shifts_the_indentation_mid_input(tmp_path):
    """kfp.local's indenting print is swapped per task and not thread-safe: a parallel task can
    change a line's indentation half-way through another's executor input."""
    terminal = io.StringIO()
    with TaskConsole(tmp_path / "run.log", terminal=terminal) as console:
        print("00:00:01.000 - INFO - Executing task \x1b[96m'train-model'\x1b[0m")
        for line in ['    {', '        "inputs": {', '            "note": "a } in a string {",',
                     '    }',  # an inner brace, now at the outer brace's indentation
                     '                "metadata": {"architecture": "a1"}', '    }']:
            print(line)
        assert terminal.getvalue().splitlines()[-1].endswith("] start  train-model (a1)")
    console.close()


def test_verbose_shows_the_full_logs_too(tmp_path):
    terminal = io.StringIO()
    with TaskConsole(tmp_path / "run.log", terminal=terminal, verbose=True) as console:
        _kfp_task("evaluate", None, 2)
    console.close()
    assert "progress 1" in terminal.getvalue() and "done   evaluate" in terminal.getvalue()


def _stage_report(folder, models, stages, selected, **extra):
    path = folder / "ensemble" / "report" / "report.json"
    path.parent.mkdir(parents=True)
    report = {"selected_stage": selected, "models": models, "stages": stages, **extra}
    path.write_text(json.dumps(report))


def test_results_table_rounds_stages_selected_round_and_registry(tmp_path):
    models = ["seg", "uper"]
    first = [{"name": "seg", "miou": 0.5}, {"name": "uper", "miou": 0.6}, {"name": "soft_vote", "miou": 0.65},
             {"name": "crf", "miou": 0.7}]
    _stage_report(tmp_path / "ensemble-crf", models, first, "crf")
    second = [{"name": "seg", "miou": 0.55}, {"name": "uper", "miou": 0.58},
              {"name": "soft_vote", "miou": 0.62, "heldout_miou": 0.61}]
    _stage_report(tmp_path / "ensemble-crf-2", models, second, "mask2former-semask-fapn-swin-l", selected_round="base")
    (tmp_path / "select-round").mkdir()
    (tmp_path / "select-round" / "executor_output.json").write_text(json.dumps({"parameterValues": {"Output": "base"}}))
    (tmp_path / "register-model").mkdir()
    (tmp_path / "register-model" / "decision").write_text(
        "## Model registry: trashseg v3 promoted to **champion**\n\n| | |\n|---|---|\n| reason | better by 0.02 |\n"
    )
    table = results_table(tmp_path)
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:] if line.startswith("    ")}
    assert rows["seg"] == ["0.5000", "0.5500"] and rows["crf"] == ["0.7000", "-"]
    assert "soft_vote (heldout_miou)" in table and table.index("  models") < table.index("  ensemble stages")
    assert re.search(r"selected stage\s+crf\s+mask2former-semask-fapn-swin-l$", table, re.MULTILINE)
    assert "selected_round (ensemble-crf-2): base" in table and "selected round (select-round): Output=base" in table
    assert "registry: trashseg v3 promoted to champion (better by 0.02)" in table


def test_results_table_names_its_columns_by_round_in_pipeline_order(tmp_path):
    stages = [{"name": "soft_vote", "miou": 0.6}]
    for task, miou in (("ensemble-crf", 0.1), ("ensemble-crf-2", 0.2), ("ensemble-crf-10", 0.3)):  # -10 < -2 as text
        _stage_report(tmp_path / task, ["m"], [*stages, {"name": "m", "miou": miou}], "soft_vote")
    table = results_table(tmp_path, ("base", "pseudo", "third"))
    assert re.search(r"^\s+base\s+pseudo\s+third$", table, re.MULTILINE)
    assert re.search(r"^\s+m\s+0\.1000\s+0\.2000\s+0\.3000$", table, re.MULTILINE)  # crf-10 last
    assert "rounds (ensemble tasks): base = ensemble-crf, pseudo = ensemble-crf-2, third = ensemble-crf-10" in table
    # Names that do not match the tasks found (a run that stopped early) are not guessed at.
    assert re.search(r"^\s+ensemble-crf\s+ensemble-crf-2\s+ensemble-crf-10$", results_table(tmp_path, ("base",)), re.MULTILINE)


def test_results_table_of_a_run_that_stopped_early(tmp_path):
    table = results_table(tmp_path)
    assert "no ensemble stage report" in table and "no decision" in table
