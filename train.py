#!/usr/bin/env python3
"""Thin CLI over visionbench's trainer. Not yet: lands with the trainer issue."""
import sys

if __name__ == "__main__":
    sys.stderr.write("train.py: not yet implemented: the trainer is not part of this release yet "
                     "(see README.md); data_prep/ works today\n")
    sys.exit(1)
