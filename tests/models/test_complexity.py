"""GFLOPs for every architecture of the table (tiny twins here; full sizes in the README)."""

import pytest

from trashseg.cli import main
from trashseg.errors import ConfigError
from trashseg.models import ARCHITECTURES
from trashseg.models.complexity import complexity_table, inference_gflops

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
