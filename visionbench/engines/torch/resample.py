"""Crop, resize and mirror a batch of differently sized images in a few batched ops.

torch has no resize for a batch of images of different sizes, and a loop of
``F.interpolate`` calls dispatches three to four operators per image, each a
kernel launch from the producer thread, in Python, under the GIL it shares
with training: about 900 per batch of 256. Here the batch is concatenated
into one flat buffer, each group of similar windows is gathered from it into
a padded (g, 3, H, W) batch by one indexing of its rows, and every output
image is

    rows @ window @ columns.T        (per channel)

where ``rows`` (size x H) and ``columns`` (size x W) hold the 1-D weights of
torch's antialiased bilinear resize (``F.interpolate(mode="bilinear",
antialias=True, align_corners=False)``: a triangle filter, widened by the
scale when shrinking, cut at the window's edges and normalised), zero over
the padding. Two batched matrix products resize the group, keep a centre
crop of the resized window (rows of the matrices) and mirror (columns in
reverse order): about 20 operators per group, whatever its size.

Groups: sorted by window area, a group's padded pixels are at most
``WASTE`` times its windows' own, so one large image does not pad a batch of
small ones (ImageNet-shaped train crops at batch 256: 4 groups).

Cost, per image and channel, in multiply-adds: size x H x W + size x size x H
for its group's padded H x W (bench/augment_ops.py counts them per batch).
The products are float32; against torch's float64 resize the values differ
by about 1e-5 of a pixel value (tests/test_resample.py). Where TF32 is
allowed for float32 matmuls (a process-wide setting, off by default, never
set by visionbench; NVIDIA's PyTorch containers turn it on with
TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1) they carry about 0.1 of a value, which
the rounding to whole values then shows on some pixels.

Memory: a group's intermediates take about 2.5 x its padded pixels x 3
channels x 4 bytes (a float32 copy of the windows, the weights, the first
product), freed before the next group's; GROUP_PIXELS caps a group at
about 1 GB of them.
"""
from __future__ import annotations

from typing import List, NamedTuple, Sequence

import numpy as np
import torch

WASTE = 2.0   # a group's padded pixels / its windows' pixels, at most (unless it holds one image)
# A group's padded pixels per channel, at most (unless it holds one image): its transient
# device memory is about 2.5 x 3 channels x 4 bytes per padded pixel, so about 1 GB here.
GROUP_PIXELS = 2 ** 25


class Windows(NamedTuple):
    """Per image (arrays of the batch's length), in pixels of the source image."""
    top: np.ndarray          # the window's first row
    left: np.ndarray         # the window's first column
    height: np.ndarray       # the window's height; resized to ``out_height``
    width: np.ndarray        # the window's width; resized to ``out_width``
    out_height: np.ndarray
    out_width: np.ndarray
    crop_top: np.ndarray     # first row of the resized window kept (size rows are kept)
    crop_left: np.ndarray    # first column kept (size columns are kept)
    mirror: np.ndarray       # bool: the kept columns in reverse order


def crop_windows(windows: np.ndarray, size: int, mirror=None) -> Windows:
    """Each ``(top, left, height, width)`` window resized to size x size."""
    windows = np.asarray(windows, dtype=np.int64).reshape(-1, 4)
    count = len(windows)
    full, zero = np.full(count, size, np.int64), np.zeros(count, np.int64)
    mirror = np.zeros(count, bool) if mirror is None else np.asarray(mirror, bool)
    return Windows(windows[:, 0], windows[:, 1], windows[:, 2], windows[:, 3], full, full, zero, zero, mirror)


