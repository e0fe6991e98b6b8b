"""Path 1 of docs/PERFORMANCE.md: visionbench's training step against a bare
hand-written Gluon loop, in one process.

- ``bare``: the loop everyone writes first: forward, loss, backward,
  ``trainer.step``; nothing else (no schedule, no metrics, no checks).
- ``visionbench``: ``engine.trainer.train_epoch`` itself: the schedule's LR
  and momentum every step, the loss summed on the device, the one-step-late
  NaN check, the image count.

Both train the same model (built by ``build_net``: same init, hybridized
with static_alloc/static_shape), the same SGD settings and the same fixed
synthetic batch on the same devices, each with its own copy of the model so
neither warms the other's memory. Runs alternate (bare, visionbench, bare,
...) ``--repeats`` times; each run is ``--steps`` steps ended by
``mx.nd.waitall()`` after one untimed warm-up run each. The ratio is of the
median img/s.

    python -m visionbench.bench.overhead --num-layers 18 --image-size 32 -b 32
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence

from ..cli import ArgumentParser, positive_int, run_main
from .compare import comparison_report, in_rotation, median_ratio


def _config(args):
    from ..config import Config

    # A long synthetic epoch and a cosine schedule with warmup: the LR and the
    # momentum change every step, as in a real run.
    return Config(mode="train", device="cpu", num_devices=args.num_devices, data_backend="synthetic",
                  batch_size=args.batch_size, image_size=args.image_size, num_layers=args.num_layers,
                  arch=args.arch, num_classes=args.num_classes, lr_schedule="cosine", warmup_epochs=1,
                  num_epochs=10, num_examples=args.batch_size * args.num_devices * 10000, iterations=args.steps)


def bare_candidate(config) -> Callable[[int], float]:
    """run(steps) -> img/s of the hand-written loop."""
    import mxnet as mx
    from mxnet import autograd, gluon

    from ..data.synthetic import synthetic_tensors
    from ..engine.devices import make_contexts
    from ..engine.precision import resolve_precision
    from ..engine.trainer import build_net
    from ..data.spec import loader_spec

    devices = make_contexts(config.device, config.num_devices)
    precision = resolve_precision(config.dtype, config.device, None)
    net = build_net(config, devices, precision)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": config.lr, "momentum": config.momentum,
                                                          "wd": config.wd}, kvstore=config.kv_store)
    parts = synthetic_tensors(loader_spec(config, "train", devices))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    global_batch = config.batch_size * len(devices)

    def run(steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            with autograd.record():
                losses = [loss_fn(net(data), label) for data, label in parts]
            autograd.backward(losses)
            trainer.step(global_batch)
        mx.nd.waitall()
        return steps * global_batch / (time.perf_counter() - started)

    return run


def visionbench_candidate(config) -> Callable[[int], float]:
    """run(steps) -> img/s of train_epoch over the synthetic loader."""
    from ..engine.devices import make_contexts
    from ..engine.precision import LossScaler, resolve_precision
    from ..engine.run import plan_for
    from ..engine.trainer import Run, _loader, build_net, build_trainer, train_epoch

    devices = make_contexts(config.device, config.num_devices)
    precision = resolve_precision(config.dtype, config.device, None)
    net = build_net(config, devices, precision)
    trainer = build_trainer(config, net, precision)
    plan = plan_for(config, len(devices))
    run_state = Run(config, devices, precision, net, trainer, plan, LossScaler(1.0, False))
    loader = _loader(config, "train", plan.settings(0), devices, 0, 1, {})
    epochs = iter(range(1, config.num_epochs))   # epoch 0 is warmup-only; later ones use the schedule

    def run(steps: int) -> float:
        state = replace(run_state, config=replace(config, iterations=steps))
        return train_epoch(state, next(epochs, 1), loader, progress=False)["train_ips"]

    return run


def compare(config, steps: int, repeats: int) -> Dict[str, List[float]]:
    """img/s of each candidate, ``repeats`` runs each, in rotation."""
    candidates = {"bare": bare_candidate(config), "visionbench": visionbench_candidate(config)}
    for run in candidates.values():
        run(max(2, steps // 4))   # untimed: the first passes allocate the static graphs
    return in_rotation({name: (lambda run=run: run(steps)) for name, run in candidates.items()}, repeats)


def overhead_ratio(results: Dict[str, List[float]]) -> float:
    return median_ratio(results, "visionbench", "bare")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m visionbench.bench.overhead",
                            description="visionbench's training step vs a bare Gluon loop (synthetic data, CPU)")
    parser.add_argument("--arch", default="resnetv15", choices=("resnetv1", "resnetv15", "resnet9"))
    parser.add_argument("--num-layers", type=int, default=50, choices=(18, 34, 50, 101, 152))
    parser.add_argument("--image-size", type=positive_int, default=64, help="pixels")
    parser.add_argument("-b", "--batch-size", type=positive_int, default=16, help="per device")
    parser.add_argument("-n", "--num-devices", type=positive_int, default=1, help="CPU contexts")
    parser.add_argument("--num-classes", type=positive_int, default=1000)
    parser.add_argument("--steps", type=positive_int, default=20, help="timed steps per run")
    parser.add_argument("--repeats", type=positive_int, default=5, help="runs of each loop, in rotation")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args: argparse.Namespace = build_parser().parse_args(argv)
    results = compare(_config(args), args.steps, args.repeats)
    print(comparison_report(f"{args.arch}{args.num_layers}, {args.image_size} px, batch {args.batch_size} x "
                            f"{args.num_devices} CPU context(s), float32, {args.steps} steps per run, "
                            f"{args.repeats} runs each", results, "loop", "visionbench", "bare"))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "overhead"))
