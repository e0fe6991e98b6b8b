"""Precision is decided here and only here: dtype -> model dtype, data dtype,
float32 master weights, float32 BatchNorm, loss scaling."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Optional, Sequence

from ..cli import UsageError

DYNAMIC = "dynamic"


@dataclass(frozen=True)
class Precision:
    dtype: str                 # of the model's weights and activations, and of the input batches
    multi_precision: bool      # float32 master weights in the optimizer
    loss_scale: float          # initial (or static) loss scale
    dynamic_loss_scale: bool   # halve on overflow (skipping the step), grow after clean steps


def resolve_precision(dtype: str, device: str, loss_scale: Optional[str]) -> Precision:
    """float16: the model is cast (Gluon keeps BatchNorm parameters float32),
    SGD keeps float32 master weights, the loss is scaled. float32: none of that."""
    if dtype == "int8":
        from ..config import refuse_int8_device

        refuse_int8_device(device)
        return Precision("float32", False, 1.0, False)   # the float32 model, quantized after calibration
    if dtype == "float32":
        return Precision("float32", False, 1.0, False)
    if device == "cpu":
        raise UsageError("--dtype float16 needs GPUs: MXNet has no float16 GEMM/convolution on CPU "
                         "(use --dtype float32 with --device cpu)")
    text = loss_scale or DYNAMIC
    if text == DYNAMIC:
        return Precision("float16", True, LossScaler.INITIAL, True)
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--loss-scale must be a number or 'dynamic', got {text!r}")
    if value <= 0:
        raise UsageError(f"--loss-scale must be positive, got {text}")
    return Precision("float16", True, value, False)


# multi_all_finite reads at most this many arrays per call and does not check
# the count (MXNet 1.9.1: a longer list crashes the process); MXNet's own AMP
# loss scaler calls it in chunks of 200 too.
MAX_ARRAYS_PER_FINITE_CHECK = 200


def all_finite(arrays: Sequence):
    """A 1-element float32 NDArray on the first array's device: 1 when every
    element of every array is finite, else 0. Nothing is read back to the host.

    multi_all_finite reads every input with the first input's dtype, so the
    arrays are grouped by dtype (a float16-cast model has float16 weights and
    float32 BatchNorm parameters); each group goes in chunks of at most
    MAX_ARRAYS_PER_FINITE_CHECK, every call folding into the same flag."""
    import mxnet as mx

    if not arrays:
        raise ValueError("all_finite needs at least one array")
    by_dtype = defaultdict(list)
    for array in arrays:
        by_dtype[array.dtype].append(array)
    flag = mx.nd.ones((1,), ctx=arrays[0].context)
    for group in by_dtype.values():
        for start in range(0, len(group), MAX_ARRAYS_PER_FINITE_CHECK):
            chunk = group[start:start + MAX_ARRAYS_PER_FINITE_CHECK]
            mx.nd.multi_all_finite(*chunk, num_arrays=len(chunk), init_output=False, out=flag)
    return flag


class LossScaler:
    """Dynamic loss scaling: an overflow (a non-finite gradient) skips the step
    and halves the scale; ``growth_interval`` clean steps in a row double it."""

    INITIAL = 2.0 ** 16
    MINIMUM = 1.0
    MAXIMUM = 2.0 ** 24   # as MXNet's AMP loss scaler: float16 gradients need no more

    def __init__(self, scale: float, dynamic: bool, growth_interval: int = 2000):
        self.scale = scale
        self.dynamic = dynamic
        self.growth_interval = growth_interval
        self.clean_steps = 0
        self.skipped_steps = 0

    def update(self, finite: bool) -> bool:
        """Record one step's gradients; returns whether to apply the step."""
        if not self.dynamic:
            return True
        if not finite:
            self.scale = max(self.MINIMUM, self.scale / 2)
            self.clean_steps = 0
            self.skipped_steps += 1
            return False
        self.clean_steps += 1
        if self.clean_steps >= self.growth_interval:
            self.scale = min(self.MAXIMUM, self.scale * 2)
            self.clean_steps = 0
        return True

    def state(self) -> dict:
        return {"scale": self.scale, "clean_steps": self.clean_steps, "skipped_steps": self.skipped_steps}

    def restore(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.clean_steps = int(state["clean_steps"])
        self.skipped_steps = int(state["skipped_steps"])
