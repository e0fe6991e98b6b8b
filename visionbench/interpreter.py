"""Entry scripts run with the project's interpreter, whatever `python` is.

`python benchmark.py ...` with a Python that lacks the suite's dependencies
(the system's, say) re-executes the same command with the project's
`.venv/bin/python` (what `make install` creates, what ./runner uses). Where
there is none, it stops with one line saying how to get one. A Python that
has the dependencies (another virtual environment, the Docker image's
system Python) is used as it is.

Imports nothing outside the standard library: it runs before anything else.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
# What the entry scripts import (import names, not distribution names).
REQUIRED = ("numpy", "nvidia.dali", "cv2", "PIL", "pandas", "jsonschema", "tqdm", "matplotlib")
# The engines' frameworks: one is enough (--engine says which; main.py names a missing one).
FRAMEWORKS = ("mxnet", "torch")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):   # ValueError: a module set to None in sys.modules
        return False


def missing_module() -> Optional[str]:
    for name in REQUIRED:
        if not _importable(name):
            return name
    if not any(_importable(name) for name in FRAMEWORKS):
        return " or ".join(FRAMEWORKS)
    return None


def use_project_python(prog: str) -> None:
    """Return if this interpreter has the dependencies; else re-execute
    sys.argv with .venv/bin/python, or exit 2 with one line."""
    missing = missing_module()
    if missing is None:
        return
    venv_python = VENV / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(venv_python), [str(venv_python), *sys.argv])
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    sys.stderr.write(f"{prog}: error: {sys.executable} lacks the suite's dependencies (no module {missing!r}): "
                     f"run `make install` in {ROOT}, then `.venv/bin/python {shown} ...`\n")
    sys.exit(2)
