#!/usr/bin/env python3
"""Thin CLI over visionbench (see visionbench/main.py and --help)."""
from visionbench.main import entry

if __name__ == "__main__":
    entry()
