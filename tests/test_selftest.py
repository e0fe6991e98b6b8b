"""./runner --self-test: the readiness check, on this CPU machine for real,
and on GPUs through the `gpu`-marked tests (make test-gpu)."""
import os
import re
from dataclasses import replace

import mxnet as mx
import pytest

from conftest import run_runner
from visionbench import selftest
from visionbench.config import Config

GPU_CHECKS = ("float16 NHWC training steps", "dali-gpu train and val pipelines", "allreduce over GPUs")


def _rows(stdout):
    """{check name: (where, result, detail)} from the printed table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2] in ("pass", "fail", "skipped"):
            rows[cells[0]] = tuple(cells[1:])
    return rows


def test_self_test_on_a_cpu_machine_passes_and_lists_the_gpu_checks_as_skipped(tmp_path, monkeypatch):
    # The caller's CUDA_VISIBLE_DEVICES and LD_LIBRARY_PATH reach the run (make test-gpu's self-test
    # must find CUDA, cuDNN and NCCL where the user's shell does, on the GPUs it picked).
    libraries = ":".join(filter(None, [str(tmp_path), os.environ.get("LD_LIBRARY_PATH")]))
    monkeypatch.setenv("LD_LIBRARY_PATH", libraries)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "0"))
    result = run_runner("--self-test", "--device", "cpu", "-n", "2", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    shown = re.search(r"^environment: CUDA_VISIBLE_DEVICES=(.*), LD_LIBRARY_PATH=(.*)$", result.stdout, re.M)
    assert shown and shown[1] == os.environ["CUDA_VISIBLE_DEVICES"], result.stdout
    assert str(tmp_path) in shown[2].split(":"), shown[2]   # (cv2, imported by the run, adds its own folder)
    assert re.search(r"MXNet 1\.9\.1 \(CPU build.*DALI 1\.34\.0", result.stdout)
    rows = _rows(result.stdout)
    ran = {name: row for name, row in rows.items() if row[1] != "skipped"}
    assert set(ran) == {"float16 contract", "dali-gpu pipeline contract", "float32 training steps",
                        "dali-cpu train and val pipelines", "allreduce (kvstore device)"}
    assert all(row[1] == "pass" for row in ran.values()), ran
    assert "each pulled the sum 3" in rows["allreduce (kvstore device)"][2]          # 1 + 2 over 2 contexts
    assert "24 train and 24 val images, labels match" in rows["dali-cpu train and val pipelines"][2]
    skipped = {name: row for name, row in rows.items() if row[1] == "skipped"}
    assert len(skipped) == 3 and all(any(name.startswith(g) for g in GPU_CHECKS) for name in skipped)
    assert all(row[2] == "no GPU visible to MXNet" for row in skipped.values())
    assert re.search(r"self-test: 5 of 5 checks passed, 3 skipped, \d+ s", result.stdout)


def test_a_failing_check_fails_the_self_test_with_its_reason(monkeypatch, capsys):
    def wrong(kv_store, contexts):
        raise selftest.CheckFailed("cpu(1) pulled 1, not the sum 3: the device kvstore does not reduce")

    monkeypatch.setattr(selftest, "allreduce_check", wrong)
    for slow in ("float16_contract_check", "dali_contract_check"):   # run for real in the test above
        monkeypatch.setattr(selftest, slow, lambda: "passed")
    monkeypatch.setattr(selftest, "training_check", lambda config, context: "passed")
    status = selftest.run_self_test(replace(Config(), device="cpu", num_devices=2, self_test=True))
    out = capsys.readouterr().out
    assert status == 1
    assert _rows(out)["allreduce (kvstore device)"][1:] == ("fail", "cpu(1) pulled 1, not the sum 3: the device "
                                                                   "kvstore does not reduce")
    assert "4 of 5 checks passed" in out


def test_the_pipeline_check_sees_labels_that_do_not_belong_to_their_images(tmp_path):
    config = replace(Config(), device="cpu", dtype="float32", data_backend="dali-cpu")
    selftest.write_colour_set(tmp_path / "colour", labels=[(i + 1) % selftest.SET_IMAGES
                                                            for i in range(selftest.SET_IMAGES)])
    with pytest.raises(selftest.CheckFailed, match="do not belong to their images"):
        selftest.pipelines_check(config, mx.cpu(0), tmp_path)


def test_the_self_test_runs_with_the_gpu_settings_real_runs_use(monkeypatch):
    # MXNet reads MXNET_OPTIMIZER_AGGREGATION_SIZE when the optimizer is created: the
    # self-test's training steps take the aggregated update only if the settings are in the
    # environment before it starts. Device resolution is bypassed (this machine has no GPU);
    # the self-test itself is replaced by a probe of the environment it would run in.
    from visionbench import main as entry
    from visionbench.engine.gpu_settings import mxnet_environment

    settings = mxnet_environment("gpu", False)
    for name in [*settings, "MXNET_USE_FUSION"]:
        # set, then removed: monkeypatch then removes whatever main() sets (a plain delenv of
        # an unset name records nothing to undo, and the settings would leak into later tests)
        monkeypatch.setenv(name, "unset by the test")
        monkeypatch.delenv(name)
    monkeypatch.setattr(entry, "resolve_devices", lambda config: replace(config, device="gpu",
                                                                         data_backend="dali-gpu"))
    seen = {}
    monkeypatch.setattr(selftest, "run_self_test",
                        lambda config: seen.update({name: os.environ.get(name) for name in settings}) or 0)
    assert entry.main(["--self-test"]) == 0
    assert seen == settings and settings["MXNET_OPTIMIZER_AGGREGATION_SIZE"] == "54"


# --- on GPUs (make test-gpu): the checks ./runner --self-test runs there ---

def _gpus():
    return [mx.gpu(i) for i in range(mx.context.num_gpus())]


@pytest.mark.gpu
def test_float16_nhwc_resnet50_steps_on_every_gpu():
    config = replace(Config(), device="gpu", dtype="float16", input_layout="NHWC", data_backend="dali-gpu")
    for context in _gpus():
        assert "float16 NHWC" in selftest.training_check(config, context)


@pytest.mark.gpu
def test_dali_gpu_pipelines_on_every_gpu(tmp_path):
    config = replace(Config(), device="gpu", dtype="float16", input_layout="NHWC", data_backend="dali-gpu")
    for context in _gpus():
        assert "labels match their images" in selftest.pipelines_check(config, context, tmp_path)


@pytest.mark.gpu
@pytest.mark.parametrize("kv_store", ["device", "nccl"])
def test_allreduce_over_all_gpus(kv_store):
    assert "each pulled the sum" in selftest.allreduce_check(kv_store, _gpus())


@pytest.mark.gpu
def test_self_test_on_the_gpus_passes():
    result = run_runner("--self-test", "-n", str(mx.context.num_gpus()), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compute capability" in result.stdout and "cuDNN" in result.stdout
