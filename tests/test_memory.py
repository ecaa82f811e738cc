"""trashseg.memory: blocks of a few MB are reused from the heap instead of mapped afresh (and
page-faulted) on every allocation, in trashseg's processes and the processes they start."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trashseg.memory import ALLOCATOR_ENV

ROOT = Path(__file__).resolve().parents[1]

# mallinfo2().hblkhd: bytes currently held in mmapped blocks.
_MAPPED_BYTES_OF_AN_8MB_ARRAY = """
import ctypes, sys
import numpy as np
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    from trashseg.memory import reuse_freed_memory
    reuse_freed_memory()
before = libc.mallinfo2().hblkhd
array = np.ones(8 << 20, np.uint8)
print(libc.mallinfo2().hblkhd - before)
"""


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}


def _mapped_bytes(mode: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", _MAPPED_BYTES_OF_AN_8MB_ARRAY, mode],
        env=_clean_env(), capture_output=True, text=True, check=True,
    )
    return int(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2")
def test_an_8mb_array_comes_from_the_heap_once_tuned():
    assert _mapped_bytes("default") >= 8 << 20  # glibc maps it: the behaviour being changed
    assert _mapped_bytes("tuned") == 0


def test_settings_reach_child_processes_and_user_values_win():
    code = "import os; from trashseg.memory import reuse_freed_memory; reuse_freed_memory(); " \
           "import subprocess, sys; subprocess.run([sys.executable, '-c', " \
           "'import os; print(os.environ[\"MALLOC_MMAP_THRESHOLD_\"], os.environ[\"MALLOC_TRIM_THRESHOLD_\"])'])"
    env = {**_clean_env(), "MALLOC_TRIM_THRESHOLD_": "1048576"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.split() == [ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"], "1048576"]


@pytest.mark.parametrize("dockerfile", ["base.Dockerfile", "train.Dockerfile"])
def test_images_set_the_same_allocator_environment(dockerfile):
    text = (ROOT / "images" / dockerfile).read_text()
    found = dict(re.findall(r"^\s*(MALLOC_\w+)=(\d+)", text, flags=re.M))
    assert found == ALLOCATOR_ENV
