"""What a loader is asked for: small typed values, never the CLI namespace."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from ..config import Config

BACKENDS = ("dali-gpu", "dali-cpu", "mxnet", "synthetic", "nvjpeg")
DTYPES = ("float32", "float16", "bfloat16")   # bfloat16: --data-backend nvjpeg only
LAYOUTS = ("NCHW", "NHWC")
BAD_RECORD_POLICIES = ("fail", "skip")

# Normalisation on the 0..255 scale, RGB order.
IMAGENET_MEAN = (123.68, 116.779, 103.939)
IMAGENET_STD = (58.393, 57.12, 57.375)
CIFAR_MEAN = (125.307, 122.961, 113.8575)   # 0.4914, 0.4822, 0.4465 x 255
CIFAR_STD = (62.9932, 62.0887, 66.7048)     # 0.2470, 0.2435, 0.2616 x 255
VAL_RESIZE_RATIO = 0.875    # val: shorter side resized to size / 0.875 (256 for 224)
RECT_VAL_RESIZE_RATIO = 1.14  # rect val: shorter side resized to int(size * 1.14)


@dataclass(frozen=True)
class Augment:
    """Augmentation recipe. ``imagenet``: random-resized crop + flip (train),
    resize + center crop or rectangular crop (val). ``cifar``: reflect pad,
    random crop, flip, Cutout (train); nothing but normalisation (val)."""
    recipe: str = "imagenet"          # "imagenet" | "cifar"
    min_scale: float = 0.08           # smallest crop area, fraction of the image (imagenet train)
    aspect_range: Tuple[float, float] = (3 / 4, 4 / 3)   # crop width/height range (imagenet train)
    rect_val: bool = False            # imagenet18 rectangular validation
    pad: int = 4                      # reflect padding in pixels (cifar train)
    cutout: int = 8                   # Cutout square side in pixels, 0 = off (cifar train)

    @property
    def mean(self) -> Tuple[float, float, float]:
        return CIFAR_MEAN if self.recipe == "cifar" else IMAGENET_MEAN

    @property
    def std(self) -> Tuple[float, float, float]:
        return CIFAR_STD if self.recipe == "cifar" else IMAGENET_STD


@dataclass(frozen=True)
class LoaderSpec:
    """One loader: a split of a RecordIO set for this worker's devices."""
    prefix: Optional[Path]            # reads PREFIX.rec/.idx (None for synthetic)
    train: bool                       # train augmentation and shuffling, else val
    batch_size: int                   # per device
    image_size: int                   # side of the (square) network input, pixels
    devices: Sequence                 # per local device: mx.Context (mxnet) or torch.device (torch); see devices.py
    backend: str = "dali-cpu"
    dtype: str = "float32"            # of the data the pipeline emits (bfloat16: nvjpeg only)
    layout: str = "NCHW"
    rank: int = 0                     # this worker's index
    num_workers: int = 1
    augment: Augment = field(default_factory=Augment)
    seed: int = 0
    threads: Optional[int] = None     # per device pipeline; None: gpu_decoding.default_threads
    num_classes: int = 1000           # labels of synthetic data
    synthetic_images: int = 1281167   # images per epoch of synthetic data (ImageNet's train set)
    bad_records: str = "fail"         # a record that does not decode: "fail" (stop, naming it) or "skip"
    framework: str = "mxnet"          # the engine fed: "mxnet" (NDArrays) or "torch" (torch.Tensors)

    @property
    def num_shards(self) -> int:
        return len(self.devices) * self.num_workers

    def shard_id(self, local_index: int) -> int:
        return local_index + len(self.devices) * self.rank

    @property
    def pipeline_threads(self) -> int:
        from .gpu_decoding import default_threads

        return self.threads or default_threads(len(self.devices), self.backend)


def loader_spec(config: "Config", split: str, devices, rank: int = 0, num_workers: int = 1) -> LoaderSpec:
    """The loader's explicit arguments for one split of a run's resolved
    config: the adapter from the configuration to the data layer."""
    from ..config import input_dtype

    return LoaderSpec(
        prefix=config.data_prefix[split], train=(split == "train"), batch_size=config.batch_size,
        image_size=config.image_size, devices=devices, backend=config.data_backend,
        dtype=input_dtype(config), layout=config.input_layout, rank=rank, num_workers=num_workers,
        augment=Augment(recipe=config.augment, min_scale=config.min_random_area, rect_val=config.rect_val),
        seed=config.seed, threads=config.dali_threads, num_classes=config.num_classes,
        synthetic_images=config.num_examples, bad_records=config.bad_records,
        framework=getattr(config, "engine", "mxnet"))
