"""Peak memory of `validate-data` and `prepare` on a generated polygon-heavy annotation file.

    python benchmarks/prepare_memory_bench.py [--annotations N] [--images M] [--folder DIR]

Writes DIR/src/train.json (N annotations of 30-point polygons over M small PNGs), then runs
each command in a fresh process and prints its peak RSS above the imports, and the file size.
prepare should stay near validate-data (one parsed copy of the file): the splits, masks,
statistics and content hash work from the records already loaded. 100k annotations (a
52 MiB file) run in about two minutes: both peak at 171 MiB above imports, 3.3x the file.
2M annotations make a file of about 1 GB (the "1 GB in well under 8 GB" check of issue 20).
tests/data/test_prepare_memory.py runs a small one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

_MEASURE = """
import sys
import matplotlib.pyplot, pycocotools.mask, trashseg.data.coco, trashseg.data.prepare  # noqa: imports are not the cost


def status(field):
    line = next(line for line in open("/proc/self/status") if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
base = status("VmRSS")
which, source, out = sys.argv[1:4]
if which == "validate":
    trashseg.data.coco.load_coco(source + "/train.json")
else:
    trashseg.data.prepare.prepare_dataset(source, out)
print(status("VmHWM") - base)
"""


def make_source(folder: Path, annotations: int, images: int, seed: int = 0) -> Path:
    """A source folder with train.json (no val.json: prepare also splits) and its images."""
    rng = np.random.default_rng(seed)
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(images):
        Image.fromarray(np.full((64, 64, 3), (i * 37) % 256, np.uint8)).save(folder / "imgs" / f"{i}.png")
        records.append({"id": i, "file_name": f"imgs/{i}.png", "width": 64, "height": 64})
    angles = np.linspace(0, 2 * np.pi, 30, endpoint=False)
    with open(folder / "train.json", "w") as handle:  # streamed: the generator holds no file-sized list
        handle.write(json.dumps({"images": records, "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 6)]})[:-1])
        handle.write(', "annotations": [')
        for k in range(annotations):
            cx, cy = rng.uniform(16, 48, 2)
            radius = rng.uniform(3, 12)
            polygon = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1).round(2).ravel()
            record = {
                "id": k, "image_id": k % images, "category_id": 1 + k % 5, "segmentation": [polygon.tolist()],
                "bbox": [round(cx - radius, 2), round(cy - radius, 2), round(2 * radius, 2), round(2 * radius, 2)],
                "area": round(float(np.pi * radius**2), 2), "iscrowd": 0,
            }
            handle.write(("," if k else "") + json.dumps(record))
        handle.write("]}\n")
    return folder


def peak_extra_bytes(which: str, source: Path, out: Path) -> int:
    """Peak RSS of one `validate` or `prepare` run above its imports, in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, which, str(source), str(out)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode:
        raise RuntimeError(f"{which} failed:\n{done.stderr[-3000:]}")
    return int(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", type=int, default=100_000)
    parser.add_argument("--images", type=int, default=500, help="at most 255 annotations per image keep it realistic")
    parser.add_argument("--folder", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="prepare-memory-"))
    source = make_source(folder / "src", args.annotations, args.images)
    size = (source / "train.json").stat().st_size
    validate = peak_extra_bytes("validate", source, folder / "v-out")
    prepare = peak_extra_bytes("prepare", source, folder / "out")
    print(f"annotation file {size / 2**20:.0f} MiB")
    print(f"validate-data peak above imports {validate / 2**20:.0f} MiB ({validate / size:.1f}x the file)")
    print(f"prepare       peak above imports {prepare / 2**20:.0f} MiB ({prepare / size:.1f}x the file, "
          f"{prepare / validate:.2f}x validate-data)")


if __name__ == "__main__":
    main()
