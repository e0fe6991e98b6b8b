"""The real-data parts: generated RecordIO sets of JPEGs, the nvjpeg
pipeline's label check, and the figures of training from JPEGs.

Two sets, both written with data/recordio.py's RecordSetWriter (no MXNet):
- the label set: every image one flat colour of its class's palette entry,
  so that any crop, flip or resize keeps the colour and the colour names
  the label. The check decodes an epoch through the loader and compares,
  sample by sample, the label the pipeline hands out with the class whose
  colour the image has (after undoing the normalisation);
- the throughput set: ImageNet-sized images (the demo generator's shapes
  on striped, noisy backgrounds, shorter side ``jpeg_side``, quality 90).
  A few dozen distinct images are rendered and their bytes written again
  under further records: decoding costs the same, rendering thousands
  would take longer than the training it feeds."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from .sizes import CheckSizes

# The label set's class colours, RGB 0..255: at least 127 apart in some channel,
# far beyond JPEG's error on flat areas (a few units) and bilinear resizing's (none).
PALETTE = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                    [255, 255, 0], [255, 0, 255], [0, 255, 255], [128, 128, 128], [255, 128, 0]], np.float64)
DISTINCT_RENDERS = 48   # distinct images of the throughput set; the rest repeat their bytes
JPEG_QUALITY = 90


def _encode(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buffer.tobytes()


def _write_set(prefix: Path, payloads: List[bytes], labels: List[int], classes: List[str]) -> None:
    from ..data.recordio import RecordSetWriter

    prefix.parent.mkdir(parents=True, exist_ok=True)
    with RecordSetWriter(prefix, overwrite=True) as writer:
        for index, (payload, label) in enumerate(zip(payloads, labels)):
            writer.write(label, payload, f"generated/{index:06d}.jpg")
        # commit, not finish: no data_prep summary (its schema names the data_prep tools only).
        writer.commit({".classes.txt": "".join(f"{name}\n" for name in classes)})


def write_label_set(folder: Path, sizes: CheckSizes) -> Path:
    """``folder/train.*``: flat-coloured images, label i coloured PALETTE[i]."""
    rng = np.random.default_rng(23)
    payloads, labels = [], []
    for index in range(sizes.label_images):
        label = index % len(PALETTE)
        height, width = (int(v) for v in rng.integers(sizes.jpeg_side, sizes.jpeg_side * 4 // 3 + 1, size=2))
        payloads.append(_encode(np.full((height, width, 3), PALETTE[label], np.uint8)))
        labels.append(label)
    _write_set(folder / "train", payloads, labels, [f"colour{i}" for i in range(len(PALETTE))])
    return folder


def write_jpeg_set(folder: Path, sizes: CheckSizes) -> Path:
    """``folder/train.*``: ImageNet-like JPEGs of the demo's classes."""
    from ..data.demo import CLASSES, image_rng, render_image

    renders = []
    for index in range(min(DISTINCT_RENDERS, sizes.jpeg_images)):
        label = index % len(CLASSES)
        renders.append((_encode(render_image(label, image_rng(23, "train", label, index), sizes.jpeg_side)), label))
    picks = [renders[index % len(renders)] for index in range(sizes.jpeg_images)]
    _write_set(folder / "train", [p for p, _ in picks], [label for _, label in picks], list(CLASSES))
    return folder


def label_check_argv(device: str, folder: Path, batch: int, sizes: CheckSizes) -> List[str]:
    return ["--engine", "torch", "--mode", "train", "--device", device, "-n", "1", "-b", str(batch),
            "--dtype", "bfloat16", "--input-layout", "NHWC", "--image-size", str(sizes.image_size),
            "--num-classes", str(len(PALETTE)), "--data-root", str(folder), "--data-backend", "nvjpeg"]


def check_labels(argv: List[str]) -> dict:
    """One epoch of the loader: every sample's colour class equals its label."""
    from ..config import resolve
    from ..engine.run import plan_for
    from ..engine.trainer import _loader
    from ..main import make_devices

    config = resolve(argv, prog="gpucheck")
    devices = make_devices(config)
    plan = plan_for(config, len(devices))
    loader = _loader(config, "train", plan.settings(0), devices, 0, 1, {})
    mean, std = (np.asarray(values, np.float64) for values in (loader.spec.augment.mean, loader.spec.augment.std))
    seen, wrong = 0, []
    for step in loader.epoch(0):
        for data, label, pad in step:
            pixels = data.float().mean(dim=(2, 3)).cpu().numpy() * std + mean   # (batch, 3) mean RGB, 0..255
            found = np.abs(pixels[:, None, :] - PALETTE[None]).max(axis=2).argmin(axis=1)
            stored = label.cpu().numpy().astype(int)
            valid = len(stored) - pad
            wrong += [(int(s), int(f)) for s, f in zip(stored[:valid], found[:valid]) if s != f]
            seen += valid
    if wrong:
        return {"error": f"{len(wrong)} of {seen} labels differ from their images' colours (label, colour): "
                         f"{wrong[:3]}"}
    if not seen:
        return {"error": "the loader gave no samples"}
    return {"note": f"{seen} samples of {loader.num_images} images, each label its image's colour class"}


def real_data_argv(device: str, folder: Path, backend: str, sizes: CheckSizes, steps: int,
                   threads: Optional[int] = None) -> List[str]:
    """ResNet v1.5 at the larger batch, bfloat16, channels_last, from the JPEG set."""
    from .training import resnet_argv

    argv = resnet_argv(device, sizes.train_batches[-1], "bfloat16", "channels_last", sizes, steps)
    argv += ["--data-root", str(folder), "--data-backend", backend]
    return argv + (["--dali-threads", str(threads)] if threads else [])


def dali_missing() -> Optional[str]:
    """Why dali-cpu cannot run here, or None."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return ("DALI is not installed here; the CPU-decoding comparison is dali-cpu with its threads "
                "(nvjpeg's OpenCV path decodes on one reader thread and only for --device cpu)")
    return None
