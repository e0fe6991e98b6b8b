"""DALI pipelines over pass-through RecordIO, one per device.

Records are read by our own sampler (sampling.py) and fed to DALI through
``fn.external_source``, so every backend shares one definition of sharding,
shuffling, padding and rectangular-val ordering, and an epoch is a pure
function of (seed, epoch, shard). Decoding, augmentation, normalisation, the
output dtype (float16 included) and layout all happen inside DALI; batches
reach MXNet through ``nvidia.dali.plugin.mxnet``.

GPU-only lines are confined to ``_placement`` and ``_to_device`` (marked
GPU-ONLY) and nvJPEG's options (gpu_decoding.py); they cannot run on
the development machines.
"""
from __future__ import annotations

import warnings
from collections import deque
from typing import AbstractSet, Callable, Iterator, List, Optional

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.mxnet import DALIGenericIterator

from .gpu_decoding import decoder_options
from .recordio import BadRecordSet, RecordReader
from .sampling import RectEpoch, ShardEpoch, derive_seed, leave_out
from .spec import RECT_VAL_RESIZE_RATIO, VAL_RESIZE_RATIO, LoaderSpec

_DALI_DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16}
_DALI_LAYOUTS = {"NCHW": "CHW", "NHWC": "HWC"}
PREFETCH_DEPTH = 2   # batches DALI prepares ahead of the training step


def _placement(backend: str, context) -> tuple[Optional[int], str]:
    """(DALI device_id, decoder device) for a backend and an MXNet context."""
    if context.device_type == "gpu":
        # GPU-ONLY: nvJPEG ("mixed") decoding for dali-gpu; CPU decoding then
        # a copy to the GPU for dali-cpu.
        return context.device_id, ("mixed" if backend == "dali-gpu" else "cpu")
    return None, "cpu"


def _to_device(node, context):
    """Every output of a pipeline built for a GPU leaves it on that GPU: the
    decoded images of ``mixed`` decoding already are, the labels (and CPU
    decoded images) are copied (the MXNet plugin puts CPU outputs on cpu(0))."""
    if context.device_type == "gpu" and node.device == "cpu":
        return node.gpu()   # GPU-ONLY
    return node


class _EpochFeed:
    """The external source of one device pipeline for one epoch: encoded
    images, labels and (rect val) per-sample resize/crop sizes. Positions in
    ``left_out`` (records found undecodable, --bad-records skip) are never fed:
    see sampling.leave_out."""

    def __init__(self, reader: RecordReader, plan: ShardEpoch, spec: LoaderSpec,
                 left_out: AbstractSet[int] = frozenset()):
        self.reader, self.plan, self.spec, self.left_out = reader, plan, spec, left_out
        self.batch = 0
        # Positions of the latest batches handed to DALI, to name a record it
        # fails on: at most the prefetch queue plus the batch being decoded.
        self.fed: deque = deque(maxlen=PREFETCH_DEPTH + 2)

    def batch_at(self, index: int) -> tuple[np.ndarray, int, int]:
        """(positions, pad, records left out) of batch ``index``."""
        positions, pad = self.plan.positions[index], int(self.plan.pads[index])
        if not self.left_out:
            return positions, pad, 0
        filler = next((int(p) for p in self.plan.positions.flat if int(p) not in self.left_out), None)
        if filler is None:
            raise BadRecordSet(f"{self.reader.rec_path}: no record of a device's share of the epoch decodes")
        return leave_out(positions, pad, self.left_out, filler)

    def __iter__(self):
        return self

    def __next__(self):
        if self.batch >= len(self.plan.positions):
            raise StopIteration
        positions, _, _ = self.batch_at(self.batch)
        encoded, labels = [], []
        for position in positions:
            label, payload = self.reader.read(int(position))
            encoded.append(np.frombuffer(payload, dtype=np.uint8))
            labels.append(np.array([label], dtype=np.float32))
        outputs = [encoded, labels]
        if isinstance(self.plan, RectEpoch):
            crop_h, crop_w = (float(v) for v in self.plan.crops[self.batch])
            short = float(int(self.spec.image_size * RECT_VAL_RESIZE_RATIO))
            # Cover the crop: the nominal short side, or the crop's long side.
            resize_x, resize_y = (crop_w, short) if crop_w >= crop_h else (short, crop_h)
            for value in (resize_x, resize_y, crop_h, crop_w):
                outputs.append([np.array(value, dtype=np.float32)] * len(positions))
        self.fed.append(positions)
        self.batch += 1
        return tuple(outputs)


