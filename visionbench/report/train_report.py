"""The train report (``--report``) and the DAWNBench TSV (``--dawn-tsv``).

Both are rewritten atomically after every epoch, so an interrupted run
leaves a complete, valid report of the epochs it finished."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import List, Optional, Sequence, Union

from ..files import write_text_atomic
from .schema import validate_report

SCHEMA_VERSION = 1


def environment(device_kind: str, device_count: int, engine: Union[str, Sequence[str]] = "mxnet") -> dict:
    """The machine and software of a report; ``engine``: the engine that ran,
    or a benchmark sweep's list of engines (each one's version is recorded)."""
    import numpy as np

    from ..engines import framework_versions

    try:
        import nvidia.dali as dali
        dali_version = dali.__version__
    except ImportError:
        dali_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), **framework_versions(engine), "dali": dali_version,
            "numpy": np.__version__, "device_kind": device_kind, "device_count": device_count,
            "cpu_count": os.cpu_count(), "git_commit": commit, "hostname": platform.node()}


def summarize(epochs: List[dict], started: float, target_top1: Optional[float],
              target_top5: Optional[float]) -> dict:
    def best(key):
        values = [e[key] for e in epochs if e[key] is not None]
        return max(values) if values else None

    def time_to(key, target):
        if target is None:
            return None
        return next((e["elapsed_s"] for e in epochs if e[key] is not None and e[key] >= target), None)

    return {"best_val_top1": best("val_top1"), "best_val_top5": best("val_top5"),
            "total_duration_s": time.time() - started,
            "time_to_target_s": {"top1": time_to("val_top1", target_top1), "top5": time_to("val_top5", target_top5)},
            "skipped_steps": sum(e["skipped_steps"] for e in epochs),
            "skipped_records": sum(e.get("skipped_records", 0) for e in epochs)}


def build_report(config: dict, env: dict, epochs: List[dict], summary: dict, status: str) -> dict:
    report = {"schema_version": SCHEMA_VERSION, "kind": "train", "status": status, "config": config,
              "environment": env, "epochs": epochs, "summary": summary}
    validate_report(report, "train_report")
    return report


def write_report(path: Path, report: dict) -> None:
    write_text_atomic(Path(path), json.dumps(report, indent=2) + "\n")


def dawn_tsv(epochs: List[dict]) -> str:
    """DAWNBench: epoch, hours of training (validation excluded), top-1 and top-5 in percent."""
    lines = []
    for record in epochs:
        if record["val_top1"] is None:
            continue
        lines.append(f"{record['epoch']}\t{record['elapsed_s'] / 3600:.6f}\t"
                     f"{100 * record['val_top1']:.2f}\t{100 * record['val_top5']:.2f}")
    return "".join(line + "\n" for line in lines)
