"""Interruptions: kill -9 at random points, SIGTERM mid-epoch with an exact
resume, a full disk during a checkpoint, a diverged loss, two runs on one
prefix."""
import json
import re
import signal
import subprocess
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from conftest import Job, one_line_error, run_here, run_runner
from visionbench.engine import checkpoint
from visionbench.report.schema import validate_report


def _args(prefix, *extra, devices=1):
    # ResNet18 at 16 px on synthetic data: 24 steps of 8 images per epoch (8 steps of 3 x 8 on 3
    # devices), a fraction of a second each.
    return ["--device", "cpu", "-n", str(devices), "-b", "8", "--data-backend", "synthetic", "--num-examples", "192",
            "--image-size", "16", "--num-layers", "18", "--num-classes", "10", "--lr", "0.2", "--warmup-epochs", "0",
            "--lr-schedule", "cosine", "--mode", "train", "--model-prefix", prefix, "--seed", "7", *extra]


def _params(prefix, epoch):
    return {k: v.asnumpy() for k, v in mx.nd.load(f"{prefix}-{epoch:04d}.params").items()}


def _assert_same_final_state(prefix, reference, epoch, devices):
    """Device 0's weights and statistics (.params) and, on several devices,
    every device's BatchNorm statistics (.bnstats), bit for bit."""
    for suffix in ("params", "bnstats") if devices > 1 else ("params",):
        expected = mx.nd.load(f"{reference}-{epoch:04d}.{suffix}")
        found = mx.nd.load(f"{prefix}-{epoch:04d}.{suffix}")
        assert found.keys() == expected.keys() and len(found) > 0, suffix
        for name, array in expected.items():
            assert np.array_equal(found[name].asnumpy(), array.asnumpy()), (suffix, name)
    if devices > 1:   # 3 devices x 20 BatchNorm layers x (mean, variance)
        assert len(mx.nd.load(f"{prefix}-{epoch:04d}.bnstats")) == devices * 40


def _same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)


def _resumed_from(out):
    found = re.search(r"resuming from \S+-(\d{4})(-(\d{6}))? ", out)
    return (int(found[1]), int(found[3] or 0)) if found else None


# Per device count: --disp-batches, and the progress lines of a mid-epoch
# event in epoch 1 (before any checkpoint) and in epoch 3 (after some).
KILL_POINTS = {1: ("4", r"^epoch 1/4 batch 8/", r"^epoch 3/4 batch 12/"),
               3: ("2", r"^epoch 1/4 batch 4/", r"^epoch 3/4 batch 4/")}


@pytest.fixture(scope="module", params=[1, 3], ids=["1 device", "3 devices"])
def uninterrupted(request, tmp_path_factory):
    """The reference run, 4 epochs uninterrupted: what the kill -9 test's and
    the SIGTERM test's interrupted runs must end with, bit for bit (one
    reference for both tests: a whole run less per device count)."""
    prefix = tmp_path_factory.mktemp("whole") / "m"
    result = run_runner(*_args(prefix, "-e", "4", devices=request.param))
    assert result.returncode == 0, result.stderr
    return prefix, request.param


