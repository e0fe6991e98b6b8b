"""Every examples/*.sh: the configuration it resolves to is the README's
recipe, field by field; the training recipes' schedules; the benchmark
recipes run on this CPU with overrides; SCORE_FP32.sh scores a real
checkpoint; RN9_CIFAR10_DAWN.sh trains end to end on a small CIFAR set."""
import json
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, one_line_error, run_tool
from visionbench.config import resolve
from visionbench.engine.plan import make_plan
from visionbench.report.schema import validate_report

EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.sh"))


def run_example(name, *args, env=None):
    return subprocess.run(["bash", str(ROOT / "examples" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=240, env=dict(env or {}, PYTHON=sys.executable, PATH="/usr/bin:/bin"))


def example_argv(name):
    """The flags an example passes to ./runner or benchmark.py, as written."""
    line = next(l for l in (ROOT / "examples" / name).read_text().splitlines() if l.startswith("exec "))
    words = shlex.split(line)
    runner = next(i for i, w in enumerate(words) if w.endswith(("/runner", "benchmark.py")))
    return [w.replace("${MASTER_PORT:-9000}", "9000").replace("${MLPERF_LOG:-mlperf-resnet.log}", "mlperf-resnet.log").replace("$NODE_RANK", "0").replace("$MASTER_ADDR", "10.0.0.1")
            for w in words[runner + 1:words.index("$@")]]


def example_config(name):
    return resolve(example_argv(name))


def test_the_published_set_exists():
    assert set(EXAMPLES) == {f"RN50_{p}_{n}GPU.sh" for p in ("FP16", "FP32") for n in (1, 4, 8)} | {
        "RN50_FP16_8GPU_PHASES.sh", "RN9_CIFAR10_DAWN.sh", "SCORE_FP16.sh", "SCORE_FP32.sh",
        "BENCHMARK_FP16.sh", "BENCHMARK_FP32.sh", "INFER_BENCHMARK_FP16.sh", "INFER_BENCHMARK_FP32.sh",
        "RN50_FP16_2x8GPU_DIST.sh", "RN50_MLPERF_8GPU.sh"}


# The README's recipe table, field by field (README.md, "Recipes").
RN50_STEP = dict(arch="resnetv15", num_layers=50, num_epochs=90, lr=0.1, lr_schedule="step", warmup_epochs=5.0,
                 lr_steps="30,60,80", lr_factor=0.1, wd=1e-4, momentum=0.9, nesterov=False, init_bn0=False,
                 bn_wd=True, augment="imagenet", label_smoothing=0.0, device="gpu", data_backend="dali-gpu")
RECIPES = {
    **{f"RN50_FP16_{n}GPU.sh": dict(RN50_STEP, num_devices=n, dtype="float16", input_layout="NHWC", batch_size=208)
       for n in (1, 4, 8)},
    **{f"RN50_FP32_{n}GPU.sh": dict(RN50_STEP, num_devices=n, dtype="float32", input_layout="NCHW", batch_size=96)
       for n in (1, 4, 8)},
    "RN50_FP16_2x8GPU_DIST.sh": dict(RN50_STEP, num_devices=8, dtype="float16", input_layout="NHWC", batch_size=208,
                                     kv_store="dist_device_sync", nnodes=2, num_servers=1),
    "RN50_FP16_8GPU_PHASES.sh": dict(arch="resnetv15", num_layers=50, num_devices=8, dtype="float16",
                                     input_layout="NHWC", init_bn0=True, bn_wd=False, wd=5e-5, momentum=0.9,
                                     target_top5=0.93, augment="imagenet", data_backend="dali-gpu"),
    "RN9_CIFAR10_DAWN.sh": dict(arch="resnet9", num_classes=10, augment="cifar", image_size=32, batch_size=512,
                                num_devices=1, dtype="float16", wd=5e-4, momentum=0.9, nesterov=True,
                                target_top1=0.94, data_backend="dali-gpu"),
    # MLPerf Training v4.0's closed ResNet-50 recipe at 8 x 204 (global batch 1632, base LR 7.4); no --seed:
    # the closed division draws one.
    "RN50_MLPERF_8GPU.sh": dict(arch="resnetv15", num_layers=50, num_devices=8, batch_size=204, dtype="float16",
                                input_layout="NHWC", data_backend="dali-gpu", mode="train_val", num_epochs=37,
                                optimizer="lars", lars_eta=0.001, lars_epsilon=0.0, lr_schedule="poly",
                                warmup_epochs=2.0, end_lr=1e-4, lr_power=2.0, wd=5e-5, momentum=0.9,
                                nesterov=False, label_smoothing=0.1, eval_offset=2, eval_period=4,
                                target_top1=0.759, mlperf_log="mlperf-resnet.log", mlperf_division="closed",
                                save_frequency=0, image_size=224, iterations=None, seed_drawn=True),
    "SCORE_FP16.sh": dict(mode="val", dtype="float16", input_layout="NHWC", batch_size=256, data_backend="dali-gpu"),
    "SCORE_FP32.sh": dict(mode="val", dtype="float32", input_layout="NCHW", batch_size=256, data_backend="dali-gpu"),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_resolves_to_what_the_readme_promises(name):
    config = example_config(name)
    got = {field: getattr(config, field) for field in RECIPES[name]}
    assert got == RECIPES[name]
    per_count = name.startswith(("RN50_FP16_", "RN50_FP32_")) and "PHASES" not in name and "2x8" not in name
    family = re.sub(r"_[148]GPU\.sh$", "_{1,4,8}GPU.sh", name) if per_count else name
    table = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `")]
    assert any(f"`{family}`" in line for line in table), f"{family} is not in the README's recipe table"


def _rows(config, devices, steps):
    plan = make_plan(config, devices, lambda settings: steps)
    return {(epoch, iteration): (lr, momentum, size, batch)
            for epoch, iteration, lr, momentum, size, batch in plan.rows()}


@pytest.mark.parametrize("name", [f"RN50_{p}_{n}GPU.sh" for p in ("FP16", "FP32") for n in (1, 4, 8)])
def test_rn50_step_schedules(name):
    config = example_config(name)
    steps = 3
    rows = _rows(config, config.num_devices, steps)
    assert len(rows) == 90 * steps
    base = 0.1 * config.batch_size * config.num_devices / 256
    # Linear warmup over 5 epochs: step t of 15 runs at (t + 1) / 15 of the base LR.
    assert rows[(0, 0)][0] == pytest.approx(base / 15) and rows[(4, 2)][0] == pytest.approx(base)
    assert rows[(5, 0)][0] == pytest.approx(base) and rows[(30, 0)][0] == pytest.approx(base / 10)
    assert rows[(89, 2)][0] == pytest.approx(base / 1000)
    assert {r[1] for r in rows.values()} == {0.9} and {r[2] for r in rows.values()} == {224}


def test_two_node_recipe_scales_the_lr_by_the_global_batch():
    unset = run_example("RN50_FP16_2x8GPU_DIST.sh")
    assert unset.returncode == 2 and "set NODE_RANK" in one_line_error(unset)
    config = example_config("RN50_FP16_2x8GPU_DIST.sh")
    rows = _rows(config, 8 * 2, 3)   # 2 workers x 8 devices x 208
    assert rows[(5, 0)][0] == pytest.approx(0.1 * 208 * 16 / 256)


def test_phases_recipe():
    config = example_config("RN50_FP16_8GPU_PHASES.sh")
    rows = _rows(config, 8, 2)
    assert max(epoch for epoch, _ in rows) == 27
    assert [rows[(e, 0)][2] for e in (0, 12, 13, 24, 25)] == [128, 128, 224, 224, 288]
    assert [rows[(e, 0)][3] for e in (0, 13, 25)] == [512, 224, 128]
    plan = make_plan(config, 8, lambda s: 2)
    assert [plan.settings(e).rect_val for e in (24, 25)] == [False, True]   # rect val last
    assert (plan.settings(0).trndir, plan.settings(13).trndir, plan.settings(25).trndir) == ("-sz/160", "-sz/320", "")
    assert rows[(0, 0)][0] == pytest.approx(1.0) and rows[(7, 0)][0] == pytest.approx(2.0)


def test_mlperf_recipe_schedule_and_validation_epochs():
    config = example_config("RN50_MLPERF_8GPU.sh")
    steps = 4
    rows = _rows(config, 8, steps)
    assert len(rows) == 37 * steps
    # Warmup to 7.4 over 2 epochs, then 7.4 -> 1e-4 with power 2 over the 35 after it.
    assert rows[(1, 3)][0] == pytest.approx(7.4) and rows[(36, 3)][0] == pytest.approx(1e-4)
    # Step i of an epoch runs at the LR of progress epoch + (i + 1) / steps: 19 + 3/4 is 17.75 epochs past the warmup.
    assert rows[(19, 2)][0] == pytest.approx(1e-4 + (7.4 - 1e-4) * (1 - (17.75 / 35)) ** 2)
    plan = make_plan(config, 8, lambda settings: steps)
    # After the 3rd, 7th, .., 35th epoch as the epoch lines count them (NVIDIA's "targeting epoch 35"), and the 37th.
    assert [e + 1 for e in range(37) if plan.validates(e)] == [3, 7, 11, 15, 19, 23, 27, 31, 35, 37]
    # Extra -n/-b pass through to ./runner: --lr is per 256 images, so the base LR follows the global batch.
    on_4 = resolve(example_argv("RN50_MLPERF_8GPU.sh") + ["-n", "4"])
    assert _rows(on_4, 4, steps)[(1, 3)][0] == pytest.approx(7.4 / 2)


def test_cifar_dawn_schedule():
    config = example_config("RN9_CIFAR10_DAWN.sh")
    rows = _rows(config, 1, 4)
    assert len(rows) == 24 * 4 and rows[(0, 0)][0] == 0.0 and rows[(5, 0)][0] == pytest.approx(0.4)
    assert rows[(23, 3)][0] == pytest.approx(0.4 * (1 - (18 + 3 / 4) / 19))


@pytest.mark.parametrize("name", ["RN50_FP16_8GPU.sh", "SCORE_FP32.sh"])
def test_gpu_recipes_on_a_cpu_machine_say_why(name):
    result = run_example(name)
    assert result.returncode == 2
    assert "MXNet sees no GPU" in one_line_error(result)


# --- the benchmark recipes, run on this CPU with overrides ---------------

BENCHMARKS = {
    "BENCHMARK_FP16.sh": ("--dtype float16 -n 1,4,8 -b 64,128,192,208 -e 2 -w 1 -i 100", "train"),
    "BENCHMARK_FP32.sh": ("--dtype float32 -n 1,4,8 -b 32,64,96 -e 2 -w 1 -i 100", "train"),
    "INFER_BENCHMARK_FP16.sh": ("--dtype float16 -n 1 -b 1,2,4,8,16,32,64,96,128,192,208 --only-inference -e 3 -w 1",
                                "inference"),
    "INFER_BENCHMARK_FP32.sh": ("--dtype float32 -n 1 -b 1,2,4,8,16,32,64,96 --only-inference -e 3 -w 1",
                                "inference"),
}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_recipes_run_on_a_cpu_with_overrides(name, tmp_path):
    flags, mode = BENCHMARKS[name]
    assert " ".join(example_argv(name)).startswith(flags)
    no_gpu = run_example(name, "-o", tmp_path / "never.json")
    assert no_gpu.returncode == 2 and "MXNet sees no GPU" in one_line_error(no_gpu)
    report = tmp_path / "r.json"
    # The recipe's dtype is kept and float32 added: a float16 point cannot run
    # on a CPU and must be recorded as an error, the sweep going on.
    dtypes = "float16,float32" if "FP16" in name else "float32"
    result = run_example(name, "--device", "cpu", "-n", "1", "-b", "2", "--dtype", dtypes, "-i", "2", "-e", "2",
                         "-w", "1", "--num-layers", "18", "--image-size", "16", "-o", report)
    assert result.returncode == 0, result.stderr
    records = json.loads(report.read_text())
    validate_report(records, "benchmark_report")
    assert records["mode"] == mode
    status = {r["dtype"]: (r["status"], r["error"]) for r in records["results"]}
    assert status["float32"] == ("ok", None)
    if "FP16" in name:
        assert status["float16"][0] == "error" and "needs GPUs" in status["float16"][1]
        # float16 figures in the layout the float16 training recipes use
        layouts = {r["dtype"]: re.search(r"--input-layout (\w+)", r["command"])[1] for r in records["results"]}
        assert layouts == {"float16": "NHWC", "float32": "NCHW"}


# --- scoring and the CIFAR recipe, end to end on this CPU ----------------

def test_score_fp32_scores_a_real_checkpoint_as_its_report_did(trained_demo):
    data, prefix, report = trained_demo
    result = run_example("SCORE_FP32.sh", "--device", "cpu", "--data-backend", "dali-cpu", "--data-root", data,
                         "--model-prefix", prefix, "--load-epoch", "1", "-b", "8", "--image-size", "32",
                         "--num-layers", "18", "--num-classes", "10")
    assert result.returncode == 0, result.stderr
    top1 = float(re.search(r"val top-1 ([0-9.]+)", result.stdout)[1])
    assert top1 == pytest.approx(json.loads(report.read_text())["epochs"][0]["val_top1"], abs=5e-5)


def test_the_cifar_dawn_recipe_trains_end_to_end(tmp_path):
    from test_cifar10 import make_tarball

    make_tarball(tmp_path / "cifar-10-python.tar.gz", rows=8)   # 40 train, 8 val 32x32 images
    run_tool("cifar10_to_rec.py", tmp_path / "cifar-10-python.tar.gz", tmp_path / "c10")
    phases = "[{'ep': (0, 1), 'lr': (0.0, 0.4)}, {'ep': (1, 2), 'lr': (0.4, 0.0)}]"   # the recipe's shape, 2 epochs
    result = run_example("RN9_CIFAR10_DAWN.sh", "--device", "cpu", "--dtype", "float32", "--data-backend", "dali-cpu",
                         "--data-root", tmp_path / "c10", "-b", "8", "--phases", phases,
                         "--model-prefix", tmp_path / "m", "--report", tmp_path / "r.json",
                         "--dawn-tsv", tmp_path / "d.tsv")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    validate_report(report, "train_report")
    config = report["config"]
    assert (config["arch"], config["augment"], config["nesterov"], config["wd"], config["num_classes"]) == \
        ("resnet9", "cifar", True, 5e-4, 10)
    assert report["status"] == "complete" and [e["epoch"] for e in report["epochs"]] == [0, 1]
    assert all(e["train_images"] == 40 and e["val_images"] == 8 for e in report["epochs"])
    assert config["target_top1"] == 0.94 and "top1" in report["summary"]["time_to_target_s"]
    tsv = (tmp_path / "d.tsv").read_text().splitlines()
    assert tsv[0] == "epoch\thours\ttop1Accuracy\ttop5Accuracy" and len(tsv) == 3
