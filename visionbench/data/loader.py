"""``make_loader(spec)``: the one entry to the input pipelines.

    loader = make_loader(LoaderSpec(prefix=Path("data/train"), train=True, batch_size=64,
                                    image_size=224, devices=[mx.cpu(0), mx.cpu(1)]))
    len(loader)          # steps per epoch
    loader.num_images    # images this worker reads per epoch, padding excluded
    for step in loader.epoch(3):
        for data, label, pad in step:   # one DeviceBatch per device
            ...                         # the last `pad` samples repeat earlier ones

With ``framework="torch"`` the devices are torch.device objects and the
batches torch.Tensors (devices.py; the ``mxnet`` backend is MXNet's own
iterator, so it is refused there, and ``nvjpeg`` decodes and augments with
torch, engines/torch/nvjpeg.py, so it feeds torch only).

Every step has a batch for every device. Epochs are pure functions of
(seed, epoch): ``loader.epoch(e)`` can be replayed, e.g. after a resume.
Rebuilding a loader for a new phase (image size, batch size) is cheap: the
record index is read once per loader and the pipelines once per epoch.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterator, List, NamedTuple

import numpy as np

from ..cli import UsageError
from .devices import FRAMEWORKS, device_framework, device_kind
from .recordio import RecordReader
from .sampling import batches_per_epoch, epoch_order, rect_val_epoch, shard_epoch, smallest_shard
from .spec import BACKENDS, BAD_RECORD_POLICIES, DTYPES, LAYOUTS, LoaderSpec

MIN_IMAGE_SIZE = 8   # pixels


# Backends that feed torch: the mxnet backend is MXNet's ImageRecordIter.
TORCH_BACKENDS = ("synthetic", "dali-cpu", "dali-gpu", "nvjpeg")
# nvjpeg decodes and augments with torch (engines/torch/nvjpeg.py): torch only.
TORCH_ONLY_BACKENDS = ("nvjpeg",)


class DeviceBatch(NamedTuple):
    # data: on the device, in the spec's dtype. mxnet: an NDArray (batch, 3,
    # size, size), or (batch, size, size, 3) for layout NHWC. torch: a Tensor
    # shaped (batch, 3, size, size) either way; for NHWC it has channels_last
    # strides (the NHWC bytes seen through .permute(0, 3, 1, 2), no copy),
    # which is how torch runs NHWC: an NCHW-shaped tensor in memory format
    # torch.channels_last, fed to a model converted to channels_last.
    data: object
    label: object   # float32 (batch,), NDArray or Tensor on the device
    pad: int        # trailing samples that are padding, not data


def check_spec(spec: LoaderSpec) -> None:
    """Refuse what cannot work, before any pipeline is built."""
    if spec.backend not in BACKENDS:
        raise UsageError(f"unknown data backend {spec.backend!r} (choose from {', '.join(BACKENDS)})")
    if spec.dtype not in DTYPES:
        raise UsageError(f"unknown dtype {spec.dtype!r} (choose from {', '.join(DTYPES)})")
    if spec.layout not in LAYOUTS:
        raise UsageError(f"unknown layout {spec.layout!r} (choose from {', '.join(LAYOUTS)})")
    if spec.image_size < MIN_IMAGE_SIZE:
        raise UsageError(f"image size {spec.image_size} is below the minimum of {MIN_IMAGE_SIZE} pixels")
    if spec.batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {spec.batch_size}")
    if not spec.devices:
        raise UsageError("no devices given")
    _check_framework(spec)
    if not 0 <= spec.rank < spec.num_workers:
        raise UsageError(f"worker rank {spec.rank} is outside 0..{spec.num_workers - 1}")
    aug = spec.augment
    if aug.recipe not in ("imagenet", "cifar"):
        raise UsageError(f"unknown augmentation recipe {aug.recipe!r} (imagenet or cifar)")
    if not 0 < aug.min_scale <= 1:
        raise UsageError(f"min crop scale must be in (0, 1], got {aug.min_scale}")
    if aug.rect_val and spec.image_size % 8:
        raise UsageError(f"rectangular validation needs an image size that is a multiple of 8, got {spec.image_size}")
    if aug.recipe == "cifar" and spec.train and (aug.pad >= spec.image_size or aug.cutout > spec.image_size):
        raise UsageError(f"padding {aug.pad} / Cutout {aug.cutout} do not fit {spec.image_size}-pixel images")
    if spec.backend == "dali-gpu" and any(device_kind(d) != "gpu" for d in spec.devices):
        raise UsageError("--data-backend dali-gpu needs GPU devices; use dali-cpu with --device cpu")
    if spec.bad_records not in BAD_RECORD_POLICIES:
        raise UsageError(f"unknown bad-record policy {spec.bad_records!r} (choose from {', '.join(BAD_RECORD_POLICIES)})")
    _check_nvjpeg(spec)
    if spec.bad_records == "skip" and spec.backend == "mxnet":
        raise UsageError("--bad-records skip needs a DALI backend (dali-cpu or dali-gpu); "
                         "the mxnet backend's ImageRecordIter stops at an undecodable record")
    if spec.backend != "synthetic" and spec.prefix is None:
        raise UsageError(f"--data-backend {spec.backend} needs a dataset (--data-root)")


def _check_nvjpeg(spec: LoaderSpec) -> None:
    """What the nvjpeg backend does not do, and the dtype only it emits."""
    if spec.dtype == "bfloat16" and spec.backend != "nvjpeg":
        raise UsageError(f"bfloat16 batches come from --data-backend nvjpeg only, not {spec.backend}")
    if spec.backend != "nvjpeg":
        return
    if spec.bad_records == "skip":
        raise UsageError("--bad-records skip needs a DALI backend (dali-cpu or dali-gpu); "
                         "nvjpeg stops at an undecodable record, naming it")
    if spec.augment.rect_val and not spec.train:
        raise UsageError("rectangular validation needs dali-cpu or dali-gpu, not --data-backend nvjpeg")


def _check_framework(spec: LoaderSpec) -> None:
    """The engine fed, its devices and, for torch, a backend that can feed it."""
    if spec.framework not in FRAMEWORKS:
        raise UsageError(f"unknown engine {spec.framework!r} for the data loader "
                         f"(choose from {', '.join(FRAMEWORKS)})")
    for device in spec.devices:
        if device_framework(device) != spec.framework:
            raise UsageError(f"device {device} is not a {spec.framework} device")
        if device_kind(device) not in ("cpu", "gpu"):
            raise UsageError(f"device {device}: the data loaders feed CPUs and CUDA GPUs only")
    if spec.framework != "torch" and spec.backend in TORCH_ONLY_BACKENDS:
        raise UsageError(f"--data-backend {spec.backend} feeds the torch engine only (--engine torch)")
    if spec.framework == "torch" and spec.backend not in TORCH_BACKENDS:
        raise UsageError(f"--data-backend {spec.backend} feeds the mxnet engine only; "
                         f"with --engine torch use {', '.join(TORCH_BACKENDS)}")


class Loader:
    """Batches of one split for this worker's devices; see the module docstring."""

    def __init__(self, spec: LoaderSpec):
        check_spec(spec)
        self.spec = spec
        self._reader = None
        self._synthetic = None
        # --bad-records skip: dataset positions found undecodable, never fed
        # again, and the records left out of the steps yielded so far.
        self.left_out: set = set()
        self.skipped_records = 0
        if spec.backend == "synthetic":
            from .synthetic import synthetic_batches, synthetic_tensors
            self._steps = synthetic_batches(spec)
            self.dataset_images = spec.synthetic_images
            self.num_images = self._steps * spec.batch_size * len(spec.devices)
            self._synthetic = synthetic_tensors(spec)
            return
        self._reader = RecordReader(spec.prefix)
        self.dataset_images = len(self._reader)
        if spec.backend == "mxnet":
            from .native import check_native_spec, native_batches
            check_native_spec(spec)
            worker_batch = spec.batch_size * len(spec.devices)
            if self.dataset_images // spec.num_workers < worker_batch:
                raise UsageError(f"{spec.prefix}.rec: a worker's part holds {self.dataset_images // spec.num_workers} "
                                 f"images, fewer than its batch of {worker_batch}")
            self._steps = native_batches(spec, self.dataset_images)
            self.num_images = self.dataset_images // spec.num_workers
            return
        smallest = smallest_shard(self.dataset_images, spec.num_shards)
        if smallest < spec.batch_size:
            raise UsageError(f"{spec.prefix}.rec holds {self.dataset_images} images: {spec.num_shards} shards of "
                             f"{smallest} or more, fewer than the batch size {spec.batch_size} per device")
        self._steps = batches_per_epoch(self.dataset_images, spec.num_shards, spec.batch_size)
        self._sizes = None
        if spec.augment.rect_val and not spec.train and spec.augment.recipe == "imagenet":
            self._sizes = self._reader.image_sizes(unreadable_ok=spec.bad_records == "skip")
            for position in np.flatnonzero(self._sizes[:, 1] == 0):
                self._leave_out(int(position))
        self.num_images = sum(p.valid for p in self.plans(0))
        self._next_epoch = 0

    def _leave_out(self, position: int) -> None:
        """--bad-records skip: never feed this undecodable record again."""
        import sys

        self.left_out.add(position)
        print(f"warning: record {self._reader.keys[position]} of {self._reader.rec_path} is not a decodable "
              "image: left out (--bad-records skip)", file=sys.stderr, flush=True)

    def __len__(self) -> int:
        return self._steps

    def plans(self, epoch: int) -> list:
        """The sampler's plan (positions, pads) of each local device for ``epoch``."""
        spec = self.spec
        if self._sizes is not None:
            return [rect_val_epoch(self._sizes, spec.num_shards, spec.shard_id(i), spec.batch_size,
                                   spec.image_size) for i in range(len(spec.devices))]
        order = epoch_order(self.dataset_images, epoch, spec.seed, shuffle=spec.train)
        return [shard_epoch(order, spec.num_shards, spec.shard_id(i), spec.batch_size)
                for i in range(len(spec.devices))]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[List[DeviceBatch]]:
        """The steps of ``epoch`` from ``start_step`` on (a resume inside an
        epoch): a list of one DeviceBatch per device each. DALI and nvjpeg skip
        the first steps without reading them; ``mxnet`` reads and drops them."""
        spec = self.spec
        if spec.backend == "synthetic":
            from .synthetic import synthetic_epoch
            for parts in synthetic_epoch(spec, self._synthetic, max(0, self._steps - start_step)):
                yield [DeviceBatch(data, label, 0) for data, label in parts]
            return
        if spec.backend == "mxnet":
            from .native import native_epoch
            for step, parts in enumerate(native_epoch(spec, epoch)):
                if step >= start_step:
                    yield [DeviceBatch(*part) for part in parts]
            return
        plans = [plan.from_step(start_step) for plan in self.plans(epoch)]
        if not len(plans[0].positions):
            return
        if spec.backend == "nvjpeg":
            from ..engines.torch.nvjpeg import nvjpeg_epoch
            for parts in nvjpeg_epoch(spec, self._reader, plans, epoch):
                yield [DeviceBatch(*part) for part in parts]
            return
        from .dali import dali_epoch
        skip = self._leave_out if spec.bad_records == "skip" else None
        for parts, dropped in dali_epoch(spec, self._reader, plans, epoch, self.left_out, skip):
            self.skipped_records += dropped
            yield [DeviceBatch(*part) for part in parts]

    def __iter__(self) -> Iterator[List[DeviceBatch]]:
        """Successive epochs on successive iterations (0, 1, 2, ...)."""
        epoch = getattr(self, "_next_epoch", 0)
        self._next_epoch = epoch + 1
        return self.epoch(epoch)

    def rebuild(self, **changes) -> "Loader":
        """A loader for a new phase: same data, other image size, batch size, ..."""
        return Loader(replace(self.spec, **changes))


def make_loader(spec: LoaderSpec) -> Loader:
    return Loader(spec)


def steps_per_epoch(backend: str, images: int, batch_size: int, devices: int, num_workers: int = 1) -> int:
    """Steps a loader of this shape yields per epoch, without building it
    (for printing schedules)."""
    import math

    if backend == "synthetic":
        return max(1, images // num_workers // (batch_size * devices))
    if backend == "mxnet":
        return math.ceil(math.ceil(images / num_workers) / (batch_size * devices))
    return batches_per_epoch(images, devices * num_workers, batch_size)
