"""train.py's logic: resolve the config once, adapt it to each layer's
explicit arguments, and run the requested mode."""
from __future__ import annotations

import sys
from dataclasses import replace
from typing import Optional, Sequence

from .cli import UsageError, run_main
from .config import Config, check_data_root, resolve
from .data.spec import Augment, LoaderSpec


def resolve_devices(config: Config) -> Config:
    """Fill the automatic choices: device from what MXNet sees, backend from device."""
    import mxnet as mx

    gpus = mx.context.num_gpus()
    if config.device == "gpu" and gpus == 0:
        raise UsageError("--device gpu: MXNet sees no GPU (CPU build of mxnet, or no CUDA driver); "
                         "on this machine use --device cpu (float32)")
    device = config.device or ("gpu" if gpus > 0 else "cpu")
    backend = config.data_backend or ("dali-gpu" if device == "gpu" else "dali-cpu")
    if device == "cpu" and backend == "dali-gpu":
        raise UsageError("--data-backend dali-gpu decodes on GPUs; with --device cpu use dali-cpu")
    return replace(config, device=device, data_backend=backend)


def loader_spec(config: Config, split: str, devices, rank: int = 0, num_workers: int = 1) -> LoaderSpec:
    """The loader's explicit arguments for one split."""
    return LoaderSpec(
        prefix=config.data_prefix[split], train=(split == "train"), batch_size=config.batch_size,
        image_size=config.image_size, devices=devices, backend=config.data_backend,
        dtype=config.dtype, layout=config.input_layout, rank=rank, num_workers=num_workers,
        augment=Augment(recipe=config.augment, min_scale=config.min_random_area, rect_val=config.rect_val),
        seed=config.seed, threads=config.dali_threads, num_classes=config.num_classes,
        synthetic_images=config.num_examples)


def run_io(config: Config) -> int:
    from .bench.io import format_io_report, measure_loader
    from .data.loader import make_loader
    from .engine.devices import make_contexts

    devices = make_contexts(config.device, config.num_devices)
    loader = make_loader(loader_spec(config, config.io_split, devices))
    iterations = config.iterations or len(loader)
    result = measure_loader(loader, iterations, config.warmup_iterations)
    label = (f"io {config.io_split} {config.data_backend} {len(devices)}x{config.device} "
             f"batch {config.batch_size} size {config.image_size} {config.dtype} {config.input_layout}")
    print(format_io_report(result, label))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = resolve_devices(resolve(argv))
    check_data_root(config)
    if config.print_schedule:
        from .engine.run import print_schedule
        return print_schedule(config, config.num_devices)
    if config.mode == "io":
        return run_io(config)
    from .engine.devices import make_contexts
    from .engine.run import score, train

    devices = make_contexts(config.device, config.num_devices)
    if config.mode == "val":
        return score(config, devices)
    if config.mode == "inference":
        from .bench.inference import run_inference
        return run_inference(config, devices)
    return train(config, devices)


def entry() -> None:
    sys.exit(run_main(main, "train.py"))
