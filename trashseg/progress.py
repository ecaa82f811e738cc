"""Progress lines for long work: step/total, rate, ETA and extra fields, at a fixed interval."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


class Progress:
    """Logs `what step/total (pct) rate unit/s eta H:MM:SS key=value...` every `interval_s`.

    `update(n, **fields)` is cheap; a line is emitted when the interval has passed and on
    the last step. `clock` is injectable for tests.
    """

    def __init__(
        self,
        total: int,
        what: str,
        *,
        unit: str = "it",
        interval_s: float = 10.0,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.what = what
        self.unit = unit
        self.interval_s = interval_s
        self.logger = logger or logging.getLogger("trashseg.progress")
        self.clock = clock
        self.done = 0
        self.start = clock()
        self._last_emit = self.start

    def update(self, n: int = 1, **fields: object) -> str | None:
        self.done += n
        now = self.clock()
        if now - self._last_emit < self.interval_s and self.done < self.total:
            return None
        self._last_emit = now
        line = self.line(now, fields)
        self.logger.info("%s", line)
        return line

    def line(self, now: float, fields: dict[str, object]) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        parts = [
            f"{self.what} {self.done}/{self.total} ({pct:.0f}%)",
            f"{rate:.2f} {self.unit}/s",
            f"eta {format_seconds(eta) if eta != float('inf') else '?'}",
        ]
        parts += [f"{key}={_fmt(value)}" for key, value in fields.items()]
        return " ".join(parts)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
