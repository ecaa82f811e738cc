"""GFLOPs for every architecture of the table (tiny twins here; full sizes in the README)."""

import pytest

from trashseg.cli import main
from trashseg.errors import ConfigError
from trashseg.models import ARCHITECTURES, build_model
from trashseg.models.complexity import (
    complexity_table,
    inference_gflops,
    model_gflops,
    peak_bf16_tflops,
    training_mfu,
)

TINY = [name for name in ARCHITECTURES if name.endswith("-tiny")]


def test_every_architecture_is_counted_and_grows_with_the_image():
    table = complexity_table(TINY, image_size=64)
    assert [name for name, _, _ in table] == TINY
    assert all(params > 0 and gflops > 0 for _, params, gflops in table)
    # Convolutions and windowed attention cost ~4x for twice the side (global attention more).
    small, large = inference_gflops("segformer-b0-tiny", 64), inference_gflops("segformer-b0-tiny", 128)
    assert 3.5 < large / small < 5.0


def test_semask_adds_its_semantic_layers_and_fapn_its_decoder_to_mask2former():
    plain, semask, fapn = (
        inference_gflops(f"mask2former-{name}-tiny", 64)
        for name in ("swin-t", "semask-swin-t", "semask-fapn-swin-t")
    )
    assert plain < semask and semask != fapn


def test_unknown_name_is_refused():
    with pytest.raises(ConfigError, match="unknown architecture 'nope'"):
        inference_gflops("nope")


def test_architectures_command_prints_gflops_on_request(capsys):
    assert main(["architectures", "--gflops", "--image-size", "64", "--only", "segformer-b0-tiny",
                 "mask2former-semask-swin-t-tiny"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "2 per multiply-add" in lines[0]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert list(rows) == ["segformer-b0-tiny", "mask2former-semask-swin-t-tiny"]
    assert all(float(values[1]) > 0 for values in rows.values())


def test_a_built_model_is_counted_as_the_table_counts_it():
    # Within a few percent: on "meta" attention is counted through its decomposition (measured:
    # 4.20 vs 4.01 MFLOPs of bmm here), the rest exactly.
    counted = model_gflops(build_model("segformer-b0-tiny", 11), 64)
    assert counted == pytest.approx(inference_gflops("segformer-b0-tiny", 64), rel=0.03)


def test_mfu_is_against_the_dense_bf16_peak_of_a_known_card_only():
    assert peak_bf16_tflops("NVIDIA H200") == 989.5 and peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312
    # 100 GFLOPs forward, x3 with backward, at 1000 images/s: 300 TFLOP/s of 989.5.
    assert training_mfu(100.0, 1000.0, 989.5) == pytest.approx(300 / 989.5)
    # A MIG slice, another card or a CPU: no peak, no guess.
    for name in ("NVIDIA H200 MIG 1g.18gb", "NVIDIA GeForce RTX 4090", "CPU"):
        assert peak_bf16_tflops(name) is None and training_mfu(100.0, 1000.0, peak_bf16_tflops(name)) == "n/a"
