"""GPU-ONLY: nvJPEG decoding settings of ``--data-backend dali-gpu`` (DALI's
``mixed`` decoders), in one place. None of this can run on the development
machines; the rules are plain values unit-tested on CPU.

Memory. nvJPEG preallocates, per decoder thread, one device buffer of
``device_memory_padding`` bytes and two pinned host buffers of
``host_memory_padding`` bytes (double-buffering; DALI 1.34's documentation of
both arguments), so a pipeline's preallocation grows with its threads:
nvjpeg_memory() gives it. With the defaults below (6 threads, 64 MiB) that is
384 MiB of GPU memory and 768 MiB of pinned host memory per GPU pipeline.
A larger image than the padding makes nvJPEG reallocate once, then keep it.

Threads. A pipeline decodes on ``--dali-threads`` threads; for ``mixed``
decoding the default is NVIDIA's MXNet ResNet50 example's (6 per GPU,
``--dali-threads`` there), never more than the cores per device: CPU threads
only parse the files and Huffman-decode what the GPU's hardware decoder
(A100 and later) does not take.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

NVJPEG_PADDING = 64 * 2**20       # bytes, device and host alike (NVIDIA's MXNet ResNet50 example)
GPU_DECODER_THREADS = 6           # per GPU pipeline (NVIDIA's MXNet ResNet50 example)
HW_DECODER_LOAD = 0.65            # share of images for the hardware JPEG decoder (A100 and later)


def decoder_options(decode_device: str) -> dict:
    """Extra arguments of DALI's image decoders for ``decode_device``."""
    if decode_device != "mixed":
        return {}
    return {"device_memory_padding": NVJPEG_PADDING, "host_memory_padding": NVJPEG_PADDING,
            "hw_decoder_load": HW_DECODER_LOAD}


def default_threads(devices_per_worker: int, backend: str, cpu_count: Optional[int] = None) -> int:
    """Decoding threads per device pipeline when --dali-threads is not given:
    the cores shared out between the devices (at least 1), and for nvJPEG
    decoding at most GPU_DECODER_THREADS."""
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    share = max(1, cores // max(1, devices_per_worker))
    return min(share, GPU_DECODER_THREADS) if backend == "dali-gpu" else share


def nvjpeg_memory(threads: int) -> Tuple[int, int]:
    """(GPU bytes, pinned host bytes) nvJPEG preallocates for one pipeline of
    ``threads`` decoder threads."""
    return threads * NVJPEG_PADDING, threads * 2 * NVJPEG_PADDING
