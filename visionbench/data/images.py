"""Per-image work for data_prep: check, pass through or resize one file.

No MXNet here: these functions run in data_prep's worker processes.
Pass-through keeps the file's bytes exactly; checking them costs a header
parse plus, for JPEG, a decode at 1/8 scale (libjpeg's DCT scaling), which
still catches truncated and corrupted files.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace
from typing import Optional, Tuple

from PIL import Image, UnidentifiedImageError

# Formats stored byte for byte: DALI (CPU and nvJPEG paths) and OpenCV's
# imdecode (ImageRecordIter) both read them. Anything else Pillow can open is
# re-encoded losslessly as PNG.
PASS_THROUGH_FORMATS = frozenset({"JPEG", "PNG", "BMP"})
DEFAULT_JPEG_QUALITY = 90


@dataclass(frozen=True)
class Prepared:
    """Outcome for one input: ``payload`` is None when it was rejected."""
    payload: Optional[bytes]
    reason: str = ""           # why it was rejected (empty when accepted)
    source_format: str = ""    # Pillow's format name of the input
    width: int = 0             # of the stored image, in pixels
    height: int = 0
    unchanged: bool = False    # the payload is the file's own bytes (pass-through)
    stamp: Tuple[int, int] = (0, 0)   # (size in bytes, mtime in ns) of the file as read


def _check_decodes(image: Image.Image) -> None:
    if image.format == "JPEG":
        # Decode at the smallest DCT scale: enough to walk every scan.
        image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
    image.load()


def shorter_side_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) scaled so that the shorter side is exactly ``shorter``."""
    if width <= height:
        return shorter, max(1, round(height * shorter / width))
    return max(1, round(width * shorter / height)), shorter


def prepare_image(data: bytes, resize: Optional[int] = None,
                  quality: int = DEFAULT_JPEG_QUALITY) -> Prepared:
    """Check one image file's bytes and return what to store.

    ``resize=None``: the original bytes (pass-through) for JPEG/PNG/BMP,
    a lossless PNG for other formats. ``resize=N``: a JPEG of quality
    ``quality`` whose shorter side is N pixels (up- or down-scaled).
    """
    try:
        image = Image.open(io.BytesIO(data))
        source_format = image.format or "unknown"
        width, height = image.size
        if resize is None and source_format in PASS_THROUGH_FORMATS:
            _check_decodes(image)
            return Prepared(data, source_format=source_format, width=width, height=height, unchanged=True)
        if resize is not None and source_format == "JPEG":
            # Decode no larger than needed: at least 2x the target keeps the
            # antialiased downscale below as sharp as a full decode.
            scale = resize * 2 / min(width, height)
            if scale < 1:
                image.draft("RGB", (int(width * scale) + 1, int(height * scale) + 1))
        image.load()
        rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = "not an image" if isinstance(err, UnidentifiedImageError) else f"does not decode ({err})"
        return Prepared(None, reason=reason)
    out = io.BytesIO()
    if resize is None:
        rgb.save(out, format="PNG")
        return Prepared(out.getvalue(), source_format=source_format, width=width, height=height)
    new_w, new_h = shorter_side_size(width, height, resize)
    resized = rgb.resize((new_w, new_h), Image.BICUBIC)
    resized.save(out, format="JPEG", quality=quality)
    return Prepared(out.getvalue(), source_format=source_format, width=new_w, height=new_h)


def prepare_file(path: str, resize: Optional[int] = None,
                 quality: int = DEFAULT_JPEG_QUALITY) -> Prepared:
    try:
        data, stamp = read_stamped(path)
    except OSError as err:
        return Prepared(None, reason=f"cannot be read ({err.strerror})")
    if not data:
        return Prepared(None, reason="empty file")
    return replace(prepare_image(data, resize, quality), stamp=stamp)


def read_stamped(path: str) -> Tuple[bytes, Tuple[int, int]]:
    """A file's bytes and its (size, mtime in ns) as of this read."""
    with open(path, "rb") as handle:
        status = os.fstat(handle.fileno())
        return handle.read(), (status.st_size, status.st_mtime_ns)
