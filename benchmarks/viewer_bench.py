"""How long the viewer takes to render a page of images, cold (first visit) and warm (cached).

    python benchmarks/viewer_bench.py [--images 200] [--size 512] [--pages 3]

On a generated, prepared sample dataset at the reference 512 px, with two prediction
folders of its val split, each page is run under Streamlit's AppTest (the script run of
the server, images encoded, without the browser's drawing): the Data page's 12-image
grid (overlays + instance outlines) on pages 1..N, cold and again warm, and the
Predictions page's side-by-side view. The issue's target: a page of images under 2 s.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from trashseg.data.layout import PreparedDataset
from trashseg.data.prepare import prepare_dataset
from trashseg.data.sample import generate_sample_dataset
from trashseg.predictions import PredictionSet
from trashseg.viewer.sources import SOURCES_ENV, ViewerSources

APP = str(Path(__file__).resolve().parents[1] / "trashseg" / "viewer" / "app.py")


def prediction_folder(dataset: PreparedDataset, out: Path, seed: int) -> str:
    """The true masks with 5% of pixels set to Background, as confident probabilities."""
    classes = dataset.classes()
    rng = np.random.default_rng(seed)
    folder = PredictionSet.create(out, classes.names, source={"architecture": f"model{seed}"})
    for sample in dataset.samples("val"):
        mask = np.array(Image.open(sample.mask))
        mask = np.where((mask == 255) | (rng.random(mask.shape) < 0.05), 0, mask)
        probs = np.full((classes.num_classes, *mask.shape), 0.01, np.float32)
        np.put_along_axis(probs, mask[None].astype(np.int64), 0.9, axis=0)
        folder.add(sample.file_name, probs)
    folder.save()
    return str(out)


def timed_run(at) -> float:
    start = time.perf_counter()
    at.run()
    elapsed = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(at.exception[0].value)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--pages", type=int, default=3)
    args = parser.parse_args()
    from streamlit.testing.v1 import AppTest

    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        generate_sample_dataset(root / "raw", images=args.images, size=args.size, seed=0)
        prepare_dataset(root / "raw", root / "data")
        dataset = PreparedDataset(root / "data")
        models = [prediction_folder(dataset, root / f"model{i}", i) for i in (1, 2)]
        os.environ[SOURCES_ENV] = ViewerSources(str(dataset.root), tuple(models)).to_json()
        train = len(dataset.samples("train"))
        print(f"{train} train / {len(dataset.samples('val'))} val images at {args.size} px; 12 images per Data page")
        at = AppTest.from_file(APP, default_timeout=600)
        first = timed_run(at)
        print(f"first visit (imports, listing, Data page 1): {first:.2f} s")
        for page in range(2, args.pages + 2):
            at.number_input(key="data_page").set_value(page)
            cold = timed_run(at)
            warm = timed_run(at)
            print(f"Data page {page}: cold {cold:.2f} s, warm {warm:.2f} s (warm/cold {warm / cold:.2f})")
        at.sidebar.radio[0].set_value("Predictions")
        cold = timed_run(at)
        warm = timed_run(at)
        print(f"Predictions (image, truth, 2 models, disagreement): cold {cold:.2f} s, warm {warm:.2f} s")


if __name__ == "__main__":
    main()
