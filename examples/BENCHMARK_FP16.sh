#!/usr/bin/env bash
# Training throughput of ResNet50 v1.5 in float16 on 1, 4 and 8 GPUs at 64..208 images
# per GPU: synthetic data, 2 epochs of 100 steps per point, the first not timed.
# Every point runs as its own ./runner subprocess; the report is written as
# REPORT.json/.md/.png (-o, default benchmark_report.json). Extra arguments go to
# benchmark.py, and flags it does not know go to every point's ./runner command.
# float16 points run in NHWC, the layout of the float16 training recipes (benchmark.py
# sets it per precision; an --input-layout flag here overrides it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/python.sh"
exec "$python" "$repo/benchmark.py" --dtype float16 -n 1,4,8 -b 64,128,192,208 -e 2 -w 1 -i 100 "$@"
