"""``--data-backend nvjpeg``: RecordIO -> nvJPEG -> augmentation in torch, no DALI.

Three threads per epoch. A reader thread reads records with our
RecordReader (memory-mapped .rec, .idx offsets), ``READ_AHEAD`` steps ahead
of the producer. A producer thread decodes a batch's JPEG bytes in one call
on the GPU (``decode_on_gpu``: torchcodec's nvJPEG decoder when installed,
torchvision's otherwise) and augments the whole batch there with torch ops,
emitting the spec's dtype (float32, float16 or bfloat16) and layout (NHWC:
NCHW-shaped with channels_last strides, as loader.DeviceBatch says); it
keeps up to ``PREPARE_AHEAD`` finished steps in a bounded queue. The
training thread only takes finished batches, so it neither waits for a
decode nor has its queued GPU work drained by one.

On a GPU the producer works on its own CUDA stream: decode_on_gpu's waits
(torchvision PR 9606) drain that stream only, never training's. An event
recorded after each batch orders training's stream after it, and
``record_stream`` keeps the caching allocator from reusing the batch's
memory (allocated on the producer's stream) while training still reads it.

Which record goes where is the sampler's (sampling.py, the same plans as the
DALI backends); the random crops, flips and Cutout squares are our sampler's
too (data/crop_windows.py: a pure function of (seed, epoch, dataset
position)), so an epoch replays exactly on resume.

Decoding is the only GPU-only step. On a CPU device ("--device cpu", the
tests) the reader thread decodes with OpenCV into the same uint8 (3, H, W)
RGB tensors nvJPEG returns, and everything after decoding is the code the GPU
runs. Geometry, in pixels:

- imagenet train: the sampler's window, resized to size x size (bilinear,
  antialiased when shrinking, as DALI's resize), flipped when drawn;
- imagenet val: the shorter side resized to round(size / VAL_RESIZE_RATIO)
  (the longer ``shorter * long // short``), then the centre size x size at
  offset ``(side - size) // 2``: dali.py's ``_resize_shorter_center_crop``;
- cifar train: reflect pad, crop, flip, Cutout (set to 0 after
  normalisation), images already size x size; cifar val: the centre crop.

The imagenet crops and resizes and cifar's val crop are made for the whole
batch by two batched matrix products per group of similar window sizes
(resample.py), not a loop of resizes. Resampled pixels are rounded to whole
0..255 values, as DALI's uint8 resize output is, before normalisation.
"""
from __future__ import annotations

import contextlib
import functools
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...data.crop_windows import cifar_draws, imagenet_draws, imagenet_windows
from ...data.devices import device_kind
from ...data.recordio import BadRecordSet, RecordReader
from ...data.sampling import ShardEpoch
from ...data.spec import VAL_RESIZE_RATIO, LoaderSpec
from .resample import Windows, crop_windows, resample

READ_AHEAD = 3      # steps the reader thread reads (and, on CPUs, decodes) ahead of the producer
PREPARE_AHEAD = 2   # finished steps (decoded, augmented, on the device) the producer keeps ready
PRODUCER_THREAD = "visionbench-nvjpeg-producer"
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class HostBatch(NamedTuple):
    """One device's batch as the reader thread leaves it: per sample, either
    its JPEG bytes for nvJPEG or its image decoded here by OpenCV."""
    positions: np.ndarray        # dataset positions
    pad: int                     # trailing samples that repeat earlier ones
    labels: np.ndarray           # (batch,) float32, as stored
    encoded: list                # GPUs: a JPEG's bytes (1-D uint8 host tensor), None where decoded; CPUs: all None
    decoded: list                # OpenCV's (3, H, W) uint8 RGB tensor: every sample on CPUs, the non-JPEGs on GPUs
    draws: Optional[tuple]       # the sampler's choices (crop_windows), None for val
    keys: Sequence[int] = ()     # the samples' record keys (error messages)


JPEG_START = b"\xff\xd8\xff"   # SOI marker, then the first segment's marker


def is_jpeg(payload) -> bool:
    """JPEG bytes, by their first 3 bytes. The rest (PNG: our CIFAR-10 sets and
    the pass-through PNGs of an image folder, BMP) nvJPEG cannot decode."""
    return bytes(payload[:3]) == JPEG_START


