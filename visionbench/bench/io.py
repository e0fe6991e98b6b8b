"""``--mode io``: run only the input pipeline and report its throughput.

Timing starts after ``warmup`` steps (pipeline start-up, first allocations)
and stops when the last batch is in device memory (``mx.nd.waitall``, or
``torch.cuda.synchronize`` for the torch engine's GPU batches), so the
figure is what the training loop would receive per second.
"""
from __future__ import annotations

import itertools
import time
from typing import Iterator, List


def steps_forever(loader, first_epoch: int = 0) -> Iterator[list]:
    """Steps of successive epochs, without end."""
    for epoch in itertools.count(first_epoch):
        yield from loader.epoch(epoch)


def _wait_for_devices(spec) -> None:
    """Return once every batch copied so far is in its device's memory."""
    if spec.framework == "torch":
        import torch

        if any(device.type == "cuda" for device in spec.devices):
            torch.cuda.synchronize()   # GPU-ONLY
        return
    import mxnet as mx

    mx.nd.waitall()


def measure_loader(loader, iterations: int, warmup: int) -> dict:
    """Images per second (padding excluded), in total and per device."""
    steps = steps_forever(loader)
    for _ in range(warmup):
        next(steps)
    _wait_for_devices(loader.spec)
    devices = len(loader.spec.devices)
    images: List[int] = [0] * devices
    started = time.perf_counter()
    for _ in range(iterations):
        for i, (data, label, pad) in enumerate(next(steps)):
            images[i] += data.shape[0] - pad
    _wait_for_devices(loader.spec)
    seconds = time.perf_counter() - started
    return {
        "iterations": iterations,
        "warmup_iterations": warmup,
        "seconds": seconds,
        "images": sum(images),
        "images_per_second": sum(images) / seconds,
        "images_per_second_per_device": [n / seconds for n in images],
    }


def format_io_report(result: dict, label: str) -> str:
    per_device = ", ".join(f"{v:.1f}" for v in result["images_per_second_per_device"])
    return (f"{label}: {result['images_per_second']:.1f} img/s in total over {result['iterations']} steps "
            f"({result['images']} images, {result['seconds']:.2f} s, after {result['warmup_iterations']} warm-up steps); "
            f"per device: {per_device}")
