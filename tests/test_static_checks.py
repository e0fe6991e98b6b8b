"""Pyflakes' checks (ruff's F rules; the test extra pins ruff) over the
package, the entry scripts and the tests: names used but never defined
(a NameError waiting on a path no test takes), imports nothing uses, f-strings
without fields, duplicate test names (the second silently hides the first).
The numpy 2 check (NPY201) is test_gpucheck's."""
import subprocess
import sys

from conftest import ROOT


def test_pyflakes_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F", "--no-cache", "--output-format",
                             "concise", "visionbench", "data_prep", "tests", "train.py", "benchmark.py"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
