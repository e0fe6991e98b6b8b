"""Tables for people: the per-epoch table printed at the end of a run, and
the benchmark tables (printed, and in REPORT.md)."""
from __future__ import annotations

from typing import Dict, List


def epoch_table(records: List[dict]) -> str:
    import pandas as pd

    frame = pd.DataFrame(records, columns=["epoch", "train_loss", "train_ips", "val_top1", "val_top5",
                                           "elapsed_s", "lr", "image_size", "batch_size"])
    frame = frame.astype({"val_top1": float, "val_top5": float})   # None -> NaN, printed as "-"
    frame["epoch"] += 1   # people count epochs from 1
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")


def _ok_frame(results: List[dict]):
    import pandas as pd

    return pd.DataFrame([r for r in results if r["status"] == "ok"],
                        columns=["ngpus", "batch_size", "dtype", "ips", "weak_scaling", "speedup_vs_float32",
                                 "latency_ms"])


def benchmark_tables(report: dict) -> Dict[str, object]:
    """Training: per batch size, rows = device count, columns = img/s per
    dtype, float16 speedup, weak scaling per dtype. Inference: per device
    count and dtype, rows = batch size, columns = img/s and latency (ms);
    with several dtypes, also per device count: img/s of each dtype side by
    side and each one's ratio to float32 (int8/float32, float16/float32)."""
    import pandas as pd

    frame = _ok_frame(report["results"])
    tables: Dict[str, object] = {}
    if frame.empty:
        return tables
    if report["mode"] == "train":
        for batch, part in frame.groupby("batch_size"):
            wide = part.pivot(index="ngpus", columns="dtype", values=["ips", "weak_scaling"])
            table = pd.DataFrame(index=wide.index)
            for dtype in sorted(part["dtype"].unique(), reverse=True):   # float32 first, as the seed's tables
                table[f"img/s {dtype}"] = wide[("ips", dtype)]
            if {"float16", "float32"} <= set(part["dtype"]):
                table["speedup float16/float32"] = wide[("ips", "float16")] / wide[("ips", "float32")]
            for dtype in sorted(part["dtype"].unique(), reverse=True):
                table[f"weak scaling {dtype}"] = wide[("weak_scaling", dtype)]
            table.index.name = "devices"
            tables[f"Training, batch {batch} per device"] = table
        return tables
    for (ngpus, dtype), part in frame.groupby(["ngpus", "dtype"]):
        latency = pd.DataFrame(list(part["latency_ms"]), index=part["batch_size"],
                               columns=["mean", "p50", "p90", "p95", "p99", "max"])
        table = pd.concat([part.set_index("batch_size")["ips"].rename("img/s"),
                           latency.add_suffix(" ms")], axis=1).sort_index()
        table.index.name = "batch"
        tables[f"Inference, {ngpus} device(s), {dtype}"] = table
    for ngpus, part in frame.groupby("ngpus"):
        dtypes = _dtype_order(part["dtype"].unique())
        if len(dtypes) < 2:
            continue
        wide = part.pivot(index="batch_size", columns="dtype", values=["ips", "speedup_vs_float32"])
        table = pd.DataFrame(index=wide.index)
        for dtype in dtypes:
            table[f"img/s {dtype}"] = wide[("ips", dtype)]
        for dtype in dtypes:
            if dtype != "float32" and "float32" in dtypes:
                table[f"{dtype}/float32"] = wide[("speedup_vs_float32", dtype)]
        table.index.name = "batch"
        tables[f"Inference, {ngpus} device(s), by dtype"] = table
    return tables


def _dtype_order(dtypes) -> List[str]:
    """float32 first: the column every ratio is taken against."""
    order = ("float32", "float16", "int8")
    return sorted(dtypes, key=order.index)


def failures(results: List[dict]) -> List[str]:
    return [f"n {r['ngpus']}, batch {r['batch_size']}, {r['dtype']}: {r['status']}: {r['error']}"
            for r in results if r["status"] != "ok"]
