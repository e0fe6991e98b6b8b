"""The config layers (defaults -> recipe -> flags) and `runner --mode io`."""
import json
import re

import pytest

from conftest import make_small_demo, one_line_error, run_here, run_runner
from visionbench.cli import UsageError
from visionbench.config import Config, resolve


def test_flags_override_recipe_override_defaults(tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"batch_size": 64, "image_size": 128, "rect_val": True,
                                  "min_random_area": 0.35, "data_backend": "synthetic"}))
    config = resolve(["--config", str(recipe), "-b", "32", "--no-rect-val"])
    assert config.batch_size == 32            # flag beats recipe
    assert config.image_size == 128           # recipe beats default
    assert config.rect_val is False
    assert config.min_random_area == 0.35
    assert config.dtype == Config().dtype     # default


@pytest.mark.parametrize("content, words", [
    ({"batch_size": 8, "bn_weight_decay": 0}, "unknown option 'bn_weight_decay'"),
    ({"batch_size": "8"}, "batch_size must be int"),
    ({"rect_val": 1}, "rect_val must be bool"),
    ({"dtype": "float64"}, "dtype must be one of float32, float16"),
    ([1, 2], "must be a JSON object"),
])
def test_recipe_errors(tmp_path, content, words):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(content))
    with pytest.raises(UsageError, match=re.escape(words)):
        resolve(["--config", str(recipe), "--data-backend", "synthetic"])


def test_checks(tmp_path):
    with pytest.raises(UsageError, match="is not a folder"):
        resolve(["--data-root", str(tmp_path / "none")])
    with pytest.raises(UsageError, match="batch-size must be at least 1"):
        resolve(["--data-backend", "synthetic", "-b", "0"])


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    return make_small_demo(tmp_path_factory.mktemp("demo") / "d", 8)


@pytest.mark.parametrize("backend", ["dali-cpu", "mxnet", "synthetic"])
def test_runner_io_mode_prints_throughput(demo_set, backend):
    result = run_runner("--mode", "io", "--device", "cpu", "-n", "2", "-b", "8", "--data-root", demo_set,
                     "--data-backend", backend, "--image-size", "32", "-i", "6", "--warmup-iterations", "2",
                     "--num-examples", "160")
    assert result.returncode == 0, result.stderr
    match = re.search(r"io train (\S+) 2xcpu .*: ([\d.]+) img/s in total over 6 steps \((\d+) images.*"
                      r"per device: ([\d.]+), ([\d.]+)", result.stdout)
    assert match, result.stdout
    assert match.group(1) == backend and int(match.group(3)) == 6 * 2 * 8
    total, first, second = float(match.group(2)), float(match.group(4)), float(match.group(5))
    assert total > 0 and abs(first + second - total) < 0.01 * total + 0.2


def test_runner_bad_input(demo_set, capfd):
    # train.py's main in this process (run_here): refusals need no interpreter start-up each
    line = one_line_error(run_here(capfd, "--mode", "io", "--device", "cpu", "--data-root", demo_set, "-b", "5000",
                                   "--image-size", "32"))
    assert "fewer than the batch size 5000" in line
    line = one_line_error(run_here(capfd, "--mode", "io", "--device", "cpu", "--data-root", demo_set,
                                   "--image-size", "4"))
    assert "below the minimum of 8" in line
    assert "reads --data-root" in one_line_error(run_here(capfd, "--mode", "io", "--device", "cpu"))
    line = one_line_error(run_here(capfd, "--mode", "io", "--device", "gpu", "--data-root", demo_set))
    assert "MXNet sees no GPU" in line
