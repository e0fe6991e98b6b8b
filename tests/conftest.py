"""Shared fixtures: small image trees, and running the entry scripts for real."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_PREP = ROOT / "data_prep"


def runner_env() -> dict:
    """./runner's environment: this interpreter, and the caller's environment passed through
    (LD_LIBRARY_PATH finds CUDA, cuDNN and NCCL; CUDA_VISIBLE_DEVICES picks the GPUs), but no
    DMLC_* role variable, which would make the run a parameter-server process."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("DMLC_")}
    env.pop("VISIONBENCH_LOCAL_WORKER", None)
    return dict(env, PYTHON=sys.executable)


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
    """./runner with this interpreter and the caller's environment (runner_env)."""
    return subprocess.run(["bash", str(ROOT / "runner"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=runner_env())


def run_here(capfd, *args, prog: str = "train.py") -> subprocess.CompletedProcess:
    """train.py's main (or benchmark.py's) in this process, as ./runner runs
    it (run_main: the exit status, one-line errors), with what the run wrote
    to stdout and stderr (capfd: C++ libraries' lines too). For runs that
    need no fresh interpreter (a refusal, a scoring, a run nobody kills): no
    seconds of start-up each (importing MXNet alone takes 1.4 s of CPU)."""
    from visionbench.cli import run_main

    if prog == "benchmark.py":
        from visionbench.bench.sweep import main
    else:
        from visionbench.main import main
    capfd.readouterr()
    try:
        status = run_main(main, prog, [str(a) for a in args])
    except SystemExit as exit:   # argparse's errors: cli.ArgumentParser exits with status 2
        status = exit.code
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess([prog, *map(str, args)], status, out, err)


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
    from visionbench.main import main

    folder = tmp_path_factory.mktemp("trained")
    data = make_small_demo(folder / "demo", 8)
    prefix, report = folder / "m", folder / "report.json"
    # Trained in this process (no interpreter start-up): the tests read only its files.
    assert main([str(a) for a in ("--device", "cpu", "-n", "1", "-b", "8", "--data-root", data, "--image-size", "32",
                                  "--num-layers", "18", "--num-classes", "10", "--lr", "0.4", "--warmup-epochs", "0",
                                  "-e", "1", "--model-prefix", prefix, "--report", report)]) == 0
    return data, prefix, report


class Job:
    """./runner in the background, its stdout read line by line as it comes,
    so a test can act on what the run reports (events, never timers)."""

    def __init__(self, args):
        self.process = subprocess.Popen(["bash", str(ROOT / "runner"), *map(str, args)], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=runner_env())
        self.lines = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append(None)   # end of output
            self._changed.notify_all()

    def wait_for_line(self, pattern, timeout=120):
        """The first stdout line matching ``pattern``; fails if the run ends or the time runs out first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = next((l for l in self.lines if l is not None and regex.search(l)), None)
                if match is not None:
                    return match
                assert None not in self.lines, f"the run ended before {pattern!r}: {self.lines}"
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no {pattern!r} in {timeout} s: {self.lines}"
                self._changed.wait(remaining)

    def wait_for_file(self, folder, pattern, timeout=120):
        """Poll (2 ms) until a file matching ``pattern`` exists in ``folder``: the only event a
        checkpoint write gives. Returns the matches, or [] if the run ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = list(Path(folder).glob(pattern))
            if found or self.process.poll() is not None:
                return found
            time.sleep(0.002)
        raise AssertionError(f"no {pattern} in {folder} within {timeout} s")

    def kill(self, signum=signal.SIGKILL):
        self.process.send_signal(signum)
        self.process.wait(timeout=60)
        with self._changed:
            self._changed.wait_for(lambda: None in self.lines, timeout=30)
        return self.process.returncode, "\n".join(l for l in self.lines if l is not None), self.process.stderr.read()


# Ten well-apart colours: a class each.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (250, 190, 190), (0, 128, 128)]


def write_palette_sets(folder: Path, train: int, val: int) -> Path:
    """train/val RecordIO sets that ResNet18 at 32 px learns in a few dozen
    steps: record i is a solid JPEG of class i % 10's colour in one of five
    shades. In val, every 20th record (5%) carries the next class's label, so
    top-1 can reach 0.95 and never 1.0 (MLPerf's checker wants an accuracy
    below 1)."""
    from visionbench.selftest import SET_SIZES, write_colour_set

    def jpeg(index: int) -> bytes:
        height, width = SET_SIZES[index % len(SET_SIZES)]
        image = np.empty((height, width, 3), np.uint8)
        image[:] = np.clip(np.array(PALETTE[index % 10]) + 6 * ((index // 10) % 5) - 12, 0, 255)
        return cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()

    folder.mkdir(parents=True, exist_ok=True)
    write_colour_set(folder / "train", train, labels=[i % 10 for i in range(train)], payload_of=jpeg)
    write_colour_set(folder / "val", val, labels=[(i + 1) % 10 if i % 20 == 19 else i % 10 for i in range(val)],
                     payload_of=jpeg)
    return folder


def processes_in_group(pgid: int) -> list:
    """The pids left in process group ``pgid`` (pgrep)."""
    found = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def finish_group(job: subprocess.Popen, timeout: float = 120):
    """(result, processes left in its group) once ``job``, started with
    start_new_session=True, has ended; a job past ``timeout`` is killed, group and all."""
    try:
        out, err = job.communicate(timeout=timeout)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(job.args, job.returncode, out, err), processes_left_in_group(job.pid)


def processes_left_in_group(pgid: int, timeout: float = 10) -> list:
    """The pids still in process group ``pgid`` once it has emptied or
    ``timeout`` s have passed: a process whose parent died (it gets SIGKILL
    from die_with_parent) leaves the process table a moment later, and the
    kernel gives no event for a process that is not our child: polled (10 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_in_group(pgid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)