def decode_with_opencv(payload, what: str, key: Optional[int] = None) -> torch.Tensor:
    """(3, H, W) uint8 RGB, the layout nvJPEG's decoders return. EXIF
    orientation is ignored, as decode_jpeg's default and DALI's decoder do.
    CMYK JPEGs, PNG and BMP decode here too."""
    import cv2

    image = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise BadRecordSet(f"{what} is not a decodable image", key)
    # contiguous, as nvJPEG's outputs are: resample.py flattens the batch's images without a copy each
    return torch.from_numpy(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).contiguous()


def decode_on_gpu(encoded: List[torch.Tensor], device) -> list:
    """GPU-ONLY: one batch of JPEGs (1-D uint8 host tensors) decoded by nvJPEG
    into (3, H, W) uint8 RGB tensors on ``device``.

    Runs on the producer thread under its own stream (nvjpeg_epoch), so
    "current stream" below is that stream, never training's. Before
    decoding, the host waits for it: the decoders allocate their outputs from
    the caching allocator on that stream, and nvJPEG's hardware engine can
    write them while work queued there still uses the blocks (torchvision PR
    9606: corrupted results in 134 of 200 iterations on an H100; draining
    the stream first, 0 of 200). Blocks training still reads are not in that
    stream's free pool (record_stream in _hand_over). After decoding it waits
    for the same stream again, not the whole device (that would wait for
    training's queued steps too): torchvision 0.26 already host-synchronises
    its private decode stream and makes the current stream wait on it. The
    caller keeps ``encoded`` alive until the batch is done (ReadyStep holds
    its HostBatch)."""
    torch.cuda.current_stream(device).synchronize()
    images = _gpu_decoder()(encoded, device)
    torch.cuda.current_stream(device).synchronize()
    return list(images)


@functools.cache
def _gpu_decoder():
    """``decode(list of host tensors, device) -> list``, chosen once per
    process (a failed import would otherwise be retried on every batch).
    torchvision 0.29 deprecates its decoders for torchcodec's: torchcodec's
    is used when installed with a decode_jpeg that takes a device (its main
    branch: ``decode_jpeg(source or list, *, mode="RGB", output_dtype,
    device)``, as its image-decoder benchmark calls it; earlier releases read
    a file path and take no device). torchcodec's import
    fails with a RuntimeError or OSError where its FFmpeg libraries are
    missing. Neither is run here (no GPU)."""
    import inspect

    try:
        from torchcodec.decoders import decode_jpeg as torchcodec_decode_jpeg
    except (ImportError, OSError, RuntimeError):
        torchcodec_decode_jpeg = None
    if torchcodec_decode_jpeg is not None and "device" in inspect.signature(torchcodec_decode_jpeg).parameters:
        return lambda encoded, device: torchcodec_decode_jpeg(encoded, mode="RGB", device=device)
    from torchvision.io import ImageReadMode, decode_jpeg

    # torchvision 0.26: decode_jpeg(input: Tensor | list[Tensor], mode, device, apply_exif_orientation);
    # a list (of CPU tensors) is decoded in one batched nvJPEG call and returns a list.
    return lambda encoded, device: decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)


# --- reading (the reader thread) ---------------------------------------------

def read_host_batch(spec: LoaderSpec, reader: RecordReader, plan: ShardEpoch, step: int, epoch: int,
                    decode_here: bool) -> HostBatch:
    """Batch ``step`` of a device's plan: bytes copied out of the map (page
    faults and copies on this thread), labels, the sampler's draws and the
    images OpenCV decodes here: all of them for a CPU device; for a GPU, the
    records that are not JPEGs (nvJPEG's batch would fail on them)."""
    positions, pad = plan.positions[step], int(plan.pads[step])
    records = [reader.read(int(position)) for position in positions]
    keys = [reader.keys[int(position)] for position in positions]
    labels = np.array([label for label, _ in records], dtype=np.float32)
    encoded, decoded = [None] * len(records), [None] * len(records)
    for index, ((_, payload), key) in enumerate(zip(records, keys)):
        if decode_here or not is_jpeg(payload):
            decoded[index] = decode_with_opencv(payload, f"record {key} of {reader.rec_path}", key)
        else:
            encoded[index] = torch.from_numpy(np.frombuffer(payload, dtype=np.uint8).copy())
    del records   # views into the map: released before the reader may close
    return HostBatch(positions, pad, labels, encoded, decoded, _draws(spec, positions, epoch), keys)


