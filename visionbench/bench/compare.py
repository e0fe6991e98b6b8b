"""Side-by-side measurements on a noisy machine: every candidate runs
``repeats`` times in rotation (A, B, A, B, ...), so a slow spell of the
machine hits all alike; results are medians with the min-max spread, and
comparisons are ratios of medians from the same rotation."""
from __future__ import annotations

import statistics
from typing import Callable, Dict, List, Mapping, Sequence


def in_rotation(candidates: Mapping[str, Callable[[], float]], repeats: int) -> Dict[str, List[float]]:
    """Call each candidate ``repeats`` times, in rotation; returns its values.
    Every other round runs in reverse order (A B, B A, A B, ...), so that no
    candidate always follows the same one (warm caches, a freed core)."""
    results: Dict[str, List[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for round_index in range(repeats):
        for name in (names if round_index % 2 == 0 else reversed(names)):
            results[name].append(candidates[name]())
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


def comparison_report(heading: str, results: Mapping[str, Sequence[float]], what: str, numerator: str,
                      denominator: str, ratio_digits: int = 3) -> str:
    """What a side-by-side bench prints: its setup, the table, the ratio."""
    ratio = median_ratio(results, numerator, denominator)
    return (f"{heading}\n\n{median_table(results, what)}\n\n"
            f"{numerator} / {denominator} (ratio of medians): **{ratio:.{ratio_digits}f}**")