def test_kill_9_at_five_points_then_resume_equals_uninterrupted(uninterrupted, tmp_path, capfd):
    """Five kills, each at an event of the run: during start-up (its lock is
    taken, no step yet), mid-epoch before any checkpoint, mid-epoch after
    checkpoints, right after a checkpoint, and during a checkpoint write.
    Each rerun resumes from the newest complete checkpoint and says so; the
    final weights are the uninterrupted run's, bit for bit (synthetic data),
    and on 3 devices every device's BatchNorm statistics too."""
    uninterrupted, devices = uninterrupted
    display, in_epoch_1, in_epoch_3 = KILL_POINTS[devices]
    prefix = tmp_path / "m"
    args = _args(prefix, "-e", "4", "--disp-batches", display, devices=devices)
    events = [("start-up", lambda job: job.wait_for_file(tmp_path, "m.lock")),
              ("epoch 1, no checkpoint yet", lambda job: job.wait_for_line(in_epoch_1)),
              ("mid-epoch 3", lambda job: job.wait_for_line(in_epoch_3)),
              ("right after a checkpoint", lambda job: job.wait_for_file(tmp_path, "m-0003.json")),
              # The write's first file, its weights under a temporary name: the kill lands while the
              # write is under way (writing the weights and optimizer state takes tens of ms; the
              # journal, written last, existed for a few ms, and a kill on a loaded machine once came
              # after it). A kill between the journal and the .json is tests/test_checkpoint_safety.py's.
              ("during a checkpoint write", lambda job: (job.wait_for_line("^resuming from"),   # leftovers removed
                                                         job.wait_for_file(tmp_path, ".m.partial-*")))]
    for what, event in events:
        before = checkpoint.complete_positions(prefix)
        job = Job(args)
        event(job)
        _, out, err = job.kill()
        assert job.process.returncode == -signal.SIGKILL, (what, err)
        assert _resumed_from(out) == (before[-1] if before else None), (what, out)
        after = checkpoint.complete_positions(prefix)
        for epoch, iteration in after:   # never a broken checkpoint
            assert checkpoint.load_meta(prefix, epoch, iteration)["epoch"] == epoch
        assert checkpoint.foreign_files(prefix) == [], what
        if what == "during a checkpoint write":   # the kill landed inside the write: it left what it wrote
            assert checkpoint.journal_path(prefix).exists() or list(tmp_path.glob(".m.partial-*")), what
            assert (4, 0) not in after, what
    newest = checkpoint.complete_positions(prefix)[-1]
    final = run_here(capfd, *args)   # the last rerun, killed by nobody: in this process (no start-up)
    assert final.returncode == 0, final.stderr
    assert _resumed_from(final.stdout) == newest
    _assert_same_final_state(prefix, uninterrupted, 4, devices)
    assert not list(tmp_path.glob(".*partial*")) and not checkpoint.journal_path(prefix).exists()


def _sigterm_mid_epoch(args, at_line):
    """Start, SIGTERM at the first stdout line matching ``at_line``; returns
    (iteration saved, the one-line message)."""
    job = Job(args)
    job.wait_for_line(at_line)
    status, out, err = job.kill(signal.SIGTERM)
    assert status == 143, err
    line = one_line_error(subprocess.CompletedProcess([], 143, out, err))
    assert "stopped by SIGTERM at epoch 2, iteration" in line and "run the same command again" in line
    return int(re.search(r"iteration (\d+)", line)[1]), line


def test_sigterm_mid_epoch_on_synthetic_data_resumes_bit_for_bit(uninterrupted, tmp_path, capfd):
    # The kill -9 test's run (192 images: 24 steps an epoch on one device, 8 on three), interrupted
    # by SIGTERM in epoch 2 and resumed: its final state is that test's uninterrupted run's.
    whole, devices = uninterrupted
    prefix, report = tmp_path / "m", tmp_path / "r.json"
    steps, display = (24, 10) if devices == 1 else (8, 2)
    args = _args(prefix, "-e", "4", "--report", report, "--disp-batches", display, devices=devices)
    iteration, _ = _sigterm_mid_epoch(args, rf"^epoch 2/4 batch {display}/")
    assert display <= iteration < steps
    assert checkpoint.complete_positions(prefix)[-1] == (1, iteration)
    partial = json.loads(report.read_text())
    validate_report(partial, "train_report")
    assert partial["status"] == "interrupted" and [e["epoch"] for e in partial["epochs"]] == [0]
    assert not Path(f"{prefix}.lock").exists()
    resumed = run_here(capfd, *args)   # the resumed run, never interrupted: in this process (no start-up)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {prefix}-0001-{iteration:06d} (epoch 1 of 4 done, and {iteration} steps of the next)" \
        in resumed.stdout
    _assert_same_final_state(prefix, whole, 4, devices)   # the README's promise: bit for bit
    final = json.loads(report.read_text())
    assert final["status"] == "complete" and [e["epoch"] for e in final["epochs"]] == list(range(4))
    assert final["epochs"][1]["train_images"] == 192   # the interrupted epoch counts every image once
    # The mid-epoch checkpoint is gone once a later end-of-epoch checkpoint exists.
    assert all(iteration == 0 for _, iteration in checkpoint.complete_positions(prefix))


@pytest.fixture(scope="module")
def position_labelled(tmp_path_factory):
    """A RecordIO set whose label is the record's position: what a device
    receives says which record it was."""
    from visionbench.selftest import write_colour_set

    root = tmp_path_factory.mktemp("labelled")
    write_colour_set(root / "train", 96)
    return root


