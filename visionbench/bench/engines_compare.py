"""Path 7 of docs/PERFORMANCE.md: the same recipe on two engines, one
process, in rotation: a training step of each engine's run loop, and the
torch engine's step against a bare PyTorch loop (as path 1 puts the MXNet
engine next to a bare Gluon loop).

- ``MXNet float32``: engine/epoch.py's run_epoch with the MXNet step (what
  ``--engine mxnet`` trains with);
- ``torch float32`` and ``torch bfloat16``: run_epoch with the torch step
  (``--engine torch``; bfloat16 under autocast, float32 master weights);
- ``bare PyTorch float32``: the loop everyone writes first: forward, mean
  cross-entropy, backward, ``torch.optim.SGD(momentum, weight_decay)``
  (foreach), nothing else, on the same model, batch and threads.

Every candidate builds its own model from the same seed (the engines' init
rules; MXNet's and PyTorch's draws differ, which the speed of dense kernels
does not see) and trains on a fixed synthetic batch (the input pipeline is
not in these figures), with the schedule's LR and momentum changing every
step. Each run is ``--steps`` steps after one untimed warm-up run; the
ratios are of the median img/s over ``--repeats`` runs.

    python -m visionbench.bench.engines_compare --num-layers 50 --image-size 128 -b 16
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence

from ..cli import ArgumentParser, positive_int, run_main
from .compare import comparison_report, in_rotation, median_ratio

MXNET, TORCH, TORCH_BF16, BARE = "MXNet float32", "torch float32", "torch bfloat16", "bare PyTorch float32"


def _config(args, engine: str, dtype: str = "float32"):
    from ..config import Config

    # A long synthetic epoch and a cosine schedule with warmup: the LR and the
    # momentum change every step, as in a real run.
    return Config(mode="train", engine=engine, device="cpu", num_devices=1, data_backend="synthetic",
                  dtype=dtype, batch_size=args.batch_size, image_size=args.image_size, num_layers=args.num_layers,
                  num_classes=args.num_classes, lr_schedule="cosine", warmup_epochs=1, num_epochs=10,
                  num_examples=args.batch_size * 10000, iterations=args.steps)


def engine_candidate(config) -> Callable[[int], float]:
    """run(steps) -> img/s of the engine's run loop over the synthetic loader."""
    from ..engine.collective import Single
    from ..engine.epoch import run_epoch
    from ..engine.run import plan_for
    from ..engine.trainer import _loader
    from ..engines import open_session
    from ..main import make_devices

    devices = make_devices(config)
    plan = plan_for(config, len(devices))
    session = open_session(config, devices, Single(), plan)
    session.start(None, (0, 0), None)
    loader = _loader(config, "train", plan.settings(0), devices, 0, 1, {})
    epochs = iter(range(1, config.num_epochs))   # epoch 0 is warmup-only; later ones use the schedule

    def run(steps: int) -> float:
        timed = replace(config, iterations=steps)
        return run_epoch(session.stepper, timed, plan, None, next(epochs, 1), loader, progress=False)["train_ips"]

    return run


def bare_torch_candidate(config) -> Callable[[int], float]:
    """run(steps) -> img/s of the hand-written PyTorch loop."""
    import torch
    import torch.nn.functional as F

    from ..config import model_name
    from ..engines.torch.models import get_torch_model

    torch.manual_seed(config.seed)
    model = get_torch_model(model_name(config), classes=config.num_classes, init_bn0=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=config.momentum, weight_decay=config.wd,
                                foreach=True)
    data = torch.rand(config.batch_size, 3, config.image_size, config.image_size)
    label = torch.randint(0, config.num_classes, (config.batch_size,))

    def run(steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(model(data), label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return steps * config.batch_size / (time.perf_counter() - started)

    return run


def compare(args) -> Dict[str, List[float]]:
    """img/s of each candidate, ``args.repeats`` runs each, in rotation."""
    candidates = {MXNET: engine_candidate(_config(args, "mxnet")), TORCH: engine_candidate(_config(args, "torch")),
                  TORCH_BF16: engine_candidate(_config(args, "torch", "bfloat16")),
                  BARE: bare_torch_candidate(_config(args, "torch"))}
    for run in candidates.values():
        run(max(2, args.steps // 4))   # untimed: first passes allocate memory and pick kernels
    return in_rotation({name: (lambda run=run: run(args.steps)) for name, run in candidates.items()}, args.repeats)


def ratios(results: Dict[str, List[float]]) -> Dict[str, float]:
    return {"torch float32 / MXNet float32": median_ratio(results, TORCH, MXNET),
            "torch bfloat16 / MXNet float32": median_ratio(results, TORCH_BF16, MXNET),
            "torch bfloat16 / torch float32": median_ratio(results, TORCH_BF16, TORCH),
            "torch engine / bare PyTorch (float32)": median_ratio(results, TORCH, BARE)}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m visionbench.bench.engines_compare",
                            description="one training step of each engine, and the torch engine vs a bare "
                                        "PyTorch loop (synthetic data, CPU)")
    parser.add_argument("--num-layers", type=int, default=50, choices=(18, 34, 50, 101, 152))
    parser.add_argument("--image-size", type=positive_int, default=128, help="pixels")
    parser.add_argument("-b", "--batch-size", type=positive_int, default=16)
    parser.add_argument("--num-classes", type=positive_int, default=1000)
    parser.add_argument("--steps", type=positive_int, default=6, help="timed steps per run")
    parser.add_argument("--repeats", type=positive_int, default=5, help="runs of each candidate, in rotation")
    return parser


def engine_over_bare(floor: float, attempts=(6, 12)) -> dict:
    """tests/test_performance.py's guard, run in a process of its own (away
    from what a long test session leaves behind): the median ratio torch
    engine / bare PyTorch loop
    (ResNet18, 32 px, batch 16, float32) per attempt of ``attempts`` runs
    each in rotation, stopping at the first at or above ``floor``."""
    from ..engines import prepare_torch_threads

    prepare_torch_threads()
    args = build_parser().parse_args(["--num-layers", "18", "--image-size", "32", "-b", "16", "--num-classes", "10",
                                      "--steps", "6"])
    config = _config(args, "torch")
    candidates = {"engine": engine_candidate(config), "bare": bare_torch_candidate(config)}
    for run in candidates.values():
        run(2)   # untimed
    measured, results = [], {}
    for repeats in attempts:
        results = in_rotation({name: (lambda run=run: run(args.steps)) for name, run in candidates.items()}, repeats)
        measured.append(median_ratio(results, "engine", "bare"))
        if measured[-1] >= floor:
            break
    return {"ratios": measured, "img_per_s": results}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..engines import prepare_torch_threads

    args = build_parser().parse_args(argv)
    prepare_torch_threads()   # as --engine torch runs (before either framework starts its threads)
    results = compare(args)
    print(comparison_report(f"ResNet{args.num_layers} v1.5, {args.image_size} px, batch {args.batch_size}, one CPU "
                            f"process, {args.steps} steps per run, {args.repeats} runs each", results, "candidate",
                            TORCH, BARE))
    print()
    print("| ratio of median img/s | value |\n| --- | --- |")
    for name, value in ratios(results).items():
        print(f"| {name} | {value:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "engines_compare"))
