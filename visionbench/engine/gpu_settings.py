"""GPU-ONLY performance settings, in one place (docs/PERFORMANCE.md, path 5).

They cannot be measured on the development machines (no GPU); each is a
plain value chosen by a rule that is unit-tested on CPU. Environment
variables the user has set always win: we only fill the ones left unset.

- Gradients are reduced by the kvstore and the update runs on every GPU
  (the trainer passes ``update_on_kvstore=False``, which is what Gluon
  reads; MXNET_UPDATE_ON_KVSTORE is read by the Module API only), so the
  float16 overflow check sits between the two.
- ``MXNET_OPTIMIZER_AGGREGATION_SIZE=54``: SGD updates up to 54 weight
  arrays per kernel launch (``multi_sgd_mom_update``, MXNet's default 4),
  grouped by dtype: ResNet50's 161 arrays take 3 launches a step in float32
  and 4 in float16 (55 float16 weights, 106 float32 BatchNorm parameters)
  instead of 41. NAG (--nesterov) does not aggregate in MXNet 1.9.1.
- ``MXNET_CUDNN_AUTOTUNE_DEFAULT``: 1 (MXNet's default: cuDNN tries every
  convolution algorithm once per input shape and keeps the fastest) unless
  the run feeds many shapes: rectangular validation (every batch its own
  shape) would autotune on every batch, so it is 0 for the whole run when
  any epoch of the resolved plan (--rect-val, or a phase) validates
  rectangularly (NVIDIA's example runs with 0 always).
- ``MXNET_USE_FUSION=0`` only where a visible GPU is one MXNet's NVRTC
  cannot compile fused kernels for (Ada, compute capability 8.9, with an
  NVRTC older than 11.8: engine/gpus.py): MXNet would stop at the first
  fused kernel. Elsewhere fusion stays on (MXNet's default).
- DALI's nvJPEG settings live with the pipelines, in data/gpu_decoding.py.
"""
from __future__ import annotations

import os
from typing import Dict, MutableMapping, Optional

OPTIMIZER_AGGREGATION_SIZE = 54  # weight arrays per multi-tensor SGD launch


def mxnet_environment(device: str, rect_val: bool, fusion_off: bool = False) -> Dict[str, str]:
    """The MXNet environment a GPU run gets (nothing for CPU runs)."""
    if device != "gpu":
        return {}
    env = {"MXNET_OPTIMIZER_AGGREGATION_SIZE": str(OPTIMIZER_AGGREGATION_SIZE),
           "MXNET_CUDNN_AUTOTUNE_DEFAULT": "0" if rect_val else "1"}
    if fusion_off:
        env["MXNET_USE_FUSION"] = "0"
    return env


def fusion_must_be_off() -> bool:
    """GPU-ONLY: whether a visible GPU is one this NVRTC cannot compile fused kernels for."""
    from .gpus import fusion_blocking_gpus, nvrtc_version, visible_gpus

    return bool(fusion_blocking_gpus(visible_gpus() or [], nvrtc_version()))


def apply_environment(device: str, rect_val: bool, environ: MutableMapping[str, str] = os.environ,
                      fusion_off: Optional[bool] = None) -> None:
    """Fill the unset variables of mxnet_environment (read by MXNet when the
    optimizer, the first convolutions and the first hybridized graph are
    created, so after import is in time). ``fusion_off``: None asks the GPUs."""
    if fusion_off is None:
        fusion_off = device == "gpu" and fusion_must_be_off()
    for name, value in mxnet_environment(device, rect_val, fusion_off).items():
        environ.setdefault(name, value)