def _reflect_pad(images, pad: int, side: int):
    """Reflect-pad square ``side`` x ``side`` HWC images by ``pad`` pixels
    (numpy's 'reflect': the edge pixel is not repeated)."""
    left = fn.flip(images[:, 1:pad + 1], horizontal=1)
    right = fn.flip(images[:, side - pad - 1:side - 1], horizontal=1)
    rows = fn.cat(left, images, right, axis=1)
    top = fn.flip(rows[1:pad + 1], horizontal=0, vertical=1)
    bottom = fn.flip(rows[side - pad - 1:side - 1], horizontal=0, vertical=1)
    return fn.cat(top, rows, bottom, axis=0)


def _resize_shorter_center_crop(images, encoded, shorter: int, size: int):
    """Resize HWC images so the shorter side is ``shorter`` (the longer one
    ``shorter * long // short``, rounded down) and cut the ``size`` square at
    offset ``(side - size) // 2``: the integer geometry of ImageRecordIter's
    ``resize`` + center crop, so the dali and mxnet backends see the same
    pixels (up to the resampling filter).

    The geometry is computed from the ``encoded`` images' headers
    (``peek_image_shape``, a CPU operator): DALI takes named-argument inputs
    from CPU nodes only, and with ``mixed`` decoding the decoded images (and
    ``fn.shapes`` of them) live on the GPU."""
    shape = fn.peek_image_shape(encoded, dtype=types.INT32)   # (height, width, channels) from the header
    height, width = shape[0], shape[1]
    portrait = height > width
    new_h = portrait * (shorter * height // width) + (1 - portrait) * shorter
    new_w = portrait * shorter + (1 - portrait) * (shorter * width // height)
    images = fn.resize(images, resize_x=fn.cast(new_w, dtype=types.FLOAT),
                       resize_y=fn.cast(new_h, dtype=types.FLOAT))
    anchor = fn.cat(fn.reshape((new_h - size) // 2, shape=[1]), fn.reshape((new_w - size) // 2, shape=[1]))
    return fn.slice(images, start=anchor, shape=[size, size], axis_names="HW")


def build_pipeline(spec: LoaderSpec, feed: _EpochFeed, context, seed: int):
    device_id, decode_device = _placement(spec.backend, context)
    aug, size = spec.augment, spec.image_size
    rect = spec.augment.rect_val and not spec.train and aug.recipe == "imagenet"

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.pipeline_threads,
                  device_id=device_id, seed=seed, prefetch_queue_depth=PREFETCH_DEPTH)
    def pipeline():
        decode_options = decoder_options(decode_device)   # GPU-ONLY extras for nvJPEG; none on CPU
        dtypes = [types.UINT8, types.FLOAT] + [types.FLOAT] * (4 if rect else 0)
        inputs = fn.external_source(source=feed, num_outputs=len(dtypes), batch=True, dtype=dtypes,
                                    no_copy=False)
        encoded, labels = inputs[0], inputs[1]
        normalize = dict(dtype=_DALI_DTYPES[spec.dtype], output_layout=_DALI_LAYOUTS[spec.layout],
                         mean=list(aug.mean), std=list(aug.std))
        if spec.train and aug.recipe == "imagenet":
            images = fn.decoders.image_random_crop(
                encoded, device=decode_device, output_type=types.RGB, **decode_options,
                random_area=[aug.min_scale, 1.0], random_aspect_ratio=list(aug.aspect_range),
                num_attempts=100)
            images = fn.resize(images, resize_x=size, resize_y=size)
            images = fn.crop_mirror_normalize(images, mirror=fn.random.coin_flip(), **normalize)
        elif spec.train:   # cifar
            images = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB, **decode_options)
            if aug.pad:
                images = _reflect_pad(images, aug.pad, size)
            # Cutout erases after normalisation, in float32: DALI 1.34's GPU
            # erase has no float16 kernel (dali_contract.GPU_INPUT_DTYPES);
            # the cast to float16 comes last.
            erase_dtype = "float32" if aug.cutout else spec.dtype
            images = fn.crop_mirror_normalize(
                images, crop=(size, size), crop_pos_x=fn.random.uniform(range=(0.0, 1.0)),
                crop_pos_y=fn.random.uniform(range=(0.0, 1.0)), mirror=fn.random.coin_flip(),
                **dict(normalize, dtype=_DALI_DTYPES[erase_dtype]))
            if aug.cutout:
                # Cutout: one square per image, inside the image, set to the
                # mean (0 after normalisation).
                anchor = fn.random.uniform(values=[float(v) for v in range(size - aug.cutout + 1)], shape=[2])
                images = fn.erase(images, anchor=anchor, shape=[float(aug.cutout)] * 2,
                                  axis_names="HW", fill_value=0.0)
            if erase_dtype != spec.dtype:
                images = fn.cast(images, dtype=_DALI_DTYPES[spec.dtype])
        elif aug.recipe == "cifar":
            images = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB, **decode_options)
            images = fn.crop_mirror_normalize(images, crop=(size, size), **normalize)
        elif rect:
            resize_x, resize_y, crop_h, crop_w = inputs[2:]
            images = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB, **decode_options)
            images = fn.resize(images, resize_x=resize_x, resize_y=resize_y, mode="not_smaller")
            images = fn.crop_mirror_normalize(images, crop_h=crop_h, crop_w=crop_w, **normalize)
        else:
            images = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB, **decode_options)
            images = _resize_shorter_center_crop(images, encoded, round(size / VAL_RESIZE_RATIO), size)
            images = fn.crop_mirror_normalize(images, **normalize)
        return _to_device(images, context), _to_device(labels, context)

    return pipeline()


