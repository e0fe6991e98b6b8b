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
- DALI's nvJPEG settings live with the pipelines, in data/gpu_decoding.py.
"""
from __future__ import annotations

import os
from typing import Dict, MutableMapping

OPTIMIZER_AGGREGATION_SIZE = 54  # weight arrays per multi-tensor SGD launch


def mxnet_environment(device: str, rect_val: bool) -> Dict[str, str]:
    """The MXNet environment a GPU run gets (nothing for CPU runs)."""
    if device != "gpu":
        return {}
    return {"MXNET_OPTIMIZER_AGGREGATION_SIZE": str(OPTIMIZER_AGGREGATION_SIZE),
            "MXNET_CUDNN_AUTOTUNE_DEFAULT": "0" if rect_val else "1"}


def apply_environment(device: str, rect_val: bool, environ: MutableMapping[str, str] = os.environ) -> None:
    """Fill the unset variables of mxnet_environment (read by MXNet when the
    optimizer and the first convolutions are created, so after import is in time)."""
    for name, value in mxnet_environment(device, rect_val).items():
        environ.setdefault(name, value)

