"""Reports a reader can use without the viewer: stage report details, legends, colour swatches."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from trashseg.data.classes import ClassTable
from trashseg.data.stats import write_stats
from trashseg.legend import hex_colour
from trashseg.metrics import SegmentationScores
from trashseg.stage_report import write_stage_report


def test_stage_report_shows_weights_and_gating(tmp_path):
    names = ["Background", "Paper", "Paper pack"]
    soft = SegmentationScores.from_matrix(np.array([[9, 1, 0], [1, 8, 1], [0, 3, 6]]), names)
    crf = SegmentationScores.from_matrix(np.array([[10, 0, 0], [2, 8, 0], [0, 5, 4]]), names)
    gating = {"ensemble_stage": "soft_vote", "refined_stage": "crf", "classes": {
        "Background": {"source": "crf", "iou_ensemble": 0.8, "iou_refined": 0.83},
        "Paper": {"source": "crf", "iou_ensemble": 0.6, "iou_refined": 0.62},
        "Paper pack": {"source": "soft_vote", "iou_ensemble": 0.55, "iou_refined": None}}}
    paths = write_stage_report(tmp_path, {"soft_vote": soft, "crf": crf}, ["soft_vote", "crf"], selected="crf",
                               details={"models": ["a", "b"], "weights": {"a": 0.6, "b": 0.4}, "gating": gating})
    markdown = paths["markdown"].read_text()
    assert "| a | 0.600 |" in markdown and "| b | 0.400 |" in markdown
    assert "| Paper pack | soft_vote | 0.5500 | – |" in markdown
    assert "| class | takes | val IoU soft_vote | val IoU crf |" in markdown
    page = paths["html"].read_text()
    assert "Soft-vote weights per model" in page and "<td>Paper pack</td><td>soft_vote</td>" in page
    assert json.loads(paths["json"].read_text())["weights"] == {"a": 0.6, "b": 0.4}


def test_mean_colour_plot_draws_each_class_colour(tmp_path):
    classes = ClassTable.default()
    stats = {"images": 1, "annotations": 2, "pixels": 10,
             "classes": [{"id": i, "name": n, "pixels": 1, "pixel_share": 0.1, "instances": 1, "images": 1,
                          "mean_rgb": [20.0 * i, 200.0 - 10 * i, 90.0] if i != 3 else None,
                          "area_share": {}} for i, n in enumerate(classes.names)],
             "objects_per_image": {"histogram": [0, 1]},
             "area_share_histogram": {"bins": [0.0, 0.5, 1.0], "counts": [1, 1]}}
    write_stats(stats, tmp_path)
    picture = np.asarray(Image.open(tmp_path / "mean_colour.png").convert("RGB")).reshape(-1, 3)
    colours = {hex_colour(c) for c in np.unique(picture, axis=0)}
    for cls in stats["classes"]:
        if cls["mean_rgb"]:
            assert hex_colour(cls["mean_rgb"]) in colours, cls["name"]
