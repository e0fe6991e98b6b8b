#!/usr/bin/env bash
# Inference throughput and latency per batch of ResNet50 v1.5 in float16 on one GPU,
# batch 1..208: synthetic data, 3 epochs of 100 batches per point, the first not timed.
# Every point runs as its own ./runner subprocess; the report is written as
# REPORT.json/.md/.png (-o, default benchmark_report.json). Extra arguments go to
# benchmark.py, and flags it does not know go to every point's ./runner command.
# float16 points run in NHWC, the layout of the float16 training recipes (benchmark.py
# sets it per precision; an --input-layout flag here overrides it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/python.sh"
exec "$python" "$repo/benchmark.py" --dtype float16 -n 1 -b 1,2,4,8,16,32,64,96,128,192,208 --only-inference -e 3 -w 1 -i 100 "$@"
