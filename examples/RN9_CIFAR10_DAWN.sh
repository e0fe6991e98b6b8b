#!/usr/bin/env bash
# ResNet9 on CIFAR-10 (DAWNBench): 24 epochs, batch 512, LR piecewise linear
# 0 -> 0.4 at epoch 5 -> 0 at epoch 24 on a mean-reduced loss (cifar10-fast's
# 0.4/512 on a summed loss with wd 5e-4 x 512 is the same update), wd 5e-4,
# Nesterov momentum 0.9, reflect-pad/crop/flip/Cutout augmentation, float16,
# target 94% top-1. Data: data_prep/cifar10_to_rec.py cifar-10-python.tar.gz DIR.
# Extra arguments are passed through to ./runner (train.py), e.g. --data-root /data/imagenet.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../runner" --device gpu -n 1 -b 512 --dtype float16 --data-backend dali-gpu --arch resnet9 --num-classes 10 --augment cifar --image-size 32 --wd 5e-4 --mom 0.9 --nesterov --target-top1 0.94 --phases "[{'ep': (0, 5), 'lr': (0.0, 0.4)}, {'ep': (5, 24), 'lr': (0.4, 0.0)}]" "$@"
