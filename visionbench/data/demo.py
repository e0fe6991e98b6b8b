"""The embedded demo dataset: procedurally drawn shapes, 10 classes.

Each image shows one shape on a textured, noisy background; colour, scale,
position, rotation and the image's aspect ratio vary at random, so the task
needs real features but a small CNN learns it in minutes on a CPU. Every
image is a pure function of (seed, split, class, index): the dataset is the
same on every machine for a seed (JPEG bytes depend on the libjpeg build).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import cv2
import numpy as np

SUPERSAMPLE = 4   # shapes are drawn at 4x and downsampled: smooth edges
CLASSES = ["disk", "ring", "square", "frame", "triangle",
           "star", "cross", "crescent", "bar", "halfdisk"]
SPLIT_IDS = {"train": 0, "val": 1}


def _polygon(mask: np.ndarray, points: np.ndarray) -> None:
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 255, lineType=cv2.LINE_8)


def _rotated(points: np.ndarray, angle: float, centre: np.ndarray, radius: float) -> np.ndarray:
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return points @ rot.T * radius + centre


def _regular(n: int, inner: float = 1.0) -> np.ndarray:
    """Unit polygon with n corners; ``inner < 1`` alternates radii (a star)."""
    count = n * (2 if inner != 1.0 else 1)
    angles = np.arange(count) * 2 * math.pi / count - math.pi / 2
    radii = np.where(np.arange(count) % 2 == 1, inner, 1.0) if inner != 1.0 else np.ones(count)
    return np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1)


def _draw(kind: str, mask: np.ndarray, centre: np.ndarray, radius: float, angle: float) -> None:
    c = tuple(int(v) for v in np.round(centre))
    r = int(round(radius))
    thickness = max(2, int(radius * 0.28))
    if kind == "disk":
        cv2.circle(mask, c, r, 255, -1)
    elif kind == "ring":
        cv2.circle(mask, c, r - thickness // 2, 255, thickness)
    elif kind == "square":
        _polygon(mask, _rotated(_regular(4), angle, centre, radius))
    elif kind == "frame":
        outer = _rotated(_regular(4), angle, centre, radius)
        cv2.polylines(mask, [np.round(outer).astype(np.int32)], True, 255, thickness)
    elif kind == "triangle":
        _polygon(mask, _rotated(_regular(3), angle, centre, radius))
    elif kind == "star":
        _polygon(mask, _rotated(_regular(5, inner=0.42), angle, centre, radius))
    elif kind == "cross":
        arm = 0.3
        plus = np.array([[-arm, -1], [arm, -1], [arm, -arm], [1, -arm], [1, arm], [arm, arm],
                         [arm, 1], [-arm, 1], [-arm, arm], [-1, arm], [-1, -arm], [-arm, -arm]])
        _polygon(mask, _rotated(plus, angle, centre, radius))
    elif kind == "crescent":
        cv2.circle(mask, c, r, 255, -1)
        offset = centre + radius * 0.55 * np.array([math.cos(angle), math.sin(angle)])
        cv2.circle(mask, tuple(int(v) for v in np.round(offset)), int(round(radius * 0.85)), 0, -1)
    elif kind == "bar":
        bar = np.array([[-1, -0.22], [1, -0.22], [1, 0.22], [-1, 0.22]])
        _polygon(mask, _rotated(bar, angle, centre, radius))
    elif kind == "halfdisk":
        cv2.ellipse(mask, c, (r, r), math.degrees(angle), 0, 180, 255, -1)
    else:
        raise ValueError(f"unknown shape {kind}")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Two colours blended by a random stripe/gradient field plus pixel noise."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(6, 30)   # pixels per stripe cycle
    phase = rng.uniform(0, 2 * math.pi)
    stripes = 0.5 + 0.5 * np.sin((xs * math.cos(theta) + ys * math.sin(theta)) * 2 * math.pi / period + phase)
    gradient = (xs * rng.uniform(-1, 1) + ys * rng.uniform(-1, 1)) / max(height, width)
    field = np.clip(rng.uniform(0.1, 0.35) * stripes + gradient + rng.uniform(0, 0.5), 0, 1)[..., None]
    colour_a, colour_b = rng.uniform(0, 255, size=(2, 3))
    image = colour_a * (1 - field) + colour_b * field
    return image + rng.normal(0, rng.uniform(3, 8), size=image.shape)


def render_image(class_index: int, rng: np.random.Generator, size: int,
                 shape: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """One RGB uint8 image of class ``class_index``; the shorter side is ``size``
    and the longer one random up to 4:3, unless ``shape`` (height, width) is given."""
    long_side = int(round(size * rng.uniform(1.0, 4 / 3)))
    height, width = (size, long_side) if rng.random() < 0.5 else (long_side, size)
    if shape is not None:
        height, width = shape
        size = min(shape)
    image = _background(rng, height, width)
    radius = rng.uniform(0.28, 0.45) * size
    centre = np.array([rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)])
    mask = np.zeros((height * SUPERSAMPLE, width * SUPERSAMPLE), np.uint8)
    _draw(CLASSES[class_index], mask, centre * SUPERSAMPLE, radius * SUPERSAMPLE, rng.uniform(0, 2 * math.pi))
    alpha = cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255
    # The shape's colour keeps a clear distance from the background's mean.
    mean = image.reshape(-1, 3).mean(axis=0)
    colour = rng.uniform(0, 255, size=3)
    while np.abs(colour - mean).sum() < 200:
        colour = rng.uniform(0, 255, size=3)
    shaded = colour + rng.normal(0, 6, size=image.shape)
    return np.clip(image * (1 - alpha) + shaded * alpha, 0, 255).astype(np.uint8)


def image_rng(seed: int, split: str, class_index: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_IDS[split], class_index, index])


def write_demo_images(root: Path, counts: Dict[str, int], size: int, seed: int,
                      quality: int = 90, progress: Callable[[int], None] = lambda n: None) -> None:
    """Write ``root/<split>/<class>/<class>_<index>.jpg`` for each split."""
    for split, per_class in counts.items():
        for class_index, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                rgb = render_image(class_index, image_rng(seed, split, class_index, index), size)
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, quality])
                if not ok:
                    raise RuntimeError("JPEG encoding failed")
                (folder / f"{name}_{index:05d}.jpg").write_bytes(buf.tobytes())
            progress(per_class)
