"""--data-backend nvjpeg (engines/torch/nvjpeg.py) on CPU devices, where
OpenCV decodes and everything after decoding is the code GPUs run:

(1) train crops are the windows our sampler chose (images whose pixels
encode their own coordinates and label, stored losslessly as PNG), and the
labels are as stored; the CIFAR recipe likewise, pixel for pixel;
(2) an epoch is a pure function of (seed, epoch): replayed, and resumed at
step k, it gives the same batches;
(3) val geometry equals the DALI cpu val pipeline's (bound measured below);
(4) the torch engine trains with it and writes a valid report;
(5) the MXNet engine, and loaders for MXNet, refuse it in one line;
(6) on a GPU, what nvJPEG cannot decode (PNG, CMYK JPEGs) OpenCV does, in
its place (a CPU stand-in for the GPU decoder);
(7) the producer thread: the sequential code's steps in order at any queue
depth, augmentation on the producer only, the queue bounded, its threads
gone after an early close or a failure, which training's thread raises.
The GPU decoder itself (decode_on_gpu) cannot run here."""
import json
import sys
import threading
import time

import cv2
import numpy as np
import pytest
import torch

from conftest import one_line_error, run_here, write_palette_sets
from visionbench.cli import UsageError
from visionbench.data.crop_windows import cifar_draws, imagenet_draws, imagenet_windows
from visionbench.data.loader import make_loader
from visionbench.data.spec import IMAGENET_MEAN, IMAGENET_STD, Augment, LoaderSpec
from visionbench.report.schema import validate_report
from visionbench.selftest import write_colour_set

SIZES = [(48, 64), (64, 40), (56, 56), (40, 72), (30, 20)]   # (height, width): landscape, portrait, square, small
COORD_STEP = 3      # pixel value per pixel of distance: a window one pixel off is 3 values off
LABEL_STEP = 20     # blue value per class
CPU = torch.device("cpu")


def coordinate_image(index: int, size=None) -> np.ndarray:
    """RGB uint8: red = 3 x row, green = 3 x column, blue = 20 x label (index % 10)."""
    height, width = size or SIZES[index % len(SIZES)]
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([COORD_STEP * rows, COORD_STEP * cols, np.full_like(rows, LABEL_STEP * (index % 10))],
                    axis=-1).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image[:, :, ::-1])[1].tobytes()


