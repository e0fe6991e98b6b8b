"""The trainer on CPU: data-parallel equivalence, kill-and-resume, schedules
through the runner, reports, checkpoints, bad input."""
import csv
import io
import json
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import mxnet as mx
import numpy as np
import pytest

from conftest import ROOT, one_line_error, run_here, run_runner, runner_env
from visionbench.config import Config
from visionbench.engine.plan import make_plan
from visionbench.engine.precision import LossScaler, Precision, resolve_precision
from visionbench.engine.trainer import Run, build_trainer, train_epoch
from visionbench.report.schema import validate_report
from visionbench.cli import RunFailure, UsageError


class FixedLoader:
    """The same global batches every epoch, split evenly over the devices
    (a data source for the step function; MXNet itself runs for real)."""

    def __init__(self, batches, devices):
        self.batches, self.devices = batches, devices
        self.spec = SimpleNamespace(batch_size=len(batches[0][1]) // len(devices), devices=devices)
        self.skipped_records = 0   # the Loader interface: records left out as undecodable

    def __len__(self):
        return len(self.batches)

    def epoch(self, epoch, start_step=0):
        n = len(self.devices)
        for data, label in self.batches[start_step:]:
            parts = zip(np.array_split(data, n), np.array_split(label, n), self.devices)
            yield [(mx.nd.array(d, ctx=c), mx.nd.array(l, ctx=c), 0) for d, l, c in parts]


def _tiny_net(devices):
    # No BatchNorm: per-device batch statistics would differ by design.
    net = mx.gluon.nn.HybridSequential(prefix="tiny_")
    with net.name_scope():
        net.add(mx.gluon.nn.Conv2D(8, 3, padding=1, activation="relu"), mx.gluon.nn.GlobalAvgPool2D(),
                mx.gluon.nn.Dense(5))
    mx.random.seed(3)
    net.initialize(mx.init.Xavier(), ctx=devices)
    net.hybridize(static_alloc=True, static_shape=True)
    return net


def test_two_cpu_contexts_take_the_same_steps_as_one():
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((8, 3, 6, 6)).astype(np.float32), rng.integers(0, 5, 8).astype(np.float32))
               for _ in range(4)]
    weights, losses = [], []
    for devices in ([mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]):
        # the same global batch of 8: 8 per device on one, 4 on two
        config = Config(data_backend="synthetic", device="cpu", lr=0.5, warmup_epochs=0, num_epochs=2,
                        batch_size=8 // len(devices))
        net = _tiny_net(devices)
        precision = resolve_precision("float32", "cpu", None)
        trainer = build_trainer(config, net, precision)
        plan = make_plan(config, len(devices), lambda settings: 4)
        run = Run(config, devices, precision, net, trainer, plan, LossScaler(1.0, False))
        result = train_epoch(run, 0, FixedLoader(batches, devices), progress=False)
        losses.append(result["train_loss"])
        weights.append({k.split("_", 1)[1]: v.data(devices[0]).asnumpy() for k, v in net.collect_params().items()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for name in weights[0]:
        np.testing.assert_allclose(weights[0][name], weights[1][name], rtol=1e-5, atol=1e-6)


def _fixed_run(devices, scaler, precision, batches):
    config = Config(data_backend="synthetic", device="cpu", lr=0.5, warmup_epochs=0, num_epochs=2,
                    batch_size=8 // len(devices))
    net = _tiny_net(devices)
    trainer = build_trainer(config, net, precision)
    run = Run(config, devices, precision, net, trainer, make_plan(config, len(devices), lambda s: len(batches)),
              scaler)
    result = train_epoch(run, 0, FixedLoader(batches, devices), progress=False)
    return result, {k.split("_", 1)[1]: v.data(devices[0]).asnumpy() for k, v in net.collect_params().items()}


def test_dynamic_loss_scaling_in_the_training_loop():
    # float16's loss scaling on the real loop, in float32 (the CPU has no
    # float16 convolution): the scale cancels exactly on clean steps, and a
    # step whose gradients overflow is skipped and halves the scale.
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((8, 3, 6, 6)).astype(np.float32), rng.integers(0, 5, 8).astype(np.float32))
               for _ in range(4)]
    devices = [mx.cpu(0), mx.cpu(1)]
    plain = resolve_precision("float32", "cpu", None)
    _, unscaled = _fixed_run(devices, LossScaler(1.0, False), plain, batches)
    scaled_precision = Precision("float32", False, 1024.0, True)
    scaler = LossScaler(1024.0, dynamic=True)
    result, scaled = _fixed_run(devices, scaler, scaled_precision, batches)
    assert result["skipped_steps"] == 0 and scaler.scale == 1024.0
    for name in unscaled:
        np.testing.assert_allclose(scaled[name], unscaled[name], rtol=1e-5, atol=1e-6)
    # The scale doubles after every 2 clean steps: each step is still
    # unscaled by the scale its backward ran with.
    growing = LossScaler(1024.0, dynamic=True, growth_interval=2)
    _, grown = _fixed_run(devices, growing, scaled_precision, batches)
    assert growing.scale == 4096.0
    for name in unscaled:
        np.testing.assert_allclose(grown[name], unscaled[name], rtol=1e-5, atol=1e-6)
    # An inf in one device's part of the second batch: that step is skipped.
    poisoned = [batches[0], (batches[1][0].copy(), batches[1][1])] + batches[2:]
    poisoned[1][0][5, 0, 0, 0] = np.inf
    scaler = LossScaler(1024.0, dynamic=True)
    with pytest.raises(RunFailure, match="not finite"):   # unscaled float32 stops; the scaler skips instead
        _fixed_run(devices, LossScaler(1.0, False), plain, poisoned)
    result, _ = _fixed_run(devices, scaler, scaled_precision, poisoned)
    assert result["skipped_steps"] == 1 and scaler.scale == 512.0
    _, without = _fixed_run(devices, LossScaler(1.0, False), plain, [batches[0]] + batches[2:])
    _, skipped = _fixed_run(devices, LossScaler(1024.0, True), scaled_precision, poisoned)
    for name in without:
        np.testing.assert_allclose(skipped[name], without[name], rtol=1e-5, atol=1e-6)


def test_loss_scaler():
    scaler = LossScaler(8.0, dynamic=True, growth_interval=3)
    assert scaler.update(True) and scaler.update(True)
    assert not scaler.update(False) and scaler.scale == 4.0 and scaler.skipped_steps == 1
    for _ in range(3):
        assert scaler.update(True)
    assert scaler.scale == 8.0
    capped = LossScaler(2.0 ** 24, dynamic=True, growth_interval=1)
    assert capped.update(True) and capped.scale == 2.0 ** 24
    static = LossScaler(128.0, dynamic=False)
    assert static.update(False) and static.scale == 128.0


def test_precision_rules():
    assert resolve_precision("float32", "cpu", None) == Precision("float32", False, 1.0, False)
    assert resolve_precision("float16", "gpu", "512") == Precision("float16", True, 512.0, False)
    assert resolve_precision("float16", "gpu", None).dynamic_loss_scale
    with pytest.raises(UsageError, match="no float16 GEMM"):
        resolve_precision("float16", "cpu", None)
    with pytest.raises(UsageError, match="--loss-scale"):
        resolve_precision("float16", "gpu", "lots")


@pytest.fixture(scope="module")
def tiny_demo(trained_demo):
    return trained_demo[0]   # the session's small demo set (80 train, 40 val images), only read


def _train_args(data, prefix, *extra):
    return ["--device", "cpu", "-n", "1", "-b", "8", "--data-root", data, "--image-size", "32",
            "--num-layers", "18", "--num-classes", "10", "--lr", "0.4", "--warmup-epochs", "0",
            "--lr-steps", "100", "--model-prefix", prefix, "--seed", "5", *extra]


def _params(prefix, epoch):
    loaded = mx.nd.load(f"{prefix}-{epoch:04d}.params")
    return {k: v.asnumpy() for k, v in loaded.items()}


def test_kill_and_resume_equals_uninterrupted(tiny_demo, tmp_path, capfd):
    whole = tmp_path / "whole" / "m"
    whole.parent.mkdir()
    result = run_runner(*_train_args(tiny_demo, whole, "-e", "3", "--report", tmp_path / "whole.json",
                                     "--dawn-tsv", tmp_path / "whole.tsv"))
    assert result.returncode == 0, result.stderr
    killed = tmp_path / "killed" / "m"
    killed.parent.mkdir()
    args = ["bash", str(ROOT / "runner"), *map(str, _train_args(tiny_demo, killed, "-e", "3",
                                                                "--report", tmp_path / "killed.json"))]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=runner_env())   # as run_runner: both runs in one environment
    deadline = time.monotonic() + 240
    while not Path(f"{killed}-0001.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "no first checkpoint"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert not Path(f"{killed}-0003.json").exists(), "the run finished before the kill"
    # The resumed run, killed by nobody: in this process (run_here: no interpreter start-up).
    resumed = run_here(capfd, *_train_args(tiny_demo, killed, "-e", "3", "--report", tmp_path / "killed.json"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    final_whole, final_killed = _params(whole, 3), _params(killed, 3)
    assert final_whole.keys() == final_killed.keys()
    for name in final_whole:
        np.testing.assert_allclose(final_killed[name], final_whole[name], rtol=1e-4, atol=1e-5)
    report = json.loads((tmp_path / "killed.json").read_text())
    validate_report(report, "train_report")
    assert [e["epoch"] for e in report["epochs"]] == [0, 1, 2] and report["status"] == "complete"
    whole_report = json.loads((tmp_path / "whole.json").read_text())
    for a, b in zip(report["epochs"], whole_report["epochs"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_top1"] == pytest.approx(b["val_top1"], abs=1e-9)
    tsv = (tmp_path / "whole.tsv").read_text().splitlines()
    assert tsv[0] == "epoch\thours\ttop1Accuracy\ttop5Accuracy" and len(tsv) == 4
    epoch, hours, top1, top5 = tsv[3].split("\t")
    assert epoch == "2" and float(hours) > 0 and float(top1) == pytest.approx(100 * whole_report["epochs"][2]["val_top1"], abs=0.01)
    # checkpoints: the last 2 and the best are kept
    kept = sorted(p.name for p in whole.parent.glob("m-[0-9]*.json"))
    assert "m-0003.json" in kept and "m-0002.json" in kept and len(kept) <= 3
    # --mode val scores a checkpoint
    scored = run_here(capfd, "--mode", "val", "--device", "cpu", "--data-root", tiny_demo, "--image-size", "32",
                      "--num-layers", "18", "--num-classes", "10", "--model-prefix", whole, "--load-epoch", "3",
                      "-b", "8")
    assert scored.returncode == 0, scored.stderr
    assert f"top-1 {whole_report['epochs'][2]['val_top1']:.4f}" in scored.stdout


def test_resume_refuses_another_model_and_fresh_runs_keep_existing_files(tiny_demo, tmp_path, capfd):
    prefix = tmp_path / "m"
    assert run_here(capfd, *_train_args(tiny_demo, prefix, "-e", "1", "--mode", "train")).returncode == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = run_here(capfd, *_train_args(tiny_demo, prefix, "-e", "2", "--num-layers", "34"))
    assert "holds resnet18_v1.5 with 10 classes, not resnet34_v1.5" in one_line_error(other)
    refuse = run_here(capfd, *_train_args(tiny_demo, prefix, "-e", "2", "--no-resume"))
    assert "checkpoints exist" in one_line_error(refuse)
    (tmp_path / "r.json").write_text("{}")
    fresh = run_here(capfd, *_train_args(tiny_demo, tmp_path / "n", "-e", "1", "--report", tmp_path / "r.json"))
    assert "already exists" in one_line_error(fresh)
    assert (tmp_path / "r.json").read_text() == "{}"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before} == before
    # a damaged checkpoint: refused with its name, left as it is
    params = tmp_path / "m-0001.params"
    params.write_bytes(params.read_bytes()[:1000])
    damaged = run_here(capfd, *_train_args(tiny_demo, prefix, "-e", "2"))
    assert "m-0001.params does not fit this model" in one_line_error(damaged)
    assert params.stat().st_size == 1000


def test_two_cpu_contexts_through_the_runner_learn(tmp_path):
    # -n 2: split over two CPU contexts, gradients reduced by the kvstore
    result = run_runner("--device", "cpu", "-n", "2", "--data-backend", "synthetic", "--num-examples", "64", "-b", "8",
                    "--image-size", "16", "--num-layers", "18", "--num-classes", "4", "-e", "5", "--mode", "train",
                    "--lr", "0.8", "--warmup-epochs", "0", "--model-prefix", tmp_path / "m", "--report", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["environment"]["device_count"] == 2
    losses = [e["train_loss"] for e in report["epochs"]]
    # The same 4 batches every epoch: memorised. (After 3 epochs the loss
    # was 0.55 of the first on an AMD EPYC, 0.18 after 5.)
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("args, words", [
    (["--dtype", "float16"], "no float16 GEMM"),
    (["-b", "0"], "batch-size must be at least 1"),
    (["--lr", "-0.1"], "lr must not be negative"),
    (["--phases", "[{'ep': (0, 2), 'lr': 1}, {'ep': (3, 4), 'lr': 1}]"], "leave epochs 2..2 without an LR"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--benchmark"], "use it with --mode train"),
    (["--mode", "inference", "-e", "1"], "nothing would be timed"),
    (["--mode", "train", "--benchmark", "-e", "3", "--benchmark-warmup-epochs", "-1"], "benchmark-warmup-epochs"),
])
def test_bad_training_input(tmp_path, capfd, args, words):
    result = run_here(capfd, "--device", "cpu", "--data-backend", "synthetic", "--model-prefix", tmp_path / "m",
                      *args)
    assert result.returncode == 2
    assert words in one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def test_iterations_cap_the_steps_of_every_epoch(capfd):
    result = run_here(capfd, "--print-schedule", "--device", "cpu", "--data-backend", "synthetic", "-b", "8",
                      "-e", "2", "-i", "3", "--lr-schedule", "cosine", "--warmup-epochs", "0")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["epoch"], r["iteration"]) for r in rows] == [(e, i) for e in "01" for i in "012"]
    assert float(rows[2]["lr"]) == pytest.approx(0.1 * 8 / 256 / 2)   # cosine half-way once 3 of 6 steps are done


def test_print_schedule_step_recipe_and_phases(capfd):
    result = run_here(capfd, "--print-schedule", "--device", "cpu", "--data-backend", "synthetic", "-n", "8",
                      "-b", "208", "--num-examples", "16640", "-e", "90")   # 10 steps per epoch
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 900 and list(rows[0]) == ["epoch", "iteration", "lr", "momentum", "image_size", "batch_size"]
    base = 0.1 * 8 * 208 / 256
    lr = {(int(r["epoch"]), int(r["iteration"])): float(r["lr"]) for r in rows}
    assert lr[(0, 0)] == pytest.approx(base / 50) and lr[(4, 9)] == pytest.approx(base)
    assert lr[(29, 9)] == pytest.approx(base) and lr[(30, 0)] == pytest.approx(base / 10)
    assert lr[(60, 0)] == pytest.approx(base / 100) and lr[(80, 0)] == pytest.approx(base / 1000)
    cycle = run_here(capfd, "--print-schedule", "--device", "cpu", "--data-backend", "synthetic", "-b", "256",
                     "--num-examples", "2560", "-e", "10", "--lr-schedule", "onecycle", "--lr", "0.4")
    rows = list(csv.DictReader(io.StringIO(cycle.stdout)))
    assert len(rows) == 100   # 10 epochs x 10 steps; the peak at step 0.3 x 100 - 1 = 29
    assert (float(rows[0]["lr"]), float(rows[0]["momentum"])) == pytest.approx((0.4 / 25, 0.95))
    assert (float(rows[29]["lr"]), float(rows[29]["momentum"])) == pytest.approx((0.4, 0.85))
    assert (float(rows[99]["lr"]), float(rows[99]["momentum"])) == pytest.approx((0.4 / 25 / 1e4, 0.95))
    from test_schedules import IMAGENET18
    phased = run_here(capfd, "--print-schedule", "--device", "cpu", "--data-backend", "synthetic", "-n", "8",
                      "--num-examples", "65536", "--phases", IMAGENET18)
    assert phased.returncode == 0, phased.stderr
    rows = list(csv.DictReader(io.StringIO(phased.stdout)))
    first = {int(r["epoch"]): r for r in reversed(rows)}   # first row of each epoch
    assert sorted(first) == list(range(28))
    assert (first[0]["image_size"], first[0]["batch_size"], float(first[0]["lr"])) == ("128", "512", 1.0)
    assert (first[13]["image_size"], first[13]["batch_size"], float(first[13]["lr"])) == ("224", "224", 0.4375)
    assert (first[25]["image_size"], first[25]["batch_size"], float(first[25]["lr"])) == ("288", "128", 0.0025)
    steps = {e: sum(1 for r in rows if int(r["epoch"]) == e) for e in (0, 13, 25)}
    assert steps == {0: 16, 13: 36, 25: 64}   # synthetic epochs: whole steps, 65536 // (8 x bs)
