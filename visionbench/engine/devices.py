"""MXNet contexts for ``--device`` and ``-n``."""
from __future__ import annotations

from typing import List

from ..cli import UsageError


def make_contexts(device: str, count: int) -> List:
    """GPUs 0..count-1, or ``count`` CPU contexts (the same data-parallel code
    path: split across contexts, reduce through the kvstore)."""
    import mxnet as mx

    if device == "cpu":
        return [mx.cpu(i) for i in range(count)]
    available = mx.context.num_gpus()
    if available == 0:
        raise UsageError("--device gpu: MXNet sees no GPU (CPU build of mxnet, or no driver); use --device cpu")
    if count > available:
        raise UsageError(f"-n {count}: only {available} GPUs are visible")
    return [mx.gpu(i) for i in range(count)]
