"""GPU-ONLY: which GPUs this machine has, whether the installed MXNet build
can run them, and the versions of the CUDA libraries in use.

MXNet wheels carry compiled GPU code (SASS) for a few architectures and, for
mxnet-cu112 1.9.1, no PTX to compile for others at load time. SASS built for
sm_XY runs on GPUs of compute capability X.Z with Z >= Y (same major
version), so that build runs Maxwell to Ada (5.0 to 8.9) and nothing newer:
Hopper (9.0: H100, H200) and Blackwell fail at their first GPU operation
with "no kernel image is available". ``unsupported_gpus`` is the pure rule
(unit-tested on CPU); ``visible_gpus`` asks the CUDA driver (libcuda) and
cannot run on the development machines.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..cli import UsageError


@dataclass(frozen=True)
class Gpu:
    index: int                       # as MXNet numbers it (CUDA_VISIBLE_DEVICES applies)
    name: str
    capability: Tuple[int, int]      # compute capability (major, minor)

    @property
    def capability_text(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}"


# Compiled GPU code of the MXNet wheels, by distribution and version:
# (SASS architectures, whether PTX is included). Read from the PyPI wheel
# mxnet_cu112-1.9.1-py3-none-manylinux2014_x86_64.whl: each of the 198
# fatbinaries in its libmxnet.so holds cubins for sm_50, 60, 70, 80 and 86,
# and none holds PTX.
MXNET_GPU_CODE: Dict[Tuple[str, str], Tuple[Tuple[Tuple[int, int], ...], bool]] = {
    ("mxnet-cu112", "1.9.1"): (((5, 0), (6, 0), (7, 0), (8, 0), (8, 6)), False),
}
RUNS_ON = "compute capability 5.0 to 8.9: Maxwell, Pascal, Volta (V100), Turing (T4), Ampere (A100, A10, RTX 30) or Ada (L4, L40, RTX 40)"


def runs_on(capability: Tuple[int, int], architectures: Sequence[Tuple[int, int]], ptx: bool) -> bool:
    """Whether code compiled for ``architectures`` runs on a GPU of ``capability``."""
    if ptx and any(capability >= arch for arch in architectures):
        return True
    return any(capability[0] == arch[0] and capability[1] >= arch[1] for arch in architectures)


def installed_mxnet() -> Optional[Tuple[str, str]]:
    """(distribution, version) of the installed GPU MXNet wheel, if it is one we know."""
    from importlib.metadata import PackageNotFoundError, version

    for distribution, release in MXNET_GPU_CODE:
        try:
            if version(distribution) == release:
                return distribution, release
        except PackageNotFoundError:
            continue
    return None


def unsupported_gpus(gpus: Sequence[Gpu], build: Optional[Tuple[str, str]]) -> List[Gpu]:
    """The GPUs ``build`` (a key of MXNET_GPU_CODE, or None for an MXNet we do
    not know, which is then trusted) carries no code for."""
    if build not in MXNET_GPU_CODE:
        return []
    architectures, ptx = MXNET_GPU_CODE[build]
    return [gpu for gpu in gpus if not runs_on(gpu.capability, architectures, ptx)]


def unsupported_message(gpu: Gpu, build: Tuple[str, str]) -> str:
    architectures, _ = MXNET_GPU_CODE[build]
    arch_list = "/".join(f"{major}{minor}" for major, minor in architectures)
    return (f"GPU {gpu.index} ({gpu.name}) has compute capability {gpu.capability_text}, which {build[0]} "
            f"{build[1]} cannot run (it carries GPU code for sm_{arch_list} only, no PTX); it runs on GPUs of "
            f"{RUNS_ON}; on this GPU train with --engine torch (PyTorch), pick such GPUs with "
            "CUDA_VISIBLE_DEVICES, or use --device cpu")


def check_gpus_supported(gpus: Sequence[Gpu], build: Optional[Tuple[str, str]]) -> None:
    """Refuse (UsageError naming the first such GPU) when ``build`` cannot run one of ``gpus``."""
    bad = unsupported_gpus(gpus, build)
    if bad:
        raise UsageError(unsupported_message(bad[0], build))


# MXNet 1.9.1 compiles its fused pointwise kernels (MXNET_USE_FUSION, on by
# default in hybridized GPU graphs) with NVRTC for "compute_<major><minor>" of
# the GPU itself (src/operator/fusion/fused_op.cu, FusedOp::CompileCode), and
# stops at the first fused kernel when NVRTC does not know that architecture.
# NVRTC learned compute_89 (Ada) in CUDA 11.8; Hopper is refused above anyway.
NVRTC_FOR_CAPABILITY = {(8, 9): (11, 8)}   # compute capability -> oldest NVRTC (major, minor) that compiles for it


def fusion_blocking_gpus(gpus: Sequence[Gpu], nvrtc: Optional[Tuple[int, int]]) -> List[Gpu]:
    """The GPUs whose fused kernels ``nvrtc`` (None: version unknown) cannot compile."""
    return [gpu for gpu in gpus if gpu.capability in NVRTC_FOR_CAPABILITY
            and (nvrtc is None or nvrtc < NVRTC_FOR_CAPABILITY[gpu.capability])]


def fusion_message(gpu: Gpu, nvrtc: Optional[Tuple[int, int]]) -> str:
    have = f"NVRTC {nvrtc[0]}.{nvrtc[1]}" if nvrtc else "the NVRTC found (version unknown)"
    need = NVRTC_FOR_CAPABILITY[gpu.capability]
    return (f"GPU {gpu.index} ({gpu.name}) has compute capability {gpu.capability_text}, which {have} cannot "
            f"compile MXNet's fused kernels for (NVRTC {need[0]}.{need[1]} or newer can)")


# --- GPU-ONLY below: the CUDA driver and libraries, through ctypes --------

_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75   # cuda.h, CUdevice_attribute
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


def _load(names: Sequence[str]):
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def visible_gpus() -> Optional[List[Gpu]]:
    """The GPUs the CUDA driver shows this process, or None when the driver
    cannot be asked (no libcuda, or it fails)."""
    cuda = _load(("libcuda.so.1", "libcuda.so"))
    if cuda is None or cuda.cuInit(0) != 0:
        return None
    count = ctypes.c_int()
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return None
    gpus = []
    for index in range(count.value):
        device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        name = ctypes.create_string_buffer(256)
        if (cuda.cuDeviceGet(ctypes.byref(device), index) != 0
                or cuda.cuDeviceGetName(name, len(name), device) != 0
                or cuda.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device) != 0
                or cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device) != 0):
            return None
        gpus.append(Gpu(index, name.value.decode(errors="replace"), (major.value, minor.value)))
    return gpus


def refuse_unsupported_gpus() -> None:
    """At the start of a GPU run: exit 2 (UsageError) with one line when the
    installed MXNet cannot run a visible GPU. Silent when the driver cannot
    be asked: MXNet then reports what it finds itself."""
    gpus = visible_gpus()
    if gpus:
        check_gpus_supported(gpus, installed_mxnet())


def nvrtc_version() -> Optional[Tuple[int, int]]:
    """(major, minor) of the NVRTC that libmxnet.so (mxnet-cu112) loads, by
    the name it links (libnvrtc.so.11.2: NVRTC 11.2 to 11.8 all carry that
    name); None when it cannot be loaded. NVRTC API: nvrtcResult
    nvrtcVersion(int *major, int *minor), NVRTC_SUCCESS = 0."""
    lib = _load(("libnvrtc.so.11.2",))
    if lib is None or not hasattr(lib, "nvrtcVersion"):
        return None
    major, minor = ctypes.c_int(), ctypes.c_int()
    if lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)) != 0:
        return None
    return major.value, minor.value


def _version_number(library: Sequence[str], function: str, decode) -> Optional[str]:
    lib = _load(library)
    if lib is None or not hasattr(lib, function):
        return None
    if function == "cudnnGetVersion":
        getter = getattr(lib, function)
        getter.restype = ctypes.c_size_t
        return decode(int(getter()))
    value = ctypes.c_int()
    if getattr(lib, function)(ctypes.byref(value)) != 0:
        return None
    return decode(value.value)


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"        # 11020 -> 11.2


def _cudnn_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 100}.{number % 100}"   # 8907 -> 8.9.7


def _nccl_version(number: int) -> str:
    if number >= 10000:                                                 # 2.9 and later: 21803 -> 2.18.3
        return f"{number // 10000}.{number % 10000 // 100}.{number % 100}"
    return f"{number // 1000}.{number % 1000 // 100}.{number % 100}"    # before: 2708 -> 2.7.8


def library_versions() -> Dict[str, Optional[str]]:
    """Versions of the CUDA driver API, runtime, cuDNN and NCCL this process
    can load (None: not found as a shared library)."""
    return {
        "CUDA driver API": _version_number(("libcuda.so.1", "libcuda.so"), "cuDriverGetVersion", _cuda_version),
        "CUDA runtime": _version_number(("libcudart.so.11.0", "libcudart.so"), "cudaRuntimeGetVersion", _cuda_version),
        # libmxnet.so links libcudnn.so.8 by that name: another major version is not what it uses
        "cuDNN": _version_number(("libcudnn.so.8",), "cudnnGetVersion", _cudnn_version),
        "NCCL": _version_number(("libnccl.so.2", "libnccl.so"), "ncclGetVersion", _nccl_version),
    }
