"""Fuzzing validate-data and prepare with malformed COCO sources (fixed seeds, bounded sizes).

Each case starts from a small valid source and applies a few random mutations: hostile values
at random places (huge integers, NaN, lone surrogates, deep nesting, wrong types), deleted
keys, duplicated records, hostile file_names and polygons, broken RLE, too many categories,
cut or odd image files, and text-level damage (cut JSON, duplicated keys). Every case must end
with exit status 0 or 2, no traceback, within a memory limit, and OUT complete (dataset.json
present and matching the files) or absent.
"""

import copy
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from coco_builders import annotation, valid_coco
from PIL import Image

CASES = 36
PER_PROCESS = 12  # cases run one after another in a process (imports are the slow part)
MEMORY_LIMIT = 3 << 30  # address space per process, RLIMIT_AS

HOSTILE_VALUES = [
    None, "", -1, 0, 2**1100, -(2**70), 1e308, float("nan"), float("inf"), "\ud800", "a\x00b", [], {}, True,
    "x" * 5000, [[[[[[[[1]]]]]]]], {"a": {"b": float("nan")}}, "<script>|*_", 3.5,
]
FILE_NAMES = [
    "./imgs/a.png", "imgs/a.jpg", "imgs//a.png", "../a.png", "/etc/passwd", "imgs/", ".", "imgs", "imgs/\ud800.png",
    "imgs/" + "y" * 300 + ".png", "imgs/a.png\x00", "imgs/missing.png", "imgs/dir.png", "imgs/loop.png",
    "imgs/cut.png", "imgs/deep16.png",
]


def _base(rng: random.Random) -> dict:
    data = valid_coco()
    data["images"] += [dict(im, id=im["id"] + 2, file_name=f"more/{im['file_name']}") for im in data["images"]]
    data["annotations"] += [annotation(13, 3, 1, 4, 4, 20), annotation(14, 4, 2, 30, 10, 12)]
    for record in data["annotations"]:
        if rng.random() < 0.3:
            record["segmentation"] = {"size": [48, 64], "counts": [100, 200, 64 * 48 - 300]}
    return data


def _containers(value, path=()):
    """Every (path, container) in a JSON value."""
    if isinstance(value, dict | list):
        yield path, value
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            yield from _containers(child, (*path, key))


def _mutate(data: dict, rng: random.Random, extras: dict) -> None:
    kind = rng.choice(
        ["value", "value", "delete", "duplicate", "file_name", "polygon", "rle", "categories", "image_file", "structure"]
    )
    containers = [c for _, c in _containers(data) if c]
    if kind == "value":
        target = rng.choice(containers)
        key = rng.choice(list(target)) if isinstance(target, dict) else rng.randrange(len(target))
        target[key] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
    elif kind == "delete":
        target = rng.choice([c for c in containers if isinstance(c, dict)])
        del target[rng.choice(list(target))]
    elif kind == "duplicate":
        records = data.get(rng.choice(["images", "annotations", "categories"]))
        if isinstance(records, list) and records:
            records.append(copy.deepcopy(rng.choice(records)))
    elif kind == "file_name":
        image = rng.choice(data["images"])
        image["file_name"] = rng.choice(FILE_NAMES)
    elif kind == "polygon":
        record = rng.choice(data["annotations"])
        record["segmentation"] = [_hostile_polygon(rng)]
    elif kind == "rle":
        record = rng.choice(data["annotations"])
        counts = rng.choice(["".join(rng.choice("0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abc") for _ in range(40)),
                             [1, 2, 3], [-5, 3077], 12])
        record["segmentation"] = {"size": rng.choice([[48, 64], [64, 48], [0, 0], "x"]), "counts": counts}
    elif kind == "categories":
        count = rng.choice([255, 256, 300])
        data["categories"] = [{"id": i, "name": rng.choice([f"c{i}", f"c{i % 3}", f"<b>{i}</b>|"])} for i in range(1, count)]
    elif kind == "image_file":
        extras["image_damage"] = rng.choice(["cut", "dir", "loop", "deep16", "empty"])
    else:
        extras["text_damage"] = rng.choice(["cut", "duplicate_key", "deep", "huge_int", "not_object", "nan_literal"])


def _hostile_polygon(rng: random.Random) -> list:
    choice = rng.randrange(6)
    if choice == 0:
        return [v for i in range(rng.choice([60_000, 150_000])) for v in ((0, 0) if i % 2 else (63, 47))]
    if choice == 1:
        return [1, 2, 3]
    if choice == 2:
        return [4, 4, float("nan"), 4, 24, 24]
    if choice == 3:
        return [4, 4, 2**1100, 4, 24, 24]
    if choice == 4:
        return [4, 4, 1e9, 4, 24, 24]
    return [4, 4, "x", 4, 24, 24]


