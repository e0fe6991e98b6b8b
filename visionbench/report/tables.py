"""Tables for people: the per-epoch table printed at the end of a run, and
the benchmark tables (printed, and in REPORT.md)."""
from __future__ import annotations

from typing import Dict, List

from ..config import ENGINES
from .benchmark_report import engine_of


def epoch_table(records: List[dict]) -> str:
    import pandas as pd

    frame = pd.DataFrame(records, columns=["epoch", "train_loss", "train_ips", "val_top1", "val_top5",
                                           "elapsed_s", "lr", "image_size", "batch_size"])
    frame = frame.astype({"val_top1": float, "val_top5": float})   # None -> NaN, printed as "-"
    frame["epoch"] += 1   # people count epochs from 1
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")


def sweep_engines(results: List[dict]) -> List[str]:
    """The engines a sweep ran (failed points included), mxnet first."""
    present = {engine_of(r) for r in results}
    return [engine for engine in ENGINES if engine in present]   # config.ENGINES: mxnet first


def _ok_frame(results: List[dict]):
    import pandas as pd

    return pd.DataFrame([{**r, "engine": engine_of(r)} for r in results if r["status"] == "ok"],
                        columns=["ngpus", "batch_size", "dtype", "engine", "ips", "weak_scaling",
                                 "speedup_vs_float32", "latency_ms"])


def benchmark_tables(report: dict) -> Dict[str, object]:
    """With several engines, first one table of them side by side (rows:
    devices, batch, dtype; img/s per engine and torch/mxnet), then each
    engine's own tables (titles end with the engine). One engine: its
    tables only, titled as before engines were swept."""
    frame = _ok_frame(report["results"])
    engines = sweep_engines(report["results"])
    tables: Dict[str, object] = {}
    if frame.empty:
        return tables
    if len(engines) > 1:
        tables["Engines side by side, img/s"] = engine_table(frame, engines)
    for engine in engines:
        part = frame[frame["engine"] == engine]
        suffix = f", {engine}" if len(engines) > 1 else ""
        if not part.empty and report["mode"] == "train":
            tables.update(training_tables(part, suffix))
        elif not part.empty:
            tables.update(inference_tables(part, suffix))
    return tables


def engine_table(frame, engines: List[str]):
    """Rows (devices, batch, dtype) where some engine succeeded; a column of
    img/s per engine ("-": that engine's point failed) and each engine's
    ratio to the first (torch/mxnet)."""
    import pandas as pd

    wide = frame.pivot_table(index=["ngpus", "batch_size", "dtype"], columns="engine", values="ips",
                             aggfunc="first").reindex(columns=engines)
    table = pd.DataFrame({f"img/s {engine}": wide[engine] for engine in engines}, index=wide.index)
    for engine in engines[1:]:
        table[f"{engine}/{engines[0]}"] = wide[engine] / wide[engines[0]]
    table = table.reset_index(["batch_size", "dtype"]).rename(columns={"batch_size": "batch"})
    table.index.name = "devices"
    return table


def training_tables(frame, suffix: str = "") -> Dict[str, object]:
    """Per batch size: rows = device count, columns = img/s per dtype,
    float16 speedup, weak scaling per dtype."""
    import pandas as pd

    tables: Dict[str, object] = {}
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
        tables[f"Training, batch {batch} per device{suffix}"] = table
    return tables


def inference_tables(frame, suffix: str = "") -> Dict[str, object]:
    """Per device count and dtype, rows = batch size, columns = img/s and
    latency (ms); with several dtypes, also per device count: img/s of each
    dtype side by side and each one's ratio to float32 (int8/float32,
    float16/float32)."""
    import pandas as pd

    tables: Dict[str, object] = {}
    for (ngpus, dtype), part in frame.groupby(["ngpus", "dtype"]):
        latency = pd.DataFrame(list(part["latency_ms"]), index=part["batch_size"],
                               columns=["mean", "p50", "p90", "p95", "p99", "max"])
        table = pd.concat([part.set_index("batch_size")["ips"].rename("img/s"),
                           latency.add_suffix(" ms")], axis=1).sort_index()
        table.index.name = "batch"
        tables[f"Inference, {ngpus} device(s), {dtype}{suffix}"] = table
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
        tables[f"Inference, {ngpus} device(s), by dtype{suffix}"] = table
    return tables


def _dtype_order(dtypes) -> List[str]:
    """float32 first: the column every ratio is taken against."""
    order = ("float32", "float16", "int8")
    return sorted(dtypes, key=order.index)


def failures(results: List[dict]) -> List[str]:
    return [f"n {r['ngpus']}, batch {r['batch_size']}, {r['dtype']}, {engine_of(r)}: {r['status']}: {r['error']}"
            for r in results if r["status"] != "ok"]
