"""DALI pipelines over pass-through RecordIO, one per device.

Records are read by our own sampler (sampling.py) and fed to DALI through
``fn.external_source``, so every backend shares one definition of sharding,
shuffling, padding and rectangular-val ordering, and an epoch is a pure
function of (seed, epoch, shard). Decoding, augmentation, normalisation, the
output dtype (float16 included) and layout all happen inside DALI.

The training (main) thread does not read records: a reader thread per device
pipeline reads its batches (``READ_AHEAD`` ahead) and packs them into DALI
batches, so DALI's input callback, which runs on the main thread inside each
step, only hands over a batch already read. Batches reach MXNet or torch
(spec.framework) through our own loop over the pipelines (``_device_batches``),
not DALI's plugins: DALI 1.34's MXNet plugin copies GPU outputs with
``non_blocking=True`` and no stream, so nothing makes MXNet wait for the copy
(fixed in DALI after 1.34, PR 5364); ``_copy_to_ndarray`` copies and waits,
``_copy_to_tensor`` copies on torch's current stream (see there why).

GPU-only lines are confined to ``_placement``, ``_to_device`` and the GPU
branches of ``_copy_to_ndarray`` and ``_copy_to_tensor`` (marked GPU-ONLY)
and nvJPEG's options (gpu_decoding.py); they cannot run on the development
machines.
"""
from __future__ import annotations

import ctypes
import queue
import threading
from collections import deque
from typing import AbstractSet, Callable, Iterator, List, Optional

import numpy as np
from nvidia.dali import fn, pipeline_def, tensors, types

from .devices import device_index, device_kind
from .gpu_decoding import decoder_options
from .recordio import BadRecordSet, RecordReader
from .sampling import RectEpoch, ShardEpoch, derive_seed, leave_out
from .spec import RECT_VAL_RESIZE_RATIO, VAL_RESIZE_RATIO, LoaderSpec

_DALI_DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16}
_DALI_LAYOUTS = {"NCHW": "CHW", "NHWC": "HWC"}
PREFETCH_DEPTH = 2   # batches DALI prepares ahead of the training step
# Batches a device's reader thread reads ahead of DALI's requests: one more
# than DALI's prefetch, so the first batches of an epoch are ready too. With
# the PREFETCH_DEPTH + 2 batches a feed keeps after handing them to DALI
# (_EpochFeed._kept), a device holds up to 3 + 4 = 7 batches of encoded JPEGs
# in host memory: at -b 208 of ~110 KB ImageNet JPEGs (~23 MB a batch), ~160 MB.
READ_AHEAD = PREFETCH_DEPTH + 1


def _placement(backend: str, device) -> tuple[Optional[int], str]:
    """(DALI device_id, decoder device) for a backend and a device (an MXNet
    context or a torch.device)."""
    if device_kind(device) == "gpu":
        # GPU-ONLY: nvJPEG ("mixed") decoding for dali-gpu; CPU decoding then
        # a copy to the GPU for dali-cpu.
        return device_index(device), ("mixed" if backend == "dali-gpu" else "cpu")
    return None, "cpu"


def _to_device(node, device):
    """Every output of a pipeline built for a GPU leaves it on that GPU: the
    decoded images of ``mixed`` decoding already are, the labels (and CPU
    decoded images) are copied (_copy_to_ndarray and _copy_to_tensor copy a
    CPU batch into host memory only)."""
    if device_kind(device) == "gpu" and node.device == "cpu":
        return node.gpu()   # GPU-ONLY
    return node


