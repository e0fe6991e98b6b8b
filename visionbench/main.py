"""train.py's logic: resolve the config once, adapt it to each layer's
explicit arguments, and run the requested mode."""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import Optional, Sequence

from .cli import UsageError, run_main
from .config import DIST_KV_STORES, Config, check_data_root, resolve
from .data.spec import loader_spec


def resolve_devices(config: Config) -> Config:
    """Fill the automatic choices: device from what the engine's framework
    sees, backend from device."""
    framework = "PyTorch" if config.engine == "torch" else "MXNet"
    try:
        if config.engine == "torch":
            from .engines import prepare_torch_threads
            prepare_torch_threads()
            import torch
            gpus = torch.cuda.device_count()
        else:
            import mxnet as mx
            gpus = mx.context.num_gpus()
    except ImportError:
        raise UsageError(f"--engine {config.engine}: {framework} cannot be imported in {sys.executable} "
                         f"(`make install` installs both engines' frameworks)")
    if config.device == "gpu" and gpus == 0:
        raise UsageError(f"--device gpu: {framework} sees no GPU (a CPU build, or no CUDA driver); "
                         "on this machine use --device cpu")
    device = config.device or ("gpu" if gpus > 0 else "cpu")
    if device == "gpu" and config.engine == "mxnet":
        from .engine.gpus import refuse_unsupported_gpus
        refuse_unsupported_gpus()   # GPU-ONLY: Hopper and newer under mxnet-cu112
    backend = config.data_backend or ("dali-gpu" if device == "gpu" else "dali-cpu")
    if device == "cpu" and backend == "dali-gpu":
        raise UsageError("--data-backend dali-gpu decodes on GPUs; with --device cpu use dali-cpu")
    return replace(config, device=device, data_backend=backend)


def refuse_what_cannot_fit(config: Config, workers: int) -> None:
    """CPU training whose memory estimate is far beyond this machine's: exit 2
    now, not a SIGKILL from the out-of-memory killer later (engine/memory.py)."""
    if config.device == "cpu" and config.mode in ("train", "train_val"):
        from .engine.memory import refuse_if_it_cannot_fit
        refuse_if_it_cannot_fit(config, workers)


def started_by_our_launcher(config: Config) -> bool:
    """A worker of a job engine/launch.py started (it checked the input once
    for the whole job): MXNet's workers carry ps-lite's DMLC_ROLE, the torch
    engine's the launcher's local worker index."""
    from .engine.launch import LOCAL_WORKER_ENV

    return ("DMLC_ROLE" if config.engine == "mxnet" else LOCAL_WORKER_ENV) in os.environ


def first_gpu_index(group) -> int:
    """The index, among the GPUs this process sees, of its first GPU: a
    Horovod process (one GPU each, every GPU of the machine visible) takes
    its local rank; any other process takes 0: a worker of our launcher sees
    only its own -n GPUs (CUDA_VISIBLE_DEVICES, engine/launch.py), numbered
    from 0, whichever of the machine's workers it is."""
    return getattr(group, "local_rank", 0)


def make_devices(config: Config, first_gpu: int = 0) -> list:
    """This process's devices in the engine's framework: MXNet contexts or torch devices."""
    if config.engine == "torch":
        from .engines.torch.session import torch_devices
        return torch_devices(config.device, config.num_devices, first_gpu)
    from .engine.devices import make_contexts
    return make_contexts(config.device, config.num_devices, first_gpu)


def run_io(config: Config) -> int:
    from .bench.io import format_io_report, measure_loader
    from .data.loader import make_loader

    devices = make_devices(config)
    loader = make_loader(loader_spec(config, config.io_split, devices))
    iterations = config.iterations or len(loader)
    result = measure_loader(loader, iterations, config.warmup_iterations)
    label = (f"io {config.io_split} {config.data_backend} {len(devices)}x{config.device} "
             f"batch {config.batch_size} size {config.image_size} {config.dtype} {config.input_layout}")
    print(format_io_report(result, label))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = resolve_devices(resolve(argv))
    if config.engine == "mxnet":
        from .engine.gpu_settings import apply_environment
        from .engine.plan import uses_rect_val
        # Before the self-test too: it must run the steps real runs take (aggregated updates, fusion settings).
        apply_environment(config.device, uses_rect_val(config))
    if config.self_test:
        from .selftest import run_self_test
        return run_self_test(config)
    check_data_root(config)
    distributed = config.kv_store in DIST_KV_STORES
    if config.print_schedule:
        from .engine.run import print_schedule
        workers = config.nnodes * config.local_workers if distributed else 1
        return print_schedule(config, config.num_devices, workers)
    if "DMLC_ROLE" not in os.environ and config.engine == "mxnet":   # a job's workers: their launcher checked
        refuse_what_cannot_fit(config, config.local_workers if distributed else 1)
    if distributed and not started_by_our_launcher(config):
        # This process launches the job; the workers it starts run this same command line.
        # Bad input is refused here, once, before any process starts.
        from .engine.launch import launch
        from .engine.run import preflight
        preflight(config)
        return launch(config, list(sys.argv[1:] if argv is None else argv))
    if config.mode == "io":
        return run_io(config)
    from .engine.collective import make_group
    from .engine.run import score, train

    if config.mode == "val":
        return score(config, make_devices(config))
    if config.mode == "inference":
        from .bench.inference import run_inference
        return run_inference(config, make_devices(config))
    group = make_group(config.kv_store, config.engine, config.device)
    status = train(config, make_devices(config, first_gpu_index(group)), group)
    group.close()   # (after a failure the process just exits: a peer may still wait in a collective)
    return status


def entry() -> None:
    sys.exit(run_main(main, "train.py"))
