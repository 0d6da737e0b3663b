"""Progress a person can watch: a live bar on a terminal, periodic log lines everywhere else.

Training an epoch of Gemma2 2B on the real corpus takes hours; evaluate's scoring and generation
take minutes. On a terminal `Progress` redraws one line (steps, tokens/s, loss, ETA); under DVC,
Prefect, CI or a log file (stderr is not a TTY) it writes a plain log line every `every_seconds`
and at the end, so logs stay readable and grep-able.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import IO

log = logging.getLogger(__name__)

BAR_WIDTH = 24
LOG_EVERY_SECONDS = 30.0  # without a terminal: one line per this many seconds (and at the end)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """Counts steps of a long loop and shows them.

    Args:
        what: what is counted, e.g. "train epoch 1/2" or "scoring base".
        total: steps expected (the ETA needs it).
        stream: where the bar goes; a TTY gets the bar, anything else log lines.
        every_seconds: interval of log lines when `stream` is not a TTY.
        start: steps already done (a resumed run), counted in the total but not in the rate.
    """

    def __init__(self, what: str, total: int, stream: IO[str] | None = None, every_seconds: float = LOG_EVERY_SECONDS,
                 start: int = 0):  # fmt: skip
        self.what, self.total, self.done = what, total, start
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_seconds = every_seconds
        self.started = self.last_shown = time.perf_counter()
        self.first = start
        self.tokens = 0
        self.loss: float | None = None

    def update(self, steps: int = 1, tokens: int = 0, loss: float | None = None) -> None:
        """Records `steps` more steps (and the useful tokens they processed, and the latest loss)."""
        self.done += steps
        self.tokens += tokens
        if loss is not None:
            self.loss = loss
        now = time.perf_counter()
        if self.interactive or now - self.last_shown >= self.every_seconds:
            self._show(now)

    def close(self) -> None:
        """Shows the final state (one last line, or the finished bar and a newline)."""
        self._show(time.perf_counter())
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()

    @property
    def tokens_per_second(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.tokens / elapsed if elapsed > 0 else 0.0

    def line(self, now: float | None = None) -> str:
        """The status as text: steps, rate, loss and ETA."""
        now = now if now is not None else time.perf_counter()
        elapsed = now - self.started
        rate = (self.done - self.first) / elapsed if elapsed > 0 else 0.0
        remaining = (self.total - self.done) / rate if rate > 0 else math.inf
        parts = [f"{self.what} {self.done}/{self.total}"]
        if self.tokens:
            parts.append(f"{self.tokens / elapsed if elapsed > 0 else 0:,.0f} tok/s")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        parts.append(f"{_duration(elapsed)} elapsed, ETA {_duration(remaining)}")
        return " | ".join(parts)

    def _show(self, now: float) -> None:
        self.last_shown = now
        if not self.interactive:
            log.info("%s", self.line(now))
            return
        filled = int(BAR_WIDTH * self.done / self.total) if self.total else BAR_WIDTH
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self.line(now)}\x1b[K")
        self.stream.flush()