@pytest.fixture(scope="module")
def coordinate_set(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("coords") / "train"
    return write_colour_set(prefix, 40, labels=[i % 10 for i in range(40)],
                            payload_of=lambda i: _png(coordinate_image(i)))


def _pixels(data: torch.Tensor, aug: Augment) -> np.ndarray:
    """A batch back on the 0..255 scale, (batch, 3, size, size) float32."""
    mean = torch.tensor(aug.mean).view(1, 3, 1, 1)
    std = torch.tensor(aug.std).view(1, 3, 1, 1)
    return (data.float() * std + mean).numpy()


def _expected_crop(image: np.ndarray, window, flip: bool, size: int) -> np.ndarray:
    """The window, resized by OpenCV (bilinear; exact on a linear ramp away
    from the border), mirrored when drawn: (3, size, size)."""
    y, x, height, width = window
    crop = cv2.resize(image[y:y + height, x:x + width].astype(np.float32), (size, size),
                      interpolation=cv2.INTER_LINEAR)
    return (crop[:, ::-1] if flip else crop).transpose(2, 0, 1)


def test_train_crops_are_the_samplers_windows_and_labels_are_as_stored(coordinate_set):
    aug, size, seed, epoch = Augment(min_scale=0.08), 32, 5, 1
    loader = make_loader(LoaderSpec(prefix=coordinate_set, train=True, batch_size=4, image_size=size,
                                    devices=[CPU, CPU], backend="nvjpeg", framework="torch", augment=aug,
                                    seed=seed))
    plans, flips_seen, scales = loader.plans(epoch), set(), []
    for step, parts in enumerate(loader.epoch(epoch)):
        for (data, label, pad), plan in zip(parts, plans):
            positions = plan.positions[step]
            assert pad == plan.pads[step]
            assert label.tolist() == [float(p % 10) for p in positions]   # labels as stored, in plan order
            draws = imagenet_draws(seed, epoch, positions, aug.min_scale, aug.aspect_range)
            sizes = np.array([SIZES[p % len(SIZES)] for p in positions])
            windows = imagenet_windows(draws, sizes[:, 0], sizes[:, 1], aug.aspect_range)
            found = _pixels(data, aug)
            for i, position in enumerate(positions):
                expected = _expected_crop(coordinate_image(position), windows[i], draws.flip[i], size)
                # Coordinates, inside the border that antialiasing touches: to
                # rounding (0.5) plus the antialiasing filter's centroid (measured
                # max 0.67), well below a window one pixel off (3).
                inner = np.abs(found[i, :2, 2:-2, 2:-2] - expected[:2, 2:-2, 2:-2])
                assert inner.max() <= 1.0, (step, position, windows[i], inner.max())
                # The image's own label survives the resize exactly: image and label belong together.
                assert np.all(found[i, 2] == LABEL_STEP * (position % 10))
                flips_seen.add(bool(draws.flip[i]))
                scales.append(windows[i][2] * windows[i][3] / (sizes[i][0] * sizes[i][1]))
    assert flips_seen == {True, False}
    assert min(scales) < 0.5 and max(scales) <= 1.0   # crops of many sizes, never beyond the image


def test_cifar_recipe_pads_crops_flips_and_cuts_out_the_drawn_pixels(tmp_path):
    size, seed, epoch = 32, 2, 0
    aug = Augment(recipe="cifar", pad=4, cutout=8)
    prefix = write_colour_set(tmp_path / "cifar", 12, labels=[i % 10 for i in range(12)],
                              payload_of=lambda i: _png(coordinate_image(i, (size, size))))
    loader = make_loader(LoaderSpec(prefix=prefix, train=True, batch_size=6, image_size=size, devices=[CPU],
                                    backend="nvjpeg", framework="torch", augment=aug, seed=seed, layout="NHWC"))
    for step, ((data, label, _),) in enumerate(loader.epoch(epoch)):
        assert data.is_contiguous(memory_format=torch.channels_last)
        positions = loader.plans(epoch)[0].positions[step]
        draws = cifar_draws(seed, epoch, positions, aug.pad, size, aug.cutout)
        found = data.float().numpy()
        for i, position in enumerate(positions):
            padded = np.pad(coordinate_image(position, (size, size)).astype(np.float32),
                            ((4, 4), (4, 4), (0, 0)), mode="reflect")
            (y, x), (cy, cx) = draws.offset[i], draws.cutout[i]
            crop = padded[y:y + size, x:x + size]
            crop = (crop[:, ::-1] if draws.flip[i] else crop) - np.array(aug.mean, np.float32)
            crop = crop / np.array(aug.std, np.float32)
            crop[cy:cy + aug.cutout, cx:cx + aug.cutout] = 0
            np.testing.assert_allclose(found[i], crop.transpose(2, 0, 1), atol=1e-5)
        assert label.tolist() == [float(p % 10) for p in positions]


def _all_batches(loader, epoch, start_step=0):
    return [[(data.clone(), label.clone(), pad) for data, label, pad in parts]
            for parts in loader.epoch(epoch, start_step)]


def _same(batches, others):
    assert len(batches) == len(others)
    for parts, other_parts in zip(batches, others):
        for (data, label, pad), (other, other_label, other_pad) in zip(parts, other_parts):
            assert torch.equal(data, other) and torch.equal(label, other_label) and pad == other_pad


def test_an_epoch_replays_exactly_and_a_resume_gives_its_tail(coordinate_set):
    spec = LoaderSpec(prefix=coordinate_set, train=True, batch_size=6, image_size=24, devices=[CPU],
                      backend="nvjpeg", framework="torch", seed=11, layout="NHWC", dtype="bfloat16")
    loader = make_loader(spec)
    first = _all_batches(loader, 3)
    assert len(first) == len(loader) == 7   # 40 images, batches of 6: the last one padded
    assert first[-1][0][2] == 2
    data = first[0][0][0]
    assert data.dtype == torch.bfloat16 and data.shape == (6, 3, 24, 24)
    assert data.is_contiguous(memory_format=torch.channels_last)
    _same(first, _all_batches(make_loader(spec), 3))        # a new loader (a restarted process)
    _same(first[4:], _all_batches(loader, 3, start_step=4))  # a resume at step 4
    other = _all_batches(loader, 4)
    assert not torch.equal(other[0][0][0], first[0][0][0])  # another epoch, other crops
    assert "torchvision" not in sys.modules   # the CPU path never imports the GPU decoders


def _texture(index: int) -> bytes:
    """A smooth textured JPEG of one of several shapes (portrait, landscape)."""
    height, width = [(90, 120), (120, 80), (100, 100), (75, 140), (133, 77)][index % 5]
    rows, cols = np.mgrid[0:height, 0:width] / 10.0
    phase = index * 0.7
    image = np.stack([np.sin(rows + phase), np.cos(cols - phase), np.sin((rows + cols) / 2 + phase)], axis=-1)
    image = (127.5 + 100 * image).astype(np.uint8)
    return cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def test_val_geometry_equals_the_dali_cpu_val_pipeline(tmp_path):
    prefix = write_colour_set(tmp_path / "val", 20, labels=[i % 10 for i in range(20)], payload_of=_texture)
    batches = {}
    for backend in ("nvjpeg", "dali-cpu"):
        loader = make_loader(LoaderSpec(prefix=prefix, train=False, batch_size=10, image_size=32, devices=[CPU],
                                        backend=backend, framework="torch"))
        batches[backend] = [(data.clone(), label.clone()) for ((data, label, _),) in loader.epoch(0)]
    for (ours, our_labels), (dali, dali_labels) in zip(batches["nvjpeg"], batches["dali-cpu"]):
        assert ours.shape == dali.shape == (10, 3, 32, 32)
        assert torch.equal(our_labels, dali_labels)
        difference = np.abs(_pixels(ours, Augment()) - _pixels(dali, Augment()))
        # Measured (OpenCV 4.8 vs DALI 1.34's CPU decoder, torch's antialiased
        # bilinear resize vs DALI's linear one, both rounded to whole values):
        # mean 3.3e-5, max 1.0 pixel value (one rounding step). Bounds: mean
        # 0.05, max 1 (+ float error); a centre crop one pixel off: mean 7.4, max 29.
        assert difference.mean() < 0.05 and difference.max() <= 1.0 + 1e-3, (difference.mean(), difference.max())


def test_the_torch_engine_trains_on_nvjpeg_and_reports(tmp_path, capfd):
    palette = write_palette_sets(tmp_path / "palette", 96, 40)
    report = tmp_path / "r.json"
    result = run_here(capfd, "--engine", "torch", "--device", "cpu", "-n", "1", "-b", "16", "--data-backend",
                      "nvjpeg", "--data-root", palette, "--image-size", "32", "--num-layers", "18",
                      "--num-classes", "10", "--lr", "0.1", "-e", "3", "--warmup-epochs", "0", "--lr-schedule",
                      "cosine", "--model-prefix", tmp_path / "m", "--report", report)
    assert result.returncode == 0, result.stderr
    written = json.loads(report.read_text())
    validate_report(written, "train_report")
    epochs = written["epochs"]
    assert len(epochs) == 3 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]


