"""The nvjpeg backend's batched crop-resize-mirror (engines/torch/resample.py)
against torch's own antialiased bilinear F.interpolate, image by image, in
float64: the weights, the grouping by size, and whole batches of mixed
sizes for the train and val geometries."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from visionbench.cli import run_main
from visionbench.engines.torch.nvjpeg import val_windows
from visionbench.engines.torch import resample as resample_module
from visionbench.engines.torch.resample import WASTE, Windows, axis_weights, crop_windows, resample, size_groups


def _interpolate(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torch's resize of one (C, h, w) image, in float64: the reference."""
    return F.interpolate(image[None].double(), size=(height, width), mode="bilinear", align_corners=False,
                         antialias=True)[0]


@st.composite
def _axes(draw):
    length = draw(st.integers(1, 2000))
    resized = draw(st.integers(1, 300))
    size = draw(st.integers(1, resized))
    crop = draw(st.integers(0, resized - size))
    return length, resized, crop, draw(st.booleans()), size, length + draw(st.integers(0, 9))


@settings(max_examples=150, deadline=None)
@given(_axes())
def test_the_weights_are_torchs_antialiased_bilinear_resize_cropped_and_mirrored(axis):
    length, resized, crop, mirror, size, padded = axis
    weights = axis_weights(np.array([length]), np.array([resized]), np.array([crop]), np.array([mirror]),
                           size, padded, "cpu")[0].double()
    # Resizing the identity gives the resize's matrix: row i holds output pixel i's weights.
    expected = _interpolate(torch.eye(length)[None], resized, length)[0, crop:crop + size]
    if mirror:
        expected = expected.flip(0)
    assert weights.shape == (size, padded)
    assert torch.all(weights[:, length:] == 0)   # the padding weighs nothing
    assert torch.allclose(weights[:, :length], expected, rtol=0, atol=1e-6), \
        (weights[:, :length] - expected).abs().max()


def test_groups_hold_every_image_once_and_pad_at_most_twice_their_pixels():
    rng = np.random.default_rng(3)
    heights = rng.integers(20, 120, size=60)                    # windows of the train crops' aspect range
    widths = (heights * rng.uniform(3 / 4, 4 / 3, size=60)).astype(np.int64)
    heights, widths = np.append(heights, 900), np.append(widths, 700)   # and one large image
    groups = size_groups(heights, widths)
    assert sorted(np.concatenate(groups).tolist()) == list(range(61))
    assert [60] in [group.tolist() for group in groups]        # the large image pads nothing but itself
    for group in groups:
        padded = len(group) * heights[group].max() * widths[group].max()
        assert len(group) == 1 or padded <= WASTE * (heights[group] * widths[group]).sum()
    assert len(groups) <= 8                                     # and the small ones are not one group each


def test_a_group_of_equal_windows_is_cut_at_the_pixel_cap(monkeypatch):
    monkeypatch.setattr(resample_module, "GROUP_PIXELS", 20_000)
    sides = np.full(40, 50)   # equal windows: padding never closes a group, the cap does
    assert [len(group) for group in size_groups(sides, sides)] == [8] * 5


def _mixed_batch(seed: int):
    """Smooth random images of many sizes, one large: (3, H, W) uint8."""
    rng = np.random.default_rng(seed)
    sizes = [(int(h), int(w)) for h, w in rng.integers(24, 90, size=(13, 2))] + [(300, 220)]
    images = []
    for height, width in sizes:
        coarse = torch.from_numpy(rng.uniform(0, 255, size=(1, 3, 6, 6)))
        images.append(F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
                      .clamp(0, 255).round().to(torch.uint8))
    return images


def _reference(images, windows, size):
    expected = []
    for index, image in enumerate(images):
        top, left = int(windows.top[index]), int(windows.left[index])
        window = image[:, top:top + int(windows.height[index]), left:left + int(windows.width[index])]
        resized = _interpolate(window, int(windows.out_height[index]), int(windows.out_width[index]))
        crop_top, crop_left = int(windows.crop_top[index]), int(windows.crop_left[index])
        kept = resized[:, crop_top:crop_top + size, crop_left:crop_left + size]
        expected.append(kept.flip(-1) if windows.mirror[index] else kept)
    return torch.stack(expected)


def _check(images, windows, size):
    assert len(size_groups(windows.height, windows.width)) > 1   # the batch is cut in groups and put back
    found = resample(images, windows, size).double()
    expected = _reference(images, windows, size)
    # float32 products of up to a few hundred terms: about 1e-5 of a pixel value
    # (measured 3e-5); a window one pixel off or a missed mirror is whole values off.
    assert found.shape == expected.shape
    assert (found - expected).abs().max() < 1e-3, (found - expected).abs().max()


