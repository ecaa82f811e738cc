"""prepare's memory stays near one parsed copy of the annotation file (issue 20: it was twice validate-data's)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from prepare_memory_bench import make_source, peak_extra_bytes  # noqa: E402


def test_prepare_peaks_near_validate_data(tmp_path):
    source = make_source(tmp_path / "src", annotations=12_000, images=60)  # ~7 MB of polygons
    size = (source / "train.json").stat().st_size
    validate = peak_extra_bytes("validate", source, tmp_path / "unused")
    prepare = peak_extra_bytes("prepare", source, tmp_path / "out")
    assert (tmp_path / "out" / "dataset.json").is_file()
    assert validate > size  # the parsed file is the cost measured
    # A second parsed copy (the old re-read of the written splits) would double it; the
    # constant is the statistics' plots and per-image buffers, whatever the file's size.
    allowed = 1.4 * validate + 15 * 2**20
    assert prepare < allowed, f"prepare {prepare / 2**20:.0f} MiB vs validate {validate / 2**20:.0f} MiB"
