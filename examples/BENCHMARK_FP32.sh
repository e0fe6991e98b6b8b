#!/usr/bin/env bash
# Training throughput of ResNet50 v1.5 in float32 on 1, 4 and 8 GPUs at 32..96 images
# per GPU: synthetic data, 2 epochs of 100 steps per point, the first not timed.
# Every point runs as its own ./runner subprocess; the report is written as
# REPORT.json/.md/.png (-o, default benchmark_report.json). Extra arguments go to
# benchmark.py, and flags it does not know go to every point's ./runner command.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/python.sh"
exec "$python" "$repo/benchmark.py" --dtype float32 -n 1,4,8 -b 32,64,96 -e 2 -w 1 -i 100 "$@"
