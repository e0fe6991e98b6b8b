"""Side-by-side measurements on a noisy machine: every candidate runs
``repeats`` times in rotation (A, B, A, B, ...), so a slow spell of the
machine hits all alike; results are medians with the min-max spread, and
comparisons are ratios of medians from the same rotation."""
from __future__ import annotations

import statistics
from typing import Callable, Dict, List, Mapping, Sequence


def in_rotation(candidates: Mapping[str, Callable[[], float]], repeats: int) -> Dict[str, List[float]]:
    """Call each candidate ``repeats`` times, in rotation; returns its values."""
    results: Dict[str, List[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            results[name].append(run())
    return results


def median_ratio(results: Mapping[str, Sequence[float]], numerator: str, denominator: str) -> float:
    return statistics.median(results[numerator]) / statistics.median(results[denominator])


def median_table(results: Mapping[str, Sequence[float]], what: str, unit: str = "img/s", digits: int = 1) -> str:
    """A Markdown table: one row per candidate, median and min - max."""
    lines = [f"| {what} | median {unit} | min - max |", "| --- | --- | --- |"]
    for name, values in results.items():
        lines.append(f"| {name} | {statistics.median(values):.{digits}f} | "
                     f"{min(values):.{digits}f} - {max(values):.{digits}f} |")
    return "\n".join(lines)
