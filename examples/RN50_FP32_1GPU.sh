#!/usr/bin/env bash
# ResNet50 v1.5 on ImageNet, float32, 1 GPU(s) x 96 images: the 90-epoch step recipe
# (lr 0.1 per 256 images, linear warmup 5 epochs, x0.1 at epochs 30/60/80,
# wd 1e-4, momentum 0.9), DALI decoding on the GPUs.
# Extra arguments are passed through to ./runner (train.py), e.g. --data-root /data/imagenet.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../runner" --device gpu -n 1 -b 96 --dtype float32 --data-backend dali-gpu --arch resnetv15 --num-layers 50 --num-epochs 90 --lr 0.1 --lr-schedule step --warmup-epochs 5 --lr-steps 30,60,80 --lr-factor 0.1 --wd 1e-4 --mom 0.9 "$@"
