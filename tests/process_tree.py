"""Killing a process with everything it started, as a pod's end kills its whole PID namespace.

torchrun starts each worker in a session of its own (torch's subprocess handler), so killing
the agent's process group leaves the workers training on: a test of preemption must kill them too.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # ended while we looked
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(pid: int) -> list[int]:
    parents, found, frontier = _parents(), [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def kill_process_tree(pid: int, signum: int = signal.SIGKILL, timeout: float = 60) -> None:
    """Send `signum` to `pid` and all its descendants (found before the first signal), then wait
    until none runs any more (a zombie has stopped running)."""
    tree = [pid, *descendants(pid)]
    for member in tree:
        try:
            os.kill(member, signum)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while not all(_gone(member) for member in tree):
        assert time.monotonic() < deadline, f"processes {tree} still run {timeout} s after signal {signum}"
        time.sleep(0.05)
