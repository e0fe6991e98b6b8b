#!/usr/bin/env python3
"""Thin entry point; see visionbench/data/cli.py (cifar10_main) and --help."""
from visionbench.data.cli import entry, cifar10_main

if __name__ == "__main__":
    entry(cifar10_main, "cifar10_to_rec.py")
