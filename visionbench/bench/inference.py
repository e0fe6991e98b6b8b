"""``--mode inference``: forward passes of a hybridized model with static
memory, timed per batch. On CPUs the graph is fused for oneDNN (MXNet's
``optimize_for(backend="MKLDNN")``: convolution, BatchNorm, ReLU and the
residual sum become one operator) unless ``--no-fuse-inference``; with
``--dtype int8`` that fused graph is quantized after calibration
(engine/quantize.py; calibration is not timed); on GPUs it runs in the
requested dtype and layout as hybridized.

What the figures include:
- latency of a batch: from handing the batch (already in device memory) to
  the network until every device's output is computed (``wait_to_read``);
  data loading is not in it;
- img/s: timed images / wall time of the timed iterations, so it also pays
  for fetching the next batch (nothing for synthetic data, the pipeline's
  hand-over for real data).
The first ``benchmark_warmup_epochs`` x ``iterations`` batches (graph
building, memory planning, caches) are run but not timed; ``mx.nd.waitall``
fences both ends of the timed section.
"""
from __future__ import annotations

import itertools
import time

from ..config import Config


def measure_inference(net, steps, warmup: int, timed: int) -> dict:
    """Run ``warmup`` then ``timed`` steps (lists of (data, label, pad)) through ``net``."""
    import mxnet as mx

    from .timing import latency_summary

    for step in itertools.islice(steps, warmup):
        for data, _, _ in step:
            net(data).wait_to_read()
    mx.nd.waitall()
    latencies = []
    images = 0
    started = time.perf_counter()
    for step in itertools.islice(steps, timed):
        begin = time.perf_counter()
        outputs = [net(data) for data, _, _ in step]
        for output in outputs:
            output.wait_to_read()
        latencies.append(time.perf_counter() - begin)
        images += sum(data.shape[0] - pad for data, _, pad in step)
    mx.nd.waitall()
    seconds = time.perf_counter() - started
    if len(latencies) < timed:
        raise RuntimeError(f"the loader ended after {len(latencies)} of {timed} timed steps")
    return {"mode": "inference", "ips": images / seconds, "timed_images": images, "timed_s": seconds,
            "timed_iterations": len(latencies), "latency_ms": latency_summary(latencies)}


def inference_net(config: Config, devices, precision, sample_shape: tuple):
    """The network ``--mode inference`` times: built like training's
    (hybridized, static_alloc + static_shape), fused on CPUs.
    ``sample_shape``: one device's input batch, to partition the graph for."""
    import mxnet as mx

    from ..engine.trainer import build_net

    net = build_net(config, devices, precision)
    if config.dtype == "int8":
        return net   # quantize_net_v2 fuses it for oneDNN itself (its MKLDNN_QUANTIZE pass), then quantizes
    if config.fuse_inference and config.device == "cpu":
        import os

        os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")   # no "Subgraph backend MKLDNN is activated." line
        sample = mx.nd.zeros(sample_shape, ctx=devices[0], dtype=precision.dtype)
        net.optimize_for(sample, backend="MKLDNN", static_alloc=True, static_shape=True)
    return net


def run_inference(config: Config, devices) -> int:
    from ..data.loader import make_loader
    from ..engine.precision import resolve_precision
    from ..data.spec import loader_spec
    from .io import steps_forever
    from .timing import result_line

    precision = resolve_precision(config.dtype, config.device, config.loss_scale)
    split = "train" if config.data_backend == "synthetic" else "val"
    loader = make_loader(loader_spec(config, split, devices))
    side = config.image_size
    shape = (config.batch_size, 3, side, side) if config.input_layout == "NCHW" else (config.batch_size, side, side, 3)
    net = inference_net(config, devices, precision, shape)
    calibration = None
    if config.dtype == "int8":
        from ..engine.quantize import int8_net

        net, calibration = int8_net(net, loader, config, devices)
    per_epoch = config.iterations or len(loader)
    warmup = config.benchmark_warmup_epochs * per_epoch
    timed = (config.num_epochs - config.benchmark_warmup_epochs) * per_epoch
    result = measure_inference(net, steps_forever(loader), warmup, timed)
    result["devices"] = len(devices)
    result["calibration"] = calibration.to_dict() if calibration else None
    latency = result["latency_ms"]
    print(f"inference {config.device} x{len(devices)} batch {config.batch_size} {config.dtype}"
          f"{f' ({calibration.describe()})' if calibration else ''}: "
          f"{result['ips']:.1f} img/s over {result['timed_images']} images in {timed} steps "
          f"({result['timed_s']:.2f} s, after {warmup} warm-up steps); latency per batch, ms: "
          f"mean {latency['mean']:.2f} p50 {latency['p50']:.2f} p90 {latency['p90']:.2f} "
          f"p95 {latency['p95']:.2f} p99 {latency['p99']:.2f} max {latency['max']:.2f}", flush=True)
    print(result_line(result), flush=True)
    return 0
