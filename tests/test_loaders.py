"""make_loader on real .rec files: dali-cpu, mxnet and synthetic backends on CPU."""
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest

from visionbench.cli import UsageError
from visionbench.data.loader import make_loader
from visionbench.data.recordio import RecordReader
from visionbench.data.spec import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, Augment, LoaderSpec
from visionbench.selftest import colour_index, colour_jpeg, write_colour_set

# Solid-colour images whose colour spells their index (visionbench.selftest,
# which checks pipelines the same way): any crop, flip or resize of one keeps
# the colour, so every output sample says which record it came from. Sizes
# vary, so resizing, cropping and rect val all matter.


def write_set(prefix, count, labels=None, payload_of=colour_jpeg):
    return write_colour_set(prefix, count, labels=labels, payload_of=payload_of)


@pytest.fixture(scope="module")
def coloured(tmp_path_factory):
    return write_set(tmp_path_factory.mktemp("rec") / "coloured", 31)


def spec(prefix, **kw):
    base = dict(prefix=prefix, train=True, batch_size=4, image_size=32, devices=[mx.cpu(0)], threads=1)
    base.update(kw)
    return LoaderSpec(**base)


def unnormalise(data, layout="NCHW", mean=IMAGENET_MEAN, std=IMAGENET_STD):
    array = data.asnumpy().astype(np.float32)
    if layout == "NHWC":
        array = array.transpose(0, 3, 1, 2)
    return array * np.array(std).reshape(1, 3, 1, 1) + np.array(mean).reshape(1, 3, 1, 1)


def seen_indices(batches, layout="NCHW"):
    """Indices named by the pixels and by the labels of every non-padding sample."""
    from_pixels, from_labels = [], []
    for step in batches:
        for data, label, pad in step:
            valid = data.shape[0] - pad
            pixels = unnormalise(data, layout)[:valid]
            from_pixels += [colour_index(p.mean(axis=(1, 2))) for p in pixels]
            from_labels += label.asnumpy()[:valid].astype(int).tolist()
    return from_pixels, from_labels


@pytest.mark.parametrize("backend", ["dali-cpu", "mxnet"])
@pytest.mark.parametrize("dtype, layout", [("float32", "NCHW"), ("float16", "NHWC")])
def test_train_batches_shape_dtype_layout_and_labels(coloured, backend, dtype, layout):
    devices = [mx.cpu(0), mx.cpu(1)]
    loader = make_loader(spec(coloured, backend=backend, dtype=dtype, layout=layout, devices=devices))
    steps = list(loader.epoch(0))
    assert len(steps) == len(loader)
    want = (4, 3, 32, 32) if layout == "NCHW" else (4, 32, 32, 3)
    for step in steps:
        assert len(step) == 2
        for (data, label, pad), context in zip(step, devices):
            assert data.shape == want and data.dtype == np.dtype(dtype)
            assert data.context == context and label.context == context and label.shape == (4,)
    pixels, labels = seen_indices(steps, layout)
    assert pixels == labels                           # each label belongs to its image
    assert sorted(labels) == list(range(31))           # one epoch: every record once


def test_val_backends_agree_before_normalisation(tmp_path):
    # Textured images (the demo set's), so resampling differences would show.
    from visionbench.data.demo import image_rng, render_image

    def payload(i):
        rgb = render_image(i % 10, image_rng(0, "val", i % 10, i), 64)
        return cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()

    prefix = write_set(tmp_path / "demo", 40, labels=[i % 10 for i in range(40)], payload_of=payload)
    outputs = {}
    for backend in ("dali-cpu", "mxnet"):
        loader = make_loader(spec(prefix, train=False, backend=backend, batch_size=8))
        outputs[backend] = np.concatenate([unnormalise(step[0].data) for step in loader.epoch(0)])
    difference = np.abs(outputs["dali-cpu"] - outputs["mxnet"]).mean()
    print(f"\nval mean absolute difference dali-cpu vs mxnet (0..255): {difference:.3f}")
    assert outputs["dali-cpu"].shape == outputs["mxnet"].shape == (40, 3, 32, 32)
    assert difference < 2