def test_the_mxnet_engine_and_mxnet_loaders_refuse_nvjpeg(tmp_path, capfd):
    palette = write_palette_sets(tmp_path / "palette", 20, 10)
    result = run_here(capfd, "--engine", "mxnet", "--device", "cpu", "--data-backend", "nvjpeg",
                      "--data-root", palette, "--image-size", "32", "-b", "4", "-e", "1")
    assert result.returncode == 2
    assert one_line_error(result).endswith("--data-backend nvjpeg decodes and augments with PyTorch: use it with "
                                           "--engine torch (dali-gpu or dali-cpu on --engine mxnet)")
    import mxnet as mx

    with pytest.raises(UsageError, match="nvjpeg feeds the torch engine only"):
        make_loader(LoaderSpec(prefix=palette / "train", train=True, batch_size=4, image_size=32,
                               devices=[mx.cpu()], backend="nvjpeg"))
    with pytest.raises(UsageError, match="bfloat16 batches come from --data-backend nvjpeg only"):
        make_loader(LoaderSpec(prefix=palette / "train", train=True, batch_size=4, image_size=32,
                               devices=[CPU], backend="dali-cpu", framework="torch", dtype="bfloat16"))
    assert IMAGENET_MEAN == Augment().mean and IMAGENET_STD == Augment().std


