"""Medians and paired ratios of an A/B run (pure: `bench.ab` measures, prints and stores).

Every round measures every target once per row, so round r gives each target a figure taken
within seconds of the others'. A ratio is therefore taken within the round (NEW_r / OLD_r,
target_r / HAProxy_r) and the median of those is reported with its min and max over rounds:
slow drift of the shared box cancels in each pair, and the min-max says how far one round can
stray. An A/A run (the same tree twice) shows what spread means "no difference".
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"median": round(self.median, 4), "min": round(self.low, 4),
                "max": round(self.high, 4)}


def spread(xs: list[float]) -> Spread:
    if not xs:
        raise ValueError("no values")
    return Spread(statistics.median(xs), min(xs), max(xs))


def paired_ratios(num: list[float], den: list[float]) -> list[float]:
    """num[r] / den[r] for every round r where both were measured and den[r] > 0."""
    return [a / b for a, b in zip(num, den, strict=False) if b > 0 and a >= 0]


def verdict(s: Spread, rounds: int) -> str:
    """What the per-round ratios say on their own: every round on the same side of 1, or not
    (with fewer than 3 rounds, nothing)."""
    if rounds < 3:
        return f"{rounds} round(s): too few to judge"
    if s.low > 1:
        return "higher in every round"
    if s.high < 1:
        return "lower in every round"
    return "rounds disagree: within this run's noise"


def summarise_row(runs: dict[str, list[float]], trees: list[str], ref: str) -> dict[str, Any]:
    """One row's figures: per-target median work per CPU-second, every tree after the first
    against the first (per-round ratios), every tree against the reference."""
    base = trees[0]
    out: dict[str, Any] = {
        "per_cpu_s": {t: round(statistics.median(xs), 2) for t, xs in runs.items() if xs},
        "vs_first": {}, "vs_ref": {},
    }
    for t in trees[1:]:
        r = paired_ratios(runs[t], runs[base])
        if r:
            s = spread(r)
            out["vs_first"][t] = {**s.as_dict(), "verdict": verdict(s, len(r))}
    for t in trees:
        r = paired_ratios(runs[t], runs[ref])
        if r:
            out["vs_ref"][t] = spread(r).as_dict()
    return out


def unique_names(names: list[str]) -> list[str]:
    """The same spec twice (an A/A run: `HEAD HEAD`) gets `#2`, `#3` ... after the first."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def format_row(name: str, unit: str, s: dict[str, Any], trees: list[str], ref: str) -> list[str]:
    """Printable lines of one summarised row."""
    lines = [f"{name} ({unit}, median over rounds; ratios per round: median [min-max])"]
    for t, v in s["per_cpu_s"].items():
        parts = [f"  {t:14s} {v:12.1f}"]
        if t in s["vs_first"]:
            f = s["vs_first"][t]
            parts.append(f"x{f['median']:.3f} [{f['min']:.3f}-{f['max']:.3f}] vs {trees[0]}")
        if t in s["vs_ref"]:
            f = s["vs_ref"][t]
            parts.append(f"x{f['median']:.3f} [{f['min']:.3f}-{f['max']:.3f}] vs {ref}")
        if t in s["vs_first"]:
            parts.append(f"({s['vs_first'][t]['verdict']})")
        lines.append("  ".join(parts))
    return lines
