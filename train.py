#!/usr/bin/env python3
"""Thin CLI over visionbench (see visionbench/main.py and --help)."""
from visionbench.interpreter import use_project_python

use_project_python("train.py")

from visionbench.main import entry  # noqa: E402

if __name__ == "__main__":
    entry()