def _jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def _cmyk_jpeg(index: int) -> bytes:
    """A CMYK JPEG (ImageNet's train set holds 22): OpenCV decodes it, nvJPEG may refuse it."""
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.fromarray(coordinate_image(index)).convert("CMYK").save(out, format="JPEG", quality=95)
    return out.getvalue()


class StandInNvJpeg:
    """What decode_on_gpu does, on a CPU (the real one needs a GPU): a list of
    JPEG byte tensors decoded in one call; a RuntimeError for the whole call
    when any of them is one it ``refuses`` (as nvJPEG's batch fails on one
    image) or is not a JPEG at all (nvJPEG cannot read PNG). ``calls``: the
    size of each call."""

    def __init__(self, refuses=()):
        self.refuses = {bytes(payload) for payload in refuses}
        self.calls = []

    def __call__(self, encoded, device):
        from visionbench.engines.torch.nvjpeg import decode_with_opencv, is_jpeg

        self.calls.append(len(encoded))
        payloads = [t.numpy().tobytes() for t in encoded]
        if any(p in self.refuses or not is_jpeg(p) for p in payloads):
            raise RuntimeError("decode_jpegs_cuda failed\nnvjpeg: unsupported image")
        return [decode_with_opencv(p, "stand-in").to(device) for p in payloads]


def _host_batch_for_a_gpu(payloads, tmp_path):
    """The reader thread's HostBatch of one batch holding ``payloads``, read as for a GPU device."""
    from visionbench.data.recordio import RecordReader
    from visionbench.data.sampling import ShardEpoch
    from visionbench.engines.torch.nvjpeg import read_host_batch

    prefix = write_colour_set(tmp_path / "mixed", len(payloads), payload_of=lambda i: payloads[i])
    reader = RecordReader(prefix)
    spec = LoaderSpec(prefix=prefix, train=False, batch_size=len(payloads), image_size=16, devices=[CPU],
                      backend="nvjpeg", framework="torch")
    plan = ShardEpoch(positions=np.arange(len(payloads))[None], pads=np.zeros(1, dtype=np.int64))
    return read_host_batch(spec, reader, plan, 0, 0, decode_here=False), reader


