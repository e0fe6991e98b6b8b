"""Inference points: the torch engine's model (session.build_model, the
same as training builds) in eval mode under torch.inference_mode and
bfloat16 autocast, channels_last; one fixed batch already on the device
(no input pipeline). Each pass is timed to the device's completion, so the
percentiles are per-batch latencies (bench/timing.py's latency_summary)."""
from __future__ import annotations

import time
from typing import List

from .sizes import CheckSizes


def inference_argv(device: str, batch: int, sizes: CheckSizes) -> List[str]:
    """The runner flags describing the model and precision of the point."""
    return ["--engine", "torch", "--device", device, "-b", str(batch), "--dtype", "bfloat16",
            "--input-layout", "NHWC", "--arch", "resnetv15", "--num-layers", str(sizes.num_layers),
            "--image-size", str(sizes.image_size), "--num-classes", str(sizes.num_classes)]


def timed_inference(argv: List[str], steps: int) -> dict:
    """``steps`` untimed then ``steps`` timed forward passes."""
    import torch

    from ..bench.timing import latency_summary
    from ..config import resolve
    from ..engines.torch.session import AUTOCAST_DTYPES, build_model
    from ..main import make_devices

    config = resolve(argv + ["--mode", "train"], prog="gpucheck")
    device = make_devices(config)[0]
    model = build_model(config, device).eval()
    batch = torch.rand(config.batch_size, 3, config.image_size, config.image_size, device=device)
    batch = batch.to(memory_format=torch.channels_last)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    latencies = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=AUTOCAST_DTYPES[config.dtype]):
        for _ in range(steps):
            model(batch)
        synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            begin = time.perf_counter()
            model(batch)
            synchronize()
            latencies.append(time.perf_counter() - begin)
        seconds = time.perf_counter() - started
    del model, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"ips": steps * config.batch_size / seconds, "timed_images": steps * config.batch_size,
            "timed_iterations": steps, "timed_s": seconds, "latency_ms": latency_summary(latencies)}
