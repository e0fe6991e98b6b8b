#!/usr/bin/env python3
"""Thin entry point; see visionbench/data/cli.py (verify_main) and --help."""
from visionbench.data.cli import entry, verify_main

if __name__ == "__main__":
    entry(verify_main, "verify_rec.py")