def test_png_and_jpegs_nvjpeg_refuses_are_decoded_by_opencv_in_their_places(tmp_path):
    """A GPU's batch mixing JPEGs, a PNG (our CIFAR-10 sets are all PNG;
    image folders pass PNGs through) and a CMYK JPEG nvJPEG refuses: the
    JPEGs go to nvJPEG in one call; the PNG never does (OpenCV decodes it on
    the reader thread); after the refusal each JPEG is tried alone and the
    refused one is decoded by OpenCV; every image lands in its own place."""
    from visionbench.engines.torch.nvjpeg import decode_batch, decode_with_opencv

    payloads = [_jpeg(coordinate_image(0)), _png(coordinate_image(1)), _cmyk_jpeg(2), _jpeg(coordinate_image(3))]
    host, reader = _host_batch_for_a_gpu(payloads, tmp_path)
    assert [e is None for e in host.encoded] == [False, True, False, False]   # the PNG: decoded on the reader
    nvjpeg = StandInNvJpeg(refuses=[payloads[2]])
    images = decode_batch(host, CPU, reader, nvjpeg)
    assert nvjpeg.calls == [3, 1, 1, 1]   # the batch of 3 JPEGs, refused; then each alone
    for image, payload in zip(images, payloads):
        assert torch.equal(image, decode_with_opencv(payload, "expected"))
    # nvJPEG refusing nothing: one call, the batch's JPEGs only.
    nvjpeg = StandInNvJpeg()
    assert all(torch.equal(a, b) for a, b in zip(decode_batch(host, CPU, reader, nvjpeg), images))
    assert nvjpeg.calls == [3]


def test_a_record_neither_decoder_reads_stops_the_run_named_and_out_of_memory_is_no_records_fault(tmp_path):
    from visionbench.data.recordio import BadRecordSet
    from visionbench.engines.torch.nvjpeg import decode_batch

    broken = b"\xff\xd8\xff\xe0 a JPEG's first bytes, then nothing a decoder can read"
    payloads = [_jpeg(coordinate_image(0)), broken, _jpeg(coordinate_image(2))]
    host, reader = _host_batch_for_a_gpu(payloads, tmp_path)
    with pytest.raises(BadRecordSet) as refusal:
        decode_batch(host, CPU, reader, StandInNvJpeg(refuses=[broken]))
    assert str(refusal.value).startswith(f"record 1 of {reader.rec_path}") and "not a decodable image" in str(
        refusal.value) and refusal.value.index == 1

    def out_of_memory(encoded, device):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):   # not retried image by image, not blamed on a record
        decode_batch(host, CPU, reader, out_of_memory)


# --- the producer thread (nvjpeg_epoch): decode + augment ahead of training ---

def _threads_left() -> list:
    return [t.name for t in threading.enumerate() if t.name.startswith("visionbench-nvjpeg")]


def _direct(coordinate_set, devices=(CPU, CPU), epoch=2):
    """A train spec, its reader and the epoch's plans (two devices: 4 steps; one: 7)."""
    from visionbench.data.recordio import RecordReader

    spec = LoaderSpec(prefix=coordinate_set, train=True, batch_size=6, image_size=16, devices=list(devices),
                      backend="nvjpeg", framework="torch", seed=3)
    return spec, RecordReader(coordinate_set), make_loader(spec).plans(epoch)


def _copies(steps) -> list:
    return [[(data.clone(), label.clone(), pad) for data, label, pad in parts] for parts in steps]


@pytest.mark.parametrize("depth", [1, 2, 9])   # 9: more than the epoch's 3 steps (no deadlock)
def test_the_producer_hands_over_the_steps_the_sequential_code_makes_in_order(coordinate_set, depth):
    from visionbench.engines.torch.nvjpeg import device_batch, nvjpeg_epoch, read_host_batch

    spec, reader, plans = _direct(coordinate_set)
    plans = [plan.from_step(1) for plan in plans]   # a resume at step 1: 3 steps of each shard's 4 left
    assert len(plans[0].positions) == 3
    expected = [[device_batch(spec, reader, read_host_batch(spec, reader, plan, step, 2, True), CPU)
                 for plan in plans] for step in range(3)]
    steps = nvjpeg_epoch(spec, reader, plans, 2, prepare_ahead=depth)
    first = _copies([next(steps)])
    time.sleep(0.3)   # the producer fills the queue: a queue handing over out of order would show now
    _same(expected, first + _copies(steps))
    assert _threads_left() == []
    with pytest.raises(ValueError, match="prepare_ahead must be 1 or more, not 0"):
        next(nvjpeg_epoch(spec, reader, plans, 2, prepare_ahead=0))


