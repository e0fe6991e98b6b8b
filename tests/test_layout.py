"""The top level is a promise to users; pins live in pyproject.toml only."""
import re
import tomllib

from conftest import ROOT

TOP_LEVEL = ["README.md", "Makefile", "pyproject.toml", "runner", "train.py", "benchmark.py",
             "examples", "data_prep", "report_schema", "tests", "Dockerfile", "visionbench"]


def _pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    pins = {}
    for spec in specs:
        name, _, version = spec.partition("==")
        assert version, f"{spec} is not pinned with =="
        pins[name.strip().lower()] = version.strip()
    return pins


def test_top_level_layout_matches_design():
    missing = [name for name in TOP_LEVEL if not (ROOT / name).exists()]
    assert not missing


def test_required_pins():
    pins = _pins()
    assert pins["mxnet"] == "1.9.1"
    assert pins["mxnet-cu112"] == "1.9.1"
    assert pins["nvidia-dali-cuda110"] == "1.34.0"
    assert pins["numpy"] == "1.23.5"
    assert pins["opencv-python-headless"].startswith("4.8.")


def test_installed_versions_are_the_pins():
    from importlib.metadata import version
    pins = _pins()
    for name in ("mxnet", "nvidia-dali-cuda110", "numpy", "opencv-python-headless", "pandas",
                 "jsonschema", "tqdm", "matplotlib", "pillow", "pytest"):
        assert version(name) == pins[name], name


def test_dockerfile_names_the_pinned_versions():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert re.match(r"nvidia/cuda:11\.\d+\.\d+-cudnn8-runtime-", base), base
    assert re.search(r'pip install (-e )?"\.\[gpu\]"', text)
    assert "ENTRYPOINT" not in text
    named = dict(re.findall(r"v\('([\w.-]+)'\) == '([\w.]+)'", text))
    assert named, "the Dockerfile must check the installed versions"
    pins = _pins()
    for name, version in named.items():
        assert pins[name] == version, f"Dockerfile says {name}=={version}, pyproject {pins[name]}"
    assert {"mxnet-cu112", "nvidia-dali-cuda110", "numpy"} <= set(named)


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"^\s*(make \w+)\s*$", text, re.M)
    assert commands[:2] == ["make demo", "make test"]


def test_ci_runs_make_test():
    text = (ROOT / ".ci" / "run").read_text()
    assert "make test" in text
    assert "|| true" not in text and "set -e" in text
