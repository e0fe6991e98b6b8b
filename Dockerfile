# GPU image: CUDA 11.8 runtime + cuDNN 8 + NCCL 2 (what mxnet-cu112 1.9.1 links
# against), Ubuntu 22.04's Python 3.10, and the suite installed with its `gpu` extra.
# GPUs: mxnet-cu112 1.9.1 carries GPU code for sm_50/60/70/80/86 and no PTX, so
# it runs on compute capability 5.0 to 8.9 (Maxwell, Pascal, Volta, Turing,
# Ampere, Ada: V100, T4, A100, A10, L4, L40) and not on Hopper (H100, H200) or
# newer; a run there stops at start naming the GPU.
#   docker build -t visionbench .
#   docker run --gpus all --ipc=host visionbench ./runner --self-test -n 8
#   docker run --gpus all --ipc=host -v /data/imagenet:/data visionbench \
#       ./runner -n 8 -b 208 --dtype float16 --data-root /data
FROM nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip libgomp1 libquadmath0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/visionbench
COPY . .
# Editable install: report_schema/ and the entry scripts stay in this folder.
RUN python3 -m pip install -e ".[gpu]"
# Fail the build if pip resolved anything but the pinned versions (pyproject.toml).
RUN python3 -c "from importlib.metadata import version as v; \
assert v('mxnet-cu112') == '1.9.1', v('mxnet-cu112'); \
assert v('nvidia-dali-cuda110') == '1.34.0', v('nvidia-dali-cuda110'); \
assert v('numpy') == '1.23.5', v('numpy')"
# Fail the build if libmxnet.so misses a library (its bundled libgfortran.so.3
# needs libquadmath.so.0); libcuda.so.1 alone arrives with `docker run --gpus`.
RUN missing=$(ldd "$(python3 -c 'import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec("mxnet").origin), "libmxnet.so"))')" \
        | grep "not found" | grep -v "libcuda.so.1" || true); \
    if [ -n "$missing" ]; then echo "libmxnet.so cannot load: $missing" >&2; exit 1; fi
