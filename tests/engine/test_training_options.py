"""Pseudo-label mixing, gradient accumulation, AMP, the architectures command, and CUDA."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from trashseg.cli import main
from trashseg.config import from_mapping
from trashseg.data.layout import PreparedDataset
from trashseg.errors import DataError
from trashseg.train_data import KeySampler, Stream
from trashseg.training import TrainConfig, train


def _tiny(**changes):
    values = dict(architecture="segformer-b0-tiny", image_size=48, batch_size=2, iterations=2, warmup_iters=0,
                  eval_interval=0, log_interval=1, num_workers=0, tracking={"enabled": False})
    values.update(changes)
    return from_mapping(TrainConfig, values)


def _pseudo_copy(sample_dataset, root):
    """A pseudo-label dataset in the shared layout: uncertain pixels are 255 (ignore)."""
    shutil.copytree(sample_dataset, root)
    dataset = PreparedDataset(root)
    for sample in dataset.samples("train"):
        mask = np.array(Image.open(sample.mask))
        mask[: mask.shape[0] // 2] = 255
        Image.fromarray(mask).save(sample.mask)
    return root


def test_each_batch_mixes_labelled_and_pseudo_samples_in_ratio():
    streams = [Stream(list(range(10)), per_batch=3, weights=None), Stream(list(range(4)), per_batch=1, weights=None)]
    batches = list(KeySampler(streams, seed=0, start=0, end=5, grad_accum=1, rank=0, world=1))
    assert all([key[0] for key in batch] == [0, 0, 0, 1] for batch in batches)
    pseudo = [key[1] for batch in batches for key in batch if key[0] == 1]
    assert sorted(pseudo[:4]) == [0, 1, 2, 3], "the pseudo stream cycles through its own images"


def test_training_with_pseudo_labels_grad_accumulation_and_bf16(sample_dataset, tmp_path):
    pseudo = _pseudo_copy(sample_dataset, tmp_path / "pseudo")
    config = _tiny(batch_size=4, pseudo_ratio=0.5, grad_accum=2, amp="bf16", checkpoint_interval=1)
    result = train(config, sample_dataset, tmp_path / "run", pseudo_dataset=pseudo)
    state = torch.load(result.last_checkpoint, weights_only=True)
    assert state["iteration"] == 2 and state["config"]["pseudo_ratio"] == 0.5
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_pseudo_dataset_with_other_classes_is_rejected(sample_dataset, tmp_path):
    pseudo = tmp_path / "pseudo"
    shutil.copytree(sample_dataset, pseudo)
    records = json.loads((pseudo / "classes.json").read_text())
    records[1]["name"] = "Trash"
    (pseudo / "classes.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match="pseudo-label dataset .* has classes .*'Trash'"):
        train(_tiny(batch_size=2, pseudo_ratio=0.5), sample_dataset, tmp_path / "run", pseudo_dataset=pseudo)


def test_architectures_command_lists_names_with_parameter_counts_and_default_starts(capsys):
    assert main(["architectures"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert "segformer-b0-tiny" in table and "mask2former-swin-l" in table
    assert float(table["mask2former-swin-l"][0].rstrip("M")) > float(table["mask2former-swin-t"][0].rstrip("M")) > 1
    # params, lr, weight decay, default start: full sizes name a hub checkpoint, tiny twins none
    assert table["mask2former-swin-l"][1:] == ["1e-04", "0.05", "facebook/mask2former-swin-large-ade-semantic"]
    assert table["mask2former-dinat-l"][3] == "shi-labs/dinat-large-11x11-in22k-in1k-384"
    assert table["segformer-b0-tiny"][1:] == ["3e-03", "0", "none"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_in_bf16_and_prediction(sample_dataset, tmp_path):
    from trashseg.predict import predict

    result = train(_tiny(iterations=3, eval_interval=3, amp="auto"), sample_dataset, tmp_path / "run")
    assert result.best_miou is not None
    predictions = predict(result.best_checkpoint, sample_dataset, "val", tmp_path / "pred", tta_flip=True)
    probs = predictions.probs(predictions.file_names[0])
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=0.03)


def test_non_finite_loss_stops_before_any_checkpoint_is_written(sample_dataset, tmp_path, monkeypatch):
    from trashseg import train_loop

    real = train_loop.LossModule.forward
    monkeypatch.setattr(train_loop.LossModule, "forward", lambda self, images, masks: real(self, images, masks) * float("nan"))
    config = _tiny(iterations=4, log_interval=4, checkpoint_interval=2)
    with pytest.raises(FloatingPointError, match=r"iterations 1\.\.2"):
        train(config, sample_dataset, tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_gpu_only_speed_options_are_skipped_on_cpu(sample_dataset, tmp_path, caplog):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU behaviour")
    with caplog.at_level("INFO", logger="trashseg.train_loop"):
        result = train(_tiny(channels_last=True, compile=True), sample_dataset, tmp_path / "run")
    assert result.iterations == 2
    assert "CUDA only" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_channels_last_and_compile_train_on_cuda(sample_dataset, tmp_path):
    result = train(_tiny(channels_last=True, compile=True), sample_dataset, tmp_path / "run")
    assert result.iterations == 2


def test_loader_workers_do_not_change_the_weights(sample_dataset, tmp_path):
    # Persistent, prefetching worker processes load the same keyed samples as the main process.
    in_process = train(_tiny(iterations=3, log_interval=3), sample_dataset, tmp_path / "w0")
    with_workers = train(_tiny(iterations=3, log_interval=3, num_workers=2), sample_dataset, tmp_path / "w2")
    first = torch.load(in_process.last_checkpoint, weights_only=False)["model"]
    second = torch.load(with_workers.last_checkpoint, weights_only=False)["model"]
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_loader_workers_start_after_opencv_used_its_thread_pool(sample_dataset, tmp_path):
    """A process that ran OpenCV's thread pool, then forks loader workers: each worker's
    `cv2.setNumThreads(1)` hung on the inherited, threadless pool before the trainer quieted it."""
    import subprocess
    import sys

    script = (
        "import sys, numpy as np, cv2\n"
        "image = np.random.rand(1500, 1500, 3).astype(np.float32)\n"
        "for _ in range(3): cv2.GaussianBlur(image, (15, 15), 3)  # the pool's threads start\n"
        "from trashseg.tracking import TrackingConfig\n"
        "from trashseg.training import TrainConfig, train\n"
        "config = TrainConfig(architecture='segformer-b0-tiny', image_size=32, batch_size=2, iterations=2,\n"
        "                     warmup_iters=0, checkpoint_interval=2, eval_interval=0, log_interval=2, num_workers=2,\n"
        "                     tracking=TrackingConfig(enabled=False))\n"
        "print('iterations', train(config, sys.argv[1], sys.argv[2]).iterations)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(sample_dataset), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "iterations 2" in done.stdout, done.stderr[-3000:]