class _EpochFeed:
    """The external source of one device pipeline for one epoch: encoded
    images, labels and (rect val) per-sample resize/crop sizes. Positions in
    ``left_out`` (records found undecodable, --bad-records skip) are never fed:
    see sampling.leave_out.

    With ``read_ahead`` > 0 a reader thread reads the batches in order, at
    most ``read_ahead`` ahead of DALI's requests (see _ReadAhead; ``refill()``
    after each step); 0 reads each batch when DALI asks for it (on the thread
    that runs the pipeline: the main thread).
    ``lock`` serialises the reading with the other feeds of the same reader
    (one device's reader thread at a time in RecordReader). Call ``close()``
    when the epoch ends or is abandoned."""

    def __init__(self, reader: RecordReader, plan: ShardEpoch, spec: LoaderSpec,
                 left_out: AbstractSet[int] = frozenset(), read_ahead: int = READ_AHEAD,
                 lock: Optional[threading.Lock] = None):
        self.reader, self.plan, self.spec, self.left_out = reader, plan, spec, left_out
        self.read_ahead, self._lock = read_ahead, lock or threading.Lock()
        self._ahead: Optional[_ReadAhead] = None
        self.batch = 0
        # Positions of the latest batches handed to DALI, to name a record it
        # fails on: at most the prefetch queue plus the batch being decoded.
        self.fed: deque = deque(maxlen=PREFETCH_DEPTH + 2)
        # The batches themselves, as long: DALI 1.34's external_source with
        # no_copy asks the caller to keep them alive until consumed (its
        # documentation: prefetch_queue_depth iterations after the feed).
        self._kept: deque = deque(maxlen=PREFETCH_DEPTH + 2)

    def batch_at(self, index: int) -> tuple[np.ndarray, int, int]:
        """(positions, pad, records left out) of batch ``index``."""
        positions, pad = self.plan.positions[index], int(self.plan.pads[index])
        if not self.left_out:
            return positions, pad, 0
        filler = next((int(p) for p in self.plan.positions.flat if int(p) not in self.left_out), None)
        if filler is None:
            raise BadRecordSet(f"{self.reader.rec_path}: no record of a device's share of the epoch decodes")
        return leave_out(positions, pad, self.left_out, filler)

    def read_batch(self, index: int) -> tuple:
        """(positions, DALI inputs) of batch ``index``: the encoded images as
        one TensorListCPU (the bytes copied out of the memory-mapped .rec here,
        so the page faults and the copy happen on the reading thread), labels
        (batch, 1) and, for rect val, per-sample resize and crop sizes."""
        positions, _, _ = self.batch_at(index)
        with self._lock:
            records = [self.reader.read(int(position)) for position in positions]
        encoded = tensors.TensorListCPU([tensors.TensorCPU(payload) for _, payload in records])
        labels = np.array([[label] for label, _ in records], dtype=np.float32)
        outputs = [encoded, labels]
        if isinstance(self.plan, RectEpoch):
            crop_h, crop_w = (float(v) for v in self.plan.crops[index])
            short = float(int(self.spec.image_size * RECT_VAL_RESIZE_RATIO))
            # Cover the crop: the nominal short side, or the crop's long side.
            resize_x, resize_y = (crop_w, short) if crop_w >= crop_h else (short, crop_h)
            for value in (resize_x, resize_y, crop_h, crop_w):
                outputs.append(np.full(len(positions), value, dtype=np.float32))
        return positions, tuple(outputs)

    def __iter__(self):
        return self

    def __next__(self):
        if self.batch >= len(self.plan.positions):
            raise StopIteration
        if not self.read_ahead:
            positions, outputs = self.read_batch(self.batch)
        else:
            if self._ahead is None:
                self._ahead = _ReadAhead(self.read_batch, len(self.plan.positions), self.read_ahead)
            positions, outputs = self._ahead.take()
        self.fed.append(positions)
        self._kept.append(outputs)
        self.batch += 1
        return outputs

    def refill(self) -> None:
        """Let the reader thread replace the batches DALI took (see _ReadAhead)."""
        if self._ahead is not None:
            self._ahead.refill()

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()


class _ReadAhead:
    """A daemon thread calling ``read(0)``, ``read(1)``, ... ``read(count - 1)``
    at most ``depth`` results ahead of the consumer; ``take()`` returns them in
    order and raises, on the consumer's thread, what a read raised.

    A taken result's place is given back by ``refill()``, which the training
    loop calls once the step's input work is done: the reader then reads
    while the main thread waits on the devices (GIL released), not while it
    copies batches out of DALI (it would wait for the GIL). ``take()`` finding
    nothing ready gives the places back at once."""

    def __init__(self, read: Callable[[int], tuple], count: int, depth: int):
        self._results: queue.Queue = queue.Queue()   # never more than depth: one result per place
        self._places = threading.Semaphore(depth)
        self._owed = 0   # results taken whose place refill() has not given back yet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(read, count), daemon=True,
                                        name="visionbench-record-reader")
        self._thread.start()

    def _run(self, read: Callable[[int], tuple], count: int) -> None:
        for index in range(count):
            self._places.acquire()
            if self._stop.is_set():
                return
            try:
                result = (read(index), None)
            except Exception as err:  # noqa: BLE001 - raised again by take(), on the consumer's thread
                self._results.put((None, err))
                return
            self._results.put(result)

    def take(self) -> tuple:
        if self._results.empty():
            self.refill()
        result, error = self._results.get()
        self._owed += 1
        if error is not None:
            raise error
        return result

    def refill(self) -> None:
        if self._owed:
            self._places.release(self._owed)
            self._owed = 0

    def close(self) -> None:
        """Stop reading and wait for the thread (at most the read under way)."""
        self._stop.set()
        self._places.release()
        self._thread.join()


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
        # no_copy: DALI shares the feed's batches (never written again), no copy on the main thread.
        inputs = fn.external_source(source=feed, num_outputs=len(dtypes), batch=True, dtype=dtypes,
                                    no_copy=True)
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
               skip: Optional[Callable[[int], None]] = None, read_ahead: int = READ_AHEAD) -> Iterator[tuple]:
    """Yield, per step, ``(parts, dropped)``: one (data, label, pad) per device
    and how many records of ``left_out`` (positions never fed) the step lacks.

    A record DALI cannot decode stops the epoch with a BadRecordSet naming it
    (``skip`` None: --bad-records fail), or is handed to ``skip(position)``,
    which must add it to ``left_out``; the pipelines then restart at the step
    that failed, exactly as a resume there would. ``read_ahead``: see
    _EpochFeed (0 reads on the main thread, for comparison)."""
    steps = len(plans[0].positions)
    step = 0
    while step < steps:
        lock = threading.Lock()
        feeds = [_EpochFeed(reader, plan.from_step(step), spec, left_out, read_ahead, lock) for plan in plans]
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
    """The epoch's steps from the feeds' pipelines; the feeds' reader threads
    are stopped however the epoch ends (done, failed or abandoned)."""
    try:
        pipes = [build_pipeline(spec, feed, context, derive_seed(spec.seed, spec.shard_id(i), epoch))
                 for i, (feed, context) in enumerate(zip(feeds, spec.devices))]
        batches = _device_batches(pipes, spec.devices, len(feeds[0].plan.positions), spec.framework,
                                  channels_last=spec.layout == "NHWC")
        for step, arrays in enumerate(batches):
            parts, dropped = [], 0
            for (data, label), feed in zip(arrays, feeds):
                _, pad, left = feed.batch_at(step)
                parts.append((data, label, pad))
                dropped += left
                feed.refill()
            yield parts, dropped
    finally:
        for feed in feeds:
            feed.close()


