import io
import json

import lz4.frame
import numpy as np
import pytest
import zstandard
from PIL import Image

from trashseg.data.classes import DEFAULT_TAXONOMY, ClassTable
from trashseg.errors import DataError
from trashseg.predictions import PROBS_SUFFIX, PredictionSet, argmax_classes


def test_reference_categories_keep_their_ids():
    categories = [{"id": i, "name": n} for i, n in enumerate(DEFAULT_TAXONOMY) if i > 0]
    table = ClassTable.from_categories(list(reversed(categories)))
    assert table.names == DEFAULT_TAXONOMY
    assert table.category_to_class == {i: i for i in range(1, 11)}
    assert table.palette().shape == (11, 3)


def test_any_taxonomy_is_numbered_from_one_and_round_trips(tmp_path):
    table = ClassTable.from_categories([{"id": 40, "name": "cat"}, {"id": 7, "name": "dog"}])
    assert table.names == ("Background", "dog", "cat")
    assert table.category_to_class == {7: 1, 40: 2}
    assert len(set(map(tuple, table.palette()))) == 3
    table.save(tmp_path / "classes.json")
    assert ClassTable.load(tmp_path / "classes.json") == table


def test_category_zero_is_the_background():
    table = ClassTable.from_categories([{"id": 0, "name": "Backgroud"}, {"id": 1, "name": "x"}])
    assert table.names == ("Backgroud", "x")


def test_duplicate_names_rejected():
    with pytest.raises(DataError, match="duplicate"):
        ClassTable.from_categories([{"id": 1, "name": "x"}, {"id": 2, "name": "x"}])


@pytest.mark.parametrize("codec", ["lz4", "zstd", "zlib"])
@pytest.mark.parametrize("dtype, tolerance", [("uint8", 1 / 510 + 1e-6), ("float16", 1e-3)])
def test_prediction_set_round_trip(tmp_path, dtype, tolerance, codec):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(8, 6)).transpose(2, 0, 1)
    created = PredictionSet.create(tmp_path, ["a", "b", "c"], dtype=dtype, source={"architecture": "x"}, codec=codec)
    created.add("batch/0001.jpg", probs)
    created.save()
    opened = PredictionSet.open(tmp_path)
    assert (opened.file_names, opened.codec, opened.dtype) == (["batch/0001.jpg"], codec, dtype)
    assert opened.source == {"architecture": "x"}
    assert np.abs(opened.probs("batch/0001.jpg") - probs).max() <= tolerance
    np.testing.assert_array_equal(opened.mask("batch/0001.jpg"), probs.argmax(0))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "0001.jpg" + PROBS_SUFFIX[codec], "0001.png", "predictions.json"  # no temp files left
    ]


def test_default_format_is_uint8_lz4_npy(tmp_path):
    probs = np.random.default_rng(1).dirichlet(np.ones(4), size=(5, 7)).transpose(2, 0, 1)
    created = PredictionSet.create(tmp_path, list("abcd"))
    created.add("0.jpg", probs)
    created.save()
    assert json.loads((tmp_path / "predictions.json").read_text())["codec"] == "lz4"
    # A plain .npy inside an LZ4 frame: `lz4 -d` on the file gives a standard numpy file.
    raw = lz4.frame.decompress((tmp_path / "probs" / "0.jpg.npy.lz4").read_bytes())
    stored = np.load(io.BytesIO(raw))
    assert stored.dtype == np.uint8 and stored.shape == (4, 5, 7)
    np.testing.assert_array_equal(stored, np.floor(probs * 255 + 0.5))


