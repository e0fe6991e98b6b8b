"""Every entry script runs with the project's interpreter whatever `python`
is: a Python without the dependencies re-executes with .venv/bin/python, or
says in one line how to get one."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, one_line_error

SCRIPTS = ["train.py", "benchmark.py", "data_prep/folder_to_rec.py", "data_prep/cifar10_to_rec.py",
           "data_prep/make_demo_data.py", "data_prep/verify_rec.py"]
# The interpreter the project's venv was made from, without its site-packages
# (-S): what a bare `python` on a new machine has.
BARE = [str(Path(sys.base_prefix) / "bin" / "python3"), "-S"]


def test_the_bare_interpreter_lacks_the_dependencies():
    probe = subprocess.run(BARE + ["-c", "import numpy"], capture_output=True, text=True, timeout=30)
    assert probe.returncode != 0   # else the tests below would prove nothing


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_bare_python_runs_the_script_with_the_project_venv(script):
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.fail("make install creates .venv; the tests run from it")
    result = subprocess.run(BARE + [script, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {Path(script).name}")


@pytest.mark.parametrize("script", SCRIPTS)
def test_without_a_venv_the_script_says_how_to_get_one(script, tmp_path):
    copy = tmp_path / "checkout"
    shutil.copytree(ROOT / "visionbench", copy / "visionbench", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "data_prep").mkdir()
    shutil.copy(ROOT / script, copy / script)
    result = subprocess.run(BARE + [script, "--help"], capture_output=True, text=True, timeout=60, cwd=copy)
    assert result.returncode == 2
    line = one_line_error(result)
    assert line.startswith(f"{Path(script).name}: error: ") and "lacks the suite's dependencies" in line
    assert f"run `make install` in {copy}, then `.venv/bin/python {script} ...`" in line
