"""The ``mxnet`` backend: MXNet's own ``mx.io.ImageRecordIter`` (OpenCV decoding
in C++ threads), for users without DALI and as a reference for the DALI path.

Same ImageNet augmentation semantics as the DALI pipelines (random-resized
crop with the same area and aspect ranges, flip, normalisation; val: resize
to size / 0.875 and center crop). ImageRecordIter emits float32 NCHW only:
each device's slice of the batch is copied to its device first, then cast to
float16 and transposed to NHWC there (on GPUs: by each GPU, in parallel,
instead of by the host for the whole multi-GPU batch; never in the training
loop). What it cannot do, it refuses: rectangular validation and the CIFAR
recipe (reflect padding, Cutout) need a DALI backend.

Sharding across workers uses the iterator's own ``part_index/num_parts``
(by record count, through the .idx); the worker's batch of
``batch_size x devices`` is split evenly over its devices.
"""
from __future__ import annotations

import math
from typing import Iterator

from ..cli import UsageError
from .sampling import derive_seed
from .spec import VAL_RESIZE_RATIO, LoaderSpec


# OpenCV INTER_AREA: an averaging filter when shrinking, closest to DALI's
# default antialiased linear resize (mean difference < 1.1 on 0..255 after a
# 64 -> 37 pixel shrink, measured in tests/test_loaders.py).
AREA = 3


def check_native_spec(spec: LoaderSpec) -> None:
    if spec.augment.recipe != "imagenet":
        raise UsageError("--data-backend mxnet supports the imagenet augmentation only "
                         "(CIFAR's reflect padding and Cutout need dali-cpu or dali-gpu)")
    if spec.augment.rect_val and not spec.train:
        raise UsageError("rectangular validation needs dali-cpu or dali-gpu, not --data-backend mxnet")


def native_batches(spec: LoaderSpec, num_records: int) -> int:
    per_worker = math.ceil(num_records / spec.num_workers)
    return math.ceil(per_worker / (spec.batch_size * len(spec.devices)))


def native_epoch(spec: LoaderSpec, epoch: int) -> Iterator[list]:
    """Yield per step one (data, label, pad) triple per device."""
    import mxnet as mx

    aug, size = spec.augment, spec.image_size
    worker_batch = spec.batch_size * len(spec.devices)
    mean = dict(zip(("mean_r", "mean_g", "mean_b"), aug.mean))
    std = dict(zip(("std_r", "std_g", "std_b"), aug.std))
    kwargs = dict(path_imgrec=str(spec.prefix) + ".rec", path_imgidx=str(spec.prefix) + ".idx",
                  data_shape=(3, size, size), batch_size=worker_batch, label_width=1,
                  part_index=spec.rank, num_parts=spec.num_workers, round_batch=True,
                  preprocess_threads=spec.pipeline_threads * len(spec.devices),
                  dtype="float32", **mean, **std)
    if spec.train:
        seed = derive_seed(spec.seed, spec.rank, epoch)
        kwargs.update(shuffle=True, seed=seed, seed_aug=seed, random_resized_crop=True,
                      min_random_area=aug.min_scale, max_random_area=1.0,
                      min_aspect_ratio=aug.aspect_range[0], max_aspect_ratio=aug.aspect_range[1],
                      rand_mirror=True, inter_method=AREA)
    else:
        kwargs.update(shuffle=False, resize=round(size / VAL_RESIZE_RATIO), inter_method=AREA)
    records = mx.io.ImageRecordIter(**kwargs)
    for batch in records:
        data, label = batch.data[0], batch.label[0]
        valid = worker_batch - batch.pad
        parts = []
        for i, context in enumerate(spec.devices):
            lo, hi = i * spec.batch_size, (i + 1) * spec.batch_size
            pad = int(min(spec.batch_size, max(0, hi - valid)))
            parts.append((_on_device(data[lo:hi], context, spec), label[lo:hi].as_in_context(context), pad))
        yield parts


def _on_device(data, context, spec: LoaderSpec):
    """One device's float32 NCHW slice, copied to ``context`` and converted
    there to the spec's dtype and layout (ImageRecordIter's dtype knob knows
    no float16, and it emits NCHW only)."""
    import mxnet as mx

    data = data.as_in_context(context)
    if spec.layout == "NHWC":
        data = mx.nd.transpose(data, axes=(0, 2, 3, 1))
    if spec.dtype != "float32":
        data = mx.nd.cast(data, dtype=spec.dtype)
    return data
