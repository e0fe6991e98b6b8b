"""Path 3 of docs/PERFORMANCE.md: CPU inference, side by side in one process.

MXNet candidates, all built by the same code with the same seed (the same
weights):
- ``MXNet hybridized``: the plainly hybridized model (static_alloc + static_shape);
- ``MXNet fused``: what ``--mode inference`` runs on a CPU, the graph fused for
  oneDNN by ``optimize_for(backend="MKLDNN")``; its outputs are compared with
  the hybridized one's first (a fused graph computing something else would be
  no speed-up);
- ``MXNet INT8`` (``--int8``): what ``--dtype int8`` runs, the model quantized
  by engine/quantize.py after calibrating on ``--calib-images`` random images.

PyTorch candidates (``--pytorch``): the torch engine's model of the same
name (engines/torch/models.py) in eval mode under ``torch.inference_mode``,
channels_last, in float32 and under bfloat16 autocast (what ``--engine
torch`` runs). Its weights are drawn by PyTorch from the same seed: the
speed of these dense kernels does not depend on the values.

For each batch size every candidate runs in rotation ``--repeats`` times; a
run is ``--warmup`` untimed then ``--steps`` timed forward passes of one fixed
random batch (the input pipeline is not in these figures), MXNet's timed as
``--mode inference`` times them (bench/inference.py: measure_inference).
Both frameworks use ``--threads`` threads.

    python -m visionbench.bench.inference_compare --batch-sizes 1,16,64 --int8 --pytorch
"""
from __future__ import annotations

import itertools
import os
import sys
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence

from ..cli import ArgumentParser, RunFailure, UsageError, positive_int, run_main
from .compare import in_rotation, median_ratio, median_table
from .sweep import int_list

HYBRIDIZED, FUSED, INT8 = "MXNet hybridized", "MXNet fused (visionbench)", "MXNet INT8 (visionbench)"
TORCH_FP32, TORCH_BF16 = "PyTorch float32 channels_last", "PyTorch bfloat16 autocast channels_last"


def mxnet_candidates(config, batch_size: int, steps: int, warmup: int, int8: bool) -> Dict[str, Callable[[], float]]:
    import mxnet as mx
    import numpy as np

    from ..engine.precision import resolve_precision
    from ..engine.quantize import quantize
    from .inference import inference_net, measure_inference

    devices = [mx.cpu(0)]
    precision = resolve_precision("float32", "cpu", None)
    shape = (batch_size, 3, config.image_size, config.image_size)
    nets = {HYBRIDIZED: inference_net(replace(config, fuse_inference=False), devices, precision, shape),
            FUSED: inference_net(config, devices, precision, shape)}
    batch = mx.nd.random.uniform(-2, 2, shape=shape, ctx=devices[0])
    plain, fused = (nets[name](batch).asnumpy() for name in (HYBRIDIZED, FUSED))
    scale = float(np.abs(plain).max())
    if not np.allclose(plain, fused, rtol=1e-3, atol=1e-4 * scale):
        raise RunFailure(f"batch {batch_size}: the fused graph's outputs differ from the hybridized one's "
                         f"(max difference {float(np.abs(plain - fused).max()):.3g} of {scale:.3g})")
    if int8:
        calibration = mx.nd.random.uniform(-2, 2, shape=(config.calib_images,) + shape[1:], ctx=devices[0])
        float_net = inference_net(replace(config, fuse_inference=False), devices, precision, shape)
        nets[INT8] = quantize(float_net, calibration, config.calib_mode, batch_size, devices)
    step = [(batch, None, 0)]

    def timed(net):
        return lambda: measure_inference(net, itertools.repeat(step), warmup, steps)["ips"]

    return {name: timed(net) for name, net in nets.items()}