def dali_epoch(spec: LoaderSpec, reader: RecordReader, plans: List[ShardEpoch], epoch: int,
               left_out: AbstractSet[int] = frozenset(),
               skip: Optional[Callable[[int], None]] = None) -> Iterator[tuple]:
    """Yield, per step, ``(parts, dropped)``: one (data, label, pad) per device
    and how many records of ``left_out`` (positions never fed) the step lacks.

    A record DALI cannot decode stops the epoch with a BadRecordSet naming it
    (``skip`` None: --bad-records fail), or is handed to ``skip(position)``,
    which must add it to ``left_out``; the pipelines then restart at the step
    that failed, exactly as a resume there would."""
    steps = len(plans[0].positions)
    step = 0
    while step < steps:
        feeds = [_EpochFeed(reader, plan.from_step(step), spec, left_out) for plan in plans]
        try:
            for parts in _run_pipelines(spec, feeds, epoch):
                yield parts
                step += 1
            return
        except RuntimeError as err:
            position = _undecodable(reader, feeds)
            if position is None or position in left_out:
                raise
            if skip is None:
                key = reader.keys[position]
                raise BadRecordSet(f"record {key} of {reader.rec_path} is not a decodable image "
                                   "(--bad-records skip leaves such records out)", key) from err
            skip(position)


def _run_pipelines(spec: LoaderSpec, feeds: List[_EpochFeed], epoch: int) -> Iterator[tuple]:
    pipes = [build_pipeline(spec, feed, context, derive_seed(spec.seed, spec.shard_id(i), epoch))
             for i, (feed, context) in enumerate(zip(feeds, spec.devices))]
    steps = len(feeds[0].plan.positions)
    # Without a DALI reader the plugin counts samples: the epoch is
    # exactly steps x devices x batch, every batch full (padding included).
    with warnings.catch_warnings():
        # The plugin warns whenever `size` is given instead of a DALI reader.
        warnings.filterwarnings("ignore", message="Please set `reader_name`")
        iterator = DALIGenericIterator(
            pipes, [("data", DALIGenericIterator.DATA_TAG), ("label", DALIGenericIterator.LABEL_TAG)],
            size=steps * len(pipes) * spec.batch_size, auto_reset=False)
    for step in range(steps):
        batches = next(iterator)
        parts, dropped = [], 0
        for batch, context, feed in zip(batches, spec.devices, feeds):
            data, label = batch.data[0], batch.label[0]
            if data.context != context:      # CPU pipelines: one per CPU context, all output on cpu(0)
                data = data.as_in_context(context)
            if label.context != context:
                label = label.as_in_context(context)
            _, pad, left = feed.batch_at(step)
            parts.append((data, label, pad))
            dropped += left
        yield parts, dropped
    del iterator, pipes


def _undecodable(reader: RecordReader, feeds: List[_EpochFeed]) -> Optional[int]:
    """The position of a record DALI could not decode, if it is one of the
    batches in flight (decoded again with Pillow to find it)."""
    import io

    from PIL import Image

    for feed in feeds:
        for positions in feed.fed:
            for position in positions:
                _, payload = reader.read(int(position))
                try:
                    Image.open(io.BytesIO(payload)).load()
                except Exception:  # noqa: BLE001 - any failure means: not decodable
                    return int(position)
    return None
