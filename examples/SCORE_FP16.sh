#!/usr/bin/env bash
# Score a checkpoint on the val set in float16 (NHWC) on one GPU: top-1, top-5, img/s.
# Pass --model-prefix P --load-epoch E --data-root D (and the model's --arch/--num-layers).
# Extra arguments are passed through to ./runner (train.py), e.g. --data-root /data/imagenet.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../runner" --mode val --device gpu -n 1 -b 256 --dtype float16 --input-layout NHWC --data-backend dali-gpu "$@"