def test_folders_written_before_the_codec_was_recorded_are_read(tmp_path):
    """The old layout: probs/<name>.npz (zlib, key `probs`), no `codec` in the meta."""
    probs = np.random.default_rng(2).dirichlet(np.ones(3), size=(6, 6)).transpose(2, 0, 1).astype(np.float16)
    (tmp_path / "probs" / "sub").mkdir(parents=True)
    (tmp_path / "masks" / "sub").mkdir(parents=True)
    np.savez_compressed(tmp_path / "probs" / "sub" / "a.jpg.npz", probs=probs)
    Image.fromarray(probs.argmax(0).astype(np.uint8)).save(tmp_path / "masks" / "sub" / "a.png")
    meta = {"class_names": ["x", "y", "z"], "file_names": ["sub/a.jpg"], "dtype": "float16", "source": {}}
    (tmp_path / "predictions.json").write_text(json.dumps(meta))
    opened = PredictionSet.open(tmp_path)
    assert opened.codec == "zlib"
    np.testing.assert_array_equal(opened.probs("sub/a.jpg"), probs.astype(np.float32))
    np.testing.assert_array_equal(opened.mask("sub/a.jpg"), probs.argmax(0))


def _with_declared_size(frame: bytes, codec: str, size: int) -> bytes:
    """`frame` re-framed to declare `size` bytes of content (its real content is far smaller)."""
    raw = lz4.frame.decompress(frame) if codec == "lz4" else zstandard.ZstdDecompressor().decompress(frame)
    # Unflushed (the compressors check the size at the end): the header is what is read first.
    if codec == "lz4":
        compressor = lz4.frame.LZ4FrameCompressor()
        return compressor.begin(source_size=size) + compressor.compress(raw)
    compressor = zstandard.ZstdCompressor().compressobj(size=size)
    return compressor.compress(raw) + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_damaged_probability_files_are_refused_by_name(tmp_path, codec):
    created = PredictionSet.create(tmp_path, ["a", "b"], codec=codec)
    created.add("0.jpg", np.full((2, 4, 4), 0.5))
    created.save()
    path = tmp_path / "probs" / ("0.jpg" + PROBS_SUFFIX[codec])
    whole = path.read_bytes()
    huge = _with_declared_size(whole, codec, 1 << 40)  # a header claiming 1 TiB: refused, not allocated
    for damaged in (whole[:8] + b" truncated", whole[: len(whole) // 2], huge):
        path.write_bytes(damaged)
        with pytest.raises(DataError, match=rf"0\.jpg\{PROBS_SUFFIX[codec]}: unreadable {codec} probabilities") as refused:
            PredictionSet.open(tmp_path).probs("0.jpg")
    assert "declares 1099511627776 bytes" in str(refused.value)


def test_unknown_codec_is_refused_by_name(tmp_path):
    created = PredictionSet.create(tmp_path, ["a", "b"])
    created.add("0.jpg", np.full((2, 4, 4), 0.5))
    created.save()
    meta = json.loads((tmp_path / "predictions.json").read_text())
    (tmp_path / "predictions.json").write_text(json.dumps({**meta, "codec": "brotli"}))
    with pytest.raises(DataError, match="codec 'brotli' is not supported; use one of lz4, zstd, zlib"):
        PredictionSet.open(tmp_path)
    with pytest.raises(DataError, match="codec 'snappy'"):
        PredictionSet.create(tmp_path / "new", ["a"], codec="snappy")


def test_prediction_set_rejects_wrong_class_count_and_missing_folder(tmp_path):
    created = PredictionSet.create(tmp_path / "p", ["a", "b"])
    with pytest.raises(DataError, match=r"expected \(2, H, W\)"):
        created.add("x.jpg", np.zeros((3, 4, 4)))
    with pytest.raises(DataError, match="not a prediction folder"):
        PredictionSet.open(tmp_path / "missing")


def test_a_real_class_at_category_zero_gets_its_own_class_id():
    # The public 60-class trash dataset has "Aluminium foil" at COCO id 0.
    table = ClassTable.from_categories([{"id": 17, "name": "c"}, {"id": 0, "name": "Aluminium foil"}, {"id": 5, "name": "b"}])
    assert table.names == ("Background", "Aluminium foil", "b", "c")
    assert table.category_to_class == {0: 1, 5: 2, 17: 3}
    assert not table.is_identity
    assert "COCO category 0 -> class 1 (Aluminium foil)" in table.mapping_lines()
    assert ClassTable.default().is_identity


def test_argmax_classes_matches_numpy_including_ties():
    probs = np.random.default_rng(3).integers(0, 3, size=(5, 9, 7)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(argmax_classes(probs), probs.argmax(0))
