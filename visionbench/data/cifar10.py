"""CIFAR-10's python release -> RecordIO sets with lossless PNG payloads.

The release (``cifar-10-python.tar.gz``) holds pickled dicts ``data_batch_1``
.. ``data_batch_5`` (train, 10000 rows each) and ``test_batch`` (val): key
``data`` is a uint8 array of shape (N, 3072), each row 1024 red, then 1024
green, then 1024 blue values of a 32x32 image in row-major order; ``labels``
is a list of N ints in [0, 10). ``batches.meta`` names the classes.

The pickles are read with an unpickler that can only rebuild numpy arrays, so
a hostile archive cannot run code.
"""
from __future__ import annotations

import io
import pickle
import tarfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import cv2
import numpy as np

from ..cli import UsageError
from ..files import check_writable_folder
from .recordio import RecordSetWriter

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
VAL_BATCHES = ("test_batch",)
IMAGE_SIDE = 32       # pixels
NUM_CLASSES = 10
DEFAULT_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, 'latin1').
    ("_codecs", "encode"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


class Cifar10Source:
    """Read the batch files from the tarball or from an extracted folder."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise UsageError(f"CIFAR-10 source {self.path} does not exist")
        if self.path.is_dir():
            nested = self.path / "cifar-10-batches-py"
            self._folder = nested if nested.is_dir() else self.path
            self._tar = None
        else:
            try:
                self._tar = tarfile.open(self.path, "r:*")
            except tarfile.TarError:
                raise UsageError(f"{self.path} is not a CIFAR-10 python tarball (not a readable tar archive)")
            except OSError as err:
                raise UsageError(f"{self.path} cannot be read ({err.strerror})")
            self._members = {Path(m.name).name: m for m in self._tar.getmembers() if m.isfile()}

    def _read(self, name: str) -> bytes:
        if self._tar is None:
            path = self._folder / name
            if not path.is_file():
                raise UsageError(f"{self.path}: {name} is missing; is this the CIFAR-10 python release?")
            return path.read_bytes()
        member = self._members.get(name)
        if member is None:
            raise UsageError(f"{self.path}: {name} is missing; is this the CIFAR-10 python release?")
        return self._tar.extractfile(member).read()

    def _load(self, name: str) -> dict:
        try:
            obj = _ArraysOnlyUnpickler(io.BytesIO(self._read(name)), encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                ImportError, IndexError, KeyError, tarfile.TarError) as err:
            raise UsageError(f"{self.path}: {name} is not a CIFAR-10 python batch ({err})")
        if not isinstance(obj, dict):
            raise UsageError(f"{self.path}: {name} is not a CIFAR-10 python batch (not a dict)")
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}

    def class_names(self) -> List[str]:
        try:
            meta = self._load("batches.meta")
        except UsageError:
            return list(DEFAULT_CLASSES)
        names = meta.get("label_names")
        if not isinstance(names, list) or len(names) != NUM_CLASSES:
            return list(DEFAULT_CLASSES)
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    def batch(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """(images of shape (N, 32, 32, 3) RGB uint8, labels int64) of one batch."""
        obj = self._load(name)
        data, labels = obj.get("data"), obj.get("labels")
        where = f"{self.path}: {name}"
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != 3 * IMAGE_SIDE * IMAGE_SIDE:
            shape = getattr(data, "shape", None)
            raise UsageError(f"{where}: 'data' must be a uint8 array of shape (N, 3072), got {type(data).__name__} {shape}")
        if not isinstance(labels, list) or len(labels) != data.shape[0]:
            raise UsageError(f"{where}: 'labels' must be a list of {data.shape[0]} ints")
        labels_array = np.asarray(labels)
        if labels_array.dtype.kind not in "iu" or labels_array.min() < 0 or labels_array.max() >= NUM_CLASSES:
            raise UsageError(f"{where}: labels must be ints in [0, {NUM_CLASSES})")
        images = data.reshape(-1, 3, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 3, 1)
        return images, labels_array.astype(np.int64)

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def cifar10_to_rec(source_path: Path, out_dir: Path, overwrite: bool = False) -> Dict[str, dict]:
    """Write OUT_DIR/train.* (data_batch_1..5 in order) and OUT_DIR/val.* (test_batch)."""
    out_dir = Path(out_dir)
    check_writable_folder(out_dir.parent, "output folder")
    source = Cifar10Source(source_path)
    try:
        classes = source.class_names()
        # Check every batch before writing anything.
        for name in TRAIN_BATCHES + VAL_BATCHES:
            source.batch(name)
        out_dir.mkdir(exist_ok=True)
        summaries = {}
        for split, batch_names in (("train", TRAIN_BATCHES), ("val", VAL_BATCHES)):
            prefix = out_dir / split
            started = time.perf_counter()
            with RecordSetWriter(prefix, overwrite=overwrite) as writer:
                for batch_name in batch_names:
                    images, labels = source.batch(batch_name)
                    for row, (image, label) in enumerate(zip(images, labels)):
                        writer.write(int(label), encode_png(image), f"{batch_name}/{row:05d}.png")
                summaries[split] = writer.finish(
                    tool="cifar10_to_rec", source=str(source_path), classes=classes,
                    options={"resize": None, "quality": None, "workers": 1, "shuffle": False,
                             "seed": None, "strict": True},
                    seconds=time.perf_counter() - started)
        return summaries
    finally:
        source.close()


def iter_cifar10_rows(source_path: Path, split: str) -> Iterator[Tuple[np.ndarray, int]]:
    """Yield (RGB image, label) of a split in file order (for tests and checks)."""
    source = Cifar10Source(source_path)
    try:
        for name in (TRAIN_BATCHES if split == "train" else VAL_BATCHES):
            images, labels = source.batch(name)
            yield from zip(images, labels.tolist())
    finally:
        source.close()