def _dali_args(data, prefix, log, *extra):
    return ["--device", "cpu", "-n", "2", "-b", "4", "--data-root", data, "--data-backend", "dali-cpu",
            "--image-size", "16", "--num-layers", "18", "--num-classes", "96", "--lr", "0.1", "--warmup-epochs",
            "0", "--mode", "train", "--model-prefix", prefix, "--seed", "5", "--sample-log", log, *extra]


def _fed(log, name):
    return json.loads((log / name).read_text())


def test_sigterm_mid_epoch_on_dali_data_feeds_the_same_records_from_that_step(position_labelled, tmp_path, capfd):
    # 96 images, 2 devices x 4: 12 steps an epoch. The uninterrupted run and
    # the interrupted + resumed one must feed each step the same records and
    # their devices receive the same labels (labels are positions here).
    (tmp_path / "whole").mkdir(), (tmp_path / "cut").mkdir()
    whole_log, cut_log = tmp_path / "whole-log", tmp_path / "cut-log"
    whole_log.mkdir(), cut_log.mkdir()
    whole = run_runner(*_dali_args(position_labelled, tmp_path / "whole" / "m", whole_log, "-e", "2"))
    assert whole.returncode == 0, whole.stderr
    args = _dali_args(position_labelled, tmp_path / "cut" / "m", cut_log, "-e", "2", "--disp-batches", "3")
    iteration, _ = _sigterm_mid_epoch(args, r"^epoch 2/2 batch 6/")
    resumed = run_here(capfd, *args)   # in this process (no start-up)
    assert resumed.returncode == 0, resumed.stderr
    assert f"and {iteration} steps of the next" in resumed.stdout
    reference = _fed(whole_log, "rank-0-epoch-1.json")
    before, after = _fed(cut_log, "rank-0-epoch-1.json"), _fed(cut_log, f"rank-0-epoch-1-from-{iteration:06d}.json")
    assert len(reference["labels_by_step"]) == 12 and after["first_step"] == iteration
    assert before["labels_by_step"] == reference["labels_by_step"][:iteration]
    assert after["labels_by_step"] == reference["labels_by_step"][iteration:]
    assert after["positions_by_step"] == reference["positions_by_step"][iteration:]
    # What the devices received is what the sampler planned, and the epoch is every record once.
    assert reference["labels_by_step"] == reference["positions_by_step"]
    assert sorted(reference["labels"]) == list(range(96))
    assert sorted(before["labels"] + after["labels"]) == list(range(96))


def test_a_diverged_float32_loss_stops_with_epoch_and_iteration(tmp_path, capfd):
    prefix = tmp_path / "m"
    assert run_here(capfd, *_args(prefix, "-e", "1")).returncode == 0   # both runs in this process
    kept = _params(prefix, 1)
    diverged = run_here(capfd, *_args(prefix, "-e", "2", "--lr", "1e30"))
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


def test_a_second_run_on_the_same_prefix_is_refused_until_the_first_dies(tmp_path, capfd):
    prefix = tmp_path / "m"
    first = Job(_args(prefix, "-e", "50"))
    try:
        assert first.wait_for_file(tmp_path, "m.lock"), "the first run ended before taking its lock"
        second = run_here(capfd, *_args(prefix, "-e", "50"))   # this run and the third in this process
        assert second.returncode == 2
        assert "is in use by a run still going (pid" in one_line_error(second)
    finally:
        first.kill()
    assert Path(f"{prefix}.lock").exists()   # left by the killed run, but not held
    third = run_here(capfd, *_args(prefix, "-e", "1"))
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


def test_an_undecodable_record_stops_the_run_by_default_naming_record_and_file(damaged_data, tmp_path, capfd):
    result = run_here(capfd, *_damaged_args(damaged_data, tmp_path))   # in this process (capfd: DALI's lines too)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == (f"train.py: error: record 9 of {damaged_data}/train.rec is not a decodable image "
                         "(--bad-records skip leaves such records out)")
    # Before it, at most the JPEG decoder's own diagnostic, which DALI's C++ code prints itself.
    assert lines[:-1] in ([], ["Input file read error"])
    assert not list(tmp_path.glob("m-*.params"))


def test_bad_records_skip_trains_on_and_counts_what_it_left_out(damaged_data, tmp_path, capfd):
    result = run_here(capfd, *_damaged_args(damaged_data, tmp_path, "--bad-records", "skip"))
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
