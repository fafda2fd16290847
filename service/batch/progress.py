"""A progress line on stderr (rows, rows/s, ETA when the total is known) and the summary at the end."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

# A terminal's line is redrawn twice a second; a log (not a terminal) gets a line every ten seconds.
TERMINAL_EVERY_S, LOG_EVERY_S = 0.5, 10.0


@dataclass(frozen=True)
class Summary:
    rows: int
    anomalies: int | None
    seconds: float
    output: str

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        anomalies = "" if self.anomalies is None else f", {self.anomalies:,} anomalies"
        return (
            f"{self.rows:,} rows{anomalies} in {_clock(self.seconds)} ({self.rows_per_second:,.0f} rows/s) "
            f"-> {self.output}"
        )


class Progress:
    def __init__(self, total: int | None, enabled: bool, stream: TextIO = sys.stderr) -> None:
        self.total, self.enabled, self.stream = total, enabled, stream
        self.rows = 0
        self.started = time.perf_counter()
        self._terminal = stream.isatty()
        self._shown_at = 0.0

    def advance(self, rows: int) -> None:
        self.rows += rows
        now = time.perf_counter()
        if self.enabled and now - self._shown_at >= (TERMINAL_EVERY_S if self._terminal else LOG_EVERY_S):
            self._shown_at = now
            self._show(now - self.started)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def done(self) -> None:
        if self.enabled and self._terminal:
            self._show(self.elapsed())
            self.stream.write("\n")

    def _show(self, elapsed: float) -> None:
        rate = self.rows / elapsed if elapsed > 0 else 0.0
        text = f"{self.rows:,} rows  {rate:,.0f} rows/s  {_clock(elapsed)}"
        if self.total:
            left = (self.total - self.rows) / rate if rate > 0 else float("inf")
            text = f"{self.rows:,}/{self.total:,} rows ({100 * self.rows / self.total:.0f}%)  {rate:,.0f} rows/s  "
            text += f"{_clock(elapsed)} elapsed, ETA {_clock(left)}"
        self.stream.write(f"\r{text}\033[K" if self._terminal else f"{text}\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