@pytest.mark.parametrize("shards", [1, 2, 3])
@pytest.mark.parametrize("train", [True, False])
def test_dali_shards_cover_the_set_exactly_once_per_epoch(coloured, shards, train):
    # shards = devices x workers: 3 shards as 1 device x 3 workers, 2 as 2 x 1.
    devices = [mx.cpu(i) for i in range(2 if shards == 2 else 1)]
    workers = shards // len(devices)
    pixels, labels, images = [], [], 0
    for rank in range(workers):
        loader = make_loader(spec(coloured, train=train, devices=devices, rank=rank, num_workers=workers))
        p, l = seen_indices(loader.epoch(1))
        pixels += p
        labels += l
        images += loader.num_images
    assert pixels == labels
    assert sorted(labels) == list(range(31)) and images == 31


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_mxnet_backend_workers_cover_val_exactly_once(coloured, workers):
    labels = []
    for rank in range(workers):
        loader = make_loader(spec(coloured, train=False, backend="mxnet", rank=rank, num_workers=workers))
        labels += seen_indices(loader.epoch(0))[1]
    assert sorted(labels) == list(range(31))


def test_same_seed_same_batches_other_seed_or_epoch_differs(coloured):
    def run(seed, epoch):
        loader = make_loader(spec(coloured, seed=seed))
        return [step[0].data.asnumpy() for step in loader.epoch(epoch)]

    first, again = run(5, 2), run(5, 2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, run(6, 2)))
    assert not all(np.array_equal(a, b) for a, b in zip(first, run(5, 3)))


def test_rect_val_shapes_and_order(coloured):
    loader = make_loader(spec(coloured, train=False, batch_size=5, image_size=32,
                              augment=Augment(rect_val=True)))
    sizes = RecordReader(coloured).image_sizes()
    aspect = sizes[:, 0] / sizes[:, 1]
    plan = loader.plans(0)[0]
    order = []
    for step, positions, pad in zip(loader.epoch(0), plan.positions, plan.pads):
        data, label, step_pad = step[0]
        height, width = data.shape[2:]
        assert min(height, width) == 32 and height % 8 == 0 and width % 8 == 0
        assert step_pad == pad
        assert label.asnumpy()[: 5 - pad].astype(int).tolist() == positions[: 5 - pad].tolist()
        order += positions[: 5 - pad].tolist()
    assert sorted(order) == list(range(31))
    assert np.all(np.diff(aspect[order]) >= 0)
    shapes = {step[0].data.shape[2:] for step in loader.epoch(0)}
    assert len(shapes) > 1   # landscape and portrait batches
    # the cache beside the .idx is used the second time
    assert Path(f"{coloured}.sizes.npy").exists()


def test_float16_comes_out_of_the_dali_pipeline(coloured):
    from nvidia.dali import types
    from visionbench.data.dali import _EpochFeed, build_pipeline

    s = spec(coloured, dtype="float16")
    loader = make_loader(s)
    feed = _EpochFeed(loader._reader, loader.plans(0)[0], s)
    pipe = build_pipeline(s, feed, mx.cpu(0), seed=1)
    pipe.build()
    data, _ = pipe.run()
    feed.close()
    assert data.dtype == types.FLOAT16


def test_cifar_augmentation_is_reflect_pad_crop_flip_cutout(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)

    def png(i):
        return cv2.imencode(".png", images[i][:, :, ::-1])[1].tobytes()

    prefix = write_set(tmp_path / "c", 6, payload_of=png)
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    for cutout in (0, 8):
        loader = make_loader(spec(prefix, batch_size=6, augment=Augment(recipe="cifar", cutout=cutout), seed=cutout))
        (data, label, pad), = next(iter(loader.epoch(0)))
        out = unnormalise(data, mean=CIFAR_MEAN, std=CIFAR_STD).transpose(0, 2, 3, 1)
        for sample, index in zip(out, label.asnumpy().astype(int)):
            best = min(
                (np.abs(sample - (crop[:, ::-1] if flip else crop)).max(axis=2) > 0.5).sum()
                for y in range(9) for x in range(9) for flip in (False, True)
                for crop in [padded[index, y:y + 32, x:x + 32].astype(np.float32)])
            # without Cutout some crop matches exactly; with it, only the
            # square (set to the mean) differs
            assert best == 0 if cutout == 0 else 0 < best <= 64
            if cutout:
                at_mean = np.all(np.abs(sample - np.array(CIFAR_MEAN)) < 0.5, axis=2)
                assert at_mean.sum() >= 64 - 1


def test_synthetic_backend(tmp_path):
    loader = make_loader(LoaderSpec(prefix=None, train=True, batch_size=3, image_size=16,
                                    devices=[mx.cpu(0), mx.cpu(1)], backend="synthetic", dtype="float16",
                                    layout="NHWC", num_classes=7, synthetic_images=20))
    assert len(loader) == 3 and loader.num_images == 18
    steps = list(loader.epoch(0))
    assert len(steps) == 3
    for data, label, pad in steps[0]:
        assert data.shape == (3, 16, 16, 3) and data.dtype == np.float16 and pad == 0
        assert set(label.asnumpy().astype(int)) <= set(range(7))
    assert steps[0][1].data.context == mx.cpu(1)