def _draws(spec: LoaderSpec, positions: np.ndarray, epoch: int):
    aug = spec.augment
    if not spec.train:
        return None
    if aug.recipe == "cifar":
        return cifar_draws(spec.seed, epoch, positions, aug.pad, spec.image_size, aug.cutout)
    return imagenet_draws(spec.seed, epoch, positions, aug.min_scale, aug.aspect_range)


# --- augmentation (torch ops on the images' device) ---------------------------

def augment(spec: LoaderSpec, images: Sequence[torch.Tensor], draws) -> torch.Tensor:
    """The batch the model reads, from decoded (3, H, W) uint8 images."""
    aug, size = spec.augment, spec.image_size
    channels_last = spec.layout == "NHWC"
    if aug.recipe == "cifar" and spec.train:
        batch = cifar_train(images, draws, aug.pad, size, channels_last)
    else:
        # Resampled pixels rounded to whole 0..255 values, as DALI's uint8 resize output is.
        batch = resample(images, _windows(spec, images, draws), size, channels_last).round_().clamp_(0, 255)
    batch = normalize(batch, aug.mean, aug.std, spec.dtype)
    if aug.recipe == "cifar" and spec.train and aug.cutout:
        batch = cutout(batch, draws.cutout, aug.cutout)
    return batch


def _windows(spec: LoaderSpec, images: Sequence[torch.Tensor], draws) -> Windows:
    """What each image's output is cut and resized from (resample.Windows)."""
    aug, size = spec.augment, spec.image_size
    heights, widths = _sizes(images)
    if aug.recipe == "cifar":   # val: the centre, not resized
        return crop_windows(_centre_windows(heights, widths, size), size)
    if spec.train:
        return crop_windows(imagenet_windows(draws, heights, widths, aug.aspect_range), size, draws.flip)
    return val_windows(heights, widths, size)


def _sizes(images: Sequence[torch.Tensor]) -> tuple:
    return (np.array([image.shape[1] for image in images], dtype=np.int64),
            np.array([image.shape[2] for image in images], dtype=np.int64))


def _centre_windows(heights: np.ndarray, widths: np.ndarray, size: int) -> np.ndarray:
    if (heights < size).any() or (widths < size).any():
        raise BadRecordSet(f"an image of the batch is smaller than the {size}-pixel centre crop")
    return np.stack([(heights - size) // 2, (widths - size) // 2,
                     np.full_like(heights, size), np.full_like(widths, size)], axis=1)


