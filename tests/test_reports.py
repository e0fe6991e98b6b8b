"""Reports validate with nothing but their schema file, and
`python -m visionbench.report validate` checks any of them."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, run_runner, validate_with_the_schema_file_alone
from visionbench.selftest import write_colour_set


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reports")
    write_colour_set(folder / "set", 8)
    result = run_runner("--device", "cpu", "--data-backend", "synthetic", "--num-examples", "16", "-b", "8",
                        "--image-size", "16", "--num-layers", "18", "--num-classes", "4", "-e", "1", "--mode",
                        "train", "--model-prefix", folder / "m", "--report", folder / "train.json")
    assert result.returncode == 0, result.stderr
    return {"data_prep": folder / "set.prep.json", "train": folder / "train.json"}


@pytest.mark.parametrize("kind", ["data_prep", "train"])
def test_a_report_validates_with_its_schema_file_alone(reports, kind):
    # (the benchmark report: tests/test_benchmark.py validates every one it writes the same way)
    validate_with_the_schema_file_alone(json.loads(reports[kind].read_text()), f"{kind}_report")


def test_the_schema_files_share_one_environment_definition():
    defs = [json.loads((ROOT / "report_schema" / f"{name}.schema.json").read_text())["$defs"]["environment"]
            for name in ("train_report", "benchmark_report")]
    assert defs[0] == defs[1]
    def refs(node):
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [r for value in node.values() for r in refs(value)]
        return [r for value in node for r in refs(value)] if isinstance(node, list) else []

    found = [r for path in (ROOT / "report_schema").glob("*.json") for r in refs(json.loads(path.read_text()))]
    assert found and all(r.startswith("#/") for r in found)   # nothing outside the file itself


def validate(*files):
    return subprocess.run([sys.executable, "-m", "visionbench.report", "validate", *map(str, files)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_validate_command_one_line_per_file(reports, tmp_path):
    good = validate(reports["train"], reports["data_prep"])
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines() == [f"{reports['train']}: valid train report",
                                        f"{reports['data_prep']}: valid data_prep report"]
    broken = json.loads(reports["train"].read_text())
    broken["epochs"][0]["train_loss"] = "low"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    (tmp_path / "other.json").write_text('{"kind": "recipe"}')
    (tmp_path / "text.json").write_text("not json")
    result = validate(reports["train"], tmp_path / "broken.json")
    assert result.returncode == 1
    assert result.stdout.splitlines()[1] == (f"{tmp_path / 'broken.json'}: invalid train report at epochs/0/train_loss: "
                                             "'low' is not of type 'number'")
    result = validate(tmp_path / "broken.json", tmp_path / "other.json", tmp_path / "text.json", tmp_path / "none.json")
    assert result.returncode == 2 and len(result.stdout.splitlines()) == 4
    assert "not a visionbench report (kind 'recipe'" in result.stdout and "not JSON" in result.stdout
    assert "none.json: cannot be read (No such file or directory)" in result.stdout
    assert "Traceback" not in result.stderr