def test_bad_inputs_are_refused_before_any_pipeline(coloured, tmp_path):
    def refused(words, **kw):
        with pytest.raises(UsageError, match=words):
            make_loader(spec(**kw))

    refused("does not exist", prefix=tmp_path / "missing")
    refused("below the minimum of 8", prefix=coloured, image_size=7)
    refused("fewer than the batch size", prefix=coloured, batch_size=16, devices=[mx.cpu(0), mx.cpu(1)])
    refused("fewer than its batch", prefix=coloured, backend="mxnet", batch_size=32)
    refused("multiple of 8", prefix=coloured, train=False, image_size=36, augment=Augment(rect_val=True))
    refused("needs dali-cpu or dali-gpu", prefix=coloured, train=False, backend="mxnet", augment=Augment(rect_val=True))
    refused("needs GPU devices", prefix=coloured, backend="dali-gpu")
    # an .idx that belongs to another .rec
    other = write_set(tmp_path / "other", 3)
    Path(f"{other}.idx").write_text(Path(f"{coloured}.idx").read_text())
    refused("does not match", prefix=other)


def test_record_that_is_not_an_image_is_named(tmp_path):
    good = cv2.imencode(".jpg", np.full((40, 40, 3), 99, np.uint8))[1].tobytes()
    prefix = write_set(tmp_path / "bad", 8, payload_of=lambda i: b"not a jpeg at all" if i == 5 else good)
    loader = make_loader(spec(prefix, train=False, batch_size=4))
    with pytest.raises(UsageError, match="record 5 of .*bad.rec is not a decodable image"):
        list(loader.epoch(0))
    with pytest.raises(UsageError, match="record 5 .* is not an image"):
        make_loader(spec(prefix, train=False, batch_size=4, augment=Augment(rect_val=True)))


def _with_garbage(prefix, count, bad):
    """The coloured set with the records in ``bad`` replaced by bytes that are no image."""
    def payload(i):
        return b"not a jpeg at all" if i in bad else colour_jpeg(i)
    return write_set(prefix, count, payload_of=payload)


@pytest.mark.parametrize("devices, train, rect", [(1, True, False), (2, True, False), (1, False, True)])
def test_bad_records_skip_leaves_out_exactly_the_undecodable_records(tmp_path, capfd, devices, train, rect):
    bad = {5, 11}
    prefix = _with_garbage(tmp_path / "bad", 24, bad)
    loader = make_loader(spec(prefix, train=train, batch_size=4, bad_records="skip",
                              devices=[mx.cpu(i) for i in range(devices)], augment=Augment(rect_val=rect)))
    for epoch in range(2):
        before = loader.skipped_records
        steps = list(loader.epoch(epoch))
        pixels, labels = seen_indices(steps)
        # Every good record once per epoch, in full batches; the bad ones never, counted.
        assert sorted(pixels) == sorted(labels) == sorted(set(range(24)) - bad)
        assert len(steps) == len(loader) and all(d.shape[0] == 4 for step in steps for d, _, _ in step)
        assert loader.skipped_records - before == 2
    # A warning names each bad record once, when it is found (rect val finds them before any pipeline).
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning:")]
    assert sorted(warnings) == sorted(
        f"warning: record {k} of {prefix}.rec is not a decodable image: left out (--bad-records skip)" for k in bad)


def test_bad_records_skip_is_refused_where_it_cannot_work(coloured):
    with pytest.raises(UsageError, match="--bad-records skip needs a DALI backend"):
        make_loader(spec(coloured, backend="mxnet", bad_records="skip"))
    with pytest.raises(UsageError, match="unknown bad-record policy 'ignore'"):
        make_loader(spec(coloured, bad_records="ignore"))


@pytest.mark.gpu
def test_dali_gpu_decodes_onto_each_gpu(coloured):
    devices = [mx.gpu(0)]
    loader = make_loader(spec(coloured, backend="dali-gpu", devices=devices, dtype="float16", layout="NHWC"))
    steps = list(loader.epoch(0))
    data, label, _ = steps[0][0]
    assert data.context == mx.gpu(0) and label.context == mx.gpu(0)
    assert data.dtype == np.float16 and data.shape == (4, 32, 32, 3)
    pixels, labels = seen_indices(steps, "NHWC")
    assert pixels == labels and sorted(labels) == list(range(31))