def resample(images: Sequence[torch.Tensor], windows: Windows, size: int,
             channels_last: bool = False) -> torch.Tensor:
    """(n, 3, size, size) float32 on the images' device, unrounded, from
    (3, H, W) uint8 images: per image its window, resized, centre-cropped as
    ``windows`` says and mirrored where drawn; channels_last strides if asked."""
    check_windows(images, windows, size)
    device = images[0].device
    # The batch's uint8 pixels in one flat buffer, then one widest window of 0s: a padded row
    # is read as one run of the buffer, past its window's right edge (weighed 0) but not past the end.
    tail = torch.zeros(int(windows.width.max()), dtype=images[0].dtype, device=device)
    pixels = torch.cat([image.reshape(-1) for image in images] + [tail])
    sizes = np.array([image.numel() for image in images], dtype=np.int64)
    widths = np.array([image.shape[2] for image in images], dtype=np.int64)
    groups = size_groups(windows.height, windows.width)
    # Everything the groups need from the host, in two copies for the batch: a copy from
    # pageable memory waits for the producer's stream, so one per array would wait ~20 times.
    offsets = _upload([part for group in groups for part in
                       (group, *_gather_offsets(windows, group, np.cumsum(sizes) - sizes, sizes // 3, widths))],
                      np.int64, device)
    terms = _upload([_weight_terms(_both_axes(windows, group), size) for group in groups], np.float32, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    result = torch.empty((len(images), 3, size, size), dtype=torch.float32, device=device,
                         memory_format=memory_format)
    for number, group in enumerate(groups):
        slots, rows, channels = offsets[3 * number:3 * number + 3]
        result[slots] = _resample_group(pixels, rows[:, None, :] + channels[:, :, None],
                                        int(windows.width[group].max()), terms[number], size)
    return result


def _resample_group(pixels: torch.Tensor, row_starts: torch.Tensor, width: int, terms: torch.Tensor,
                    size: int) -> torch.Tensor:
    """(g, 3, size, size), a view, for one group: its windows gathered, then
    the two products. Its own function so that the group's intermediates
    (about 2.5 x its padded pixels x 4 bytes) are freed before the next
    group's are made."""
    count, _, height = row_starts.shape
    # (g, 3, H, W): each padded row of each window is the run of W pixels from its first
    # (unfold: every run of W as a view); rows past a window repeat its last (weighed 0)
    padded = pixels.unfold(0, width, 1)[row_starts].float()
    weights = _weights(terms, size, max(height, width))
    row_weights, column_weights = weights[:count, :, :height], weights[count:, :, :width]
    across = torch.bmm(padded.view(count, 3 * height, width), column_weights.transpose(1, 2))   # (g, 3H, size)
    by_row = across.view(count, 3, height, size).transpose(1, 2).reshape(count, height, 3 * size)
    down = torch.bmm(row_weights, by_row)                                        # (g, size, 3 * size)
    return down.view(count, size, 3, size).permute(0, 2, 1, 3)


def check_windows(images: Sequence[torch.Tensor], windows: Windows, size: int) -> None:
    """A window outside its image, or a crop outside its resized window,
    refused here: on a GPU the gather would read another image's pixels or
    fail inside a kernel, taking the CUDA context down with it."""
    if len(windows.top) != len(images):
        raise ValueError(f"resample: {len(windows.top)} windows for {len(images)} images")
    heights = np.array([image.shape[1] for image in images])
    widths = np.array([image.shape[2] for image in images])
    w = windows
    inside = ((w.top >= 0) & (w.left >= 0) & (w.height >= 1) & (w.width >= 1)
              & (w.top + w.height <= heights) & (w.left + w.width <= widths) & (w.crop_top >= 0)
              & (w.crop_left >= 0) & (w.crop_top + size <= w.out_height) & (w.crop_left + size <= w.out_width))
    if not inside.all():
        i = int(np.argmin(inside))
        raise ValueError(f"resample: image {i} is {heights[i]} x {widths[i]}; its window {w.height[i]} x "
                         f"{w.width[i]} at ({w.top[i]}, {w.left[i]}), resized to {w.out_height[i]} x "
                         f"{w.out_width[i]}, cropped to {size} x {size} at ({w.crop_top[i]}, {w.crop_left[i]}), "
                         "does not fit")


def _upload(arrays: List[np.ndarray], dtype, device) -> List[torch.Tensor]:
    """The arrays on ``device`` after one copy, as views of its buffer."""
    flat = torch.from_numpy(np.concatenate([np.ravel(array).astype(dtype) for array in arrays])).to(device)
    views, start = [], 0
    for array in arrays:
        views.append(flat[start:start + array.size].view(array.shape))
        start += array.size
    return views


def _both_axes(windows: Windows, group: np.ndarray) -> tuple:
    """(length, resized, crop, mirror) for the group's rows, then its columns."""
    count = len(group)
    return (np.concatenate([windows.height[group], windows.width[group]]),
            np.concatenate([windows.out_height[group], windows.out_width[group]]),
            np.concatenate([windows.crop_top[group], windows.crop_left[group]]),
            np.concatenate([np.zeros(count, bool), windows.mirror[group]]))


def size_groups(heights: np.ndarray, widths: np.ndarray) -> List[np.ndarray]:
    """Indices of the images, in groups of similar window size: sorted by
    area, a group closes when padding to its largest height and width would
    exceed WASTE times the pixels it holds, or GROUP_PIXELS."""
    order = np.argsort(heights * widths, kind="stable").tolist()
    groups, current, pixels, top_h, top_w = [], [], 0, 0, 0
    for index in order:
        height, width = int(heights[index]), int(widths[index])
        new_h, new_w = max(top_h, height), max(top_w, width)
        padded = (len(current) + 1) * new_h * new_w
        if current and (padded > WASTE * (pixels + height * width) or padded > GROUP_PIXELS):
            groups.append(np.array(current, dtype=np.int64))
            current, pixels, new_h, new_w = [], 0, height, width
        current.append(index)
        pixels += height * width
        top_h, top_w = new_h, new_w
    groups.append(np.array(current, dtype=np.int64))
    return groups


def _gather_offsets(windows: Windows, group: np.ndarray, starts: np.ndarray, planes: np.ndarray,
                    widths: np.ndarray) -> tuple:
    """Where each padded row of the group's windows starts in the flat
    buffer, as two int64 arrays that add up (broadcast) to it: per image and
    padded row (g, H), per image and channel (g, 3). Rows past a window
    repeat its last one: any finite value will do there, its weight is 0."""
    height = windows.height[group]
    row = np.minimum(np.arange(height.max()), height[:, None] - 1) + windows.top[group][:, None]
    rows = starts[group][:, None] + row * widths[group][:, None] + windows.left[group][:, None]
    channels = np.arange(3) * planes[group][:, None]
    return rows, channels


def axis_weights(length: np.ndarray, resized: np.ndarray, crop: np.ndarray, mirror: np.ndarray,
                 size: int, padded: int, device) -> torch.Tensor:
    """(n, size, padded) float32: along one axis, output pixel i of image b
    is ``sum_j weights[b, i, j] * window[b, j]``. Output pixel i is pixel
    ``crop + i`` of the window resized from ``length`` to ``resized`` pixels
    (``crop + size - 1 - i`` when mirrored)."""
    terms = torch.from_numpy(_weight_terms((length, resized, crop, mirror), size)).to(device)
    return _weights(terms, size, padded)


def _weight_terms(axes: tuple, size: int) -> np.ndarray:
    """(n, 2 size + 2) float32, on the host, per axis: where each output
    pixel's centre falls in the window, as an integer part and ``0.5 -
    fraction`` (so that float32 keeps the fraction's precision on large
    images); the triangle's half-width; the window's length."""
    length, resized, crop, mirror = axes
    scale = length / resized                                        # window pixels per resized pixel
    out = np.arange(size, dtype=np.float64)
    out = np.where(mirror[:, None], size - 1 - out, out)            # (n, size)
    centre = scale[:, None] * (out + crop[:, None] + 0.5)
    whole = np.floor(centre)
    reach = np.maximum(scale, 1.0)                                  # the triangle's half-width, window pixels
    return np.concatenate([whole, 0.5 - (centre - whole), reach[:, None], length[:, None]], axis=1).astype(np.float32)


def _weights(terms: torch.Tensor, size: int, padded: int) -> torch.Tensor:
    """axis_weights from _weight_terms already on the device."""
    whole, offset = terms[:, :size, None], terms[:, size:2 * size, None]
    reach, length = terms[:, 2 * size:2 * size + 1, None], terms[:, 2 * size + 1:, None]
    source = torch.arange(padded, dtype=torch.float32, device=terms.device)
    distance = (source - whole) + offset                            # window pixel j's centre (j + 0.5) to the output's
    weights = (1 - (distance / reach).abs()).clamp_(min=0)
    weights *= source < length                                      # the window only, never its padding
    return weights / weights.sum(-1, keepdim=True)