def _device_batches(pipes, devices, steps: int, framework: str = "mxnet",
                    channels_last: bool = False) -> Iterator[list]:
    """Per step, one (data, label) pair per pipeline, on its device: NDArrays
    (framework mxnet) or torch.Tensors (torch; ``channels_last``: the images
    came out NHWC and become NCHW-shaped channels_last views, loader.DeviceBatch).
    DALI keeps PREFETCH_DEPTH runs scheduled ahead (the first schedule_run
    fills the queue); a run is scheduled only while the epoch still needs
    one, so no pipeline runs past its feed's last batch."""
    for pipe, device in zip(pipes, devices):
        _check_same_gpu(pipe.device_id, device)
    for pipe in pipes:
        pipe.build()
        pipe.schedule_run()
    for step in range(steps):
        outputs = [pipe.share_outputs() for pipe in pipes]
        arrays = [(_to_ndarray(images, device, framework=framework),
                   _to_ndarray(labels, device, drop_last_axis=True, framework=framework))
                  for (images, labels), device in zip(outputs, devices)]
        if framework == "torch" and channels_last:
            arrays = [(data.permute(0, 3, 1, 2), label) for data, label in arrays]
        for pipe in pipes:
            pipe.release_outputs()   # the copies are complete or ordered before DALI's reuse (_copy_to_*)
            if step + PREFETCH_DEPTH < steps:
                pipe.schedule_run()
        yield arrays


def _check_same_gpu(pipe_device_id: Optional[int], device) -> None:
    """A pipeline on GPU k leaves its outputs on GPU k (_to_device): they are
    copied into memory of that GPU only (DALI copies on the batch's GPU)."""
    if pipe_device_id is not None and device_kind(device) == "gpu" and device_index(device) != pipe_device_id:
        raise ValueError(f"a DALI batch on GPU {pipe_device_id} cannot be copied into memory of {device}")


def _batch_shape(batch, drop_last_axis: bool) -> tuple:
    """The dense batch's shape (labels come as (batch, 1): ``drop_last_axis``
    makes them (batch,))."""
    if not batch.is_dense_tensor():
        raise ValueError("a DALI batch whose samples differ in shape cannot become one array")
    samples = batch.shape()   # one shape per sample (a list: ~0.1 ms for 64 samples)
    sample = tuple(samples[0])
    return (len(samples),) + (sample[:-1] if drop_last_axis else sample)


def _to_ndarray(batch, device, drop_last_axis: bool = False, framework: str = "mxnet"):
    """A new array on ``device`` holding a dense DALI batch: an NDArray
    (framework mxnet) or a torch.Tensor (torch), in DALI's layout."""
    shape = _batch_shape(batch, drop_last_axis)
    numpy_type = types.to_numpy_type(batch.dtype)
    if framework == "torch":
        import torch

        tensor = torch.empty(shape, dtype=getattr(torch, np.dtype(numpy_type).name), device=device)
        _copy_to_tensor(batch, tensor)
        return tensor
    import mxnet as mx

    array = mx.nd.empty(shape, ctx=device, dtype=numpy_type)
    _copy_to_ndarray(batch, array)
    return array


