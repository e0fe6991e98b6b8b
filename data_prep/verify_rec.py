#!/usr/bin/env python3
"""Thin entry point; see visionbench/data/cli.py (verify_main) and --help."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository, for a Python without the package
from visionbench.interpreter import use_project_python  # noqa: E402

use_project_python("verify_rec.py")
from visionbench.data.cli import entry, verify_main  # noqa: E402

if __name__ == "__main__":
    entry(verify_main, "verify_rec.py")
