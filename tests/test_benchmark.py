"""benchmark.py: CPU sweeps for training and inference, validated reports,
failure isolation, reproducible point commands, one-line refusals."""
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings, strategies as st

from conftest import ROOT, one_line_error, validate_with_the_schema_file_alone
from visionbench.bench.timing import find_result, latency_summary, result_line
from visionbench.report.benchmark_report import add_ratios
from visionbench.report.schema import validate_report

TINY = ["--num-layers", "18", "--image-size", "32"]


def benchmark(cwd, *args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "benchmark.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=dict(os.environ, PYTHON=sys.executable))


def load(path):
    report = json.loads(path.read_text())
    validate_report(report, "benchmark_report")
    validate_with_the_schema_file_alone(report, "benchmark_report")
    return report


def by_point(report):
    return {(r["ngpus"], r["batch_size"], r["dtype"]): r for r in report["results"]}


def test_cpu_training_sweep_writes_valid_report_table_plot_and_reproducible_commands(tmp_path):
    # The README's sweep on a small model (ResNet18 at 32 px instead of ResNet50 at 64: the same points).
    result = benchmark(tmp_path, "--device", "cpu", "-n", "1,2", "-b", "4,8", "--dtype", "float32", "-i", 5,
                       "-e", 2, "-w", 1, *TINY, "-o", "r.json")
    assert result.returncode == 0, result.stderr
    report = load(tmp_path / "r.json")
    assert report["mode"] == "train" and report["status"] == "complete"
    points = by_point(report)
    assert set(points) == {(n, b, "float32") for n in (1, 2) for b in (4, 8)}
    for (n, b, _), r in points.items():
        assert r["status"] == "ok" and r["error"] is None and r["ips"] > 0 and r["latency_ms"] is None
        # Only the second epoch is timed: 5 steps of b images on each of n devices.
        assert (r["timed_iterations"], r["timed_images"]) == (5, 5 * b * n)
        assert r["ips"] == pytest.approx(r["timed_images"] / r["timed_s"])
        assert r["weak_scaling"] == pytest.approx(r["ips"] / (n * points[(1, b, "float32")]["ips"]))
        assert r["speedup_vs_float32"] == pytest.approx(1.0)
    # Nothing but the three outputs is left in the working folder (no checkpoints).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md", "r.png"]
    markdown = (tmp_path / "r.md").read_text()
    assert re.search(r"^\|\s+devices\s+\|\s+img/s float32\s+\|\s+weak scaling float32\s+\|$", markdown, re.M)
    assert "img/s float32" in markdown and "weak scaling float32" in markdown
    assert all(r["command"] in markdown for r in report["results"])
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "img/s float32" in result.stdout   # the table is printed too
    # Rerunning a point's command prints the same measurement (same timed work; speed within noise).
    point = points[(2, 4, "float32")]
    rerun = subprocess.run(shlex.split(point["command"]), capture_output=True, text=True, timeout=120,
                           cwd=tmp_path, env=dict(os.environ, PYTHON=sys.executable))
    assert rerun.returncode == 0, rerun.stderr
    again = find_result(rerun.stdout)
    assert (again["timed_iterations"], again["timed_images"]) == (5, 40)
    assert 0.5 < again["ips"] / point["ips"] < 2


def test_inference_sweep_latency_percentiles_are_ordered_and_match_throughput(tmp_path):
    result = benchmark(tmp_path, "--device", "cpu", "-n", 1, "-b", "1,4,16", "--only-inference", "-i", 10,
                       "-e", 3, "-w", 1, *TINY, "-o", "infer.json")
    assert result.returncode == 0, result.stderr
    report = load(tmp_path / "infer.json")
    assert report["mode"] == "inference"
    for r in report["results"]:
        assert r["status"] == "ok" and r["timed_iterations"] == 20 and r["timed_images"] == 20 * r["batch_size"]
        latency = r["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"] <= latency["max"]
        assert latency["mean"] <= latency["max"]
        assert r["ips"] == pytest.approx(r["batch_size"] / (latency["mean"] / 1000), rel=0.2)
    markdown = (tmp_path / "infer.md").read_text()
    assert "p99 ms" in markdown and "Inference, 1 device(s), float32" in markdown


def test_failing_points_are_recorded_and_the_sweep_goes_on(tmp_path):
    # float16 cannot run on CPUs: those points fail inside their runner; float32 ones complete.
    result = benchmark(tmp_path, "--device", "cpu", "-n", 1, "-b", "2,4", "--dtype", "float16,float32",
                       "--only-inference", "-i", 3, "-e", 2, "-w", 1, *TINY, "-o", "mixed.json")
    assert result.returncode == 0, result.stderr
    points = by_point(load(tmp_path / "mixed.json"))
    for batch in (2, 4):
        failed, good = points[(1, batch, "float16")], points[(1, batch, "float32")]
        assert failed["status"] == "error" and "float16 needs GPUs" in failed["error"] and failed["ips"] is None
        assert failed["speedup_vs_float32"] is None
        assert good["status"] == "ok" and good["ips"] > 0
    assert "float16 needs GPUs" in (tmp_path / "mixed.md").read_text()


def test_a_point_past_its_timeout_is_killed_with_its_children(tmp_path):
    marker = "--seed 424242"   # an unusual seed, to find the point's processes

    def running():
        # `--` ends pgrep's options: the pattern starts with a dash. Exit 1 means no match.
        found = subprocess.run(["pgrep", "-f", "--", marker], capture_output=True, text=True)
        assert found.returncode in (0, 1), found.stderr
        return found.stdout.split()

    sweep = subprocess.Popen([sys.executable, str(ROOT / "benchmark.py"), "--device", "cpu", "-n", "1", "-b", "2",
                              "-i", "1000000", "-e", "2", "-w", "1", *map(str, TINY), "--timeout", "8",
                              *marker.split(), "-o", "slow.json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=tmp_path, env=dict(os.environ, PYTHON=sys.executable))
    try:
        deadline = time.monotonic() + 60
        while not running():   # the point's runner and its children exist (the pattern finds them)
            assert sweep.poll() is None and time.monotonic() < deadline, "the point never started"
            time.sleep(0.2)
        _, err = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, err
    (record,) = load(tmp_path / "slow.json")["results"]
    assert record["status"] == "timeout" and "--timeout 8" in record["error"] and record["ips"] is None
    assert marker in record["command"]   # extra runner flags reach the point
    assert 8 <= record["wall_s"] < 8 + 15
    assert running() == []   # killed with all its children


def test_seed_command_without_gpus_exits_2_with_one_line(tmp_path):
    result = benchmark(tmp_path, "-n", "1,4,8", "-b", 208, "--dtype", "float16")
    assert result.returncode == 2
    assert "MXNet sees no GPU" in one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("args, message", [
    (["-n", "0", "-b", "4"], "positive integers"),
    (["-n", "1", "-b", "four"], "positive integers"),
    (["-n", "1", "-b", "4", "--dtype", "bfloat16"], "float16, float32 and/or int8"),
    (["-n", "1", "-b", "4", "-e", "2", "-w", "2"], "nothing would be timed"),
    (["-n", "1", "-b", "4", "--timeout", "0"], "--timeout must be positive"),
    (["-n", "1", "-b", "4", "--mode", "val"], "--mode is set by benchmark.py"),
    (["-n", "1", "-b", "4", "--lr", "fast"], "invalid float value"),
    (["-n", "1", "-b", "4", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["-n", "1", "-b", "4", "--data-root", "missing"], "--data-root missing is not a folder"),
    (["-n", "1", "-b", "4", "-o", "old.json"], "old.json already exists"),
    (["-n", "1", "-b", "4", "-o", "report.txt"], "must be a .json file"),
])
def test_bad_input_exits_2_with_one_line_and_touches_nothing(tmp_path, args, message):
    (tmp_path / "old.json").write_text('{"keep": true}\n')
    before = _digest(tmp_path)
    result = benchmark(tmp_path, "--device", "cpu", *args, timeout=60)
    assert result.returncode == 2
    assert message in one_line_error(result)
    assert _digest(tmp_path) == before


def test_ratios_need_their_reference_points():
    def point(n, b, dtype, ips, status="ok"):
        return {"ngpus": n, "batch_size": b, "dtype": dtype, "ips": ips, "status": status}

    records = [point(1, 8, "float32", 100.0), point(2, 8, "float32", 180.0), point(2, 8, "float16", 360.0),
               point(4, 8, "float32", None, "error"), point(1, 16, "float16", 50.0)]
    add_ratios(records)
    assert [r["weak_scaling"] for r in records] == [1.0, 0.9, None, None, 1.0]
    assert [r["speedup_vs_float32"] for r in records] == [1.0, 1.0, 2.0, None, None]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=10, allow_nan=False), min_size=1, max_size=300))
def test_latency_percentiles_are_ordered(seconds):
    summary = latency_summary(seconds)
    assert summary["p50"] <= summary["p90"] <= summary["p95"] <= summary["p99"] <= summary["max"]
    assert min(seconds) * 1000 <= summary["mean"] * (1 + 1e-12) and summary["mean"] <= summary["max"] * (1 + 1e-12)


def test_result_line_round_trips_and_the_last_one_wins():
    text = "epoch 1\n" + result_line({"ips": 1.0}) + "\nnoise\n" + result_line({"ips": 2.5}) + "\n"
    assert find_result(text) == {"ips": 2.5}
    assert find_result("no result here\n") is None
    assert find_result("benchmark-result: {broken\n") is None


def test_each_precision_is_swept_in_the_layout_of_its_training_recipes():
    # float16 recipes train in NHWC (examples/RN50_FP16_*), so float16 points must be measured
    # in NHWC; float32 and int8 in NCHW; a --input-layout runner flag applies to every point.
    from visionbench.bench.sweep import build_parser, point_argv
    from visionbench.config import resolve

    args, _ = build_parser().parse_known_args(["-n", "1", "-b", "64"])
    inference, _ = build_parser().parse_known_args(["-n", "1", "-b", "64", "--only-inference"])

    def layout(dtype, extra=(), sweep=args):
        return resolve(point_argv(sweep, "cpu" if dtype == "int8" else "gpu", 1, 64, dtype, list(extra))).input_layout

    assert [layout(dtype) for dtype in ("float16", "float32")] == ["NHWC", "NCHW"]
    assert [layout(dtype, sweep=inference) for dtype in ("float16", "float32", "int8")] == ["NHWC", "NCHW", "NCHW"]
    assert layout("float16", ["--input-layout", "NCHW"]) == "NCHW"
    assert layout("float16", ["--input-layout=NCHW"]) == "NCHW"
