#!/usr/bin/env python3
"""Sweep device counts, batch sizes, precisions and engines through ./runner:

    python benchmark.py -n 1,4,8 -b 208 --dtype float16 -o rn50.json
    python benchmark.py -n 1 -b 1,8,64 --only-inference -e 3 -w 1 -o infer.json
    python benchmark.py --engine mxnet,torch -n 1 -b 64,208 --dtype float16,float32 -o engines.json

Thin CLI over visionbench.bench.sweep.
"""
import sys

from visionbench.interpreter import use_project_python

use_project_python("benchmark.py")

from visionbench.bench.sweep import main  # noqa: E402
from visionbench.cli import run_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main(main, "benchmark.py"))