def _write_case(folder: Path, seed: int) -> Path:
    rng = random.Random(seed)
    data, extras = _base(rng), {}
    for _ in range(rng.randint(1, 3)):
        try:
            _mutate(data, rng, extras)
        except (KeyError, TypeError, IndexError, ValueError, AttributeError):
            pass  # an earlier mutation broke the structure a later one expected: the file stays broken
    source = folder / f"case{seed}"
    (source / "imgs").mkdir(parents=True)
    (source / "more" / "imgs").mkdir(parents=True)
    for name in ("imgs/a.png", "imgs/b.png", "more/imgs/a.png", "more/imgs/b.png", "imgs/cut.png"):
        Image.fromarray(np.full((48, 64, 3), 90 + len(name), np.uint8)).save(source / name)
    (source / "imgs" / "dir.png").mkdir()
    (source / "imgs" / "loop.png").symlink_to(source / "imgs" / "loop.png")
    Image.fromarray(np.full((48, 64), 40000, np.uint16)).save(source / "imgs" / "deep16.png")
    cut = (source / "imgs" / "cut.png").read_bytes()
    (source / "imgs" / "cut.png").write_bytes(cut[: len(cut) // 2])
    _damage_image(source, extras.get("image_damage"))
    (source / "train.json").write_text(_damage_text(json.dumps(data), extras.get("text_damage")))
    return source


def _damage_image(source: Path, damage: str | None) -> None:
    target = source / "imgs" / "b.png"
    if damage == "cut":
        target.write_bytes(target.read_bytes()[:120])
    elif damage == "dir":
        target.unlink()
        target.mkdir()
    elif damage == "loop":
        target.unlink()
        target.symlink_to(target)
    elif damage == "deep16":
        Image.fromarray(np.full((48, 64), 65535, np.uint16)).save(target)
    elif damage == "empty":
        target.write_bytes(b"")


def _damage_text(text: str, damage: str | None) -> str:
    if damage == "cut":
        return text[: len(text) // 2]
    if damage == "duplicate_key":
        return text[:-1] + ', "annotations": []}'
    if damage == "deep":
        return text[:-1] + ', "info": ' + "[" * 50_000 + "]" * 50_000 + "}"
    if damage == "huge_int":
        return text.replace('"id": 1,', '"id": ' + "7" * 5000 + ",", 1)
    if damage == "not_object":
        return "[" + text + "]"
    if damage == "nan_literal":
        return text.replace('"width": 64', '"width": NaN', 1)
    return text


_DRIVER = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from trashseg.cli import main
    for source in sys.argv[1:]:
        print("CASE", source, file=sys.stderr, flush=True)
        codes = [main(["validate-data", source + "/train.json"]), main(["prepare", source, source + "-out"])]
        print(json.dumps({{"source": source, "codes": codes}}), flush=True)
""")


def _check_out(out: Path) -> None:
    """OUT is absent, or complete: dataset.json present, its counts matching the files."""
    if not out.exists():
        return
    assert not (out / ".unfinished").exists(), f"{out} left unfinished"
    meta = json.loads((out / "dataset.json").read_text())
    for split, count in meta["splits"].items():
        coco = json.loads((out / "splits" / f"{split}.json").read_text(), parse_constant=_no_constant)
        assert len(coco["images"]) == count
        for image in coco["images"]:
            assert (out / "images" / image["file_name"]).is_file()
            if split != "test":
                assert (out / "masks" / Path(image["file_name"]).with_suffix(".png")).is_file()


def _no_constant(name):
    raise AssertionError(f"non-JSON literal {name} written")


@pytest.mark.parametrize("first", range(0, CASES, PER_PROCESS))
def test_malformed_sources_end_in_a_clear_status_and_a_complete_or_absent_out(tmp_path, first):
    _run_cases(tmp_path, first)


def _run_cases(tmp_path, first):
    sources = [_write_case(tmp_path, seed) for seed in range(first, first + PER_PROCESS)]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER.format(limit=MEMORY_LIMIT), *map(str, sources)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    last_case = [line for line in done.stderr.splitlines() if line.startswith("CASE ")][-1:]
    assert done.returncode == 0, f"{last_case}: {done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"source"')]
    assert len(results) == PER_PROCESS
    for result in results:
        assert set(result["codes"]) <= {0, 2}, result
        _check_out(Path(result["source"] + "-out"))
    return results