def torch_candidates(config, batch_size: int, steps: int, warmup: int) -> Dict[str, Callable[[], float]]:
    try:
        import torch
    except ImportError:
        raise UsageError("--pytorch: PyTorch is not installed here; `make install` installs it "
                         "(pyproject.toml pins torch)")
    from ..config import model_name
    from ..engines.torch.models import get_torch_model

    torch.manual_seed(config.seed)
    model = get_torch_model(model_name(config), classes=config.num_classes, init_bn0=False, channels_last=True)
    model = model.eval().to(memory_format=torch.channels_last)
    batch = torch.rand(batch_size, 3, config.image_size, config.image_size).to(memory_format=torch.channels_last)

    def timed(bfloat16: bool):
        def run() -> float:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
                for _ in range(warmup):
                    model(batch)
                started = time.perf_counter()
                for _ in range(steps):
                    model(batch)
                return steps * batch_size / (time.perf_counter() - started)
        return run

    return {TORCH_FP32: timed(False), TORCH_BF16: timed(True)}


def summary(ratios: Dict[int, Dict[str, float]]) -> str:
    columns = list(next(iter(ratios.values())))
    lines = ["| batch | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for batch_size, row in ratios.items():
        lines.append(f"| {batch_size} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    return "\n".join(lines)


def ratios_of(results: Dict[str, List[float]]) -> Dict[str, float]:
    row = {"fused / hybridized": median_ratio(results, FUSED, HYBRIDIZED)}
    if INT8 in results:
        row["INT8 / fused float32"] = median_ratio(results, INT8, FUSED)
        torch_rows = [name for name in (TORCH_FP32, TORCH_BF16) if name in results]
        if torch_rows:
            best = max(torch_rows, key=lambda name: median_ratio(results, name, FUSED))
            row[f"INT8 / best PyTorch ({'bfloat16' if best == TORCH_BF16 else 'float32'})"] = \
                median_ratio(results, INT8, best)
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..config import Config
    from ..engine.devices import cpu_isa, cpu_model

    parser = ArgumentParser(prog="python -m visionbench.bench.inference_compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 16, 64])
    parser.add_argument("--num-layers", type=int, default=50, choices=(18, 34, 50, 101, 152))
    parser.add_argument("--image-size", type=positive_int, default=224, help="pixels")
    parser.add_argument("--steps", type=positive_int, default=3, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per run")
    parser.add_argument("--repeats", type=positive_int, default=5, help="runs of each candidate, in rotation")
    parser.add_argument("--int8", action="store_true", help="add MXNet INT8 (--dtype int8)")
    parser.add_argument("--calib-images", type=positive_int, default=32, help="--int8: random images to calibrate on")
    parser.add_argument("--calib-mode", default="naive", choices=("naive", "entropy"))
    parser.add_argument("--pytorch", action="store_true",
                        help="add PyTorch float32 and bfloat16 (the torch engine's model)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="threads of both frameworks (default: OMP_NUM_THREADS, else the cores)")
    args = parser.parse_args(argv)
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    if args.pytorch:
        from ..engines import prepare_torch_threads
        prepare_torch_threads()   # as --engine torch runs
    # MXNet's oneDNN kernels read OMP_NUM_THREADS when its engine starts: set it before the first import.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if args.pytorch:
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None:
            torch.set_num_threads(threads)
    config = Config(mode="inference", device="cpu", num_layers=args.num_layers, image_size=args.image_size,
                    dtype="float32", calib_images=args.calib_images, calib_mode=args.calib_mode)
    candidates_text = "MXNet hybridized / fused" + (" / INT8" if args.int8 else "") + (
        ", PyTorch float32 / bfloat16 autocast (channels_last)" if args.pytorch else "")
    print(f"CPU: {cpu_model()}; {cpu_isa()}\n\nResNet{args.num_layers} v1.5, {args.image_size} px, float32 input, "
          f"{threads} threads, 1 CPU context; {candidates_text}; {args.steps} timed batches per run after "
          f"{args.warmup}, {args.repeats} runs each in rotation"
          + (f"; INT8: {args.calib_mode} calibration on {args.calib_images} random images" if args.int8 else "")
          + "\n", flush=True)
    ratios = {}
    for batch_size in args.batch_sizes:
        candidates = mxnet_candidates(config, batch_size, args.steps, args.warmup, args.int8)
        if args.pytorch:
            candidates.update(torch_candidates(config, batch_size, args.steps, args.warmup))
        results = in_rotation(candidates, args.repeats)
        ratios[batch_size] = ratios_of(results)
        print(f"batch {batch_size}:\n\n{median_table(results, 'candidate')}\n", flush=True)
    print("Ratios of medians, each from one rotation:\n")
    print(summary(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "inference_compare"))
