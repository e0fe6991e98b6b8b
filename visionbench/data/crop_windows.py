"""The random choices of ``--data-backend nvjpeg``'s train augmentation, made
by our sampler rather than inside a pipeline: pure numpy, no framework.

Every sample's choices come from its own generator, seeded from
``(seed, epoch, dataset position)`` (sampling.derive_seed), so an epoch's crops
and flips are a pure function of (seed, epoch): a resume at step k sees the
same windows as the uninterrupted epoch, and the choice for a record does not
depend on how the epoch is sharded. The draws need no image size (uniforms
only); the windows are computed from them once the decoded sizes are known
(on the GPU path: after nvJPEG has decoded the batch).

imagenet: a random-resized crop with DALI's ``image_random_crop`` ranges (the
window's area a uniform fraction in [min_scale, 1] of the image, its
width/height log-uniform in aspect_range, up to ATTEMPTS tries, else the
whole image narrowed to the aspect range, centred) and a horizontal flip.
cifar: a crop offset into the reflect-padded image, a flip and the Cutout
square's corner, all whole pixels.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence, Tuple

import numpy as np

from .sampling import derive_seed

ATTEMPTS = 100   # tries for a window that fits (the DALI pipeline's num_attempts)


class ImagenetDraws(NamedTuple):
    """Per sample (rows): ATTEMPTS candidate windows and where the chosen one sits."""
    area: np.ndarray          # (batch, ATTEMPTS) window area, fraction of the image's
    log_aspect: np.ndarray    # (batch, ATTEMPTS) natural log of the window's width/height
    offset: np.ndarray        # (batch, 2) uniforms in [0, 1): the window's (y, x) within its free range
    flip: np.ndarray          # (batch,) bool: mirror left-right


class CifarDraws(NamedTuple):
    offset: np.ndarray        # (batch, 2) int64 (y, x) of the crop in the padded image, 0..2*pad
    flip: np.ndarray          # (batch,) bool
    cutout: np.ndarray        # (batch, 2) int64 (y, x) of the Cutout square's corner, 0..size-cutout


def sample_generator(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator of one sample's choices in one epoch."""
    return np.random.default_rng(derive_seed(seed, epoch, int(position)))


def imagenet_draws(seed: int, epoch: int, positions: Sequence[int], min_scale: float,
                   aspect_range: Tuple[float, float]) -> ImagenetDraws:
    """The random-resized-crop choices of the samples at dataset ``positions``."""
    uniforms = np.stack([sample_generator(seed, epoch, p).random(2 * ATTEMPTS + 3) for p in positions])
    low, high = math.log(aspect_range[0]), math.log(aspect_range[1])
    area = min_scale + (1.0 - min_scale) * uniforms[:, :ATTEMPTS]
    log_aspect = low + (high - low) * uniforms[:, ATTEMPTS:2 * ATTEMPTS]
    tail = uniforms[:, 2 * ATTEMPTS:]
    return ImagenetDraws(area, log_aspect, tail[:, :2], tail[:, 2] < 0.5)


def imagenet_windows(draws: ImagenetDraws, heights: np.ndarray, widths: np.ndarray,
                     aspect_range: Tuple[float, float]) -> np.ndarray:
    """(batch, 4) int64 windows ``(y, x, height, width)`` in pixels of images of
    the given sizes: the first candidate that fits, else the fallback."""
    heights = np.asarray(heights, dtype=np.int64)
    widths = np.asarray(widths, dtype=np.int64)
    area_px = draws.area * (heights * widths)[:, None].astype(np.float64)
    aspect = np.exp(draws.log_aspect)
    cand_w = np.rint(np.sqrt(area_px * aspect)).astype(np.int64)
    cand_h = np.rint(np.sqrt(area_px / aspect)).astype(np.int64)
    fits = (cand_w >= 1) & (cand_h >= 1) & (cand_w <= widths[:, None]) & (cand_h <= heights[:, None])
    first = fits.argmax(axis=1)
    rows = np.arange(len(heights))
    found = fits[rows, first]
    fallback_h, fallback_w = _fallback_sizes(heights, widths, aspect_range)
    win_h = np.where(found, cand_h[rows, first], fallback_h)
    win_w = np.where(found, cand_w[rows, first], fallback_w)
    # A found window sits anywhere it fits; the fallback is centred.
    y = np.where(found, np.floor(draws.offset[:, 0] * (heights - win_h + 1)), (heights - win_h) // 2)
    x = np.where(found, np.floor(draws.offset[:, 1] * (widths - win_w + 1)), (widths - win_w) // 2)
    return np.stack([y.astype(np.int64), x.astype(np.int64), win_h, win_w], axis=1)


def _fallback_sizes(heights: np.ndarray, widths: np.ndarray,
                    aspect_range: Tuple[float, float]) -> Tuple[np.ndarray, np.ndarray]:
    """(height, width): the whole image, cut to the nearest allowed aspect."""
    ratio = widths / heights
    low, high = aspect_range
    too_tall = ratio < low
    too_wide = ratio > high
    fallback_h = np.where(too_tall, np.maximum(1, np.rint(widths / low)).astype(np.int64), heights)
    fallback_w = np.where(too_wide, np.maximum(1, np.rint(heights * high)).astype(np.int64), widths)
    return np.minimum(fallback_h, heights), np.minimum(fallback_w, widths)


def cifar_draws(seed: int, epoch: int, positions: Sequence[int], pad: int, size: int,
                cutout: int) -> CifarDraws:
    """The CIFAR recipe's choices of the samples at dataset ``positions``."""
    offset, flip, corner = [], [], []
    for position in positions:
        rng = sample_generator(seed, epoch, position)
        offset.append(rng.integers(0, 2 * pad + 1, size=2))
        flip.append(rng.random() < 0.5)
        corner.append(rng.integers(0, size - cutout + 1, size=2))
    return CifarDraws(np.asarray(offset, dtype=np.int64).reshape(-1, 2), np.asarray(flip, dtype=bool),
                      np.asarray(corner, dtype=np.int64).reshape(-1, 2))
