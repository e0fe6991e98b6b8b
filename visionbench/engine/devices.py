"""MXNet contexts for ``--device`` and ``-n``."""
from __future__ import annotations

from typing import List

from ..cli import UsageError


def make_contexts(device: str, count: int, first: int = 0) -> List:
    """GPUs first..first+count-1, or ``count`` CPU contexts (the same
    data-parallel code path: split across contexts, reduce through the
    kvstore). ``first`` > 0 for the second and later workers on one machine."""
    import mxnet as mx

    if device == "cpu":
        return [mx.cpu(i) for i in range(count)]
    available = mx.context.num_gpus()
    if available == 0:
        raise UsageError("--device gpu: MXNet sees no GPU (CPU build of mxnet, or no driver); use --device cpu")
    if first + count > available:
        raise UsageError(f"GPUs {first}..{first + count - 1} asked for (-n {count}"
                         f"{f', worker {first // count} of this machine' if first else ''}); "
                         f"only {available} are visible")
    return [mx.gpu(i) for i in range(first, first + count)]


def cpu_model() -> str:
    """The CPU's model name and core count (figures depend on it: name it
    next to every figure)."""
    import os
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores)"


# Instruction sets that decide which CPU kernels oneDNN and PyTorch pick for
# INT8 (VNNI, AMX) and bfloat16 (AVX512-BF16, AMX): named beside CPU figures.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_isa() -> str:
    """Which of ISA_FLAGS this CPU has, as "avx2 avx512f ... (no avx512_vnni, ...)"."""
    flags = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return "instruction sets unknown (no /proc/cpuinfo)"
    have = [flag for flag in ISA_FLAGS if flag in flags]
    lacking = [flag for flag in ISA_FLAGS if flag not in flags]
    return " ".join(have) + (f" (no {', '.join(lacking)})" if lacking else "")


def platform_name(device: str, devices_total: int, nnodes: int) -> str:
    """A job's machines as MLPerf's submission_platform names them by
    default: NODESx the device's name, and the devices per node."""
    if device == "gpu":
        from .gpus import visible_gpus

        gpus = visible_gpus()
        name = f"{gpus[0].name} x{devices_total // nnodes}" if gpus else f"{devices_total // nnodes} GPUs"
    else:
        name = f"{cpu_model()}, {devices_total // nnodes} CPU contexts"
    return f"{nnodes}x{name}"
