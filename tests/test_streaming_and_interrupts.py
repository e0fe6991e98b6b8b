"""folder_to_rec streams (memory flat in the image count) and never leaves a
finished-looking set behind when it is killed."""
import json
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from conftest import DATA_PREP, run_tool
from visionbench.data.recordio import OUTPUT_SUFFIXES, verify_record_set

# Measures the writer process and its (joined) workers, in MiB.
PEAK_RSS_SCRIPT = """
import json, resource, sys
from visionbench.data.cli import folder_to_rec_main
status = folder_to_rec_main(sys.argv[1:])
self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"status": status, "main_mib": self_kib / 1024, "worker_mib": children_kib / 1024}))
"""


def _noise_tree(root, count, side, classes=4, seed=0):
    """``count`` JPEGs of random noise (incompressible: about 3 bytes a pixel)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def _peak_rss(src, prefix, workers):
    result = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, str(src), str(prefix),
                             "--workers", str(workers), "--no-progress"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_image_count(tmp_path):
    # 64x64 noise JPEGs are ~4 KB: 4500 more images would add ~18 MiB if the
    # writer or a worker held them, on top of the fixed ~160 MiB of MXNet.
    _noise_tree(tmp_path / "small", 500, 64)
    _noise_tree(tmp_path / "large", 5000, 64, seed=1)
    data_mib = sum(f.stat().st_size for f in (tmp_path / "large").rglob("*.jpg")) / 2**20
    for workers in (1, 2):
        small = _peak_rss(tmp_path / "small", tmp_path / f"s{workers}", workers)
        large = _peak_rss(tmp_path / "large", tmp_path / f"l{workers}", workers)
        print(f"\npeak RSS, {workers} worker(s): 500 images {small['main_mib']:.1f} MiB (workers "
              f"{small['worker_mib']:.1f}), 5000 images {large['main_mib']:.1f} MiB (workers "
              f"{large['worker_mib']:.1f}); 5000 images hold {data_mib:.1f} MiB")
        assert large["main_mib"] - small["main_mib"] < 0.25 * data_mib
        if workers > 1:
            assert large["worker_mib"] - small["worker_mib"] < 0.25 * data_mib
    assert verify_record_set(tmp_path / "l2").records == 5000


@pytest.fixture(scope="module")
def slow_tree(tmp_path_factory):
    """Enough work that a --resize run lasts a few seconds on 2 cores."""
    root = tmp_path_factory.mktemp("slow") / "src"
    _noise_tree(root, 600, 256)
    return root


def _start(src, prefix):
    return subprocess.Popen([sys.executable, str(DATA_PREP / "folder_to_rec.py"), str(src), str(prefix),
                             "--resize", "200", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_partial_rec(folder, process, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        partial = [p for p in folder.glob(".set.rec.partial-*") if p.stat().st_size > 0]
        if partial:
            return partial[0]
        assert process.poll() is None, "finished before it could be interrupted"
        time.sleep(0.01)
    raise AssertionError("no partial .rec appeared")


def _finished_outputs(folder):
    return [p.name for p in folder.iterdir() if p.name in {"set" + s for s in OUTPUT_SUFFIXES}]


def test_kill_9_midway_leaves_no_finished_output_and_rerun_cleans_up(slow_tree, tmp_path):
    process = _start(slow_tree, tmp_path / "set")
    _wait_for_partial_rec(tmp_path, process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert _finished_outputs(tmp_path) == []
    assert list(tmp_path.glob(".set.*.partial-*")), "the kill should have left partial files"
    run_tool("folder_to_rec.py", slow_tree, tmp_path / "set", "--resize", "200", "--no-progress")
    assert verify_record_set(tmp_path / "set").records == 600
    assert list(tmp_path.glob(".set.*")) == []


def test_sigterm_midway_removes_partials_and_exits_143(slow_tree, tmp_path):
    process = _start(slow_tree, tmp_path / "set")
    _wait_for_partial_rec(tmp_path, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143
    assert "terminated" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []
