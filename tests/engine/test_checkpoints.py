"""Checkpoints: plain tensors and data (weights_only loading), exact resume, no overwrite."""

import json

import pytest
import torch

from trashseg.cli import main
from trashseg.config import from_mapping
from trashseg.errors import ConfigError
from trashseg.models import load_checkpoint
from trashseg.training import TrainConfig, train


def _config(**changes):
    # Mask2Former draws random points in its loss, copy-paste and class-balanced sampling
    # draw per sample: a resume that restored any RNG or data position wrongly would differ.
    values = dict(
        architecture="mask2former-swin-t-tiny", image_size=48, batch_size=2, iterations=4, warmup_iters=1,
        lr=1e-3, eval_interval=2, checkpoint_interval=2, log_interval=1, num_workers=0, deterministic=True,
        copy_paste_classes=["Battery", "Clothing"], class_balanced_sampling=True, tracking={"enabled": False},
    )
    values.update(changes)
    return from_mapping(TrainConfig, values)


def test_resume_reaches_bitwise_the_same_weights(sample_dataset, tmp_path):
    config = _config()
    uninterrupted = train(config, sample_dataset, tmp_path / "full")
    stopped = train(config, sample_dataset, tmp_path / "split", stop_after=2)
    assert stopped.iterations == 2
    middle = torch.load(stopped.last_checkpoint, weights_only=True)
    assert middle["iteration"] == 2
    resumed = train(config, sample_dataset, tmp_path / "split", resume=True)

    full_state = torch.load(uninterrupted.last_checkpoint, weights_only=True)
    resumed_state = torch.load(resumed.last_checkpoint, weights_only=True)
    assert resumed_state["iteration"] == full_state["iteration"] == 4
    assert full_state["model"].keys() == resumed_state["model"].keys()
    for key, tensor in full_state["model"].items():
        assert torch.equal(tensor, resumed_state["model"][key]), key
    # the optimizer moments too, so a further resume would also stay exact
    for key, state in full_state["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], resumed_state["optimizer"]["state"][key]["exp_avg"])
    assert resumed.best_miou == uninterrupted.best_miou
    # the steps after the stop changed the weights: the comparison has teeth
    assert any(not torch.equal(t, middle["model"][k]) for k, t in full_state["model"].items())

def test_checkpoint_holds_everything_to_continue_and_to_predict(sample_dataset, tmp_path):
    result = train(_config(architecture="segformer-b0-tiny", iterations=2, eval_interval=1), sample_dataset, tmp_path)
    state = torch.load(result.last_checkpoint, weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "iteration", "config", "classes", "normalisation"} <= set(state)
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    assert state["config"]["architecture"] == "segformer-b0-tiny"
    assert [c["name"] for c in state["classes"]][9] == "Battery"
    assert state["normalisation"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads((tmp_path / "config.json").read_text())["iterations"] == 2
    assert (tmp_path / "classes.json").is_file()

    best = torch.load(result.best_checkpoint, weights_only=True)
    assert "optimizer" not in best, "best.pt is weights + meta only"
    model, meta = load_checkpoint(result.best_checkpoint)
    assert meta.architecture == "segformer-b0-tiny" and meta.iteration == result.best_iteration
    assert meta.classes.num_classes == 11 and not model.training
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, best["model"][key])


def test_existing_run_is_never_overwritten_and_resume_checks_the_config(sample_dataset, tmp_path):
    config = _config(architecture="segformer-b0-tiny", iterations=2, eval_interval=0)
    train(config, sample_dataset, tmp_path, stop_after=1)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a checkpoint.*--resume"):
        train(config, sample_dataset, tmp_path)
    assert (tmp_path / "last.pt").read_bytes() == before
    with pytest.raises(ConfigError, match="lr: 0.001 -> 0.01"):
        train(_config(architecture="segformer-b0-tiny", iterations=2, eval_interval=0, lr=1e-2), sample_dataset, tmp_path, resume=True)


def test_cli_time_boxed_run_then_resume(sample_dataset, tmp_path, capsys):
    common = ["train", "--data", str(sample_dataset), "--out", str(tmp_path), "--set", "architecture=segformer-b0-tiny",
              "--set", "image_size=48", "--set", "iterations=2", "--set", "warmup_iters=0", "--set", "eval_interval=0",
              "--set", "num_workers=0", "--set", "tracking.enabled=false"]
    assert main([*common, "--stop-after", "1"]) == 0
    assert torch.load(tmp_path / "last.pt", weights_only=True)["iteration"] == 1
    assert main([*common, "--resume"]) == 0
    assert torch.load(tmp_path / "last.pt", weights_only=True)["iteration"] == 2
    out = capsys.readouterr().out
    assert json.loads(out[out.rindex("{\n") :])["last_checkpoint"] == str(tmp_path / "last.pt")


def test_on_checkpoint_sees_each_written_checkpoint(sample_dataset, tmp_path):
    seen = []

    def record(path, iteration):
        assert path.is_file()  # called after the atomic write
        seen.append((path.name, iteration, torch.load(path, weights_only=True)["iteration"]))

    config = _config(architecture="segformer-b0-tiny", iterations=4, eval_interval=4, checkpoint_interval=2)
    train(config, sample_dataset, tmp_path / "run", on_checkpoint=record)
    assert [(name, it) for name, it, _ in seen] == [("last.pt", 2), ("best.pt", 4), ("last.pt", 4)]
    assert all(it == saved for _, it, saved in seen)


def test_the_checkpoint_format_imports_no_model_code():
    """checkpoints is the file format; models builds from it (no import circle between them)."""
    import subprocess
    import sys

    code = "import sys, trashseg.checkpoints; print('trashseg.models' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
