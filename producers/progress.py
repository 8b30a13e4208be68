"""Progress display of the CLI while a task runs.

On a terminal, one line redrawn in place with ``\\r``::

    [██████████░░░░░░░░░░] 5/9 images · 3 cached · 2 fresh · 0 failed · 1.4s

Elsewhere (a pipe, a log file, CI), one plain line per image as it finishes::

    [5/9] cat.png completed (cache HIT, 12 ms)

No third-party dependency; :func:`render_bar` is pure and unit-tested.
"""

from __future__ import annotations

import time
from typing import Protocol, TextIO

from producers.models import ImageResult, TaskStatus

__all__ = ["BarProgress", "LineProgress", "NullProgress", "Progress", "ProgressCounts", "make_progress",
           "render_bar"]


class ProgressCounts:
    """Images done so far, split by outcome; each index counted once."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.cached = 0
        self.fresh = 0
        self.failed = 0
        self._seen: set[int] = set()

    @property
    def done(self) -> int:
        return self.cached + self.fresh + self.failed

    def add(self, result: ImageResult) -> bool:
        """Count ``result``; False if its index was counted already."""
        if result.index in self._seen:
            return False
        self._seen.add(result.index)
        if result.status != "completed":
            self.failed += 1
        elif result.from_cache:
            self.cached += 1
        else:
            self.fresh += 1
        return True


def render_bar(done: int, total: int, *, cached: int, fresh: int, failed: int, elapsed: float,
               width: int = 20) -> str:
    """One progress line (no ``\\r``, no newline)."""
    fraction = min(done / total, 1.0) if total > 0 else 1.0
    filled = int(round(fraction * width))
    bar = "█" * filled + "░" * (width - filled)
    return (f"[{bar}] {done}/{total} images · {cached} cached · {fresh} fresh · {failed} failed"
            f" · {elapsed:.1f}s")


class Progress(Protocol):
    def result(self, result: ImageResult) -> None: ...

    def status(self, status: TaskStatus) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    """Shows nothing (``--json`` output)."""

    def result(self, result: ImageResult) -> None:
        pass

    def status(self, status: TaskStatus) -> None:
        pass

    def close(self) -> None:
        pass


class BarProgress:
    """A bar redrawn in place on a terminal."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.counts = ProgressCounts(total)
        self.started = time.monotonic()
        self._width = 0
        self._draw()

    def redraw(self) -> None:
        """Draw again (the elapsed time moves on)."""
        self._draw()

    def _draw(self) -> None:
        c = self.counts
        line = render_bar(c.done, c.total, cached=c.cached, fresh=c.fresh, failed=c.failed,
                          elapsed=time.monotonic() - self.started)
        pad = " " * max(self._width - len(line), 0)  # wipe what a longer line left
        self._width = len(line)
        self.stream.write("\r" + line + pad)
        self.stream.flush()

    def result(self, result: ImageResult) -> None:
        if self.counts.add(result):
            self._draw()

    def status(self, status: TaskStatus) -> None:
        if status.total_images and status.total_images != self.counts.total:
            self.counts.total = status.total_images
        for result in status.results:
            self.counts.add(result)
        self._draw()

    def close(self) -> None:
        self._draw()
        self.stream.write("\n")
        self.stream.flush()


class LineProgress:
    """One line per finished image (not a terminal)."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.counts = ProgressCounts(total)

    def result(self, result: ImageResult) -> None:
        if not self.counts.add(result):
            return
        if result.status == "completed":
            how = f"cache {result.cache_status or ('HIT' if result.from_cache else 'MISS')}"
            detail = f"completed ({how}, {result.duration_ms:.0f} ms)"
        else:
            error = f"{result.error.code}: {result.error.message}" if result.error else "no reason given"
            detail = f"failed ({error})"
        self.stream.write(f"[{self.counts.done}/{self.counts.total}] {result.filename} {detail}\n")
        self.stream.flush()

    def status(self, status: TaskStatus) -> None:
        if status.total_images:
            self.counts.total = status.total_images

    def close(self) -> None:
        pass


def make_progress(stream: TextIO, total: int, *, quiet: bool = False) -> Progress:
    """A bar on a terminal, lines elsewhere, nothing when ``quiet``."""
    if quiet:
        return NullProgress()
    if stream.isatty():
        return BarProgress(stream, total)
    return LineProgress(stream, total)
