"""The nvjpeg backend's train augmentation (crop, resize, mirror) for one
batch of ImageNet-shaped images: the batched resample (engines/torch/
resample.py) against a loop of ``F.interpolate`` calls, one image at a time
(what the backend did before).

On a GPU each aten operator that is not a view launches at least one kernel
from the producer thread, in Python, under the GIL that training shares; so
the machine-independent figure is operators per batch, counted by a torch
dispatch mode. The CPU seconds are printed too, but say little about a GPU:
the batched matrix products do more arithmetic than the loop's resizes
(mostly multiplications by the zeros of the resampling matrices), which on
CPUs costs more than the loop's dispatch. It prints that arithmetic against
a ResNet50 training step's. On a GPU, ``--device cuda`` times both there.

    python -m visionbench.bench.augment_ops
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import TYPE_CHECKING, Callable, List, Sequence

import numpy as np

from ..cli import ArgumentParser, UsageError, positive_int, run_main
from ..data.crop_windows import imagenet_draws, imagenet_windows
from ..gpucheck.machine import RESNET50_TRAIN_GFLOP
from .compare import in_rotation

if TYPE_CHECKING:   # torch is imported where used: only engines/torch imports it at module level
    import torch

RESNET50_TRAIN_MACS = RESNET50_TRAIN_GFLOP * 1e9 / 2   # per 224-px image, forward + backward


def operator_count():
    """A torch dispatch mode counting the aten operators dispatched inside
    it, views apart (``.kernels``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OperatorCount(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.kernels = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                self.kernels += 1
            return func(*args, **(kwargs or {}))

    return OperatorCount()


def imagenet_shaped(count: int, seed: int) -> List[torch.Tensor]:
    """(3, H, W) uint8 images: half 500 x 375 or 375 x 500 (ImageNet's most
    common shapes), the rest 200..700 wide at aspect ratios 0.6..1.5."""
    import torch

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        if rng.random() < 0.5:
            height, width = (375, 500) if rng.random() < 0.5 else (500, 375)
        else:
            width = int(rng.integers(200, 700))
            height = int(width * rng.uniform(0.6, 1.5))
        images.append(torch.from_numpy(rng.integers(0, 256, size=(3, height, width), dtype=np.uint8)))
    return images


LOOP, BATCHED = "per-image F.interpolate loop", "batched resample"


def train_crop_candidates(batch: int, size: int, device: torch.device) -> tuple:
    """(windows, {name: augment()}): the sampler's train windows (min scale
    0.08, aspect 3/4..4/3, flips) of ``batch`` ImageNet-shaped images on
    ``device``, and the two ways of cropping them to ``size``."""
    from ..engines.torch.resample import crop_windows, resample

    images = [image.to(device) for image in imagenet_shaped(batch, seed=0)]
    heights = np.array([image.shape[1] for image in images])
    widths = np.array([image.shape[2] for image in images])
    draws = imagenet_draws(0, 0, np.arange(len(images)), 0.08, (3 / 4, 4 / 3))
    windows = imagenet_windows(draws, heights, widths, (3 / 4, 4 / 3))
    return windows, {
        LOOP: lambda: per_image_loop(images, windows, draws.flip, size),
        BATCHED: lambda: resample(images, crop_windows(windows, size, draws.flip), size),
    }


def per_image_loop(images: Sequence[torch.Tensor], windows: np.ndarray, flips: np.ndarray,
                   size: int) -> torch.Tensor:
    """The loop: each window resized by F.interpolate (antialiased bilinear),
    mirrored where drawn and copied into the batch."""
    import torch
    import torch.nn.functional as F

    batch = torch.empty((len(images), 3, size, size), dtype=torch.float32, device=images[0].device)
    for index, (image, (top, left, height, width)) in enumerate(zip(images, windows.tolist())):
        window = image[:, top:top + height, left:left + width].unsqueeze(0).float()
        resized = F.interpolate(window, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        batch[index] = resized.flip(-1) if flips[index] else resized
    return batch


def _multiply_adds(windows: np.ndarray, groups, size: int) -> int:
    """The two matrix products' multiply-adds for the batch: per image and
    channel, size x H x W + size x size x H over its group's padded H x W."""
    total = 0
    for group in groups:
        height, width = int(windows[group, 2].max()), int(windows[group, 3].max())
        total += len(group) * 3 * (size * height * width + size * size * height)
    return total


def _device(name: str) -> torch.device:
    import torch

    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" and torch.cuda.is_available():
        return torch.device("cuda")
    raise UsageError(f"--device {name}: this machine's torch sees no such device (cpu, or cuda on a GPU machine)")


def operators_per_call(function: Callable[[], torch.Tensor]) -> int:
    with operator_count() as counter:
        function()
    return counter.kernels


def seconds_per_call(function: Callable[[], torch.Tensor], device: torch.device) -> float:
    """Wall seconds of one call, its GPU work included."""
    _synchronize(device)
    start = time.perf_counter()
    function()
    _synchronize(device)
    return time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)   # GPU-ONLY


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--image-size", type=positive_int, default=224)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the batch is augmented")
    args = parser.parse_args(argv)
    from ..engines.torch.resample import size_groups
    device = _device(args.device)
    windows, candidates = train_crop_candidates(args.batch_size, args.image_size, device)
    difference = (candidates[BATCHED]() - candidates[LOOP]()).abs().max()
    seconds = in_rotation({name: (lambda run=run: seconds_per_call(run, device)) for name, run in candidates.items()},
                          args.repeats)
    groups = size_groups(windows[:, 2], windows[:, 3])
    products = _multiply_adds(windows, groups, args.image_size)
    print(f"Train crops of {args.batch_size} ImageNet-shaped images to {args.image_size} px "
          f"({len(groups)} size groups); largest difference between the two: {difference:.1e} of a pixel value. "
          f"The batched products: {products / 1e9:.1f} G multiply-adds per batch, "
          f"{products / (RESNET50_TRAIN_MACS * args.batch_size):.2%} of ResNet50's training step at this batch.\n")
    print(_table(candidates, seconds, device))
    return 0


def _table(candidates: dict, seconds: dict, device: torch.device) -> str:
    """Markdown: operators and seconds per batch; on a GPU, its peak memory too."""
    on_gpu = device.type == "cuda"
    lines = [f"| augmentation | aten operators per batch (views apart) | {device.type} s per batch, median "
             f"(min - max) |{' peak device MiB |' if on_gpu else ''}", "| --- | --- | --- |" + (" --- |" if on_gpu else "")]
    for name, run in candidates.items():
        values = seconds[name]
        peak = f" {peak_device_mib(run, device):.0f} |" if on_gpu else ""
        lines.append(f"| {name} | {operators_per_call(run)} | {statistics.median(values):.2f} "
                     f"({min(values):.2f} - {max(values):.2f}) |{peak}")
    return "\n".join(lines)


def peak_device_mib(function: Callable[[], torch.Tensor], device: torch.device) -> float:
    """GPU-ONLY: the most device memory one call holds beyond what was held before, in MiB."""
    import torch

    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    function()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20


if __name__ == "__main__":
    sys.exit(run_main(main, "augment_ops"))
