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
    import mxnet as mx
    import numpy as np

    side = spec.image_size
    shape = (spec.batch_size, 3, side, side) if spec.layout == "NCHW" else (spec.batch_size, side, side, 3)
    parts = []
    for i, context in enumerate(spec.devices):
        rng = np.random.default_rng(derive_seed(spec.seed, spec.shard_id(i)))
        data = rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype)
        label = rng.integers(0, spec.num_classes, spec.batch_size).astype(np.float32)
        parts.append((mx.nd.array(data, ctx=context, dtype=spec.dtype), mx.nd.array(label, ctx=context)))
    return parts


def synthetic_epoch(spec: LoaderSpec, parts: list, steps: int) -> Iterator[list]:
    for _ in range(steps):
        yield parts
