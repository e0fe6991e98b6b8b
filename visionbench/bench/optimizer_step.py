"""Path 6 of docs/PERFORMANCE.md: a training step with ``--optimizer lars``
against one with SGD (momentum), in one process.

Each optimizer trains its own copy of the same model (``build_net``: same
init, hybridized with static_alloc/static_shape) through the trainer training
builds (``build_trainer``), on the same fixed synthetic batch:

- ``step``: forward, loss, backward, ``trainer.step``, ``--steps`` times,
  ended by ``mx.nd.waitall()``;
- ``update``: the same, but only ``trainer.step`` is timed (each backward
  waited for first), so the optimizer's own cost shows apart from the model's.

The four (sgd step, lars step, sgd update, lars update) run in rotation,
every other round in reverse order, ``--repeats`` times after one untimed
warm-up run of each model; figures are medians of milliseconds per step, and
the ratio is of the medians. SGD is MXNet's, as ``--optimizer sgd`` builds it
(MXNET_OPTIMIZER_AGGREGATION_SIZE, 4 by default, arrays per fused call).

    python -m visionbench.bench.optimizer_step --num-layers 18 --image-size 32 -b 32
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence

from ..cli import ArgumentParser, positive_int, run_main
from .compare import in_rotation, median_ratio, median_table

OPTIMIZERS = ("sgd", "lars")


def step_config(num_layers: int, image_size: int, batch_size: int, num_devices: int):
    from ..config import Config

    # MLPerf's LARS settings (eta 0.001, epsilon 0, momentum 0.9, wd 1e-4) are the defaults.
    return Config(mode="train", device="cpu", num_devices=num_devices, data_backend="synthetic",
                  batch_size=batch_size, image_size=image_size, num_layers=num_layers, arch="resnetv15",
                  num_classes=10, kv_store="device")


def step_timers(config, optimizer: str, learning_rate: float = 0.01) -> Dict[str, Callable[[int], float]]:
    """{"step": run(steps) -> ms per whole step, "update": run(steps) -> ms per trainer.step}."""
    import mxnet as mx
    from mxnet import autograd

    from ..data.spec import loader_spec
    from ..data.synthetic import synthetic_tensors
    from ..engine.devices import make_contexts
    from ..engine.precision import resolve_precision
    from ..engine.trainer import build_net, build_trainer, make_loss

    config = replace(config, optimizer=optimizer)
    devices = make_contexts(config.device, config.num_devices)
    precision = resolve_precision(config.dtype, config.device, None)
    net = build_net(config, devices, precision)
    trainer = build_trainer(config, net, precision)
    trainer.set_learning_rate(learning_rate)
    parts = synthetic_tensors(loader_spec(config, "train", devices))
    loss_fn = make_loss(0.0)
    global_batch = config.batch_size * len(devices)

    def backward():
        with autograd.record():
            losses = [loss_fn(net(data), label) for data, label in parts]
        autograd.backward(losses)

    def whole_steps(steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            backward()
            trainer.step(global_batch)
        mx.nd.waitall()
        return (time.perf_counter() - started) * 1000 / steps

    def updates_only(steps: int) -> float:
        spent = 0.0
        for _ in range(steps):
            backward()
            mx.nd.waitall()
            started = time.perf_counter()
            trainer.step(global_batch)
            mx.nd.waitall()
            spent += time.perf_counter() - started
        return spent * 1000 / steps

    return {"step": whole_steps, "update": updates_only}


def compare(config, steps: int, repeats: int, what: Sequence[str] = ("step", "update")) -> Dict[str, List[float]]:
    """ms per step of "<optimizer> <what>" for each optimizer, in rotation."""
    timers = {optimizer: step_timers(config, optimizer) for optimizer in OPTIMIZERS}
    for optimizer in OPTIMIZERS:
        timers[optimizer]["step"](max(2, steps // 4))   # untimed: allocates the static graphs and states
    candidates = {f"{optimizer} {kind}": (lambda run=timers[optimizer][kind]: run(steps))
                  for kind in what for optimizer in OPTIMIZERS}
    return in_rotation(candidates, repeats)


def lars_step_ratio(results: Dict[str, List[float]], kind: str = "step") -> float:
    """LARS cost / SGD cost: ratio of the median ms of ``kind`` ("step" or "update")."""
    return median_ratio(results, f"lars {kind}", f"sgd {kind}")


def report(args: argparse.Namespace, results: Dict[str, List[float]]) -> str:
    heading = (f"ResNet{args.num_layers} v1.5, {args.image_size} px, batch {args.batch_size} x {args.num_devices} "
               f"CPU context(s), float32, {args.steps} steps per run, {args.repeats} runs each, in rotation")
    lines = [heading, "", median_table(results, "optimizer, timed", unit="ms per step", digits=2), ""]
    lines.append(f"LARS step / SGD step (ratio of medians): **{lars_step_ratio(results, 'step'):.3f}**; "
                 f"LARS update / SGD update: {lars_step_ratio(results, 'update'):.2f}")
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m visionbench.bench.optimizer_step",
                            description="a training step with --optimizer lars vs SGD (synthetic data, CPU)")
    parser.add_argument("--num-layers", type=int, default=18, choices=(18, 34, 50, 101, 152))
    parser.add_argument("--image-size", type=positive_int, default=32, help="pixels")
    parser.add_argument("-b", "--batch-size", type=positive_int, default=32, help="per device")
    parser.add_argument("-n", "--num-devices", type=positive_int, default=1, help="CPU contexts")
    parser.add_argument("--steps", type=positive_int, default=10, help="timed steps per run")
    parser.add_argument("--repeats", type=positive_int, default=7, help="runs of each, in rotation")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    config = step_config(args.num_layers, args.image_size, args.batch_size, args.num_devices)
    print(report(args, compare(config, args.steps, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "optimizer_step"))
