"""The torch engine (--engine torch) on the run loop every engine shares:
it learns, reports, scores its checkpoints, stops on SIGTERM and resumes
bit for bit, survives kill -9 anywhere, never touches files that are not
its own, refuses what it does not run with one line, and runs where
``import mxnet`` fails (and the MXNet engine where ``import torch`` fails)."""
import json
import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, Job, one_line_error, run_here, run_runner, runner_env, write_palette_sets
from visionbench.engine import checkpoint
from visionbench.report.schema import validate_report


def _args(prefix, *extra):
    # ResNet18 at 16 px on synthetic data: 24 steps of 8 images an epoch, a fraction of a second each.
    return ["--engine", "torch", "--device", "cpu", "-n", "1", "-b", "8", "--data-backend", "synthetic",
            "--num-examples", "192", "--image-size", "16", "--num-layers", "18", "--num-classes", "10",
            "--lr", "0.2", "--warmup-epochs", "0", "--lr-schedule", "cosine", "--mode", "train",
            "--model-prefix", prefix, "--seed", "7", *extra]


def _weights(prefix, epoch):
    return torch.load(f"{prefix}-{epoch:04d}.pt", weights_only=True)


def _assert_same_weights(prefix, reference, epoch):
    """The model's state_dict (weights and BatchNorm statistics), bit for bit."""
    found, expected = _weights(prefix, epoch), _weights(reference, epoch)
    assert found.keys() == expected.keys() and len(found) > 0
    for name, tensor in expected.items():
        assert torch.equal(found[name], tensor), name


