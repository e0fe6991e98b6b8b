#!/usr/bin/env python3
"""Thin entry point; see visionbench/data/cli.py (folder_to_rec_main) and --help."""
from visionbench.data.cli import entry, folder_to_rec_main

if __name__ == "__main__":
    entry(folder_to_rec_main, "folder_to_rec.py")
