#!/usr/bin/env python3
"""Thin CLI over visionbench.bench. Not yet: lands with the benchmark issue."""
import sys

if __name__ == "__main__":
    sys.stderr.write("benchmark.py: not yet implemented: sweeps are not part of this release yet "
                     "(see README.md); data_prep/ works today\n")
    sys.exit(1)
