"""Interruptions: kill -9 at random points, SIGTERM mid-epoch with an exact
resume, a full disk during a checkpoint, a diverged loss, two runs on one
prefix."""
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from conftest import ROOT, one_line_error, run_runner
from visionbench.engine import checkpoint
from visionbench.report.schema import validate_report

ENV = {"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}


def _args(prefix, *extra):
    # ResNet18 at 16 px on synthetic data: 24 steps of 8 images per epoch, a fraction of a second each.
    return ["--device", "cpu", "-n", "1", "-b", "8", "--data-backend", "synthetic", "--num-examples", "192",
            "--image-size", "16", "--num-layers", "18", "--num-classes", "10", "--lr", "0.2", "--warmup-epochs", "0",
            "--lr-schedule", "cosine", "--mode", "train", "--model-prefix", prefix, "--seed", "7", *extra]


def _params(prefix, epoch):
    return {k: v.asnumpy() for k, v in mx.nd.load(f"{prefix}-{epoch:04d}.params").items()}


def _same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)


def _start(args):
    return subprocess.Popen(["bash", str(ROOT / "runner"), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("whole") / "m"
    result = run_runner(*_args(prefix, "-e", "6"))
    assert result.returncode == 0, result.stderr
    return prefix


def test_kill_9_at_five_random_points_then_resume_equals_uninterrupted(uninterrupted, tmp_path):
    prefix = tmp_path / "m"
    rng = random.Random(11)
    kills = 0
    while kills < 5:
        before = checkpoint.complete_epochs(prefix)
        process = _start(_args(prefix, "-e", "6"))
        time.sleep(rng.uniform(2.5, 6.0))   # start-up is ~2 s; an epoch well under a second
        if process.poll() is not None:
            break   # finished before this kill
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate(timeout=30)
        kills += 1
        if before:   # it started from the newest finished epoch: at most that epoch's work is lost per kill
            assert f"resuming from {prefix}-{before[-1]:04d} " in out
        after = checkpoint.complete_epochs(prefix)
        # Never a broken checkpoint: every complete one loads its meta.
        for epoch in after:
            assert checkpoint.load_meta(prefix, epoch)["epoch"] == epoch
        assert (after[-1] if after else 0) >= (before[-1] if before else 0)
    final = run_runner(*_args(prefix, "-e", "6"))
    assert final.returncode == 0, final.stderr
    assert kills >= 3, "the run finished too early to be killed five times"
    _same_weights(_params(prefix, 6), _params(uninterrupted, 6))
    assert not list(tmp_path.glob(".*partial*"))   # leftovers of killed writes are cleaned up


def test_sigterm_mid_epoch_saves_the_exact_position_and_resume_finishes_equal(tmp_path):
    prefix = tmp_path / "m"
    report = tmp_path / "r.json"
    process = _start(_args(prefix, "-e", "3", "--report", report, "--num-examples", "480"))
    deadline = time.monotonic() + 120
    while not Path(f"{prefix}-0001.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    time.sleep(2.0)   # inside epoch 2 (60 steps of ~0.15 s)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    line = one_line_error(subprocess.CompletedProcess([], 143, out, err))
    assert "stopped by SIGTERM at epoch 2, iteration" in line and "run the same command again" in line
    positions = checkpoint.complete_positions(prefix)
    assert positions[-1][0] == 1 and positions[-1][1] > 0
    partial = json.loads(report.read_text())
    validate_report(partial, "train_report")
    assert partial["status"] == "interrupted" and [e["epoch"] for e in partial["epochs"]] == [0]
    assert not Path(f"{prefix}.lock").exists()
    resumed = run_runner(*_args(prefix, "-e", "3", "--report", report, "--num-examples", "480"))
    assert resumed.returncode == 0, resumed.stderr
    assert "steps of the next" in resumed.stdout
    whole = tmp_path / "whole" / "m"
    whole.parent.mkdir()
    assert run_runner(*_args(whole, "-e", "3", "--num-examples", "480")).returncode == 0
    _same_weights(_params(prefix, 3), _params(whole, 3))
    final = json.loads(report.read_text())
    assert final["status"] == "complete" and [e["epoch"] for e in final["epochs"]] == list(range(3))
    assert final["epochs"][1]["train_images"] == 480   # the interrupted epoch counts every image once
    # The mid-epoch checkpoint is gone once a later end-of-epoch checkpoint exists.
    assert all(iteration == 0 for _, iteration in checkpoint.complete_positions(prefix))


def test_a_diverged_float32_loss_stops_with_epoch_and_iteration(tmp_path):
    prefix = tmp_path / "m"
    assert run_runner(*_args(prefix, "-e", "1")).returncode == 0
    kept = _params(prefix, 1)
    diverged = run_runner(*_args(prefix, "-e", "2", "--lr", "1e30"))
    assert diverged.returncode == 1
    line = one_line_error(diverged)
    assert "loss is not finite (NaN or Inf) at epoch 2, iteration" in line and "checkpoints written so far are kept" in line
    assert checkpoint.complete_epochs(prefix) == [1]
    _same_weights(_params(prefix, 1), kept)


def test_overflow_check_sees_nan_and_inf_gradients():
    from visionbench.engine.precision import all_finite

    finite = mx.nd.ones((3,))
    assert all_finite([finite, finite]).asscalar() == 1
    for bad in (float("nan"), float("inf")):
        grads = [finite, mx.nd.array([1.0, bad])]
        assert all_finite(grads).asscalar() == 0
    assert mx.nd.multi_all_finite(finite, finite, num_arrays=2).asscalar() == 1


def test_a_second_run_on_the_same_prefix_is_refused_until_the_first_dies(tmp_path):
    prefix = tmp_path / "m"
    first = _start(_args(prefix, "-e", "50"))
    try:
        deadline = time.monotonic() + 60
        while not Path(f"{prefix}.lock").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = run_runner(*_args(prefix, "-e", "50"))
        assert second.returncode == 2
        assert "is in use by a run still going (pid" in one_line_error(second)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
    assert Path(f"{prefix}.lock").exists()   # left by the killed run, but not held
    third = run_runner(*_args(prefix, "-e", "1"))
    assert third.returncode == 0, third.stderr
    assert not Path(f"{prefix}.lock").exists()


def _set_with_one_bad_record(prefix, count, bad_index):
    from visionbench.data.recordio import RecordSetWriter

    import cv2
    rng = np.random.default_rng(count)
    with RecordSetWriter(prefix) as writer:
        for i in range(count):
            image = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
            payload = (b"\xff\xd8 this JPEG is damaged" if i == bad_index
                       else cv2.imencode(".jpg", image)[1].tobytes())
            writer.write(i % 2, payload, f"c{i % 2}/{i}.jpg")
        writer.finish(tool="folder_to_rec", source="test", classes=["c0", "c1"],
                      options={"resize": None, "quality": 95, "workers": 1, "shuffle": False,
                               "seed": 0, "strict": True}, seconds=0.1)


@pytest.fixture(scope="module")
def damaged_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    _set_with_one_bad_record(root / "train", 32, bad_index=9)
    _set_with_one_bad_record(root / "val", 16, bad_index=3)
    return root


def _damaged_args(root, tmp_path, *extra):
    return ["--device", "cpu", "-n", "1", "-b", "8", "--data-root", root, "--image-size", "16",
            "--num-layers", "18", "--num-classes", "2", "--warmup-epochs", "0", "-e", "2",
            "--model-prefix", tmp_path / "m", "--report", tmp_path / "r.json", *extra]


def test_an_undecodable_record_stops_the_run_by_default_naming_record_and_file(damaged_data, tmp_path):
    result = run_runner(*_damaged_args(damaged_data, tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == (f"train.py: error: record 9 of {damaged_data}/train.rec is not a decodable image "
                         "(--bad-records skip leaves such records out)")
    # Before it, at most the JPEG decoder's own diagnostic, which DALI's C++ code prints itself.
    assert lines[:-1] in ([], ["Input file read error"])
    assert not list(tmp_path.glob("m-*.params"))


def test_bad_records_skip_trains_on_and_counts_what_it_left_out(damaged_data, tmp_path):
    result = run_runner(*_damaged_args(damaged_data, tmp_path, "--bad-records", "skip"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    validate_report(report, "train_report")
    # One train and one val record per epoch, each named once in a warning.
    assert [e["skipped_records"] for e in report["epochs"]] == [2, 2] and report["summary"]["skipped_records"] == 4
    assert [e["train_images"] for e in report["epochs"]] == [31, 31]
    assert [e["val_images"] for e in report["epochs"]] == [15, 15]
    warnings = sorted(line for line in result.stderr.splitlines() if line.startswith("warning:"))
    assert warnings == [f"warning: record {key} of {damaged_data}/{split}.rec is not a decodable image: "
                        "left out (--bad-records skip)" for key, split in ((3, "val"), (9, "train"))]
    assert "2 undecodable records left out" in result.stdout
