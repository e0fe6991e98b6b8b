#!/usr/bin/env python3
"""Thin entry point; see visionbench/data/cli.py (folder_to_rec_main) and --help."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository, for a Python without the package
from visionbench.interpreter import use_project_python  # noqa: E402

use_project_python("folder_to_rec.py")
from visionbench.data.cli import entry, folder_to_rec_main  # noqa: E402

if __name__ == "__main__":
    entry(folder_to_rec_main, "folder_to_rec.py")
