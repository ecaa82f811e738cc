"""Semantic masks: descending-area painting, polygons and RLE, any size, PNG output."""

import numpy as np
from coco_builders import annotation, square, valid_coco
from PIL import Image
from pycocotools import mask as mask_utils

from trashseg.data.coco import load_coco
from trashseg.data.layout import PreparedDataset
from trashseg.data.masks import semantic_mask, write_masks

CLASSES = {1: 1, 2: 2, 3: 3}


def test_small_object_inside_large_one_survives_in_either_file_order():
    big = {"id": 1, "category_id": 3, "segmentation": square(2, 2, 30)}
    small = {"id": 2, "category_id": 1, "segmentation": square(10, 10, 5)}
    for order in ([big, small], [small, big]):
        mask = semantic_mask(order, 40, 40, CLASSES)
        assert (mask[10:15, 10:15] == 1).all()  # the small one lies on top
        assert mask[3, 3] == 3 and mask[25, 25] == 3
        assert mask[0, 0] == 0 and mask[39, 39] == 0  # uncovered -> Background
        assert (mask == 1).sum() == 25


def test_rle_forms_paint_like_the_equivalent_polygon():
    height, width = 37, 53  # odd, non-square: nothing may assume square images
    polygon = {"id": 1, "category_id": 2, "segmentation": square(7, 5, 12)}
    expected = semantic_mask([polygon], height, width, CLASSES)
    assert expected.shape == (height, width) and expected.dtype == np.uint8
    binary = np.asfortranarray((expected == 2).astype(np.uint8))
    compressed = mask_utils.encode(binary)
    flat = binary.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    for segmentation in (
        {"counts": compressed["counts"].decode(), "size": [height, width]},
        {"counts": runs, "size": [height, width]},
    ):
        crowd = {"id": 2, "category_id": 2, "segmentation": segmentation, "iscrowd": 1}
        np.testing.assert_array_equal(semantic_mask([crowd], height, width, CLASSES), expected)


def test_category_ids_map_through_the_class_table():
    # Non-contiguous category ids: classes are numbered 1..N in id order.
    annotations = [
        {"id": 1, "category_id": 17, "segmentation": square(0, 0, 4)},
        {"id": 2, "category_id": 5, "segmentation": square(6, 6, 3)},
    ]
    mask = semantic_mask(annotations, 12, 12, {5: 1, 17: 2})
    assert mask[1, 1] == 2 and mask[7, 7] == 1


def test_write_masks_saves_pngs_at_the_layout_paths(write_dataset, tmp_path):
    data = valid_coco()
    data["annotations"].append(annotation(13, 2, 1, 5, 5, 6))  # small object on top of the 40px bag
    dataset = load_coco(write_dataset(data))
    out = PreparedDataset(tmp_path / "out")
    assert write_masks(dataset, out) == 2
    first = np.array(Image.open(out.mask_path("imgs/a.png")))
    second = np.array(Image.open(out.mask_path("imgs/b.png")))
    assert first.shape == (48, 64) and first.dtype == np.uint8
    assert set(np.unique(first)) == {0, 1, 2}
    assert (second[5:11, 5:11] == 1).all() and second[20, 20] == 3
    assert (second == 3).sum() == 40 * 40 - 36
