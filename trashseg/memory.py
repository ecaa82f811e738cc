"""glibc malloc settings for trashseg's processes, which allocate and free arrays of a few MB
per image (decoded prediction files, probabilities, CRF inputs).

By default glibc serves every block over 128 KB with a fresh mmap and unmaps it when freed, so
each per-image array page-faults its whole size again: reading an 11-class 512x512 prediction
file spent more time in page faults than in decompression. Serving blocks up to 32 MB from the
heap, and trimming the heap only when 256 MB of it is free, lets them be reused
(benchmarks/predictions_bench.py measures the effect). Memory stays bounded: a process keeps
at most the trim threshold free above what it uses.
"""

from __future__ import annotations

import ctypes
import os

ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}
_MALLOPT_PARAM = {"MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1}  # M_MMAP_/M_TRIM_THRESHOLD


def reuse_freed_memory() -> None:
    """Apply ALLOCATOR_ENV to this process (mallopt) and export it to the processes it starts,
    keeping values the user already set. A no-op where the C library has no mallopt."""
    for name, value in ALLOCATOR_ENV.items():
        os.environ.setdefault(name, value)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    for name, param in _MALLOPT_PARAM.items():
        value = os.environ[name]
        if value.isdigit():
            mallopt(ctypes.c_int(param), ctypes.c_int(min(int(value), 2**31 - 1)))