def _copy_to_ndarray(batch, array) -> None:
    """Copy a dense DALI batch (TensorListCPU or TensorListGPU) into an
    NDArray of as many bytes (the caller's promise: _to_ndarray shapes it
    from the batch) on the batch's device, and return once the bytes are
    there."""
    import mxnet as mx

    on_host = isinstance(batch, tensors.TensorListCPU)
    # DALI copies a host batch to the pointer as host memory, and a GPU batch
    # as device memory (CopyToExternal with memory_kind host / device): the
    # NDArray's memory must be of that kind.
    if on_host and device_kind(array.context) != "cpu":
        raise ValueError(f"a DALI batch in host memory cannot be copied into an NDArray on {array.context}")
    if not on_host and device_kind(array.context) != "gpu":
        raise ValueError(f"a DALI batch in GPU memory cannot be copied into an NDArray on {array.context}")
    # MXNet may still be reading or writing the array: wait, as DALI's plugin does.
    mx.base.check_call(mx.base._LIB.MXNDArrayWaitToWrite(array.handle))
    pointer = ctypes.c_void_p()
    mx.base.check_call(mx.base._LIB.MXNDArrayGetData(array.handle, ctypes.byref(pointer)))
    if on_host:
        batch.copy_to_external(pointer)
    else:
        # GPU-ONLY: a TensorListGPU into an NDArray on the same GPU. No stream
        # and non_blocking=False: DALI 1.34 (backend_impl.cc,
        # CopyToExternalImplGPU) copies on a stream of its pool after DALI's
        # own work on the batch, then the host waits for the copy, so MXNet's
        # next kernel reads a complete batch. DALI's plugin passes
        # non_blocking=True, which only makes DALI's stream wait.
        batch.copy_to_external(pointer, None, non_blocking=False)


def _copy_to_tensor(batch, tensor) -> None:
    """Copy a dense DALI batch (TensorListCPU or TensorListGPU) into a
    contiguous torch.Tensor of as many bytes (the caller's promise, as for
    _copy_to_ndarray) on the batch's device. A host batch is copied when this
    returns; a GPU batch is ordered before torch's next kernel on the device
    (see the GPU branch)."""
    on_host = isinstance(batch, tensors.TensorListCPU)
    # As _copy_to_ndarray: DALI writes a host batch as host memory and a GPU
    # batch as device memory, so the tensor's memory must be of that kind.
    if on_host and device_kind(tensor.device) != "cpu":
        raise ValueError(f"a DALI batch in host memory cannot be copied into a tensor on {tensor.device}")
    if not on_host and device_kind(tensor.device) != "gpu":
        raise ValueError(f"a DALI batch in GPU memory cannot be copied into a tensor on {tensor.device}")
    if not tensor.is_contiguous():
        raise ValueError("DALI copies a batch into contiguous memory only")
    pointer = ctypes.c_void_p(tensor.data_ptr())
    if on_host:
        batch.copy_to_external(pointer)   # a host memcpy, done when it returns
        return
    # GPU-ONLY: a TensorListGPU into a CUDA tensor of the same GPU
    # (_check_same_gpu), on torch's current stream of that device, not
    # blocking; what DALI 1.34's own PyTorch plugin does (nvidia/dali/plugin/
    # pytorch/__init__.py: DALIGenericIterator passes
    # torch.cuda.current_stream(device=...) to feed_ndarray, which calls
    # copy_to_external(ptr, stream, non_blocking=True)). DALI 1.34's
    # backend_impl.cc (CopyToExternalImplGPU) then enqueues the copy on that
    # stream (copy_order) and, non-blocking, makes the batch's own order wait
    # for the copy (wait_order = src.order()), so DALI does not reuse the
    # buffer before the copy is done. On torch's side the copy sits in
    # torch's current stream: after the work that last used this memory
    # (torch.empty took it from the caching allocator, which reuses memory in
    # stream order on that same stream) and before every kernel torch queues
    # next on it; no host wait. The MXNet path's choice (DALI's pool stream,
    # non_blocking=False) would be wrong here: the copy would write on
    # another stream into memory torch may still be reading.
    import torch

    stream = torch.cuda.current_stream(tensor.device)
    # Torch's default stream is cuda_stream 0: c_void_p(0) reaches DALI as a
    # null cudaStream_t (backend_impl.cc, ctypes_void_ptr), the same legacy
    # default stream, exactly as DALI's plugin passes it.
    batch.copy_to_external(pointer, ctypes.c_void_p(stream.cuda_stream), non_blocking=True)


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
