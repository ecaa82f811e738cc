"""What a local run shows: one status line per task as it starts and ends, the full log in a file.

kfp.local prints each task's executor log (its input JSON, every progress line) to stdout;
`TaskConsole` takes over stdout and stderr for the run, writes everything to a log file
and shows only the task start/end lines (with elapsed time), or everything with
`verbose`. Tasks of a ParallelFor run in threads of this process, and each task's lines
are printed from the thread running it, so the thread tells which task a line belongs to.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
# The executor input names the task's architecture (train) or its model's (predict); the
# start line waits for the input JSON's closing brace and names the architecture when the
# input names exactly one (a bundle's lists several). The braces are counted, outside JSON
# strings: indentation cannot tell, since kfp.local's indenting print (swapped in and out of
# builtins by each parallel task, not thread-safe) can change it in the middle of an input.
_ARCHITECTURE = re.compile(r'"architecture": "([^"]+)"')
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# The local runner's own progress (pipelines/local.py's logger) becomes status lines too.
_RUNNER_NOTE = re.compile(r" INFO trashseg\.local: (.*)")
FAILED_TAIL_LINES = 40  # of a failed task's log, shown on the terminal


@dataclass
class _Task:
    name: str
    started: float
    architectures: set = field(default_factory=set)
    announced: bool = False
    input_depth: int | None = None  # braces open in the executor input (None: not begun)
    tail: deque = field(default_factory=lambda: deque(maxlen=FAILED_TAIL_LINES))

    def label(self) -> str:
        return f"{self.name} ({next(iter(self.architectures))})" if len(self.architectures) == 1 else self.name


@dataclass(frozen=True)
class TaskTime:
    label: str
    seconds: float
    status: str


class TaskConsole:
    """`with TaskConsole(log_path, verbose=...) as console:` around a kfp.local run."""

    def __init__(self, log_path: str | Path, *, verbose: bool = False, terminal: TextIO | None = None) -> None:
        self.log_path = Path(log_path)
        self.verbose = verbose
        self.terminal = terminal or sys.stdout
        self.errors = sys.stderr
        self.finished: list[TaskTime] = []
        self._tasks: dict[int, _Task] = {}  # thread id -> the task it runs
        self._partial: dict[int, str] = {}  # thread id -> text after its last newline
        self._lock = threading.Lock()
        self._start = time.monotonic()

    def __enter__(self) -> TaskConsole:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w", encoding="utf-8")
        self._saved = sys.stdout, sys.stderr
        self._captures = _Capture(self, sys.stdout), _Capture(self, sys.stderr)
        sys.stdout, sys.stderr = self._captures
        self.status(f"full logs: {self.log_path}" + ("" if self.verbose else "   (VERBOSE=1 shows them here)"))
        return self

    def __exit__(self, exc_type, error, traceback) -> None:
        for thread in list(self._partial):
            self._line(thread, self._partial.pop(thread))
        # With raise_on_error, kfp.local raises instead of logging a failed task's end.
        failed = _FINISHED.search(_ANSI.sub("", str(error))) if error is not None else None
        for thread, task in list(self._tasks.items()):
            self._finish(thread, task, "FAILED" if failed and failed.group(1) == task.name else "stopped")
        sys.stdout, sys.stderr = self._saved
        for capture in self._captures:  # handlers made meanwhile (mlflow's, on import) keep them
            capture.release()

    def close(self) -> None:
        self._log.close()

    def show(self, text: str, *, error: bool = False) -> None:
        """Text for the terminal (stderr with `error`) and the log, as it is (the end summary)."""
        with self._lock:
            for stream in (self._log, self.errors if error else self.terminal):
                stream.write(text.rstrip("\n") + "\n")
                stream.flush()

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self._start)
        return f"{seconds // 60:d}:{seconds % 60:02d}"

    def status(self, text: str) -> None:
        """A line for the terminal (and the log), stamped with the run's elapsed time."""
        line = f"[{self.elapsed()}] {text}\n"
        with self._lock:
            self._log.write(line)
            self._log.flush()
            self.terminal.write(line)
            self.terminal.flush()

    def write(self, text: str) -> None:
        thread = threading.get_ident()
        with self._lock:
            self._log.write(text)
            if self.verbose:
                self.terminal.write(text)
            pending = self._partial.pop(thread, "") + text
            *lines, rest = pending.split("\n")
            if rest:
                self._partial[thread] = rest
        for line in lines:
            self._line(thread, line)

    def _line(self, thread: int, line: str) -> None:
        plain = _ANSI.sub("", line)
        task = self._tasks.get(thread)
        if started := _STARTED.search(plain):
            self._tasks[thread] = _Task(started.group(1), time.monotonic())
            return
        if task is None:
            if note := _RUNNER_NOTE.search(plain):
                self.status(note.group(1))
            return
        task.tail.append(plain)
        if not task.announced:
            if architecture := _ARCHITECTURE.search(plain):
                task.architectures.add(architecture.group(1))
            if task.input_depth is None and plain.strip() == "{":
                task.input_depth = 0
            if task.input_depth is not None:
                code = _JSON_STRING.sub("", plain)
                task.input_depth += code.count("{") - code.count("}")
                if task.input_depth <= 0:
                    self._announce(task)
        if finished := _FINISHED.search(plain):
            self._finish(thread, task, finished.group(2))

    def _announce(self, task: _Task) -> None:
        task.announced = True
        self.status(f"start  {task.label()}")

    def _finish(self, thread: int, task: _Task, state: str) -> None:
        del self._tasks[thread]
        seconds = time.monotonic() - task.started
        if not task.announced:
            self._announce(task)
        self.finished.append(TaskTime(task.label(), seconds, state))
        word = "done  " if state == "SUCCESS" else state
        self.status(f"{word} {task.label()}  {seconds:.1f} s")
        if state == "FAILED" and not self.verbose:
            with self._lock:
                self.terminal.write("".join(f"    | {line}\n" for line in task.tail))
            self.status(f"the last {len(task.tail)} lines of {task.name} are above; all of them are in {self.log_path}")

    def time_table(self) -> str:
        """Seconds per task and its share of the summed task time, slowest first."""
        total = sum(t.seconds for t in self.finished) or 1.0
        rows = [f"  {'task':44s} {'seconds':>8s} {'share':>6s}"]
        for entry in sorted(self.finished, key=lambda t: -t.seconds):
            rows.append(f"  {entry.label[:44]:44s} {entry.seconds:8.1f} {entry.seconds / total:6.1%}")
        rows.append(f"  {'all tasks (summed; parallel tasks overlap)':44s} {total:8.1f}")
        return "\n".join(rows)


class _Capture:
    """The file object stdout (or stderr) becomes during a run; after it, a pass-through to
    the original stream, for the logging handlers libraries created while it was in place."""

    def __init__(self, console: TaskConsole, original: TextIO) -> None:
        self._console: TaskConsole | None = console
        self._original = original

    def release(self) -> None:
        self._console = None

    def write(self, text: str) -> int:
        if self._console is None:
            return self._original.write(text)
        self._console.write(text)
        return len(text)

    def flush(self) -> None:
        if self._console is None:
            self._original.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # subprocesses and multiprocessing inherit the real descriptor
        return self._original.fileno()
