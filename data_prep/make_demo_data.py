#!/usr/bin/env python3
"""Thin entry point; see visionbench/data/cli.py (demo_main) and --help."""
from visionbench.data.cli import entry, demo_main

if __name__ == "__main__":
    entry(demo_main, "make_demo_data.py")