@pytest.mark.parametrize("seed", [0, 1])
def test_train_windows_of_a_mixed_batch_resize_as_torch_does_image_by_image(seed):
    images, size = _mixed_batch(seed), 32
    rng = np.random.default_rng(seed + 10)
    windows = []
    for image in images:
        height, width = image.shape[1:]
        crop_h, crop_w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        windows.append((int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1)),
                        crop_h, crop_w))   # shrinking and enlarging windows alike
    mirror = np.arange(len(images)) % 2 == 1
    _check(images, crop_windows(np.array(windows), size, mirror), size)


def test_val_windows_resize_the_shorter_side_and_keep_the_centre_as_torch_does(seed=2):
    images, size = _mixed_batch(seed), 21
    heights = np.array([image.shape[1] for image in images])
    widths = np.array([image.shape[2] for image in images])
    windows = val_windows(heights, widths, size)
    assert np.all(np.minimum(windows.out_height, windows.out_width) == round(size / 0.875))
    _check(images, windows, size)


@pytest.mark.parametrize("waste", [1.0, float("inf")], ids=["a group per size", "one group"])
def test_the_result_does_not_depend_on_the_grouping_and_the_last_rows_read_stay_in_the_buffer(monkeypatch, waste):
    """In one group, the last image's narrow bottom-right window is read in
    runs as wide as the group's widest window: past the last image's end."""
    monkeypatch.setattr(resample_module, "WASTE", waste)
    images = _mixed_batch(4)
    last = len(images) - 1
    windows = np.array([(0, 0, image.shape[1], image.shape[2]) for image in images])
    height, width = images[last].shape[1:]
    windows[last] = (height - 3, width - 2, 3, 2)
    found = resample(images, crop_windows(windows, 16, np.arange(len(images)) % 3 == 0), 16, channels_last=True)
    assert found.is_contiguous(memory_format=torch.channels_last)
    expected = _reference(images, crop_windows(windows, 16, np.arange(len(images)) % 3 == 0), 16)
    assert (found.double() - expected).abs().max() < 1e-3


def test_a_window_of_the_output_size_is_copied_exactly():
    images = _mixed_batch(5)
    windows = np.array([(image.shape[1] - 20, 3, 20, 20) for image in images])
    found = resample(images, crop_windows(windows, 20), 20)
    for image, (top, left, _, _), batch_image in zip(images, windows, found):
        assert torch.equal(batch_image, image[:, top:top + 20, left:left + 20].float())


@pytest.mark.parametrize("window, crop", [((0, 0, 49, 10), (0, 0)), ((-1, 0, 5, 5), (0, 0)), ((0, 44, 5, 5), (0, 0)),
                                          ((0, 0, 0, 5), (0, 0)), ((0, 0, 40, 40), (25, 0))],
                         ids=["too tall", "above the image", "past its right edge", "empty", "crop past the resize"])
def test_a_window_that_does_not_fit_is_refused_before_anything_is_read(window, crop):
    images = [torch.zeros((3, 48, 12), dtype=torch.uint8), torch.zeros((3, 48, 48), dtype=torch.uint8)]
    fitting = (0, 0, 48, 12)   # image 0's window, whole
    out = 40 if window[2] == 40 else 16
    windows = Windows(*(np.array(pair) for pair in zip(fitting, window)), np.array([16, out]), np.array([16, out]),
                      np.array([0, crop[0]]), np.array([0, crop[1]]), np.zeros(2, bool))
    with pytest.raises(ValueError, match=r"^resample: image 1 is 48 x 48; its window .* does not fit$"):
        resample(images, windows, 16)


def test_the_augment_bench_counts_fewer_operators_for_the_batch_and_refuses_a_missing_gpu(capsys):
    from visionbench.bench import augment_ops

    assert augment_ops.main(["--batch-size", "24", "--image-size", "16", "--repeats", "1"]) == 0
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): int(line.split("|")[2]) for line in table.splitlines()
            if line.startswith("| ") and line.split("|")[2].strip().isdigit()}
    # The loop dispatches about 3.5 operators per image; the batch about 20 per size group.
    assert rows["per-image F.interpolate loop"] >= 3 * 24 > rows["batched resample"], table
    assert "largest difference between the two: " in table
    if not torch.cuda.is_available():
        assert run_main(augment_ops.main, "augment_ops", ["--device", "cuda"]) == 2
        assert capsys.readouterr().err == ("augment_ops: error: --device cuda: this machine's torch sees no "
                                           "such device (cpu, or cuda on a GPU machine)\n")
