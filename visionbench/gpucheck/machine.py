"""What the check runs on (printed first, and kept in the report's
environment) and model FLOP utilisation against the device's peak."""
from __future__ import annotations

import re
import shutil
import subprocess
from typing import Optional

# Dense (no 2:4 sparsity) bfloat16 Tensor Core peaks, TFLOP/s, from NVIDIA's
# data sheets, by words of torch.cuda.get_device_name(). Checked in order,
# as whole words ("L4" is not "L40S"): the first found in the name wins, so
# the NVL and PCIe boards (other clocks and power) come before the SXM names
# they contain. None: a board we have no figure for (MFU "n/a"), as is every
# name not listed.
PEAK_BF16_TFLOPS = (
    ("H100 NVL", None), ("H200 NVL", None),
    ("H100 PCIe", 756.0),
    ("H100", 989.0), ("H200", 989.0),   # SXM: 989.4
    ("A100", 312.0),                    # SXM and PCIe alike
    ("L4", 121.0),
)
# Floating-point operations per image at 224 px (multiply-add = 2), ResNet50 v1.5:
# the forward pass about 8.2 GFLOP; training (forward + backward, 3x) about 24.5.
RESNET50_TRAIN_GFLOP = 24.5
RESNET50_INFER_GFLOP = 8.2


def peak_tflops(device_name: str) -> Optional[float]:
    for words, peak in PEAK_BF16_TFLOPS:
        if re.search(rf"\b{re.escape(words)}\b", device_name, flags=re.IGNORECASE):
            return peak
    return None


def mfu(images_per_s: Optional[float], gflop_per_image: Optional[float], peak: Optional[float]) -> Optional[float]:
    """Achieved FLOP/s over the peak; None when any part is unknown."""
    if not images_per_s or gflop_per_image is None or not peak:
        return None
    return images_per_s * gflop_per_image / (peak * 1000.0)


def _driver_version() -> Optional[str]:
    """The NVIDIA driver's version (torch does not report it): nvidia-smi's answer, when there is one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def describe(device: str) -> dict:
    """The device and software versions: device name, driver, CUDA, cuDNN, torch, peak."""
    import torch

    from ..engine.devices import cpu_model

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": None, "driver": None,
            "device_name": cpu_model(), "capability": None,
            "peak_bf16_tflops": None}
    if device == "gpu":
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                    cudnn=torch.backends.cudnn.version(), driver=_driver_version(),
                    memory_gib=round(props.total_memory / 2**30, 1), peak_bf16_tflops=peak_tflops(props.name))
    return info


def describe_line(info: dict) -> str:
    peak = f"{info['peak_bf16_tflops']:g} TFLOP/s dense bf16 peak" if info["peak_bf16_tflops"] else "peak unknown (MFU n/a)"
    return (f"device {info['device_name']} (compute capability {info['capability'] or '-'}), "
            f"driver {info['driver'] or '-'}, CUDA {info['cuda'] or '-'}, cuDNN {info['cudnn'] or '-'}, "
            f"torch {info['torch']}; {peak}")
