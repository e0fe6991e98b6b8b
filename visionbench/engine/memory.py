"""Host memory of a CPU training run, estimated before it starts.

A run that needs more memory than the machine has is not refused by
anyone: the kernel's out-of-memory killer ends one of its processes with
SIGKILL, and that process can leave no message. So CPU training runs are
checked before any process starts, and the launcher names this estimate
when a worker dies of a SIGKILL it did not send.

Per worker (bytes, float32 values of 4 bytes: the only dtype CPU training runs):

- every device (``-n`` CPU contexts) holds the weights, their gradients and
  the SGD momentum (updates run on every device), plus one merge buffer of
  the weights in the kvstore;
- activations: the outputs of every node of the model's graph, found by
  symbolic shape inference for one image at the run's largest image size,
  times the images a worker holds in one step (batch x devices);
- RUNTIME_BYTES for Python, MXNet, DALI and oneDNN themselves.

Measured on AMD EPYC (2 cores, AVX-512 VNNI), peak RSS of
``train.py --device cpu --data-backend synthetic --mode train --benchmark``
at two batch sizes: MXNet keeps 0.93 (ResNet18, 64 px) and 0.67 (ResNet50,
64 px at batch 16 and 48) of the summed node outputs per image. The estimate is
therefore at most 1/0.67 = 1.5 times the real peak of those models, and a
run is refused only when its estimate exceeds REFUSE_FACTOR (2) times the
machine's memory: then even the real peak is above what the machine has,
with room for depths and sizes not measured (ResNet101/152, 224 px) that
may keep a smaller share of their node outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

from ..cli import UsageError
from ..config import Config

GIB = 2 ** 30
BYTES_PER_VALUE = 4                 # float32
RUNTIME_BYTES = 450 * 2 ** 20       # a worker's Python + MXNet + DALI + oneDNN before its model (measured, above)
REFUSE_FACTOR = 2.0                 # estimate / machine memory beyond which a run cannot fit (see above)
# Estimate / machine memory from which a SIGKILL is most likely the out-of-memory killer: the real
# peak may be up to 1.5 x the estimate (test_preflight's bound), so from 1/1.5 of the machine on the
# run alone may have filled it.
LIKELY_OOM_SHARE = 1 / 1.5


@dataclass(frozen=True)
class MemoryEstimate:
    per_worker: int                 # bytes
    workers: int                    # this machine's workers
    image_size: int                 # the plan's size and per-device batch that need the most
    batch_size: int

    @property
    def node(self) -> int:
        return self.per_worker * self.workers

    def text(self) -> str:
        who = f"{self.workers} workers x {gib(self.per_worker)} GiB" if self.workers > 1 else "one process"
        return (f"an estimated {gib(self.node)} GiB ({who}: weights, gradients, optimizer state and the "
                f"activations of batch {self.batch_size} at {self.image_size} px)")


def gib(size: int) -> str:
    return f"{size / GIB:.1f}"


def graph_values(config: Config, image_size: int) -> Tuple[int, int]:
    """(activation values per image, weight values) of the model's training
    graph, by symbolic shape inference (nothing is allocated)."""
    import mxnet as mx
    import numpy as np

    from ..config import model_name
    from ..models import get_model

    net = get_model(model_name(config), classes=config.num_classes, layout="NCHW", init_bn0=config.init_bn0)
    symbol = net(mx.sym.var("data"))
    internals = symbol.get_internals()
    arg_shapes, out_shapes, _ = internals.infer_shape(data=(1, 3, image_size, image_size))
    variables = set(symbol.list_arguments()) | set(symbol.list_auxiliary_states())
    activations = sum(int(np.prod(shape)) for name, shape in zip(internals.list_outputs(), out_shapes)
                      if name not in variables)
    weights = sum(int(np.prod(shape)) for name, shape in zip(internals.list_arguments(), arg_shapes)
                  if name != "data")
    return activations, weights


def _largest_steps(config: Config) -> Dict[int, int]:
    """{image size: the largest per-device batch at that size} over the plan's epochs."""
    from .plan import make_plan

    plan = make_plan(config, 1, steps_of=None)
    sizes: Dict[int, int] = {}
    for epoch in range(plan.epochs):
        settings = plan.settings(epoch)
        sizes[settings.image_size] = max(sizes.get(settings.image_size, 0), settings.batch_size)
    return sizes or {config.image_size: config.batch_size}


def estimate_training_memory(config: Config, workers: int) -> MemoryEstimate:
    """Peak host memory of each of this machine's ``workers`` training ``config`` on CPU contexts."""
    best: Optional[MemoryEstimate] = None
    for size, batch in _largest_steps(replace(config, device="cpu")).items():
        activations, weights = graph_values(config, size)
        devices = config.num_devices
        values = devices * 3 * weights + weights + activations * batch * devices
        estimate = MemoryEstimate(RUNTIME_BYTES + values * BYTES_PER_VALUE, workers, size, batch)
        if best is None or estimate.per_worker > best.per_worker:
            best = estimate
    return best


def machine_memory(meminfo: str = "/proc/meminfo") -> Optional[int]:
    """Bytes of RAM and swap this machine has (MemTotal + SwapTotal), or None off Linux."""
    fields = {}
    try:
        with open(meminfo, encoding="utf-8") as lines:
            for line in lines:
                name, _, value = line.partition(":")
                fields[name] = int(value.split()[0]) * 1024   # kB
    except (OSError, ValueError, IndexError):
        return None
    if "MemTotal" not in fields:
        return None
    return fields["MemTotal"] + fields.get("SwapTotal", 0)


def refuse_if_it_cannot_fit(config: Config, workers: int, machine: Optional[int] = None) -> None:
    """UsageError naming both figures when a CPU training run's estimate is
    beyond REFUSE_FACTOR x this machine's memory."""
    machine = machine_memory() if machine is None else machine
    if machine is None:
        return
    estimate = estimate_training_memory(config, workers)
    if estimate.node > REFUSE_FACTOR * machine:
        raise UsageError(f"this run needs {estimate.text()}, and this machine has {gib(machine)} GiB of memory: "
                         "the out-of-memory killer would end it; use a smaller -b or --image-size, fewer -n "
                         "or --local-workers")


def sigkill_explanation(config: Config, workers: int, machine: Optional[int] = None) -> str:
    """Why a worker may have died of a SIGKILL nobody in the job sent, by the
    figures: the out-of-memory killer is named the likely cause only when the
    run's own estimate comes close to what this machine has."""
    machine = machine_memory() if machine is None else machine
    estimate = estimate_training_memory(config, workers) if config.device == "cpu" else None
    return sigkill_reason(estimate, machine)


def sigkill_reason(estimate: Optional[MemoryEstimate], machine: Optional[int]) -> str:
    """``estimate``: None for GPU runs (host memory is not estimated);
    ``machine``: bytes, None where unknown."""
    has = f"this machine has {gib(machine)} GiB" if machine else "this machine's memory is unknown"
    if estimate is None:
        return (f"it was killed from outside the job (a user, a batch scheduler, or the kernel's out-of-memory "
                f"killer: {has}{' of host memory' if machine else ''})")
    needs = f"this run needs {estimate.text()}, and {has}"
    if machine and estimate.node >= LIKELY_OOM_SHARE * machine:
        return f"most likely the kernel's out-of-memory killer: {needs}"
    return (f"it was killed from outside the job (the kernel's out-of-memory killer is still possible if other "
            f"processes use the memory): {needs}")
