"""The ``synthetic`` backend: fixed random tensors on each device, no I/O,
for compute-only benchmarks. Made once per loader, in the requested dtype and
layout, and yielded again every step."""
from __future__ import annotations

import math
from typing import Iterator

from .sampling import derive_seed
from .spec import LoaderSpec


def synthetic_batches(spec: LoaderSpec) -> int:
    worker_images = spec.synthetic_images // spec.num_workers
    return max(1, math.floor(worker_images / (spec.batch_size * len(spec.devices))))


def synthetic_tensors(spec: LoaderSpec) -> list:
    """(data, label) per device, as NDArrays or torch.Tensors (spec.framework):
    the same values for both engines, from the shard's seed."""
    import numpy as np

    side = spec.image_size
    shape = (spec.batch_size, 3, side, side) if spec.layout == "NCHW" else (spec.batch_size, side, side, 3)
    parts = []
    for i, device in enumerate(spec.devices):
        rng = np.random.default_rng(derive_seed(spec.seed, spec.shard_id(i)))
        data = rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype)
        label = rng.integers(0, spec.num_classes, spec.batch_size).astype(np.float32)
        convert = _to_torch if spec.framework == "torch" else _to_mxnet
        parts.append(convert(data, label, device, spec))
    return parts


def _to_mxnet(data, label, context, spec: LoaderSpec) -> tuple:
    import mxnet as mx

    return mx.nd.array(data, ctx=context, dtype=spec.dtype), mx.nd.array(label, ctx=context)


def _to_torch(data, label, device, spec: LoaderSpec) -> tuple:
    """NHWC data becomes an NCHW-shaped view with channels_last strides, as
    the DALI backends return it (loader.DeviceBatch)."""
    import torch

    tensor = torch.from_numpy(data).to(device)
    if spec.layout == "NHWC":
        tensor = tensor.permute(0, 3, 1, 2)
    return tensor, torch.from_numpy(label).to(device)


def synthetic_epoch(spec: LoaderSpec, parts: list, steps: int) -> Iterator[list]:
    for _ in range(steps):
        yield parts
