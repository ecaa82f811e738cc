"""`make gpu-check DRY=1`: the GPU check's script on CPU with tiny twins, so it cannot rot."""

import contextlib
import io
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is not installed; pytest's own entry point does not add the root
    sys.path.insert(0, str(REPO))

from benchmarks import gpu_check  # noqa: E402
from benchmarks.gpu_check import (  # noqa: E402
    DRY_PLAN,
    EXTRA_ARCHITECTURES,
    SKIPPABLE,
    fit_batch,
    run_check,
    run_row,
)

MEASURED = ("params_m", "batch", "train_images_per_s", "peak_memory_gib", "gflops_per_image",
            "predict_images_per_s", "predict_tta_images_per_s", "last_loss")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The whole dry run with the arguments `make gpu-check DRY=1` passes (~30 s of CPU), run by
    this process's `main`: a fresh interpreter would import transformers again (~5 s of CPU)."""
    out = tmp_path_factory.mktemp("gpu-check")
    planned = subprocess.run(["make", "-n", "--no-print-directory", "gpu-check", "DRY=1", f"GPU_CHECK_OUT={out}", f"PY={sys.executable}"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert planned == [sys.executable, "-m", "benchmarks.gpu_check", "--dry", "--out", str(out)]
    # The DDP row's workers are fresh interpreters: they find trashseg and benchmarks by this path.
    with mock.patch.dict(os.environ, {"PYTHONPATH": str(REPO)}), contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert gpu_check.main(planned[3:]) == 0, stdout.getvalue()[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), stdout.getvalue()


@pytest.mark.slow
def test_dry_run_has_a_measured_row_per_architecture_and_mfu_na_on_cpu(dry_run):
    result, markdown, stdout = dry_run
    # recipe_architectures() is pipelines.full's list (test_the_recipe_list_is_read_from_the_pipeline).
    expected = [f"{name}-tiny" for name in [*gpu_check.recipe_architectures(), *EXTRA_ARCHITECTURES]]
    trains = [row for row in result["rows"] if row["kind"] == "train"]
    assert [row["name"] for row in trains] == expected
    for row in trains:
        assert row["status"] == "ok", row
        assert all(isinstance(row[key], int | float) and row[key] >= 0 for key in MEASURED), row
        assert row["train_images_per_s"] > 0 and row["gflops_per_image"] > 0 and row["predict_tta_images_per_s"] > 0
        assert row["predict_tta_images_per_s"] < row["predict_images_per_s"], "TTA runs 6 passes per image"
        assert row["mfu"] == "n/a"
        assert f"| `{row['name']}` |" in markdown and "| n/a |" in markdown
    assert result["device"]["name"] == "CPU" and result["peak_bf16_tflops"] == "n/a" and result["finished"]
    assert f"[{len(result['rows'])}/{len(result['rows'])}]" in stdout


@pytest.mark.slow
def test_dry_run_checks_natten_compile_and_ddp(dry_run):
    result, markdown, _ = dry_run
    rows = {row["kind"]: row for row in result["rows"]}
    natten = rows["natten"]
    assert natten["status"] == "ok" and len(natten["cases"]) == 3
    # Above 0: natten's own kernels ran (measured ~3e-7), not the reference against itself.
    assert all(0 < case["forward"] <= case["tolerance_forward"] and case["backward"] is None for case in natten["cases"])
    options = rows["options"]
    assert options["status"] == "ok"
    # Both options off and on, and compiled with channels_last (the GPU plan also compiles without it).
    assert [(run["channels_last"], run["compile"]) for run in options["runs"]] == [(False, False), (True, False), (True, True)]
    assert list(DRY_PLAN.option_runs) == [run for run in gpu_check.GPU_PLAN.option_runs if run != (False, True)]
    assert all(run["images_per_s"] > 0 for run in options["runs"])
    ddp = rows["ddp"]
    assert ddp["status"] == "ok" and ddp["backend"] == "gloo"
    assert ddp["same_global_batch"] < 0.05 < ddp["half_batch"]
    assert "2 processes vs grad_accum=2" in markdown and "natten kernels" in markdown


def test_a_failing_row_does_not_hide_the_others(tmp_path, capsys):
    check = run_check(DRY_PLAN, tmp_path, ["segformer-b0", "nope", "upernet-swin-t"], skip=SKIPPABLE)
    assert [(row["name"], row["status"]) for row in check.rows] == [
        ("segformer-b0-tiny", "ok"), ("nope-tiny", "failed"), ("upernet-swin-t-tiny", "ok")]
    assert "unknown architecture 'nope-tiny'" in check.rows[1]["error"]
    assert check.rows[2]["train_images_per_s"] > 0
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [row["status"] for row in saved["rows"]] == ["ok", "failed", "ok"]
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "## Failures" in markdown and "- nope-tiny (failed): ConfigError: unknown architecture" in markdown
    assert "`upernet-swin-t-tiny`" in markdown
    assert gpu_check.main(["--dry", "--out", str(tmp_path / "cli"), "--arch", "nope", "--skip", *SKIPPABLE]) == 1
    assert "rows failed: nope-tiny" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run on a machine without a GPU")
def test_without_a_gpu_the_full_run_stops_at_once_and_says_so(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path), "--arch", "segformer-b0", "--skip", "options"]) == 1
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["device"]["status"] == "failed" and "DRY=1" in saved["device"]["error"]
    assert [row["status"] for row in saved["rows"]] == ["skipped"] * 3
    assert all("no usable device" in row["error"] for row in saved["rows"])
    assert "# GPU check: no usable device" in (tmp_path / "gpu_check.md").read_text()
    assert "no usable device" in capsys.readouterr().err


def test_a_row_over_its_time_limit_is_stopped_with_its_helpers(tmp_path):
    record = run_row({"kind": "options", "name": "slow", "arch": "segformer-b0-tiny"}, DRY_PLAN, 1.0, tmp_path)
    assert record["status"] == "timeout" and record["error"] == "stopped at its time limit of 1 s"
    assert record["seconds"] < 10
    assert multiprocessing.active_children() == []


def test_the_budget_skips_rows_it_cannot_start(tmp_path):
    plan = gpu_check.dataclasses.replace(DRY_PLAN, budget_s=0.0)
    check = run_check(plan, tmp_path, ["segformer-b0"], skip=("natten", "options"))
    assert [(row["name"], row["status"]) for row in check.rows] == [
        ("segformer-b0-tiny", "skipped"), ("ddp mask2former-swin-t-tiny", "skipped")]
    assert "time budget of 0 s was spent" in check.rows[0]["error"]


def test_the_largest_batch_that_fits_is_chosen():
    def try_batch(batch):
        if batch > 4:
            raise torch.cuda.OutOfMemoryError(f"batch {batch}")
        return f"ran {batch}"

    assert fit_batch(try_batch, (16, 8, 4, 2)) == (4, "ran 4", {"16": "out of memory", "8": "out of memory", "4": "fits"})
    with pytest.raises(torch.cuda.OutOfMemoryError, match="no batch of \\[16, 8\\] fits"):
        fit_batch(try_batch, (16, 8))


def test_the_recipe_list_is_read_from_the_pipeline():
    from pipelines.full import RECIPE_ARCHITECTURES

    assert gpu_check.recipe_architectures() == RECIPE_ARCHITECTURES
