"""``python -m visionbench.gpucheck`` (issue 23): the toy-size check on CPUs
where MXNet, DALI, jsonschema and the other packages the GPU machines lack
cannot be imported, its report under the benchmark schema and its table, and the
one-line refusal on a machine without a GPU."""
import json
import re
import subprocess
import sys

import jsonschema
import pytest
from conftest import ROOT, one_line_error, runner_env

# What the GPU machines of issue 23 do not have (of what pyproject.toml pins).
ABSENT = ("mxnet", "nvidia.dali", "jsonschema", "tabulate", "scipy", "mlperf_logging")


def _without(tmp_path, modules):
    """An environment whose interpreter cannot import ``modules`` (a
    sitecustomize on PYTHONPATH puts None in sys.modules: ImportError)."""
    folder = tmp_path / "blocked"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules))
    return dict(runner_env(), PYTHONPATH=str(folder))


def _gpucheck(*args, env, timeout=240):
    return subprocess.run([sys.executable, "-m", "visionbench.gpucheck", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)


def _table_rows(markdown: str) -> list:
    """The cells of the table's data rows (after its header and rule)."""
    lines = [line for line in markdown.splitlines() if re.match(r"^\| \d+ \|", line)]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_tiny_check_runs_where_mxnet_dali_and_jsonschema_cannot_be_imported(tmp_path):
    env = _without(tmp_path, ABSENT)
    for module in ABSENT:
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True)
        assert probe.returncode != 0 and "halted" in probe.stderr, module
    out = tmp_path / "check"
    result = _gpucheck(out, "--device", "cpu", "--tiny", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0].startswith("device "), result.stdout[:500]   # versions first
    report = json.loads((out / "gpucheck.json").read_text())
    schema = json.loads((ROOT / "report_schema" / "benchmark_report.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(report)
    assert report["status"] == "complete" and report["environment"]["mxnet"] is None
    assert report["environment"]["dali"] is None and report["environment"]["torch"]
    results = report["results"]
    table = (out / "gpucheck.md").read_text()
    assert table in result.stdout   # printed too
    rows = _table_rows(table)
    assert len(rows) == len(results) == 27
    for index, (row, record) in enumerate(zip(rows, results)):
        assert row[0] == str(index) and row[3] == str(record["batch_size"]) and row[4] == record["dtype"]
        assert row[5] == record["status"]
        assert row[6] == (f"{record['ips']:.4g}" if record["ips"] else "-")
        if record["latency_ms"]:
            assert row[7] == " / ".join(f"{record['latency_ms'][k]:.3g}" for k in ("p50", "p90", "p99"))
    parts = [row[1] for row in rows]
    assert parts.count("readiness") == 3 and parts.count("synthetic") == 16 and parts.count("inference") == 3
    readiness = [row for row in rows if row[1] == "readiness"]
    assert [row[5] for row in readiness[:2]] == ["ok", "ok"] and "62 of 62 weights changed" in readiness[0][9]
    labels = readiness[2]   # through the nvjpeg backend's CPU path (OpenCV decoding, the GPU's augmentation)
    assert labels[5] == "ok" and re.match(r"12 samples of 12 images, each label its image's colour class", labels[9])
    measured = [r for r in results if r["status"] == "ok" and r["timed_images"]]
    assert len(measured) >= 14 and all(r["timed_s"] > 0 for r in measured)
    # img/s is the timed images over the timed seconds (not, say, the untimed epoch's).
    assert all(r["ips"] == pytest.approx(r["timed_images"] / r["timed_s"], rel=1e-6) for r in measured)
    assert [r["batch_size"] for r in measured if r["latency_ms"]] == [1, 2, 4]   # the inference points
    cpu_decoding = next(r for r, row in zip(results, rows) if "dali-cpu" in row[2])
    assert cpu_decoding["status"] == "error" and cpu_decoding["error"].startswith("skipped: DALI is not installed")
    compiled = [r for r, row in zip(results, rows) if row[2].endswith("compile") and r["status"] == "ok"]
    assert len(compiled) == 1 and "--compile" in compiled[0]["command"]
    assert (compiled[0]["batch_size"], compiled[0]["dtype"]) == (4, "bfloat16")   # the larger batch, as on GPUs
    assert "24 epochs" in next(row for row in rows if row[1] == "resnet9")[9]
    # The nvjpeg backend's train crops, batched and by a per-image loop: both measured, with their
    # operators per batch (the loop's about 3.5 per image; the batch's about 20 per size group).
    crops = {row[2]: (row, record) for row, record in zip(rows, results) if row[1] == "augmentation"}
    assert set(crops) == {"nvjpeg train crops, batched resample", "nvjpeg train crops, per-image F.interpolate loop"}
    operators = {}
    for label, (row, record) in crops.items():
        assert record["status"] == "ok" and record["batch_size"] == 4 and record["timed_images"] == 20
        operators[label] = int(re.match(r"(\d+) aten operators a batch", row[9])[1])
        assert "augment_ops --device cpu --batch-size 4 --image-size 16" in record["command"]
    assert operators["nvjpeg train crops, per-image F.interpolate loop"] >= 3 * 4


def test_without_a_gpu_the_check_says_so_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the check would run")
    env = runner_env()
    refused = _gpucheck(tmp_path / "out", env=env, timeout=120)
    assert refused.returncode == 2
    assert "no CUDA GPU visible to PyTorch" in one_line_error(refused) and "--device cpu --tiny" in refused.stderr
    cpu_full = _gpucheck(tmp_path / "out", "--device", "cpu", env=env, timeout=120)
    assert cpu_full.returncode == 2 and "add --tiny" in one_line_error(cpu_full)
    assert not (tmp_path / "out").exists()


def test_no_numpy_name_that_numpy_2_removed():
    """ruff's NPY201 (the test extra pins ruff): names NumPy 2.0 removed or
    moved (np.float_, np.product, np.in1d, np.NaN, np.cast, ...), which the
    GPU machines' numpy 2 would fail on at run time."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "NPY201", "--no-cache",
                             "--output-format", "concise", "visionbench", "data_prep", "train.py", "benchmark.py"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mfu_reads_the_peak_of_the_device_by_its_whole_name():
    from visionbench.gpucheck.machine import RESNET50_TRAIN_GFLOP, mfu, peak_tflops

    peaks = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H200": 989.0, "NVIDIA H100 PCIe": 756.0,
             "NVIDIA H100 NVL": None, "NVIDIA H200 NVL": None, "NVIDIA A100-SXM4-80GB": 312.0,
             "NVIDIA A100-PCIE-40GB": 312.0, "NVIDIA L4": 121.0, "NVIDIA L40S": None, "Tesla V100-SXM2-16GB": None}
    assert {name: peak_tflops(name) for name in peaks} == peaks
    # 5,000 img/s of ResNet50 training on an H200: 122.5 TFLOP/s of 989.
    assert mfu(5000.0, RESNET50_TRAIN_GFLOP, 989.0) == pytest.approx(0.12386, abs=1e-5)
    assert mfu(5000.0, RESNET50_TRAIN_GFLOP, None) is None and mfu(None, RESNET50_TRAIN_GFLOP, 989.0) is None


def test_points_past_the_budget_are_timeout_records_and_not_failures(tmp_path):
    out = tmp_path / "check"
    result = _gpucheck(out, "--device", "cpu", "--tiny", "--budget-s", "0.001", env=runner_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "27 of 27 points were not run within --budget-s" in result.stderr
    report = json.loads((out / "gpucheck.json").read_text())
    jsonschema.Draft202012Validator(json.loads((ROOT / "report_schema" / "benchmark_report.schema.json")
                                               .read_text())).validate(report)
    assert {r["status"] for r in report["results"]} == {"timeout"} and len(report["results"]) == 27
    again = _gpucheck(out, "--device", "cpu", "--tiny", env=runner_env(), timeout=120)
    assert again.returncode == 2 and "already exists" in one_line_error(again)


def test_the_gpu_sizes_compile_one_point_the_headline_one(tmp_path, monkeypatch):
    """Eight cold inductor compiles of ResNet50 would not fit issue 23's 8
    minutes: the GPU check compiles batch 256, bfloat16, channels_last only;
    the other compiled points are skipped records (nothing is trained here:
    the measurement is replaced by a recorder)."""
    from visionbench.gpucheck import __main__ as gpucheck
    from visionbench.gpucheck import training
    from visionbench.gpucheck.sizes import GPU

    ran = []
    monkeypatch.setattr(training, "timed_training", lambda argv, tiny_compile=False: ran.append(argv) or {"ips": 1.0})
    check = gpucheck.Check("gpu", GPU, tmp_path, "gpucheck", deadline=float("inf"))
    gpucheck.synthetic_points(check, compiled=True)
    for point, measure in check.points:
        gpucheck.run_point(point, measure, check.deadline)
    assert len(check.points) == 8 and len(ran) == 1
    kept = [point for point, _ in check.points if point.status == "ok"]
    assert [(p.batch, p.dtype, p.label) for p in kept] == [(256, "bfloat16", "channels_last compile")]
    assert "--compile" in ran[0] and ran[0][ran[0].index("-b") + 1] == "256"
    assert all(p.error.startswith("skipped: the check compiles one point") for p, _ in check.points if p not in kept)
