"""The check's points as benchmark-report records (report_schema/
benchmark_report.schema.json) and as the Markdown table beside them.

A record keeps what the schema holds (batch, dtype, status, img/s,
latency, timed images/steps/seconds, the command); the table adds what it
has no field for, row by row in the same order: the part, the point's
layout and compilation, MFU and a note (readiness outcomes, ratios to
synthetic data, ResNet9's epoch times). Points that could not run here are
``error`` records whose error starts with ``skipped:`` and says why;
points the time budget left out are ``timeout`` records."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from .machine import mfu

SKIPPED = "skipped: "
TIMED_FIELDS = ("ips", "latency_ms", "timed_images", "timed_iterations", "timed_s")


@dataclass
class Point:
    part: str                     # readiness | synthetic | real data | augmentation | inference | resnet9
    label: str                    # what varies inside the part, e.g. "bfloat16 channels_last compile"
    batch: int
    dtype: str
    command: str
    gflop: Optional[float] = None   # per image at this point's size (ResNet50 224 px only), for MFU
    status: str = "ok"
    error: Optional[str] = None
    note: str = ""
    figures: dict = field(default_factory=dict)
    wall_s: float = 0.0
    done: bool = False              # run (or left out) already; the report holds done points only

    @property
    def failed(self) -> bool:
        """An error that is not a skip (points the budget left out are "timeout")."""
        return self.status == "error" and not (self.error or "").startswith(SKIPPED)

    def record(self) -> dict:
        figures = {name: self.figures.get(name) for name in TIMED_FIELDS}
        return {"ngpus": 1, "batch_size": self.batch, "engine": "torch", "dtype": self.dtype,
                "status": self.status, "error": self.error, **figures, "weak_scaling": None,
                "speedup_vs_float32": None, "wall_s": self.wall_s, "calibration": None, "command": self.command}


def build_report(config: dict, env: dict, points: List[Point], status: str) -> dict:
    from ..report.schema import validate_report

    report = {"schema_version": 1, "kind": "benchmark", "mode": "train", "status": status, "config": config,
              "environment": env, "results": [point.record() for point in points]}
    validate_report(report, "benchmark_report")   # checks nothing where jsonschema is absent
    return report


def write_json(path: Path, report: dict) -> None:
    from ..files import write_text_atomic

    write_text_atomic(path, json.dumps(report, indent=2) + "\n")


TABLE_HEADER = ("| # | part | point | batch | dtype | status | img/s | latency p50 / p90 / p99 ms | MFU | note |\n"
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def _cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def table_row(index: int, point: Point, peak: Optional[float]) -> str:
    ips = point.figures.get("ips")
    latency = point.figures.get("latency_ms")
    percentiles = " / ".join(f"{latency[k]:.3g}" for k in ("p50", "p90", "p99")) if latency else "-"
    utilisation = mfu(ips, point.gflop, peak)
    shown_mfu = f"{100 * utilisation:.1f}%" if utilisation is not None else ("n/a" if ips else "-")
    note = point.note if point.status == "ok" else f"{point.error}" + (f"; {point.note}" if point.note else "")
    return (f"| {index} | {point.part} | {_cell(point.label)} | {point.batch} | {point.dtype} | {point.status} | "
            f"{f'{ips:.4g}' if ips else '-'} | {percentiles} | {shown_mfu} | {_cell(note) or '-'} |")


def markdown(title: str, header_lines: List[str], points: List[Point], peak: Optional[float]) -> str:
    lines = [f"# {title}", "", *header_lines, "", TABLE_HEADER]
    lines += [table_row(index, point, peak) for index, point in enumerate(points)]
    lines += ["", "## Commands", "", "Row by row, the runner flags of each point (rerunning one through ./runner "
              "times the same configuration over a longer run; the rows without a runner mode name the check):", ""]
    lines += [f"{index}. `{point.command}`" for index, point in enumerate(points)]
    return "\n".join(lines) + "\n"
