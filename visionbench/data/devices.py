"""The devices a loader feeds, whichever engine's: MXNet contexts
(``mx.cpu(i)``, ``mx.gpu(i)``) or ``torch.device`` objects (``cpu``, possibly
repeated for several CPU "devices", or ``cuda:i``).

The data code asks these helpers, never ``.device_type`` / ``.device_id`` /
``.type`` directly, so one pipeline serves both engines. Neither framework is
imported here: a device is recognised by its attributes.
"""
from __future__ import annotations

from typing import Optional

FRAMEWORKS = ("mxnet", "torch")


def device_framework(device) -> str:
    """``"mxnet"`` for an MXNet context, ``"torch"`` for a torch.device."""
    if hasattr(device, "device_type") and hasattr(device, "device_id"):
        return "mxnet"
    if hasattr(device, "type") and hasattr(device, "index"):
        return "torch"
    raise ValueError(f"{device!r} is neither an MXNet context nor a torch.device")


def device_kind(device) -> str:
    """``"gpu"`` for a GPU, ``"cpu"`` for host memory (MXNet's cpu, cpu_pinned
    and cpu_shared contexts included); any other torch device type (mps,
    meta, ...) is returned as it is, for check_spec to refuse."""
    if device_framework(device) == "mxnet":
        return "gpu" if device.device_type == "gpu" else "cpu"
    return "gpu" if device.type == "cuda" else device.type


def device_index(device) -> Optional[int]:
    """The GPU's ordinal (DALI's device_id), or None for a CPU. A torch
    ``cuda`` device without an index means torch's current GPU."""
    if device_kind(device) != "gpu":
        return None
    if device_framework(device) == "mxnet":
        return device.device_id
    if device.index is None:
        import torch   # GPU-ONLY: resolves "cuda" to the current GPU

        return torch.cuda.current_device()
    return device.index
