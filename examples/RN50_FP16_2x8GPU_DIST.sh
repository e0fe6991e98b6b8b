#!/usr/bin/env bash
# ResNet50 v1.5, float16 (NHWC), 2 machines x 8 GPUs x 208 images (global batch 3328) on
# MXNet's parameter server: the 90-epoch step recipe of RN50_FP16_8GPU.sh, LR scaled by the
# global batch (0.1 per 256 images -> 1.3). Run it on both machines with the same data at the
# same path, changing only NODE_RANK:
#   first machine (node 0, also runs the scheduler), address 10.0.0.1:
#     NODE_RANK=0 MASTER_ADDR=10.0.0.1 ./examples/RN50_FP16_2x8GPU_DIST.sh --data-root /data/imagenet
#   second machine:
#     NODE_RANK=1 MASTER_ADDR=10.0.0.1 ./examples/RN50_FP16_2x8GPU_DIST.sh --data-root /data/imagenet
# MASTER_PORT (default 9000) is the scheduler's port on node 0. Checkpoints and reports are
# written by rank 0 only; to resume, every machine must read --model-prefix (shared file system).
# Extra arguments are passed through to ./runner (train.py).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${NODE_RANK:-}" ] || [ -z "${MASTER_ADDR:-}" ]; then
    echo "RN50_FP16_2x8GPU_DIST.sh: error: set NODE_RANK (0 or 1) and MASTER_ADDR (node 0's address)" >&2
    exit 2
fi
exec "$here/../runner" --kv-store dist_device_sync --nnodes 2 --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-9000}" --num-servers 1 --device gpu -n 8 -b 208 --dtype float16 --input-layout NHWC --data-backend dali-gpu --arch resnetv15 --num-layers 50 --num-epochs 90 --lr 0.1 --lr-schedule step --warmup-epochs 5 --lr-steps 30,60,80 --lr-factor 0.1 --wd 1e-4 --mom 0.9 "$@"
