"""Checkpoint files that are not what they claim: a foreign pickle is refused without running
it (and without torch's advice to disable the safe loader), a truncated one is named as such."""

import logging
import os

import torch

from trashseg.cli import main


class _Payload:
    """A pickle that would create a file when unpickled by the unsafe loader."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _predict(checkpoint, sample_dataset, out, caplog):
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="trashseg"):
        code = main(["predict", "--checkpoint", str(checkpoint), "--data", str(sample_dataset), "--split", "val",
                     "--out", str(out)])
    return code, caplog.text


def test_predict_refuses_a_foreign_pickle_without_running_it(sample_dataset, tmp_path, caplog):
    marker = tmp_path / "pwned"
    foreign = tmp_path / "model.pt"
    torch.save({"model": _Payload(marker)}, foreign)
    code, text = _predict(foreign, sample_dataset, tmp_path / "pred", caplog)
    assert code == 2
    assert f"{foreign} is not a trashseg checkpoint" in text and "will not load it" in text
    assert "weights_only" not in text
    assert not marker.exists()


def test_predict_names_a_truncated_checkpoint(trained_checkpoint, sample_dataset, tmp_path, caplog):
    data = trained_checkpoint.read_bytes()
    for size in (0, 100, len(data) // 2, len(data) - 5):
        truncated = tmp_path / f"best-{size}.pt"
        truncated.write_bytes(data[:size])
        code, text = _predict(truncated, sample_dataset, tmp_path / "pred", caplog)
        assert code == 2, size
        assert f"{truncated} cannot be read as a checkpoint ({size} bytes" in text
        assert "truncated or corrupt" in text
    assert not os.path.exists(tmp_path / "pred" / "predictions.json")
