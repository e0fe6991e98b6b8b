#!/usr/bin/env bash
# Inference throughput and latency per batch of ResNet50 v1.5 in float32 on one GPU,
# batch 1..96: synthetic data, 3 epochs of 100 batches per point, the first not timed.
# Every point runs as its own ./runner subprocess; the report is written as
# REPORT.json/.md/.png (-o, default benchmark_report.json). Extra arguments go to
# benchmark.py, and flags it does not know go to every point's ./runner command.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib/python.sh"
exec "$python" "$repo/benchmark.py" --dtype float32 -n 1 -b 1,2,4,8,16,32,64,96 --only-inference -e 3 -w 1 -i 100 "$@"
