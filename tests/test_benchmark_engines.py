"""benchmark.py --engine mxnet,torch: both engines in one CPU sweep and one
report (schema-valid with the schema file alone), a side-by-side table with
the torch/mxnet ratio, a point the torch engine refuses recorded as an error
while MXNet's runs, and the sweeps that stop before any point runs."""
import json
import os
import re
import subprocess
import sys
from importlib.metadata import version

import jsonschema
import pytest

from conftest import ROOT, one_line_error, validate_with_the_schema_file_alone
from visionbench.report.benchmark_report import add_ratios
from visionbench.report.schema import validate_report

# ResNet18 v1.5 at 16 px, 2 steps per epoch: the torch engine's CPU step is the slow one here.
TINY = ["--num-layers", "18", "--image-size", "16", "-i", "2", "-e", "2", "-w", "1"]
SCHEMA = json.loads((ROOT / "report_schema" / "benchmark_report.schema.json").read_text())


def benchmark(cwd, *args, timeout=300):
    # One OpenMP thread per point, both engines alike: on this 2-core machine, busy with other
    # tests, torch's two spinning OpenMP threads made a ResNet18 step 14x slower (measured).
    # This file checks the sweep's plumbing, not the engines' speed.
    return subprocess.run([sys.executable, str(ROOT / "benchmark.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd,
                          env=dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1"))


def _row(markdown, devices):
    """The cells of the side-by-side table's row for ``devices`` (batch 16, float32)."""
    found = re.search(rf"^\|\s+{devices}\s+\|\s+16\s+\|\s+float32\s+\|(.*)\|$", markdown, re.M)
    assert found, markdown
    return [cell.strip() for cell in found.group(1).split("|")]


def test_both_engines_one_report_side_by_side_and_the_refused_point_is_an_error_record(tmp_path):
    result = benchmark(tmp_path, "--engine", "mxnet,torch", "--device", "cpu", "-n", "1,2", "-b", 16,
                       "--dtype", "float32", *TINY, "-o", "r.json")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    validate_report(report, "benchmark_report")
    validate_with_the_schema_file_alone(report, "benchmark_report")
    # Engines are the innermost axis: each point runs on both engines back to back.
    results = report["results"]
    assert [(r["ngpus"], r["engine"]) for r in results] == [(1, "mxnet"), (1, "torch"), (2, "mxnet"), (2, "torch")]
    assert all(f"--engine {r['engine']} " in r["command"] for r in results)
    points = {(r["ngpus"], r["engine"]): r for r in results}
    for (n, engine), r in points.items():
        if (n, engine) == (2, "torch"):
            continue
        assert r["status"] == "ok" and r["ips"] > 0, r
        assert (r["timed_iterations"], r["timed_images"]) == (2, 2 * 16 * n)
    refused = points[(2, "torch")]
    assert refused["status"] == "error" and refused["ips"] is None and refused["weak_scaling"] is None
    assert "--engine torch: -n 2" in refused["error"]
    # Ratios stay within one engine: MXNet's 2-device point against MXNet's 1-device one.
    assert points[(2, "mxnet")]["weak_scaling"] == pytest.approx(
        points[(2, "mxnet")]["ips"] / (2 * points[(1, "mxnet")]["ips"]))
    env = report["environment"]
    assert env["engine"] == ["mxnet", "torch"] and report["config"]["engine"] == ["mxnet", "torch"]
    assert (env["mxnet"], env["torch"]) == (version("mxnet"), version("torch"))

    markdown = (tmp_path / "r.md").read_text()
    assert re.search(r"^\|\s+devices\s+\|\s+batch\s+\|\s+dtype\s+\|\s+img/s mxnet\s+\|\s+img/s torch\s+\|"
                     r"\s+torch/mxnet\s+\|$", markdown, re.M), markdown
    mxnet_ips, torch_ips, ratio = map(float, _row(markdown, 1))
    assert mxnet_ips == pytest.approx(points[(1, "mxnet")]["ips"], rel=1e-3)
    assert torch_ips == pytest.approx(points[(1, "torch")]["ips"], rel=1e-3)
    assert ratio == pytest.approx(points[(1, "torch")]["ips"] / points[(1, "mxnet")]["ips"], rel=1e-3)
    assert _row(markdown, 2)[1:] == ["-", "-"]   # torch refused -n 2: no figure, no ratio
    assert refused["error"] in markdown
    assert "torch/mxnet" in result.stdout   # the tables are printed too
    assert "## Training, batch 16 per device, torch" in markdown

    from visionbench.report.plots import benchmark_figure

    legend = [text.get_text() for text in benchmark_figure(report).axes[0].get_legend().get_texts()]
    assert legend == ["1 x cpu, float32, mxnet", "1 x cpu, float32, torch", "2 x cpu, float32, mxnet"]


def test_a_sweep_whose_every_point_is_refused_stops_with_one_line(tmp_path):
    result = benchmark(tmp_path, "--engine", "torch", "--device", "cpu", "-n", "2,4", "-b", 4, "-o", "r.json",
                       timeout=60)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "--engine torch: -n 2" in line and "no point of the sweep would run" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--engine", "tensorflow"], "expected mxnet and/or torch"),
    # A point whose flags no engine takes (int8 training) stops the sweep before its good points run.
    (["--engine", "mxnet,torch", "--dtype", "float32,int8"], "--dtype int8 quantizes a trained float32 model"),
])
def test_bad_engine_input_exits_2_with_one_line(tmp_path, args, message):
    result = benchmark(tmp_path, "--device", "cpu", "-n", 1, "-b", 4, *args, timeout=60)
    assert result.returncode == 2
    assert message in one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def test_ratios_pair_points_of_the_same_engine():
    def point(n, engine, ips, dtype="float32"):
        return {"ngpus": n, "batch_size": 8, "dtype": dtype, "engine": engine, "ips": ips, "status": "ok"}

    records = [point(1, "mxnet", 100.0), point(2, "mxnet", 180.0), point(1, "torch", 50.0), point(2, "torch", 120.0),
               point(2, "torch", 240.0, "float16")]
    add_ratios(records)
    assert [r["weak_scaling"] for r in records] == [1.0, 0.9, 1.0, 1.2, None]
    assert [r["speedup_vs_float32"] for r in records] == [1.0, 1.0, 1.0, 1.0, 2.0]


def test_the_side_by_side_table_keeps_a_row_when_one_engine_failed():
    from visionbench.report.tables import benchmark_tables

    def point(n, engine, ips):
        return {"ngpus": n, "batch_size": 8, "dtype": "float32", "engine": engine, "ips": ips,
                "status": "ok" if ips else "error", "weak_scaling": None, "speedup_vs_float32": None,
                "latency_ms": None}

    report = {"mode": "train", "results": [point(1, "mxnet", 100.0), point(1, "torch", 125.0),
                                           point(2, "mxnet", 150.0), point(2, "torch", None)]}
    tables = benchmark_tables(report)
    assert list(tables)[0] == "Engines side by side, img/s"
    table = tables["Engines side by side, img/s"]
    assert list(table.columns) == ["batch", "dtype", "img/s mxnet", "img/s torch", "torch/mxnet"]
    assert table.loc[1, "torch/mxnet"] == 1.25
    assert table.loc[2, "img/s mxnet"] == 150.0 and table.loc[2, ["img/s torch", "torch/mxnet"]].isna().all()
    # An engine with no point that ran (torch refuses inference) still has its column.
    refused = benchmark_tables({"mode": "train", "results": [point(1, "mxnet", 100.0), point(1, "torch", None)]})
    assert refused["Engines side by side, img/s"][["img/s torch", "torch/mxnet"]].isna().all(axis=None)
    # One engine: no side-by-side table, and the titles of single-engine sweeps.
    alone = benchmark_tables({"mode": "train", "results": report["results"][::2]})
    assert list(alone) == ["Training, batch 8 per device"]


def test_the_schema_takes_one_engine_or_a_list_of_several_and_records_without_engine():
    environment = SCHEMA["$defs"]["environment"]["properties"]["engine"]
    for good in ("mxnet", "torch", ["mxnet", "torch"]):
        jsonschema.validate(good, environment)
    for bad in (["mxnet"], ["mxnet", "mxnet"], "tensorflow", []):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, environment)
    record = SCHEMA["properties"]["results"]["items"]
    assert "engine" not in record["required"]   # reports written before engines were swept stay valid
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"engine": "tensorflow"}, {"properties": record["properties"]})


def test_help_describes_the_engine_flag():
    from visionbench.bench.sweep import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "--engine LIST mxnet, torch or mxnet,torch: every point runs once per engine" in text
    assert "torch/mxnet ratio" in text and "(default mxnet)" in text
