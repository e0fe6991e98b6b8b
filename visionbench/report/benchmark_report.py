"""The benchmark report (benchmark.py -o REPORT.json) and what is written
beside it: REPORT.md (the tables) and REPORT.png (the plot)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List

from ..files import write_bytes_atomic, write_text_atomic
from .schema import validate_report
from .train_report import write_report   # noqa: F401 - one atomic JSON writer for both reports

SCHEMA_VERSION = 1


def engine_of(record: dict) -> str:
    """The engine of a point; reports from before engines were swept ran MXNet."""
    return record.get("engine", "mxnet")


def add_ratios(records: List[dict]) -> None:
    """Fill weak_scaling and speedup_vs_float32 from the points that
    succeeded, each against a point of the same engine."""
    ips = {(r["ngpus"], r["batch_size"], r["dtype"], engine_of(r)): r["ips"] for r in records if r["status"] == "ok"}
    for r in records:
        engine = engine_of(r)
        own = ips.get((r["ngpus"], r["batch_size"], r["dtype"], engine))
        single = ips.get((1, r["batch_size"], r["dtype"], engine))
        fp32 = ips.get((r["ngpus"], r["batch_size"], "float32", engine))
        r["weak_scaling"] = own / (r["ngpus"] * single) if own and single else None
        r["speedup_vs_float32"] = own / fp32 if own and fp32 else None


def build_report(mode: str, config: dict, env: dict, records: List[dict], status: str) -> dict:
    add_ratios(records)
    report = {"schema_version": SCHEMA_VERSION, "kind": "benchmark", "mode": mode, "status": status,
              "config": config, "environment": env, "results": records}
    validate_report(report, "benchmark_report")
    return report


WHAT_IS_TIMED = {
    "train": ("img/s: images of the timed epochs (after the warm-up epochs) / their wall time; each epoch "
              "includes data loading, forward, backward, gradient reduction and the update, fenced by a wait "
              "for every device (MXNet: mx.nd.waitall(); PyTorch: the epoch's loss sum read back). Both engines "
              "run the same data pipeline, schedule and timing window. Weak scaling: img/s(n) / (n x img/s(1)) "
              "at the same batch per device, dtype and engine."),
    "inference": ("latency: one batch already in device memory through the hybridized network (static memory) "
                  "until every device's output is ready; no data loading. img/s: timed images / wall time of the "
                  "timed iterations (the warm-up epochs are run but not timed). int8: the float32 model quantized "
                  "after calibration, which is not timed (see INT8 calibration below)."),
}


def markdown(report: dict, tables: Dict[str, object]) -> str:
    from .tables import failures

    env = report["environment"]
    frameworks = "".join(f"{name} {env[key]}, " for key, name in (("mxnet", "MXNet"), ("torch", "PyTorch"))
                         if env.get(key))
    lines = [f"# Benchmark report ({report['mode']})", "",
             f"{env['device_count']} x {env['device_kind']} max, {env['cpu_count']} CPU cores, {frameworks}"
             f"DALI {env['dali']}, commit {env['git_commit']}.", "", WHAT_IS_TIMED[report["mode"]], ""]
    for title, frame in tables.items():
        shown = frame.astype(object).where(frame.notna(), None)   # a missing figure reads "-", not "nan"
        lines += [f"## {title}", "", shown.to_markdown(floatfmt=".4g", missingval="-"), ""]
    failed = failures(report["results"])
    if failed:
        lines += ["## Points that failed", ""] + [f"- {line}" for line in failed] + [""]
    calibrated = [r for r in report["results"] if r.get("calibration")]
    if calibrated:
        lines += ["## INT8 calibration", ""]
        for r in calibrated:
            c = r["calibration"]
            note = (" (synthetic batches: fine for speed, but the ranges say nothing of real images)"
                    if c["source"] == "synthetic" else "")
            lines += [f"- n {r['ngpus']}, batch {r['batch_size']}: {c['mode']} calibration on {c['images']} "
                      f"{c['source']} images, {c['seconds']:.1f} s{note}"]
        lines += [""]
    lines += ["## Commands", "", "Each point's exact command; rerunning one prints its figures again "
              "(last line, `benchmark-result:`).", ""]
    for r in report["results"]:
        lines += [f"- n {r['ngpus']}, batch {r['batch_size']}, {r['dtype']}, {engine_of(r)} ({r['status']}): "
                  f"`{r['command']}`"]
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, outputs: Dict[str, Path]) -> str:
    """Write REPORT.md and REPORT.png; returns the tables as text for the terminal."""
    from .plots import benchmark_figure
    from .tables import benchmark_tables, failures

    tables = benchmark_tables(report)
    write_text_atomic(outputs["md"], markdown(report, tables))
    figure = benchmark_figure(report)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    write_bytes_atomic(outputs["png"], buffer.getvalue())
    text = [f"{title}\n{frame.to_string(float_format=lambda v: f'{v:.4g}', na_rep='-')}"
            for title, frame in tables.items()]
    text += [f"failed: {line}" for line in failures(report["results"])]
    text.append(f"wrote {outputs['json']}, {outputs['md']}, {outputs['png']}")
    return "\n\n".join(text)
