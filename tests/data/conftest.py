"""Writes small COCO datasets inside each test (broken ones included)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def write_dataset(tmp_path):
    """write_dataset(data) -> annotation path; writes the images the records name."""

    def write(data, *, name="train.json", folder: Path | None = None, images=True):
        folder = folder or tmp_path / "src"
        folder.mkdir(parents=True, exist_ok=True)
        if images:
            for image in data.get("images", []):
                path = folder / image["file_name"]
                path.parent.mkdir(parents=True, exist_ok=True)
                pixels = np.full((image["height"], image["width"], 3), (90 + 10 * image["id"]) % 256, np.uint8)
                Image.fromarray(pixels).save(path)
        path = folder / name
        path.write_text(json.dumps(data))
        return path

    return write
