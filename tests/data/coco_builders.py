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


def skip_reasons_within_2_gib(path) -> dict[str, str]:
    """`load_coco(path)` in a fresh process limited to 2 GiB of address space: the skipped records'
    reasons by id. Hostile geometry once asked for gigabytes here; bounded work needs far less."""
    import json
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import json, resource
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        from trashseg.data.coco import load_coco
        dataset = load_coco({str(path)!r})
        print(json.dumps({{s.id: s.reason for s in dataset.report.skipped}}))
    """)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])