def test_decoding_and_augmentation_run_ahead_on_the_producer_within_the_queue_depth(coordinate_set, monkeypatch):
    """Training's thread only takes batches; the producer stops when ``depth``
    finished steps wait (plus the one it holds, blocked on the full queue)."""
    from visionbench.engines.torch import nvjpeg

    augmented_on, prepared = [], []
    real_augment, real_prepare = nvjpeg.augment, nvjpeg._prepare_step
    monkeypatch.setattr(nvjpeg, "augment", lambda *a: augmented_on.append(threading.current_thread().name)
                        or real_augment(*a))
    monkeypatch.setattr(nvjpeg, "_prepare_step", lambda *a: prepared.append(1) or real_prepare(*a))
    spec, reader, plans = _direct(coordinate_set, devices=[CPU])
    for depth in (1, 3):
        prepared.clear()
        steps = nvjpeg.nvjpeg_epoch(spec, reader, plans, 2, prepare_ahead=depth)
        next(steps)
        deadline = time.monotonic() + 5
        while len(prepared) < depth + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)   # a producer that ignored the bound would prepare more meanwhile
        assert len(prepared) == depth + 2 < len(plans[0].positions), depth
        steps.close()
    assert set(augmented_on) == {nvjpeg.PRODUCER_THREAD}
    assert _threads_left() == []


def test_closing_the_epoch_early_stops_the_producer_and_reader_threads(coordinate_set):
    from visionbench.engines.torch.nvjpeg import PRODUCER_THREAD, nvjpeg_epoch

    spec, reader, plans = _direct(coordinate_set, devices=[CPU])   # 7 steps: more than 1 + depth + 1
    steps = nvjpeg_epoch(spec, reader, plans, 2)
    next(steps)
    time.sleep(0.3)   # the producer blocked on the full queue
    assert PRODUCER_THREAD in _threads_left()   # running while the epoch is open
    closer = threading.Thread(target=steps.close, daemon=True)   # a deadlock fails the test, not hangs it
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive() and _threads_left() == []
    for parts in make_loader(spec).epoch(2):   # through the loader, left by a break
        break
    del parts
    import gc

    gc.collect()   # the abandoned generator closes when collected
    assert _threads_left() == []


def test_a_failure_on_the_producer_or_reader_is_raised_on_the_training_thread(coordinate_set, tmp_path):
    from visionbench.data.recordio import BadRecordSet

    # The cifar train recipe refuses the (non-16-pixel) images on the producer thread, at step 0.
    loader = make_loader(LoaderSpec(prefix=coordinate_set, train=True, batch_size=4, image_size=16, devices=[CPU],
                                    backend="nvjpeg", framework="torch", augment=Augment(recipe="cifar")))
    with pytest.raises(BadRecordSet, match="--augment cifar needs 16 x 16 images; the batch holds"):
        list(loader.epoch(0))
    assert _threads_left() == []
    # Record 9 (step 2 of the unshuffled val order) fails in the reader's OpenCV decode.
    payloads = {9: b"not an image"}
    prefix = write_colour_set(tmp_path / "bad", 16, payload_of=lambda i: payloads.get(i, _png(coordinate_image(i))))
    loader = make_loader(LoaderSpec(prefix=prefix, train=False, batch_size=4, image_size=16, devices=[CPU],
                                    backend="nvjpeg", framework="torch"))
    taken = []
    with pytest.raises(BadRecordSet, match=r"record 9 of .*bad\.rec is not a decodable image"):
        for parts in loader.epoch(0):
            taken.append(parts[0][1].tolist())
    assert taken == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    assert _threads_left() == []
