"""What a measured run hands back to the sweep driver, and latency percentiles.

A runner started with ``--benchmark`` (training) or ``--mode inference``
ends its stdout with one line ``benchmark-result: {JSON}``; benchmark.py
reads that line from each point's subprocess. The same line is what a
person sees when rerunning a point's command by hand.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

RESULT_PREFIX = "benchmark-result: "
PERCENTILES = (50, 90, 95, 99)


def latency_summary(seconds: Sequence[float]) -> dict:
    """Per-batch latencies in seconds -> mean, p50, p90, p95, p99, max in
    milliseconds (linear interpolation between order statistics, so the
    percentiles are ordered by construction)."""
    import numpy as np

    if not len(seconds):
        raise ValueError("no timed iterations")
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    summary = {"mean": float(ms.mean())}
    for q, value in zip(PERCENTILES, np.percentile(ms, PERCENTILES)):
        summary[f"p{q}"] = float(value)
    summary["max"] = float(ms.max())
    return summary


def result_line(result: dict) -> str:
    return RESULT_PREFIX + json.dumps(result, sort_keys=True)


def find_result(stdout: str) -> Optional[dict]:
    """The last result line of a run's stdout, or None when there is none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            try:
                result = json.loads(line[len(RESULT_PREFIX):])
            except json.JSONDecodeError:
                return None
            return result if isinstance(result, dict) else None
    return None
