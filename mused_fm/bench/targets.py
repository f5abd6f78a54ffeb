"""Targets a benchmark's figures are held to, checked against its JSON result: met, not met, not measured.

Each benchmark module lists its own in `TARGETS`; the CLI prints the verdicts after the figures and
docs/BENCHMARKS.md shows them in each benchmark's generated section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mused_fm.errors import InputError

__all__ = ["Target", "format_number"]


def format_number(value: float) -> str:
    """Three significant figures for ratios and small rates, thousands separators for large ones."""
    if math.isfinite(value) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


@dataclass(frozen=True)
class Target:
    key: str
    """Dotted path into the benchmark's JSON, e.g. "nsd.bytes_per_sample"."""
    op: Literal[">=", "<="]
    threshold: float
    note: str = ""
    """What the figure is, in a few words, for a reader who does not know the key."""

    def value(self, result: dict) -> float | None:
        """The figure in `result`, or None where the run did not measure it (e.g. `loader --no-s3`)."""
        node = result
        for part in self.key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        if isinstance(node, bool) or not isinstance(node, int | float):
            raise InputError(f"target {self.key!r}: expected a number in the benchmark's JSON, got {node!r}.")
        return float(node)

    def met(self, result: dict) -> bool | None:
        """True or False, or None where not measured. NaN meets nothing."""
        value = self.value(result)
        if value is None:
            return None
        return value >= self.threshold if self.op == ">=" else value <= self.threshold

    def describe(self, result: dict, markdown: bool = True) -> str:
        """One line, e.g. "`ratio` >= 1.25 (flagship over Bert): **not met** (1.11)"; plain text for a terminal."""
        code, strong = ("`", "**") if markdown else ("", "")
        note = f" ({self.note})" if self.note else ""
        head = f"{code}{self.key}{code} {self.op} {format_number(self.threshold)}{note}"
        met = self.met(result)
        if met is None:
            return f"{head}: not measured (no {code}{self.key}{code} in this run's JSON)"
        verdict = "met" if met else f"{strong}not met{strong}"
        return f"{head}: {verdict} ({format_number(self.value(result))})"