def val_windows(heights: np.ndarray, widths: np.ndarray, size: int) -> Windows:
    """The whole image, its shorter side resized to round(size /
    VAL_RESIZE_RATIO) and the longer to ``shorter * long // short``, then the
    centre size x size from ``(side - size) // 2``: the integer geometry of
    dali.py's _resize_shorter_center_crop."""
    shorter = round(size / VAL_RESIZE_RATIO)
    portrait = heights > widths
    new_h = np.where(portrait, shorter * heights // widths, shorter)
    new_w = np.where(portrait, shorter, shorter * widths // heights)
    zero = np.zeros_like(heights)
    return Windows(zero, zero, heights, widths, new_h, new_w, (new_h - size) // 2, (new_w - size) // 2,
                   np.zeros(len(heights), bool))


def cifar_train(images, draws, pad: int, size: int, channels_last: bool) -> torch.Tensor:
    """Reflect pad by ``pad`` pixels, crop size x size at the drawn offsets and
    mirror, for the whole batch at once (the images are size x size)."""
    heights, widths = _sizes(images)
    if (heights != size).any() or (widths != size).any():
        raise BadRecordSet(f"--augment cifar needs {size} x {size} images; the batch holds "
                           f"{int(heights.max())} x {int(widths.max())}")
    stack = torch.stack(list(images)).float()
    if pad:
        stack = F.pad(stack, (pad, pad, pad, pad), mode="reflect")
    device = stack.device
    steps = torch.arange(size, device=device)
    offset = torch.from_numpy(draws.offset).to(device)
    rows = (offset[:, 0:1] + steps)[:, None, :, None]     # (batch, 1, size, 1)
    cols = (offset[:, 1:2] + steps)[:, None, None, :]     # (batch, 1, 1, size)
    flip = torch.from_numpy(draws.flip).to(device)[:, None, None, None]
    cols = torch.where(flip, cols.flip(-1), cols)
    batch_index = torch.arange(len(images), device=device)[:, None, None, None]
    channel = torch.arange(3, device=device)[None, :, None, None]
    crops = stack[batch_index, channel, rows, cols]
    if channels_last:
        crops = crops.contiguous(memory_format=torch.channels_last)
    return crops


def cutout(batch: torch.Tensor, corners: np.ndarray, side: int) -> torch.Tensor:
    """Set a side x side square per image to 0 (the mean, after normalisation)."""
    device, size = batch.device, batch.shape[-1]
    steps = torch.arange(size, device=device)
    corner = torch.from_numpy(corners).to(device)
    in_rows = (steps >= corner[:, 0:1]) & (steps < corner[:, 0:1] + side)   # (batch, size)
    in_cols = (steps >= corner[:, 1:2]) & (steps < corner[:, 1:2] + side)
    square = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]           # (batch, 1, size, size)
    return batch.masked_fill_(square, 0)


def normalize(batch: torch.Tensor, mean, std, dtype: str) -> torch.Tensor:
    """(pixels - mean) / std per channel on the 0..255 scale, then the output
    dtype; the memory format (channels_last or not) is kept."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    batch = batch.sub_(mean_t).div_(std_t)
    return batch.to(_TORCH_DTYPES[dtype])


# --- the epoch ------------------------------------------------------------------

def device_batch(spec: LoaderSpec, reader: RecordReader, host: HostBatch, device) -> tuple:
    """(data, label, pad) on ``device`` from one HostBatch."""
    images = decode_batch(host, device, reader, decode_on_gpu)
    data = augment(spec, images, host.draws)
    return data, torch.from_numpy(host.labels).to(device), host.pad


def decode_batch(host: HostBatch, device, reader: RecordReader, gpu_decode) -> list:
    """Every sample's (3, H, W) uint8 image on ``device``: the JPEGs in one
    ``gpu_decode`` call (decode_on_gpu), the rest as the reader thread
    decoded them, copied over. A batch nvJPEG refuses (a CMYK or other JPEG
    it does not support) is decoded one JPEG at a time, and what nvJPEG
    refuses alone OpenCV decodes, as DALI's decoder falls back to the CPU; a
    record OpenCV cannot decode either stops the run, named."""
    images = list(host.decoded)
    jpegs = [index for index, image in enumerate(images) if image is None]
    if jpegs:
        try:
            decoded = gpu_decode([host.encoded[index] for index in jpegs], device)
        except torch.cuda.OutOfMemoryError:
            raise   # a RuntimeError too, but no record's fault
        except RuntimeError:
            decoded = [_decode_alone(host, index, device, reader, gpu_decode) for index in jpegs]
        for index, image in zip(jpegs, decoded):
            images[index] = image
    return [image.to(device) for image in images]


def _decode_alone(host: HostBatch, index: int, device, reader: RecordReader, gpu_decode) -> torch.Tensor:
    """Sample ``index`` by nvJPEG alone, else by OpenCV (on this thread)."""
    try:
        return gpu_decode([host.encoded[index]], device)[0]
    except torch.cuda.OutOfMemoryError:
        raise
    except RuntimeError:
        key = host.keys[index]
        return decode_with_opencv(host.encoded[index].numpy(), f"record {key} of {reader.rec_path}", key)


class ReadyStep(NamedTuple):
    """One step as the producer thread hands it to training."""
    batches: list   # (data, label, pad) per device
    events: list    # per device: GPUs, the CUDA event recorded after the batch on the producer's stream; CPUs, None
    hosts: list     # the HostBatches: their encoded bytes stay referenced until training takes the step


class _ProducerFailed(NamedTuple):
    error: BaseException


def nvjpeg_epoch(spec: LoaderSpec, reader: RecordReader, plans: List[ShardEpoch], epoch: int,
                 prepare_ahead: int = PREPARE_AHEAD) -> Iterator[list]:
    """Per step, one (data, label, pad) per device of ``spec.devices``; the
    plans' batches in order (already cut at a resume's first step), prepared
    on a producer thread up to ``prepare_ahead`` steps ahead. Closing the
    generator early stops and joins the producer; its exception is raised
    here."""
    if prepare_ahead < 1:
        raise ValueError(f"prepare_ahead must be 1 or more, not {prepare_ahead}")
    ready: queue.Queue = queue.Queue(maxsize=prepare_ahead)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(spec, reader, plans, epoch, ready, stop),
                                name=PRODUCER_THREAD, daemon=True)
    producer.start()
    try:
        for _ in range(len(plans[0].positions)):
            step = _take(ready, producer)
            if isinstance(step, _ProducerFailed):
                raise step.error
            yield _hand_over(step, spec.devices)   # ``step`` (and its host bytes) referenced until the next take
    finally:
        stop.set()
        _drain(ready)   # a producer blocked on a full queue puts once more, sees ``stop`` and returns
        producer.join()


def _produce(spec: LoaderSpec, reader: RecordReader, plans: List[ShardEpoch], epoch: int,
             ready: queue.Queue, stop: threading.Event) -> None:
    """The producer thread: every step decoded, augmented and queued, or the
    first exception queued for the training thread to raise."""
    try:
        sides = [_side_stream(device) for device in spec.devices]
        with contextlib.closing(_read_ahead(spec, reader, plans, epoch)) as host_steps:
            for hosts in host_steps:
                if stop.is_set():
                    return
                ready.put(_prepare_step(spec, reader, hosts, sides))
    except BaseException as err:   # noqa: BLE001 - every failure is the training thread's to raise
        ready.put(_ProducerFailed(err))


def _read_ahead(spec: LoaderSpec, reader: RecordReader, plans: List[ShardEpoch], epoch: int) -> Iterator[list]:
    """Each step's HostBatches, read ``READ_AHEAD`` steps ahead on a reader thread."""
    steps = len(plans[0].positions)
    decode_here = [device_kind(device) == "cpu" for device in spec.devices]

    def read_step(step: int) -> list:
        return [read_host_batch(spec, reader, plan, step, epoch, here) for plan, here in zip(plans, decode_here)]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="visionbench-nvjpeg-reader") as pool:
        pending = deque(pool.submit(read_step, step) for step in range(min(READ_AHEAD, steps)))
        try:
            for step in range(steps):
                hosts = pending.popleft().result()
                if step + READ_AHEAD < steps:
                    pending.append(pool.submit(read_step, step + READ_AHEAD))
                yield hosts
        finally:
            for future in pending:
                future.cancel()   # an abandoned epoch: the with-block waits for the read under way only


