"""Stated benchmark targets, compared where they are printed.

A benchmark records each figure against its target with :meth:`Targets.at_most`,
:meth:`Targets.below` or :meth:`Targets.at_least` (which prints a line saying met or MISSED), then returns
:meth:`Targets.exit_code` from ``main``: 1 when any target was missed, so ``make bench``
fails on a missed target and still shows every figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Targets:
    missed: list[str] = field(default_factory=list)

    def at_most(self, what: str, figure: float, limit: float, unit: str = "") -> bool:
        return self._check(what, figure, limit, unit, figure <= limit, "≤")

    def below(self, what: str, figure: float, limit: float, unit: str = "") -> bool:
        return self._check(what, figure, limit, unit, figure < limit, "<")

    def at_least(self, what: str, figure: float, limit: float, unit: str = "") -> bool:
        return self._check(what, figure, limit, unit, figure >= limit, "≥")

    def _check(self, what: str, figure: float, limit: float, unit: str, ok: bool, op: str) -> bool:
        line = f"{what}: {figure:,.3f}{unit} (target {op} {limit:,g}{unit})"
        print(f"   target {'met' if ok else 'MISSED'}: {line}")
        if not ok:
            self.missed.append(line)
        return ok

    def unchecked(self, what: str, why: str) -> None:
        """A target that could not be compared counts as missed."""
        line = f"{what}: {why}"
        print(f"   target MISSED: {line}")
        self.missed.append(line)

    def exit_code(self) -> int:
        """Print the verdict; 0 when every target was met, else 1."""
        if self.missed:
            print(f"FAILED: {len(self.missed)} target(s) missed:\n  " + "\n  ".join(self.missed))
            return 1
        print("OK: every target met")
        return 0
