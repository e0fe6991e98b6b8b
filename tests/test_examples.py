"""Every examples/*.sh runs ./runner with its stated settings (dry runs on CPU)."""
import csv
import io
import json
import subprocess
import sys

import pytest

from conftest import ROOT, one_line_error

EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.sh"))


def run_example(name, *args):
    return subprocess.run(["bash", str(ROOT / "examples" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=240, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})


def test_the_published_set_exists():
    assert set(EXAMPLES) == {f"RN50_{p}_{n}GPU.sh" for p in ("FP16", "FP32") for n in (1, 4, 8)} | {
        "RN50_FP16_8GPU_PHASES.sh", "RN9_CIFAR10_DAWN.sh", "SCORE_FP16.sh", "SCORE_FP32.sh",
        "BENCHMARK_FP16.sh", "BENCHMARK_FP32.sh", "INFER_BENCHMARK_FP16.sh", "INFER_BENCHMARK_FP32.sh",
        "RN50_FP16_2x8GPU_DIST.sh"}


def test_two_node_recipe_scales_the_lr_by_the_global_batch():
    unset = run_example("RN50_FP16_2x8GPU_DIST.sh")
    assert unset.returncode == 2 and "set NODE_RANK" in one_line_error(unset)
    env = {"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"}
    command = ["bash", str(ROOT / "examples" / "RN50_FP16_2x8GPU_DIST.sh")]
    no_gpu = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert no_gpu.returncode == 2 and "MXNet sees no GPU" in one_line_error(no_gpu)
    steps = 3
    schedule = subprocess.run(command + ["--print-schedule", "--device", "cpu", "--data-backend", "synthetic",
                                         "--num-examples", str(steps * 208 * 16)],
                              capture_output=True, text=True, timeout=240, env=env)
    assert schedule.returncode == 0, schedule.stderr
    rows = list(csv.DictReader(io.StringIO(schedule.stdout)))
    assert len(rows) == 90 * steps   # steps of the global batch: 2 workers x 8 devices x 208
    lr = {(int(r["epoch"]), int(r["iteration"])): float(r["lr"]) for r in rows}
    assert lr[(5, 0)] == pytest.approx(0.1 * 208 * 16 / 256)


@pytest.mark.parametrize("name, expected", [
    ("BENCHMARK_FP16.sh", "--dtype float16 -n 1,4,8 -b 64,128,192,208 -e 2 -w 1 -i 100"),
    ("BENCHMARK_FP32.sh", "--dtype float32 -n 1,4,8 -b 32,64,96 -e 2 -w 1 -i 100"),
    ("INFER_BENCHMARK_FP16.sh", "--dtype float16 -n 1 -b 1,2,4,8,16,32,64,96,128,192,208 --only-inference -e 3 -w 1"),
    ("INFER_BENCHMARK_FP32.sh", "--dtype float32 -n 1 -b 1,2,4,8,16,32,64,96 --only-inference -e 3 -w 1"),
])
def test_benchmark_recipes_on_a_cpu_machine_say_why(name, expected):
    assert expected in (ROOT / "examples" / name).read_text()
    result = run_example(name, "-o", "/nonexistent/never-written.json")
    assert result.returncode == 2
    assert "MXNet sees no GPU" in one_line_error(result)


def test_inference_recipe_runs_on_cpu_with_overrides(tmp_path):
    report = tmp_path / "infer.json"
    result = run_example("INFER_BENCHMARK_FP32.sh", "--device", "cpu", "-b", "1,2", "-i", "3", "--num-layers", "18",
                         "--image-size", "32", "-o", report)
    assert result.returncode == 0, result.stderr
    records = json.loads(report.read_text())["results"]
    assert [(r["batch_size"], r["status"], r["timed_iterations"]) for r in records] == [(1, "ok", 6), (2, "ok", 6)]
    assert all("--num-layers 18" in r["command"] for r in records)


def test_seed_command_on_a_cpu_machine_says_why():
    result = run_example("RN50_FP16_8GPU.sh")
    assert result.returncode == 2
    assert "MXNet sees no GPU" in one_line_error(result)


def _schedule(name, examples):
    result = run_example(name, "--print-schedule", "--device", "cpu", "--data-backend", "synthetic",
                         "--num-examples", examples)
    assert result.returncode == 0, result.stderr
    return list(csv.DictReader(io.StringIO(result.stdout)))


@pytest.mark.parametrize("precision, batch", [("FP16", 208), ("FP32", 96)])
@pytest.mark.parametrize("devices", [1, 4, 8])
def test_rn50_step_recipes(precision, batch, devices):
    steps = 3
    rows = _schedule(f"RN50_{precision}_{devices}GPU.sh", steps * batch * devices)
    assert len(rows) == 90 * steps
    assert {r["batch_size"] for r in rows} == {str(batch)} and {r["image_size"] for r in rows} == {"224"}
    base = 0.1 * batch * devices / 256
    lr = {(int(r["epoch"]), int(r["iteration"])): float(r["lr"]) for r in rows}
    assert lr[(4, 2)] == pytest.approx(base) and lr[(30, 0)] == pytest.approx(base / 10)
    assert lr[(89, 2)] == pytest.approx(base / 1000)
    assert {r["momentum"] for r in rows} == {"0.9"}


def test_phases_recipe():
    rows = _schedule("RN50_FP16_8GPU_PHASES.sh", 8 * 512 * 2)
    assert max(int(r["epoch"]) for r in rows) == 27
    sizes = {int(r["epoch"]): r["image_size"] for r in rows}
    assert (sizes[0], sizes[13], sizes[25]) == ("128", "224", "288")


def test_cifar_dawn_recipe():
    rows = _schedule("RN9_CIFAR10_DAWN.sh", 512 * 4)
    lr = {(int(r["epoch"]), int(r["iteration"])): float(r["lr"]) for r in rows}
    assert len(rows) == 24 * 4 and lr[(0, 0)] == 0.0 and lr[(5, 0)] == pytest.approx(0.4)
    assert lr[(23, 3)] == pytest.approx(0.4 * (1 - (18 + 3 / 4) / 19))
    assert {r["batch_size"] for r in rows} == {"512"} and {r["image_size"] for r in rows} == {"32"}


@pytest.mark.parametrize("name", ["SCORE_FP16.sh", "SCORE_FP32.sh"])
def test_score_scripts_run_val_mode(name):
    text = (ROOT / "examples" / name).read_text()
    assert "--mode val" in text and '"$@"' in text
    result = run_example(name, "--help")
    assert result.returncode == 0 and "--load-epoch" in result.stdout
