"""Nothing a user has is lost: files under --model-prefix that are not
complete checkpoints of this suite are never replaced or deleted, and a
checkpoint write that fails at any step leaves the folder as it was."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from conftest import ROOT, one_line_error, run_here, run_runner
from visionbench.cli import RunFailure, UsageError
from visionbench.config import Config
from visionbench.engine import checkpoint
from visionbench.engine.precision import resolve_precision
from visionbench.engine.trainer import build_net, build_trainer


def _args(prefix, *extra):
    return ["--device", "cpu", "-n", "1", "-b", "8", "--data-backend", "synthetic", "--num-examples", "16",
            "--image-size", "16", "--num-layers", "18", "--num-classes", "10", "--mode", "train",
            "--model-prefix", prefix, *extra]


def _folder(path):
    return {p.name: p.read_bytes() for p in path.iterdir()}


def _meta(epoch):
    return {"epoch": epoch, "model": "resnet18_v1.5", "classes": 10, "loss_scaler": {}, "epochs": []}


# Files another tool leaves under a prefix: MXNet's save_checkpoint and
# NVIDIA's example (P-symbol.json, P-EEEE.params, P-EEEE.states), a damaged
# checkpoint of ours (no .json), a JSON of someone else's.
FOREIGN = ["m-0001.params", "m-0001.states", "m-symbol.json", "m-0003.json", "m-0001-000012.params", "m-0002.bnstats"]


def test_a_users_checkpoint_file_stops_the_run_before_anything_is_written(tmp_path, capfd):
    (tmp_path / "m-0001.params").write_bytes(b"MXNet's own save_checkpoint wrote this")
    before = _folder(tmp_path)
    result = run_here(capfd, *_args(tmp_path / "m", "-e", "2", "--keep-checkpoints", "1"))   # a refusal: in-process
    assert result.returncode == 2
    line = one_line_error(result)
    assert f"{tmp_path / 'm-0001.params'} look like checkpoints but are not complete ones of visionbench" in line
    assert _folder(tmp_path) == before   # nothing replaced, nothing added, the lock gone


@pytest.mark.parametrize("name", FOREIGN)
def test_each_kind_of_foreign_file_is_refused_and_kept(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b'{"not": "ours"}' if name.endswith(".json") else os.urandom(256))
    before = _folder(tmp_path)
    with pytest.raises(UsageError, match="look like checkpoints but are not complete ones"):
        checkpoint.refuse_foreign_files(tmp_path / "m")
    assert checkpoint.foreign_files(tmp_path / "m") == [path]
    assert checkpoint.complete_positions(tmp_path / "m") == []
    assert _folder(tmp_path) == before
    checkpoint.refuse_foreign_files(tmp_path / "other")   # another prefix in the same folder is free


def _built(devices):
    config = Config(device="cpu", num_layers=18, num_classes=10, data_backend="synthetic")
    precision = resolve_precision("float32", "cpu", None)
    net = build_net(config, devices, precision)
    trainer = build_trainer(config, net, precision)
    net(mx.nd.zeros((1, 3, 16, 16)))   # a checkpoint needs one forward pass of the hybridized graph
    return net, trainer


@pytest.fixture
def net_and_trainer():
    return _built([mx.cpu()])


@pytest.fixture(params=[1, 3], ids=["1 device", "3 devices"])
def on_devices(request):
    """One device, or three (whose checkpoints carry every device's BatchNorm statistics, .bnstats)."""
    return _built([mx.cpu(k) for k in range(request.param)])


def test_pruning_deletes_only_complete_checkpoints_of_ours(tmp_path, on_devices):
    net, trainer = on_devices
    prefix = tmp_path / "m"
    for epoch in (2, 3, 4):
        checkpoint.save_checkpoint(net, trainer, prefix, epoch, _meta(epoch))
    # A user's files appear beside them while the run goes on.
    (tmp_path / "m-0001.params").write_bytes(b"user's weights")
    (tmp_path / "m-0001.states").write_bytes(b"user's states")
    (tmp_path / "m-0001.bnstats").write_bytes(b"user's statistics")
    (tmp_path / "m-0005.json").write_text('{"epoch": 5}')
    checkpoint.prune(prefix, keep_last=1, best_epoch=None)
    assert checkpoint.complete_epochs(prefix) == [4]
    assert (tmp_path / "m-0001.params").read_bytes() == b"user's weights"
    assert (tmp_path / "m-0001.states").read_bytes() == b"user's states"
    assert (tmp_path / "m-0001.bnstats").read_bytes() == b"user's statistics"
    assert (tmp_path / "m-0005.json").read_text() == '{"epoch": 5}'
    multi = len(net.collect_params()["resnet18_v15_conv0_weight"].list_ctx()) > 1
    assert sorted(p.name for p in tmp_path.glob("m-000[234]*")) == (
        ["m-0004.bnstats"] * multi + ["m-0004.json", "m-0004.params", "m-0004.states"])


def test_a_checkpoint_missing_the_bnstats_its_json_names_is_not_complete(tmp_path):
    net, trainer = _built([mx.cpu(0), mx.cpu(1)])
    prefix = tmp_path / "m"
    checkpoint.save_checkpoint(net, trainer, prefix, 1, _meta(1))
    assert checkpoint.load_meta(prefix, 1)["bnstats_devices"] == 2
    assert checkpoint.complete_positions(prefix) == [(1, 0)]
    checkpoint.checkpoint_paths(prefix, 1)["bnstats"].unlink()
    assert checkpoint.complete_positions(prefix) == []   # damaged: its files stop the next run
    assert [p.name for p in checkpoint.foreign_files(prefix)] == ["m-0001.json", "m-0001.params", "m-0001.states",
                                                                 "m-symbol.json"]


def _failing_write(monkeypatch, net, trainer, step):
    """Make step ``step`` of a checkpoint write fail like a full disk part-way
    through a file: 'params', 'states', 'bnstats', or ('rename', k) for the
    k-th rename."""
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    writers = {"params": "_write_weights", "states": "_write_states", "bnstats": "_write_device_statistics"}
    if step in writers:
        def half_written(owner, path):
            Path(path).write_bytes(b"half a file")
            full()

        monkeypatch.setattr(checkpoint, writers[step], half_written)
    else:
        real, count = os.replace, [0]

        def replace(src, dst):
            count[0] += 1
            if count[0] == step[1]:
                full()
            return real(src, dst)

        monkeypatch.setattr(checkpoint.os, "replace", replace)


def _renames(net, trainer, tmp_path, first):
    """How many renames one checkpoint write makes (the journal, params,
    states, bnstats on several devices, the symbol when it is the prefix's
    first, the meta)."""
    probe = tmp_path / "probe"
    probe.mkdir()
    if not first:
        checkpoint.save_checkpoint(net, trainer, probe / "m", 1, _meta(1))
    real, count = os.replace, [0]

    def counting(src, dst):
        count[0] += 1
        return real(src, dst)

    os.replace = counting
    try:
        checkpoint.save_checkpoint(net, trainer, probe / "m", 2, _meta(2))
    finally:
        os.replace = real
    return count[0]


@pytest.mark.parametrize("first", [True, False], ids=["first checkpoint", "later checkpoint"])
def test_a_failure_at_any_step_of_a_checkpoint_write_leaves_the_folder_as_it_was(tmp_path, on_devices,
                                                                                 monkeypatch, first):
    net, trainer = on_devices
    multi = len(net.collect_params()["resnet18_v15_conv0_weight"].list_ctx()) > 1
    renames = _renames(net, trainer, tmp_path, first)
    assert renames == (5 if first else 4) + multi
    steps = ["params", "states"] + ["bnstats"] * multi + [("rename", k) for k in range(1, renames + 1)]
    for step in steps:
        folder = tmp_path / f"{step}"
        folder.mkdir()
        prefix = folder / "m"
        if not first:
            checkpoint.save_checkpoint(net, trainer, prefix, 1, _meta(1))
        before = _folder(folder)
        with monkeypatch.context() as patch:
            _failing_write(patch, net, trainer, step)
            with pytest.raises(RunFailure) as failure:
                checkpoint.save_checkpoint(net, trainer, prefix, 2, _meta(2))
        assert f"{prefix}-0002.params (No space left on device)" in str(failure.value), step
        assert _folder(folder) == before, step
        checkpoint.remove_leftovers(prefix)
        assert _folder(folder) == before, step
        assert checkpoint.foreign_files(prefix) == []


def test_a_killed_checkpoint_write_leaves_only_what_the_next_start_removes(tmp_path, on_devices):
    # A write killed after its params (and .bnstats) got their final names (the journal lists them).
    net, trainer = on_devices
    prefix = tmp_path / "m"
    checkpoint.save_checkpoint(net, trainer, prefix, 1, _meta(1))
    before = _folder(tmp_path)
    files = checkpoint.checkpoint_paths(prefix, 2)
    checkpoint.journal_path(prefix).write_text(json.dumps([str(files[name]) for name in
                                                           ("params", "states", "bnstats", "meta")]))
    files["params"].write_bytes(b"half a checkpoint")
    files["bnstats"].write_bytes(b"every device's statistics")
    Path(f"{files['bnstats']}.partial").write_bytes(b"half of them")
    assert checkpoint.foreign_files(prefix) == []   # the journal says it is ours
    assert checkpoint.refuse_foreign_files(prefix) is None
    checkpoint.remove_leftovers(prefix)
    assert _folder(tmp_path) == before
    checkpoint.refuse_foreign_files(prefix)


def test_partial_files_of_a_killed_meta_or_journal_write_are_removed_at_the_next_start(tmp_path, net_and_trainer):
    """kill -9 inside write_text_atomic of PREFIX-EEEE.json or of the journal
    leaves .NAME.partial-PID; the next start removes it when PID is gone, and
    leaves a live writer's alone."""
    net, trainer = net_and_trainer
    prefix = tmp_path / "m"
    checkpoint.save_checkpoint(net, trainer, prefix, 1, _meta(1))
    before = _folder(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()   # its PID belongs to no process now
    for name in (f".m-0002.json.partial-{dead.pid}", f".{checkpoint.journal_path(prefix).name}.partial-{dead.pid}",
                 # a killed save of an INT8 model (engine/quantize.py)
                 f".m-0001.int8-naive-8-0123456789ab.partial-{dead.pid}-symbol.json",
                 f".m-0001.int8-naive-8-0123456789ab.partial-{dead.pid}-0000.params"):
        (tmp_path / name).write_text("{")
    alive = [tmp_path / f".m-0002.json.partial-{os.getpid()}",
             tmp_path / f".m-0001.int8-naive-8-0123456789ab.partial-{os.getpid()}-0000.params",
             tmp_path / f".m-x-0002.json.partial-{dead.pid}"]   # another prefix's (m-x)
    for path in alive:
        path.write_text("{")
    checkpoint.remove_leftovers(prefix)
    assert all(path.exists() for path in alive)
    for path in alive:
        path.unlink()
    assert _folder(tmp_path) == before


def test_a_real_write_failure_through_the_runner(tmp_path):
    # A file-size limit (ulimit -f, in KiB) below a checkpoint's .params: the
    # second checkpoint cannot be written.
    prefix = tmp_path / "m"
    assert run_runner(*_args(prefix, "-e", "1")).returncode == 0
    size = sum(os.path.getsize(f"{prefix}-0001{suffix}") for suffix in (".params", ".states"))
    before = _folder(tmp_path)
    command = " ".join(["ulimit -f 20000;", "exec", sys.executable, str(ROOT / "train.py"),
                        *map(str, _args(prefix, "-e", "2"))])
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    line = one_line_error(result)
    assert line.startswith(f"train.py: error: cannot write checkpoint {prefix}-0002.params (")
    needed = float(line.split("it needs about ")[1].split(" MiB")[0])
    assert needed == pytest.approx(size / 2**20, rel=0.02)   # the checkpoint's real size
    assert " MiB are free in " in line and "the previous checkpoints are intact" in line
    assert _folder(tmp_path) == before
    net = build_net(Config(device="cpu", num_layers=18, num_classes=10), [mx.cpu()],
                    resolve_precision("float32", "cpu", None))
    checkpoint.load_weights(net, prefix, 1, [mx.cpu()])
    assert np.isfinite(net.collect_params()["resnet18_v15_dense0_weight"].data().asnumpy()).all()
