"""Benchmark plots (REPORT.png), drawn without a display."""
from __future__ import annotations


# Each engine's points keep one marker, so the engines' lines tell apart in grey too.
ENGINE_MARKERS = {"mxnet": "o", "torch": "s"}


def benchmark_figure(report: dict):
    """Throughput vs batch size, one line per device count, dtype and engine
    (the engine named in the legend when the sweep ran several); for
    inference a second panel with the latency (p50 solid, p99 dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .benchmark_report import engine_of
    from .tables import sweep_engines

    ok = [r for r in report["results"] if r["status"] == "ok"]
    several = len(sweep_engines(report["results"])) > 1
    lines = sorted({(r["ngpus"], r["dtype"], engine_of(r)) for r in ok})
    inference = report["mode"] == "inference"
    figure, axes = plt.subplots(1, 2 if inference else 1, figsize=(11 if inference else 6, 4.2), squeeze=False)
    throughput = axes[0][0]
    for line in lines:
        points = sorted(((r["batch_size"], r) for r in ok if (r["ngpus"], r["dtype"], engine_of(r)) == line),
                        key=lambda point: point[0])
        batches = [b for b, _ in points]
        ngpus, dtype, engine = line
        label = f"{ngpus} x {report['environment']['device_kind']}, {dtype}" + (f", {engine}" if several else "")
        marker = ENGINE_MARKERS.get(engine, "o")
        drawn = throughput.plot(batches, [r["ips"] for _, r in points], marker=marker, label=label)
        if inference:
            color = drawn[0].get_color()
            axes[0][1].plot(batches, [r["latency_ms"]["p50"] for _, r in points], marker=marker, color=color,
                            label=f"{label} p50")
            axes[0][1].plot(batches, [r["latency_ms"]["p99"] for _, r in points], linestyle="--", color=color,
                            label=f"{label} p99")
    throughput.set_xlabel("batch size per device")
    throughput.set_ylabel("images / s")
    throughput.set_title("training throughput" if not inference else "inference throughput")
    if inference:
        axes[0][1].set_xlabel("batch size per device")
        axes[0][1].set_ylabel("latency per batch, ms")
        axes[0][1].set_title("inference latency")
    for ax in axes[0]:
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if not ok:
        throughput.text(0.5, 0.5, "no point succeeded", ha="center", va="center", transform=throughput.transAxes)
    figure.tight_layout()
    return figure
