"""Counters and gauges of one worker, served as JSON (``/api/v1/stats``) and as
Prometheus text (``/metrics``).

Small on purpose: a name, optional labels, a float.  Prometheus scrapes each worker;
sums across workers are the scraper's job.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

__all__ = ["Labels", "Metrics", "metrics"]

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """Named counters and gauges with labels."""

    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._gauges: dict[str, Callable[[], Iterable[tuple[Labels, float]]]] = {}
        self._help: dict[str, str] = {}

    def describe(self, name: str, help_text: str) -> None:
        self._help[name] = help_text

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self._counters[name][tuple(sorted(labels.items()))] += amount

    def get(self, name: str, **labels: str) -> float:
        """A counter's value (0 if never incremented); no labels → the sum over all."""
        series = self._counters.get(name, {})
        if labels:
            return series.get(tuple(sorted(labels.items())), 0.0)
        return sum(series.values())

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """A counter split by one label: ``{"timeout": 3, ...}``."""
        out: dict[str, float] = defaultdict(float)
        for key, value in self._counters.get(name, {}).items():
            out[dict(key).get(label, "")] += value
        return dict(out)

    def gauge(self, name: str, read: Callable[[], Iterable[tuple[Labels, float]]]) -> None:
        """Register a gauge read at scrape time."""
        self._gauges[name] = read

    def read_gauge(self, name: str) -> list[tuple[Labels, float]]:
        read = self._gauges.get(name)
        return list(read()) if read else []

    def reset(self) -> None:
        self._counters.clear()

    def prometheus(self, prefix: str = "imagestream_") -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []

        def emit(name: str, kind: str, series: Iterable[tuple[Labels, float]]) -> None:
            full = prefix + name
            if name in self._help:
                lines.append(f"# HELP {full} {self._help[name]}")
            lines.append(f"# TYPE {full} {kind}")
            for labels, value in series:
                if labels:
                    rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    lines.append(f"{full}{{{rendered}}} {value:g}")
                else:
                    lines.append(f"{full} {value:g}")

        for name in sorted(self._counters):
            emit(name, "counter", sorted(self._counters[name].items()))
        for name in sorted(self._gauges):
            emit(name, "gauge", self.read_gauge(name))
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


#: The worker's metrics.
metrics = Metrics()
