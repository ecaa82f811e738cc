"""Small COCO records for tests; broken variants are made by editing a copy."""

CATEGORIES = [{"id": 1, "name": "can"}, {"id": 2, "name": "bottle"}, {"id": 3, "name": "bag"}]


def square(x, y, side):
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


def annotation(ann_id, image_id, category_id, x, y, side, **extra):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": square(x, y, side),
        "bbox": [x, y, side, side],
        "area": float(side * side),
        "iscrowd": 0,
        **extra,
    }


def valid_coco():
    """Two 64x48 images with three square objects."""
    return {
        "images": [
            {"id": 1, "file_name": "imgs/a.png", "width": 64, "height": 48},
            {"id": 2, "file_name": "imgs/b.png", "width": 64, "height": 48},
        ],
        "categories": [dict(c) for c in CATEGORIES],
        "annotations": [
            annotation(10, 1, 1, 4, 4, 20),
            annotation(11, 1, 2, 30, 10, 10),
            annotation(12, 2, 3, 0, 0, 40),
        ],
    }