def _resumed_from(out):
    found = re.search(r"resuming from \S+-(\d{4})(-(\d{6}))? ", out)
    return (int(found[1]), int(found[3] or 0)) if found else None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Three epochs of _args in one go: the weights every interrupted run must end with."""
    prefix = tmp_path_factory.mktemp("whole") / "m"
    result = run_runner(*_args(prefix, "-e", "3"))
    assert result.returncode == 0, result.stderr
    return prefix


@pytest.fixture(scope="module")
def palette(tmp_path_factory):
    return write_palette_sets(tmp_path_factory.mktemp("torch") / "palette", 160, 100)


def test_the_torch_engine_learns_reports_and_its_checkpoint_scores_as_its_last_validation(palette, tmp_path):
    prefix, report = tmp_path / "m", tmp_path / "r.json"
    args = ("--engine", "torch", "--device", "cpu", "-n", "1", "-b", "16", "--data-root", palette,
            "--image-size", "32", "--num-layers", "18", "--num-classes", "10", "--lr", "0.1", "-e", "4",
            "--warmup-epochs", "0", "--lr-schedule", "cosine", "--label-smoothing", "0.1", "--no-bn-wd")
    result = run_runner(*args, "--model-prefix", prefix, "--report", report)
    assert result.returncode == 0, result.stderr
    written = json.loads(report.read_text())
    validate_report(written, "train_report")
    assert written["environment"]["engine"] == "torch"
    assert written["environment"]["torch"] == torch.__version__ and written["environment"]["mxnet"] is None
    epochs = written["epochs"]
    assert epochs[-1]["train_loss"] < 0.7 * epochs[0]["train_loss"]   # label smoothing 0.1: the floor is ~0.5
    assert epochs[-1]["val_top1"] >= 0.7   # ten colours; 5% of val is mislabelled (write_palette_sets)
    assert sorted(p.name for p in tmp_path.glob("m-0004*")) == ["m-0004.json", "m-0004.pt", "m-0004.train.pt"]
    assert json.loads((tmp_path / "m-0004.json").read_text())["engine"] == "torch"
    scored = run_runner(*args, "--model-prefix", prefix, "--mode", "val")
    assert scored.returncode == 0, scored.stderr
    assert f"val top-1 {epochs[-1]['val_top1']:.4f} top-5 {epochs[-1]['val_top5']:.4f} over 100 images" \
        in scored.stdout


def test_sigterm_mid_epoch_resumes_bit_for_bit(uninterrupted, tmp_path):
    prefix, report = tmp_path / "m", tmp_path / "r.json"
    args = _args(prefix, "-e", "3", "--report", report, "--disp-batches", "6")
    job = Job(args)
    job.wait_for_line(r"^epoch 2/3 batch 6/")
    status, out, err = job.kill(signal.SIGTERM)
    assert status == 143, err
    line = one_line_error(subprocess.CompletedProcess([], 143, out, err))
    assert "stopped by SIGTERM at epoch 2, iteration" in line
    iteration = int(re.search(r"iteration (\d+)", line)[1])
    assert 6 <= iteration < 24 and checkpoint.complete_positions(prefix)[-1] == (1, iteration)
    assert json.loads(report.read_text())["status"] == "interrupted"
    resumed = run_runner(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert _resumed_from(resumed.stdout) == (1, iteration)
    _assert_same_weights(prefix, uninterrupted, 3)
    final = json.loads(report.read_text())
    assert final["status"] == "complete" and final["epochs"][1]["train_images"] == 192
    assert all(iteration == 0 for _, iteration in checkpoint.complete_positions(prefix))


def test_kill_9_at_six_points_then_resume_equals_uninterrupted(uninterrupted, tmp_path):
    prefix = tmp_path / "cut" / "m"
    prefix.parent.mkdir()
    args = _args(prefix, "-e", "3", "--disp-batches", "4")
    # Start-up: the run takes its lock on --model-prefix before it builds the model and the
    # loader, and says "resuming from" before it loads the checkpoint.
    events = [("start-up, before the first step", lambda job: job.wait_for_file(prefix.parent, "m.lock")),
              ("epoch 1, no checkpoint yet", lambda job: job.wait_for_line(r"^epoch 1/3 batch 8/")),
              ("right after a checkpoint", lambda job: job.wait_for_file(prefix.parent, "m-0001.json")),
              ("a resumed run's start-up", lambda job: job.wait_for_line("^resuming from")),
              ("mid-epoch 2", lambda job: job.wait_for_line(r"^epoch 2/3 batch 12/")),
              ("during a checkpoint write", lambda job: (job.wait_for_line("^resuming from"),
                                                         job.wait_for_file(prefix.parent, "m-0002.pt.partial")))]
    for what, event in events:
        before = checkpoint.complete_positions(prefix)
        job = Job(args)
        event(job)
        _, out, err = job.kill()
        assert job.process.returncode == -signal.SIGKILL, (what, err)
        assert _resumed_from(out) == (before[-1] if before else None), (what, out)
        if "start-up" in what:
            assert " batch " not in out, (what, out)   # killed before its first step (4 steps before a line)
        assert checkpoint.foreign_files(prefix) == [], what
    final = run_runner(*args)
    assert final.returncode == 0, final.stderr
    _assert_same_weights(prefix, uninterrupted, 3)
    assert not list(prefix.parent.glob("*partial*")) and not list(prefix.parent.glob(".*partial*"))


def test_files_that_are_not_its_checkpoints_are_refused_and_left_alone(tmp_path):
    foreign = tmp_path / "m-0001.pt"
    foreign.write_bytes(b"someone else's weights")
    result = run_runner(*_args(tmp_path / "m", "-e", "1"))
    assert result.returncode == 2
    assert "m-0001.pt look like checkpoints but are not complete ones" in one_line_error(result)
    assert foreign.read_bytes() == b"someone else's weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-0001.pt"]


@pytest.mark.parametrize("flags, message", [
    (("-n", "2"), "--engine torch: -n 2: the torch engine trains on one device per process"),
    (("--data-backend", "mxnet"), "--engine torch: --data-backend mxnet is MXNet's ImageRecordIter"),
    (("--kv-store", "horovod"), "--engine torch: --kv-store horovod is MXNet's Horovod"),
    (("--dtype", "float16"), "--engine torch --dtype float16 needs GPUs"),
    (("--mode", "inference"), "--engine torch: --mode inference measures MXNet graphs"),
], ids=["devices", "mxnet backend", "horovod", "float16 on cpu", "inference"])
def test_what_the_torch_engine_does_not_run_is_refused_with_one_line(tmp_path, flags, message):
    result = run_runner(*_args(tmp_path / "m", "-e", "2", *flags))
    assert result.returncode == 2, result.stderr
    assert message in one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def test_the_mxnet_engine_refuses_torch_only_flags_and_checkpoints_stay_with_their_engine(tmp_path):
    mxnet_args = [a for a in _args(tmp_path / "m", "-e", "1") if a not in ("--engine", "torch")]
    for flags, message in ((("--dtype", "bfloat16"), "--dtype bfloat16 runs on --engine torch"),
                           (("--compile",), "--compile is torch.compile: use it with --engine torch")):
        result = run_runner(*mxnet_args, *flags)
        assert result.returncode == 2 and message in one_line_error(result)
    assert run_runner(*mxnet_args).returncode == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_runner(*_args(tmp_path / "m", "-e", "2"))
    assert result.returncode == 2
    assert "was written by the mxnet engine: resume it with --engine mxnet" in one_line_error(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _blocking(tmp_path, module):
    """An environment whose interpreter cannot import ``module`` (a
    sitecustomize on PYTHONPATH puts None in sys.modules: ImportError)."""
    folder = tmp_path / f"no-{module}"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    env = runner_env()
    env["PYTHONPATH"] = str(folder)
    return env


@pytest.mark.parametrize("engine, blocked", [("torch", "mxnet"), ("mxnet", "torch")])
def test_each_engine_trains_where_the_other_framework_cannot_be_imported(palette, tmp_path, engine, blocked):
    env = _blocking(tmp_path, blocked)
    probe = subprocess.run([sys.executable, "-c", f"import {blocked}"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and f"import of {blocked} halted" in probe.stderr
    # The torch engine in its other modes too: bfloat16 autocast and channels_last.
    extra = ["--dtype", "bfloat16", "--input-layout", "NHWC"] if engine == "torch" else []
    result = subprocess.run(["bash", str(ROOT / "runner"), "--engine", engine, "--device", "cpu", "-b", "16",
                             "--data-root", str(palette), "--image-size", "16", "--num-layers", "18",
                             "--num-classes", "10", "-e", "1", "-i", "3", "--model-prefix", str(tmp_path / "m"),
                             "--report", str(tmp_path / "r.json"), *extra],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    [epoch] = json.loads((tmp_path / "r.json").read_text())["epochs"]
    assert epoch["train_images"] == 48 and 0 < epoch["train_loss"] < 10 and epoch["val_top1"] is not None
    io = subprocess.run(["bash", str(ROOT / "runner"), "--engine", engine, "--mode", "io", "--device", "cpu",
                         "-b", "16", "--data-root", str(palette), "--image-size", "16", "-i", "3"],
                        env=env, capture_output=True, text=True, timeout=300)
    assert io.returncode == 0 and "over 3 steps (48 images" in io.stdout, io.stderr
    other = "mxnet" if engine == "torch" else "torch"   # the engine whose framework is missing: one line
    refused = subprocess.run(["bash", str(ROOT / "runner"), "--engine", other, "--device", "cpu", "--data-root",
                              str(palette), "--model-prefix", str(tmp_path / "other")],
                             env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert f"--engine {other}: {'MXNet' if other == 'mxnet' else 'PyTorch'} cannot be imported" \
        in one_line_error(refused)


def _session(**overrides):
    from visionbench.config import Config
    from visionbench.engine.collective import Single
    from visionbench.engines.torch.session import TorchSession

    config = Config(engine="torch", device="cpu", num_layers=18, num_classes=10, image_size=16, batch_size=4,
                    data_backend="synthetic", **overrides)
    return TorchSession(config, [torch.device("cpu")], Single(), plan=None)


def test_bfloat16_runs_the_model_under_autocast_on_float32_weights():
    session = _session(dtype="bfloat16")
    seen = []
    session.model.fc.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    before = {name: p.detach().clone() for name, p in session.model.named_parameters()}
    session.stepper.begin(4)
    session.stepper.step([(torch.rand(4, 3, 16, 16), torch.arange(4.0), 0)], 0.1, 0.9, 0, 0)
    assert seen == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in session.model.parameters())
    assert not torch.equal(before["conv1.weight"], session.model.conv1.weight)   # the step updated it


def test_a_non_finite_float32_loss_stops_the_epoch_naming_the_step():
    from visionbench.cli import RunFailure

    session = _session()
    session.stepper.begin(4)
    data = torch.rand(4, 3, 16, 16)
    session.stepper.step([(data, torch.arange(4.0), 0)], 0.1, 0.9, 0, 0)
    session.stepper.step([(data * float("nan"), torch.arange(4.0), 0)], 0.1, 0.9, 0, 1)
    with pytest.raises(RunFailure, match=r"not finite \(NaN or Inf\) at epoch 1, iteration 1"):
        session.stepper.finish()


def test_both_engines_take_the_same_steps_from_the_same_weights_and_batches():
    """ResNet18 v1.5 with one set of weights (Gluon's, converted), the same
    batches, an LR and momentum that change every step, weight decay on the
    weights only: the two engines' forward, loss, backward and update agree
    to float32 rounding (it grows step by step: the network is chaotic, so
    bit-for-bit is not expected across frameworks). BatchNorm's running
    variance is left out: MXNet keeps the biased batch variance, PyTorch the
    unbiased one (README, "Two engines")."""
    from dataclasses import replace

    import mxnet as mx
    import numpy as np

    from visionbench.config import Config
    from visionbench.engine.collective import Single
    from visionbench.engine.precision import LossScaler, resolve_precision
    from visionbench.engine.trainer import MxnetStepper, Run, build_net, build_trainer
    from visionbench.engines.torch.session import TorchSession
    from visionbench.models.convert import gluon_to_torch

    config = Config(device="cpu", num_layers=18, num_classes=10, image_size=32, batch_size=8,
                    data_backend="synthetic", wd=5e-4, bn_wd=False, init_bn0=True)
    precision = resolve_precision("float32", "cpu", None)
    net = build_net(config, [mx.cpu()], precision)
    mxnet_steps = MxnetStepper(Run(config, [mx.cpu()], precision, net, build_trainer(config, net, precision), None,
                                   LossScaler(1.0, False), Single()))
    session = TorchSession(replace(config, engine="torch"), [torch.device("cpu")], Single(), None)

    def gluon_weights():
        converted = gluon_to_torch({p.name: p.data().asnumpy() for p in net.collect_params().values()},
                                   "resnet18_v1.5")
        return {name: torch.as_tensor(np.asarray(value)) for name, value in converted.items()}

    session.model.load_state_dict(gluon_weights())
    rng = np.random.default_rng(0)
    mxnet_steps.begin(8)
    session.stepper.begin(8)
    for step in range(3):
        data, label = rng.random((8, 3, 32, 32), dtype=np.float32), rng.integers(0, 10, 8).astype(np.float32)
        lr, momentum = 0.05 * (step + 1), 0.95 - 0.02 * step
        mxnet_steps.step([(mx.nd.array(data), mx.nd.array(label), 0)], lr, momentum, 0, step)
        session.stepper.step([(torch.from_numpy(data), torch.from_numpy(label), 0)], lr, momentum, 0, step)
    assert mxnet_steps.finish() == pytest.approx(session.stepper.finish(), rel=1e-5)
    expected, found = gluon_weights(), session.model.state_dict()
    compared = [name for name in expected if "running_var" not in name and "num_batches" not in name]
    assert len(compared) == 62 + 20   # ResNet18's 62 trainable arrays and its 20 BatchNorm running means
    for name in compared:
        scale = expected[name].abs().max().item() or 1.0
        assert (expected[name] - found[name]).abs().max().item() <= 1e-3 * scale, name


def test_only_the_mxnet_engines_package_imports_mxnet_at_module_level(tmp_path):
    """The mirror of test_int8's torch check: every module of the package but
    engines/mxnet's imports where ``import mxnet`` fails."""
    code = ("import pkgutil, importlib, visionbench\n"
            "for m in pkgutil.walk_packages(visionbench.__path__, 'visionbench.'):\n"
            "    if not m.name.startswith('visionbench.engines.mxnet.') and not m.name.endswith('__main__'):\n"
            "        importlib.import_module(m.name)\n")
    result = subprocess.run([sys.executable, "-c", code], env=_blocking(tmp_path, "mxnet"), capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_compile_runs_the_steps_through_torch_compile_and_trains_as_without(tmp_path, capfd):
    """--compile: dynamo captures the model's graphs during the steps, and the run ends at
    the weights of the same run without it (float32 tolerance). The backend is AOTAutograd's
    eager one (torch.compiler.set_stance's force_backend), not inductor: a cold inductor compile
    of ResNet18's forward and backward took 80 s on a loaded 2-core AMD EPYC (6 s with its
    cache warm); the flag's path up to torch.compile, and the graph capture, are the same."""
    from torch._dynamo.utils import counters

    runs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # spinning OpenMP threads on a busy 2-core machine: seconds a step
    try:
        for name, flags in (("eager", ()), ("compiled", ("--compile",))):
            (tmp_path / name).mkdir()
            torch._dynamo.reset()
            counters.clear()
            with torch.compiler.set_stance(force_backend="aot_eager"):
                result = run_here(capfd, *_args(tmp_path / name / "m", "-e", "1", "--num-examples", "32", *flags))
            assert result.returncode == 0, result.stderr
            runs[name] = (counters["stats"]["unique_graphs"], counters["aot_autograd"]["total"])
    finally:
        torch.set_num_threads(threads)
    assert runs["eager"] == (0, 0)
    assert runs["compiled"][0] >= 1 and runs["compiled"][1] >= 1, runs
    compiled, eager = _weights(tmp_path / "compiled" / "m", 1), _weights(tmp_path / "eager" / "m", 1)
    assert compiled.keys() == eager.keys() and len(eager) > 0
    for name, tensor in eager.items():
        torch.testing.assert_close(compiled[name], tensor, msg=name)


def test_cudnn_autotunes_as_the_mxnet_engine_does():
    """cudnn.benchmark on GPUs follows MXNet's MXNET_CUDNN_AUTOTUNE_DEFAULT rule:
    on, except with --rect-val (a new shape every val batch)."""
    from visionbench.config import Config
    from visionbench.engine.gpu_settings import mxnet_environment
    from visionbench.engines.torch.session import cudnn_autotune

    for rect_val in (False, True):
        mxnet_rule = mxnet_environment("gpu", rect_val)["MXNET_CUDNN_AUTOTUNE_DEFAULT"] == "1"
        assert cudnn_autotune(Config(engine="torch", rect_val=rect_val)) is mxnet_rule is (not rect_val)
