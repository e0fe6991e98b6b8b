"""Shared fixtures: small image trees, and running the entry scripts for real."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_PREP = ROOT / "data_prep"


def pytest_collection_modifyitems(config, items):
    try:
        import mxnet as mx
        gpus = mx.context.num_gpus()
    except Exception:  # noqa: BLE001 - any failure means: no usable GPU
        gpus = 0
    if gpus:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with mxnet-cu112 (none visible to MXNet)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def run_tool(script: str, *args, check_status: int | None = 0, timeout: float = 240, **kwargs):
    """Run data_prep/<script> with this interpreter; returns CompletedProcess."""
    path = DATA_PREP / script
    command = ["bash", str(path)] if script.endswith(".sh") else [sys.executable, str(path)]
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(command + [str(a) for a in args], capture_output=True, text=True,
                            timeout=timeout, env=env, **kwargs)
    if check_status is not None:
        assert result.returncode == check_status, (
            f"{script} exited {result.returncode}, expected {check_status}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def write_jpeg_tree(root: Path, classes: dict, size=(40, 48), seed: int = 0) -> dict:
    """Write root/<class>/<i>.JPEG of random pixels; returns {relpath: label by sorted class}."""
    rng = np.random.default_rng(seed)
    labels = {name: i for i, name in enumerate(sorted(classes))}
    expected = {}
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
            # Smooth the noise so JPEG sizes stay small and realistic.
            image = cv2.GaussianBlur(image, (5, 5), 0)
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            assert ok
            rel = f"{name}/{name}_{i:04d}.JPEG"
            (root / rel).write_bytes(buf.tobytes())
            expected[rel] = labels[name]
    return expected


@pytest.fixture
def jpeg_tree(tmp_path):
    """Three classes of 40x48 JPEGs, unevenly sized, created in an unsorted order."""
    root = tmp_path / "src"
    expected = write_jpeg_tree(root, {"n02": 5, "n01": 4, "n10": 6})
    return root, expected


def one_line_error(result) -> str:
    """The stderr of a failed run must be exactly one line and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    return lines[0]


def run_runner(*args, timeout: float = 300):
    """./runner with this interpreter and a minimal environment."""
    return subprocess.run(["bash", str(ROOT / "runner"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})


def make_small_demo(folder: Path, train_per_class: int, val_per_class: int = 4) -> Path:
    """A demo dataset of 32-pixel images, small enough for a test to train on."""
    run_tool("make_demo_data.py", folder, "--train-per-class", train_per_class, "--val-per-class",
             val_per_class, "--size", "32", "--no-progress")
    return folder


def validate_with_the_schema_file_alone(report: dict, name: str) -> None:
    """What any user's validator does: the schema file, plain jsonschema, no
    registry (a schema that refers to another file fails here)."""
    import json

    import jsonschema

    schema = json.loads((ROOT / "report_schema" / f"{name}.schema.json").read_text())
    jsonschema.validate(report, schema)


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory):
    """A small demo set and a ResNet18 v1.5 (32 px) trained on it for one
    epoch with validation: (data root, model prefix, report path)."""
    folder = tmp_path_factory.mktemp("trained")
    data = make_small_demo(folder / "demo", 8)
    prefix, report = folder / "m", folder / "report.json"
    result = run_runner("--device", "cpu", "-n", "1", "-b", "8", "--data-root", data, "--image-size", "32",
                        "--num-layers", "18", "--num-classes", "10", "--lr", "0.4", "--warmup-epochs", "0",
                        "-e", "1", "--model-prefix", prefix, "--report", report)
    assert result.returncode == 0, result.stderr
    return data, prefix, report
