"""Progress of the long CLI operations (``bench``, ``replay``, ``load``, ``demo``).

On a terminal a rich progress bar redraws in place (ADR 0021); otherwise
(a pipe, a log file, CI) plain lines are written, never escape codes: one
line per call when the caller gives one, else at most one line every
``PLAIN_EVERY_S`` seconds and one at the end.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import IO, Any

__all__ = ["PLAIN_EVERY_S", "ProgressBar"]

PLAIN_EVERY_S = 5.0


class ProgressBar:
    """``advance_to(completed)`` as work gets done; ``close()`` (or ``with``) at the end.

    ``unit="bytes"`` shows sizes and a transfer rate on the bar; otherwise
    ``completed/total`` counts (integers)."""

    def __init__(
        self, description: str, total: float, *, out: IO[str] | None = None, unit: str = ""
    ) -> None:
        self.out = out if out is not None else sys.stderr
        self.description = description
        self.total = total
        self.unit = unit
        self.tty = self.out.isatty()
        self._completed = 0.0
        self._last_plain = time.monotonic()
        self._bar: Any = None
        self._task: Any = None
        self._closed = False
        self._plain_shown = ""
        if self.tty:
            self._start_bar()

    def _start_bar(self) -> None:
        from rich import progress as rp
        from rich.console import Console

        count: list[rp.ProgressColumn] = (
            [rp.DownloadColumn(), rp.TransferSpeedColumn()]
            if self.unit == "bytes"
            else [rp.MofNCompleteColumn()]
        )
        self._bar = rp.Progress(
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            rp.TaskProgressColumn(),
            *count,
            rp.TimeElapsedColumn(),
            rp.TimeRemainingColumn(),
            console=Console(file=self.out, force_terminal=True),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.description, total=self.total or None)

    def advance_to(self, completed: float, line: str | None = None) -> None:
        """Record progress; ``line`` is what a non-terminal gets for this step."""
        self._completed = completed
        if self._bar is not None:
            self._bar.update(self._task, completed=completed)
            return
        now = time.monotonic()
        if line is None:
            if now - self._last_plain < PLAIN_EVERY_S:
                return
            line = self._plain_line()
        self._last_plain = now
        self._plain_shown = line
        print(line, file=self.out, flush=True)

    def complete(self) -> None:
        """All of ``total`` is done (callers that report only every so often)."""
        self._completed = self.total
        if self._bar is not None:
            self._bar.update(self._task, completed=self.total)

    def _plain_line(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            share = min(100.0, 100.0 * self._completed / self.total)
            return (
                f"{self.description}: {self._completed:.0f}/{self.total:.0f}{unit} ({share:.0f}%)"
            )
        return f"{self.description}: {self._completed:.0f}{unit}"

    def close(self, *, final_line: bool = True) -> None:
        """Stop the bar (it stays on screen); a non-terminal gets the final count."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif final_line and self._plain_line() != self._plain_shown:
            print(self._plain_line(), file=self.out, flush=True)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(final_line=kind is None)