def _side_stream(device):
    """The producer's own CUDA stream on a GPU device; None on a CPU."""
    if device_kind(device) == "cpu":
        return None
    return torch.cuda.Stream(device)   # GPU-ONLY


def _prepare_step(spec: LoaderSpec, reader: RecordReader, hosts: list, sides: list) -> ReadyStep:
    """One step's device batches, each GPU's made on its producer stream and
    followed there by an event that training's stream will wait for."""
    batches, events = [], []
    for host, device, side in zip(hosts, spec.devices, sides):
        if side is None:
            batches.append(device_batch(spec, reader, host, device))
            events.append(None)
            continue
        with torch.cuda.stream(side):                          # GPU-ONLY: decode, augment, label copy
            batches.append(device_batch(spec, reader, host, device))
            events.append(torch.cuda.Event())                 # GPU-ONLY
            events[-1].record(side)                           # GPU-ONLY
    return ReadyStep(batches, events, hosts)


def _hand_over(step: ReadyStep, devices) -> list:
    """The step's batches for the training thread's current streams."""
    for (data, label, _), event, device in zip(step.batches, step.events, devices):
        if event is None:
            continue
        training = torch.cuda.current_stream(device)         # GPU-ONLY
        training.wait_event(event)                            # GPU-ONLY: training's kernels start after the batch
        data.record_stream(training)                          # GPU-ONLY: not reused until training has read it
        label.record_stream(training)                         # GPU-ONLY
    return step.batches


def _take(ready: queue.Queue, producer: threading.Thread):
    """The next ReadyStep or failure; a producer gone without one is an error,
    not a hang."""
    while True:
        try:
            return ready.get(timeout=0.5)
        except queue.Empty:
            if not producer.is_alive() and ready.empty():
                raise RuntimeError("the nvjpeg producer thread ended without handing over a step") from None


def _drain(ready: queue.Queue) -> None:
    while True:
        try:
            ready.get_nowait()
        except queue.Empty:
            return
