"""The viewer's pure logic on the sample data and the viewer world's prediction folders."""

from __future__ import annotations

import numpy as np
from PIL import Image

from trashseg.data.layout import PreparedDataset
from trashseg.legend import hex_colour, legend, legend_html
from trashseg.predictions import PredictionSet
from trashseg.submission import resize_nearest
from trashseg.viewer import logic


def test_search_by_name_class_count_and_small_objects(sample_dataset):
    dataset = PreparedDataset(sample_dataset)
    entries = logic.list_images(dataset, "train")
    assert len(entries) == len(dataset.samples("train"))
    first = entries[0]
    assert logic.search_images(entries, name=first.file_name.upper()) == [first]
    some_class = sorted(first.classes)[0]
    with_class = logic.search_images(entries, classes=[some_class])
    assert first in with_class and all(some_class in e.classes for e in with_class)
    busy = logic.search_images(entries, min_objects=first.objects, max_objects=first.objects)
    assert first in busy and {e.objects for e in busy} == {first.objects}
    small = logic.search_images(entries, smaller_than=first.smallest_area + 1)
    assert first in small and all(e.smallest_area < first.smallest_area + 1 for e in small)
    assert logic.search_images(entries, smaller_than=0.5) == []


def test_paging_clamps_and_counts():
    items = list(range(25))
    assert logic.page_of(items, 0, 10) == list(range(10))
    assert logic.page_of(items, 2, 10) == [20, 21, 22, 23, 24]
    assert logic.page_of(items, 9, 10) == [20, 21, 22, 23, 24]
    assert logic.page_count(25, 10) == 3 and logic.page_count(0, 10) == 1


def test_overlay_colours_selected_classes_and_legend_names_them(sample_dataset):
    classes = PreparedDataset(sample_dataset).classes()
    palette = classes.palette()
    image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.array([[0, 1, 2, 255]] * 4, np.uint8)
    out = logic.overlay(image, mask, palette, alpha=1.0, classes=[2])
    assert (out[:, 2] == palette[2]).all()
    assert (out[:, 1] == 100).all() and (out[:, 3] == 100).all()  # unselected and ignore untouched
    entries = legend(classes, [2, 1])
    assert [name for name, _ in entries] == [classes.names[1], classes.names[2]]
    assert entries[0][1] == hex_colour(palette[1]) == "#{:02x}{:02x}{:02x}".format(*palette[1])
    assert classes.names[2] in legend_html(entries)


def test_disagreement_and_image_miou():
    a = np.array([[1, 1], [2, 2]])
    b = np.array([[1, 2], [2, 2]])
    c = np.array([[1, 0], [2, 2]])
    assert np.allclose(logic.disagreement([a, b, c]), [[0, 2 / 3], [0, 0]])
    assert logic.image_miou(a, a, 3) == 1.0
    assert np.isclose(logic.image_miou(b, a, 3), np.mean([1 / 2, 2 / 3]))  # classes 1 and 2 occur


def test_ranking_confusion_cell_and_restored_pixels(viewer_world):
    dataset = viewer_world.dataset
    names = [s.file_name for s in dataset.samples("val")]
    sources = logic.model_sources(viewer_world.sources.predictions, names)
    assert [s.name for s in sources] == ["alpha", "beta"]

    def truth(n):
        return np.array(Image.open(dataset.mask_path(n)))

    ranked = logic.rank_images(names, sources, truth, dataset.classes().num_classes, by="worst_iou", source="alpha")
    planted, true_class, wrong = viewer_world.planted
    assert ranked[0][0] == planted  # the relabelled image disagrees most with the predictions
    assert [v for _, v in ranked] == sorted(v for _, v in ranked)
    hits = logic.confusion_cell(sources[0], names, truth, wrong, true_class)
    assert hits[0][0] == planted and hits[0][1] > 0
    stages = logic.stage_sources(viewer_world.sources.ensemble, "val")
    assert {"soft_vote", "crf", "consensus"} <= {s.name for s in stages}
    crf = next(s for s in stages if s.name == "crf").folder.mask(names[1])
    consensus = next(s for s in stages if s.name == "consensus").folder.mask(names[1])
    assert logic.restored_pixels(crf, consensus).sum() == (crf != consensus).sum()


def test_mislabeled_finder_flags_the_planted_label(viewer_world):
    dataset = viewer_world.dataset
    names = [s.file_name for s in dataset.samples("val")]
    sources = logic.model_sources(viewer_world.sources.predictions, names)
    suspects = logic.likely_mislabeled(sources, names, lambda n: np.array(Image.open(dataset.mask_path(n))),
                                       confidence=0.9, min_share=0.02)
    planted, true_class, wrong = viewer_world.planted
    assert [s.file_name for s in suspects] == [planted]
    assert (suspects[0].label, suspects[0].predicted) == (wrong, true_class)


def test_submission_row_decodes_to_the_source_map(viewer_world):
    rows = logic.submission_index(viewer_world.submission)
    test_names = [s.file_name for s in viewer_world.dataset.samples("test")]
    assert [name for name, _ in rows] == test_names
    final = PredictionSet.open(viewer_world.sources.ensemble + "/final/test")
    for name, offset in (rows[0], rows[-1]):
        image_id, decoded = logic.decode_submission_row(viewer_world.submission, offset)
        assert image_id == name
        assert np.array_equal(decoded, resize_nearest(final.mask(name)))
    assert logic.submission_findings(viewer_world.submission, viewer_world.dataset.split_file("test")) == []


def test_submission_findings_report_a_broken_file(viewer_world, tmp_path):
    lines = viewer_world.submission.read_text().splitlines()
    broken = tmp_path / "broken.csv"
    broken.write_text("\n".join([lines[0], lines[2], lines[1].split(",")[0] + ",1 2 3"]) + "\n")
    findings = logic.submission_findings(broken, viewer_world.dataset.split_file("test"))
    assert any("3 values, expected 65536" in f for f in findings)
    assert any("missing rows" in f for f in findings)
