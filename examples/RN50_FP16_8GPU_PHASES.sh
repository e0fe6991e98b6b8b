#!/usr/bin/env bash
# ResNet50 v1.5, float16 (NHWC), 8 GPUs: imagenet18's progressive resizing
# (128 px from DATA_ROOT/sz/160, 224 px from sz/320, 288 px full size with
# rectangular validation), LR ramped per iteration as in the phase list (bs per
# GPU, lr as given), zero-init last BN of each block, no weight decay on BN and
# biases; 28 epochs, target 93% top-5. Needs data_prep/prepare_imagenet.sh
# --sizes 160,320.
# Extra arguments are passed through to ./runner (train.py), e.g. --data-root /data/imagenet.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../runner" --device gpu -n 8 --dtype float16 --input-layout NHWC --data-backend dali-gpu --arch resnetv15 --num-layers 50 --init-bn0 --no-bn-wd --wd 5e-5 --mom 0.9 --target-top5 0.93 --phases "[{'ep': 0, 'sz': 128, 'bs': 512, 'trndir': '-sz/160'}, {'ep': (0, 7), 'lr': (1.0, 2.0)}, {'ep': (7, 13), 'lr': (2.0, 0.25)}, {'ep': 13, 'sz': 224, 'bs': 224, 'trndir': '-sz/320', 'min_scale': 0.087}, {'ep': (13, 22), 'lr': (0.4375, 0.043750000000000004)}, {'ep': (22, 25), 'lr': (0.043750000000000004, 0.004375)}, {'ep': 25, 'sz': 288, 'bs': 128, 'min_scale': 0.5, 'rect_val': True}, {'ep': (25, 28), 'lr': (0.0025, 0.00025)}]" "$@"
