"""The augmentation part: the nvjpeg backend's train crops (crop, resize,
mirror) of one batch of ImageNet-shaped images already on the device, made
the two ways bench/augment_ops.py compares: the batched resample the
backend uses (engines/torch/resample.py: about 80 operators a batch, and
float32 products mostly by zeros) and a loop of F.interpolate calls (about
900 launches a batch of 256). Which costs a GPU more is what this part
measures; img/s here is the augmentation's alone, no decoding, no model."""
from __future__ import annotations

from typing import List

from .sizes import CheckSizes

REPEATS = 5   # timed batches per point, after one untimed


def augmentation_command(check_command: str, device: str, sizes: CheckSizes) -> str:
    """The check's command, then the bench command that measures the same on its own."""
    return (f"{check_command}  # augmentation: python -m visionbench.bench.augment_ops --device "
            f"{'cuda' if device == 'gpu' else 'cpu'} --batch-size {sizes.train_batches[-1]} "
            f"--image-size {sizes.image_size}")


def candidates() -> List[str]:
    from ..bench.augment_ops import BATCHED, LOOP

    return [BATCHED, LOOP]


def timed_augmentation(device: str, sizes: CheckSizes, candidate: str) -> dict:
    """img/s of one way of cropping a batch, with its operators per batch and,
    on GPUs, its peak memory in the note."""
    import torch

    from ..bench.augment_ops import operators_per_call, peak_device_mib, seconds_per_call, train_crop_candidates

    on = torch.device("cuda" if device == "gpu" else "cpu")
    batch = sizes.train_batches[-1]
    _, ways = train_crop_candidates(batch, sizes.image_size, on)
    augment = ways[candidate]
    seconds_per_call(augment, on)   # untimed: allocator and kernels warm
    seconds = sum(seconds_per_call(augment, on) for _ in range(REPEATS))
    note = f"{operators_per_call(augment)} aten operators a batch (views apart)"
    if on.type == "cuda":
        note += f"; peak {peak_device_mib(augment, on):.0f} MiB"
    return {"ips": REPEATS * batch / seconds, "timed_images": REPEATS * batch, "timed_iterations": REPEATS,
            "timed_s": seconds, "note": note}
