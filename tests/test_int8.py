"""--dtype int8: MXNet's oneDNN quantization of the float32 model, calibrated
on real val images (or synthetic batches), scored and timed on the CPU."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

from conftest import ROOT, run_runner, validate_with_the_schema_file_alone, write_palette_sets

SCORE = re.compile(r"(?P<name>\S+) (?P<dtype>float32|int8)(?: \((?P<how>[^)]*(?:\)[^)]*)?)\))?: val top-1 "
                   r"(?P<top1>[0-9.]+) top-5 (?P<top5>[0-9.]+) over (?P<images>\d+) images")


def scores(stdout: str) -> dict:
    found = {m["dtype"]: m for m in map(SCORE.match, stdout.splitlines()) if m}
    assert set(found) == {"float32", "int8"}, stdout
    return found


# Epochs the module's model trains: it reaches the set's ceiling of 0.95 by
# epoch 4 or 5 (AMD EPYC, with AVX-512 VNNI kernels and with AVX2 ones).
EPOCHS = 6
LAST, BEFORE_LAST = f"m-{EPOCHS:04d}", f"m-{EPOCHS - 1:04d}"


def int8_margin(top1: float, images: int) -> float:
    """How far INT8's top-1 may stray from float32's on ``images`` images and
    still count as keeping the model's accuracy: three standard errors of a
    top-1 of ``top1`` measured on that many images, and at least one point
    (4 images of 400), since at a top-1 near 1 the error shrinks to below one
    image while oneDNN's kernels still differ from CPU to CPU (AVX2,
    AVX-512 VNNI, AMX round differently)."""
    return max(0.01, 3 * math.sqrt(top1 * (1 - top1) / images))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ResNet18 v1.5 at 32 px trained for EPOCHS epochs (about 10 s) on a set
    it learns fast and whose classes lie far apart: ten well-apart solid
    colours in five shades each (conftest's palette sets; 5% of val carries
    the next class's label, so top-1 tops out at 0.95), 400 train and 400 val
    images, so that one point of top-1 is 4 images.

    Not the self-test's colour set with adjacent green levels as classes:
    there half the images sit one level from another class, and oneDNN's
    int8 kernels moved different numbers of them across the boundary on
    different CPUs (float32 0.775, INT8 0.7925 with AVX-512 VNNI kernels;
    after 10 epochs, float32 0.9675 and INT8 0.915 with AVX2 kernels), so a
    bound loose enough for every CPU would let real losses through."""
    from visionbench.main import main

    folder = tmp_path_factory.mktemp("int8")
    data = write_palette_sets(folder / "palette", 400, 400)
    prefix = folder / "m"
    # Trained in this process, as the scorings below run: no interpreter start-up.
    assert main(["--device", "cpu", "-n", "1", "-b", "32", "--data-root", str(data), "--image-size", "32",
                 "--num-layers", "18", "--num-classes", "10", "-e", str(EPOCHS), "--lr", "0.1", "--warmup-epochs",
                 "0", "--lr-schedule", "cosine", "--mode", "train", "--model-prefix", str(prefix)]) == 0
    return data, prefix


VAL_INT8 = ("--mode", "val", "--dtype", "int8", "--device", "cpu", "-n", "1", "-b", "32", "--image-size", "32",
            "--num-layers", "18", "--num-classes", "10", "--load-epoch", str(EPOCHS))


def score_int8(data, prefix, *extra):
    """./runner --mode val --dtype int8, as a user types it."""
    return run_runner(*VAL_INT8, "--data-root", data, "--model-prefix", prefix, *extra)


def score_int8_here(capsys, data, prefix, *extra) -> dict:
    """The same run in this process (no interpreter start-up: seconds per call); its scores."""
    from visionbench.main import main

    capsys.readouterr()
    assert main([*VAL_INT8, "--data-root", str(data), "--model-prefix", str(prefix), *map(str, extra)]) == 0
    return scores(capsys.readouterr().out)


def test_int8_scores_within_one_point_of_float32_and_the_calibrated_model_is_reused(trained, capsys):
    from visionbench.engine.checkpoint import complete_epochs, foreign_files

    data, prefix = trained
    checkpoint = prefix.parent / f"{LAST}.params"
    before, epochs = checkpoint.read_bytes(), complete_epochs(prefix)
    first = score_int8(data, prefix, "--calib-images", "200")
    assert first.returncode == 0, first.stderr
    got = scores(first.stdout)
    float32, int8 = (float(got[d]["top1"]) for d in ("float32", "int8"))
    assert got["int8"]["images"] == got["float32"]["images"] == "400"
    assert float32 >= 0.9, first.stdout   # a model that learned, so that agreement means something
    assert abs(int8 - float32) <= int8_margin(float32, 400), first.stdout
    assert "naive calibration on 200 val images" in got["int8"]["how"]
    kept = sorted(p.name for p in prefix.parent.glob(f"{LAST}.int8-naive-200-*"))
    stem = kept[0].split(".")[1]   # int8-naive-200-KEY: one model, three files
    assert kept == [f"{LAST}.{stem}.json", f"{LAST}.{stem}.params", f"{LAST}.{stem}.symbol.json"], kept

    again = score_int8_here(capsys, data, prefix, "--calib-images", "200")
    assert f"reused from {LAST}.int8-naive-200-" in again["int8"]["how"], again
    assert again["int8"]["top1"] == got["int8"]["top1"] and again["int8"]["top5"] == got["int8"]["top5"]

    # the saved graph is an INT8 one: oneDNN convolutions marked quantized
    nodes = json.loads((prefix.parent / kept[2]).read_text())["nodes"]
    assert sum(node["op"] == "_sg_mkldnn_conv" and node.get("attrs", {}).get("quantized") == "true"
               for node in nodes) >= 10

    # settings that only the key holds (not the file name) never pick up that model
    other = score_int8_here(capsys, data, prefix, "--calib-images", "200", "--image-size", "40")
    assert "reused" not in other["int8"]["how"], other

    # the checkpoint is untouched, and a later training run on this prefix sees nothing foreign
    assert checkpoint.read_bytes() == before
    assert foreign_files(prefix) == [] and complete_epochs(prefix) == epochs == [EPOCHS - 1, EPOCHS]


def test_a_calibration_that_clips_activations_falls_outside_the_margin(trained, tmp_path, monkeypatch, capsys):
    """The accuracy bound can fail: calibrating on the val images at half
    their values gives ranges half as wide as the activations need, so INT8
    saturates (top-1 0.50 against 0.95 on an AMD EPYC with AVX-512 VNNI)."""
    import shutil

    from visionbench.engine import quantize

    data, prefix = trained
    copy = tmp_path / "m"
    for path in prefix.parent.glob(f"{LAST}*"):
        if ".int8-" not in path.name:
            shutil.copy(path, tmp_path / path.name)
    shutil.copy(prefix.parent / "m-symbol.json", tmp_path / "m-symbol.json")
    real = quantize.quantize
    monkeypatch.setattr(quantize, "quantize", lambda net, images, *a, **k: real(net, images * 0.5, *a, **k))
    got = score_int8_here(capsys, data, copy, "--calib-images", "200")
    float32, int8 = (float(got[d]["top1"]) for d in ("float32", "int8"))
    assert float32 - int8 > int8_margin(float32, 400), got


def test_a_damaged_saved_model_is_calibrated_again(trained, capsys):
    data, prefix = trained
    score_int8_here(capsys, data, prefix, "--calib-images", "32")
    (params,) = prefix.parent.glob(f"{LAST}.int8-naive-32-*.params")
    params.write_bytes(params.read_bytes()[:100])
    assert "reused" not in score_int8_here(capsys, data, prefix, "--calib-images", "32")["int8"]["how"]
    # ... and replaced by a complete one
    assert "reused" in score_int8_here(capsys, data, prefix, "--calib-images", "32")["int8"]["how"]


def test_a_saved_model_from_other_weights_is_not_reused(trained, tmp_path, capsys):
    """The key holds the checkpoint's digest: a retrained checkpoint of the same epoch calibrates anew."""
    import shutil

    import mxnet as mx

    data, prefix = trained
    score_int8_here(capsys, data, prefix, "--calib-images", "16")
    copy = tmp_path / "m"
    for path in prefix.parent.glob("m-*"):
        shutil.copy(path, tmp_path / path.name)
    assert "reused" in score_int8_here(capsys, data, copy, "--calib-images", "16")["int8"]["how"]
    weights = mx.nd.load(str(tmp_path / f"{LAST}.params"))
    name = sorted(weights)[0]
    weights[name] = weights[name] * 0.5
    mx.nd.save(str(tmp_path / f"{LAST}.params"), weights)
    assert "reused" not in score_int8_here(capsys, data, copy, "--calib-images", "16")["int8"]["how"]


def test_int8_inference_on_val_images_reports_its_calibration(trained, capsys):
    from visionbench.bench.timing import find_result
    from visionbench.main import main

    data, _ = trained
    capsys.readouterr()
    assert main(["--mode", "inference", "--dtype", "int8", "--device", "cpu", "-n", "2", "-b", "16",
                 "--data-root", str(data), "--image-size", "32", "--num-layers", "18", "--num-classes", "10",
                 "-i", "3", "-e", "2", "--calib-images", "48"]) == 0
    outcome = find_result(capsys.readouterr().out)
    assert outcome["calibration"] == {"mode": "naive", "images": 48, "source": "val", "seconds": pytest.approx(
        outcome["calibration"]["seconds"]), "reused": None}
    assert outcome["timed_images"] == 3 * 2 * 16


def test_entropy_calibration_quantizes_a_small_net():
    """--calib-mode entropy (KL-optimal ranges, through scipy) on a small
    convolutional net: its INT8 outputs follow the float32 ones."""
    import mxnet as mx
    import numpy as np
    from mxnet import gluon

    from visionbench.engine.quantize import quantize

    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(8, 3, in_channels=3), gluon.nn.BatchNorm(), gluon.nn.Activation("relu"),
            gluon.nn.Conv2D(8, 3, in_channels=8), gluon.nn.GlobalAvgPool2D(), gluon.nn.Dense(4))
    mx.random.seed(0)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    images = mx.nd.random.uniform(-1, 1, (32, 3, 12, 12))
    expected = net(images).asnumpy()
    quantized = quantize(net, images, "entropy", 8, [mx.cpu()])
    got = quantized(images).asnumpy()
    assert np.corrcoef(expected.ravel(), got.ravel())[0, 1] > 0.98
    assert not np.array_equal(expected, got)   # it did change the arithmetic


def test_pruning_a_checkpoint_removes_its_int8_models_and_nothing_else(trained, tmp_path, capsys):
    import shutil

    from visionbench.engine.checkpoint import complete_epochs, prune

    data, prefix = trained
    copy = tmp_path / "m"
    for path in prefix.parent.glob("m-*"):
        if not path.name.startswith(f"{LAST}.int8"):
            shutil.copy(path, tmp_path / path.name)
    score_int8_here(capsys, data, copy, "--calib-images", "16", "--load-epoch", str(EPOCHS - 1))
    assert len(list(tmp_path.glob(f"{BEFORE_LAST}.int8-*"))) == 3
    (tmp_path / f"{BEFORE_LAST}.int8-mine.txt").write_text("a user's file")
    prune(copy, keep_last=1, best_epoch=None)
    assert complete_epochs(copy) == [EPOCHS]
    assert [p.name for p in tmp_path.glob(f"{BEFORE_LAST}*")] == [f"{BEFORE_LAST}.int8-mine.txt"]


@pytest.mark.parametrize("argv, message", [
    (["--mode", "train"], "--dtype int8 quantizes a trained float32 model for inference"),
    (["--mode", "train_val"], "use it with --mode val or inference, not --mode train_val"),
    (["--mode", "inference", "--calib-images", "0"], "calib-images must be at least 1"),
    (["--mode", "inference", "--input-layout", "NHWC"], "use --input-layout NCHW"),
    (["--mode", "inference", "--calib-mode", "minmax"], "invalid choice: 'minmax'"),
    (["--mode", "val", "--device", "gpu"], "--dtype int8 runs on CPUs"),
])
def test_int8_refusals(argv, message):
    result = run_runner("--dtype", "int8", "--data-backend", "synthetic", *(argv if "--device" in argv else [*argv, "--device", "cpu"]))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_int8_on_gpus_is_refused():
    from visionbench.cli import UsageError
    from visionbench.engine.precision import resolve_precision

    assert resolve_precision("int8", "cpu", None).dtype == "float32"   # the float32 model is what gets quantized
    with pytest.raises(UsageError, match="--dtype int8 runs on CPUs"):
        resolve_precision("int8", "gpu", None)


def test_int8_sweep_reports_both_dtypes_and_their_ratio(tmp_path):
    report_path = tmp_path / "r.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmark.py"), "--device", "cpu", "-n", "1", "-b", "16",
         "--dtype", "float32,int8", "--only-inference", "--num-layers", "18", "--image-size", "32",
         "-i", "4", "-e", "2", "--num-classes", "10", "--calib-images", "32", "-o", report_path],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    validate_with_the_schema_file_alone(report, "benchmark_report")
    points = {r["dtype"]: r for r in report["results"]}
    assert set(points) == {"float32", "int8"} and all(r["status"] == "ok" for r in points.values()), points
    assert points["int8"]["calibration"]["source"] == "synthetic" and points["float32"]["calibration"] is None
    ratio = points["int8"]["ips"] / points["float32"]["ips"]
    assert points["int8"]["speedup_vs_float32"] == pytest.approx(ratio)
    markdown = report_path.with_suffix(".md").read_text()
    row = re.search(r"\|\s*16 \|\s*([0-9.]+) \|\s*([0-9.]+) \|\s*([0-9.]+) \|", markdown.split("by dtype")[1])
    assert row and float(row[3]) == pytest.approx(ratio, rel=1e-3), markdown
    assert "int8/float32" in markdown and "synthetic batches" in markdown


def test_importing_visionbench_never_imports_torch():
    """Only the torch engine's package (engines/torch) imports torch at module
    level: every other module of the
    package imports without it, so the MXNet engine never loads it."""
    code = ("import pkgutil, importlib, sys, visionbench\n"
            "for m in pkgutil.walk_packages(visionbench.__path__, 'visionbench.'):\n"
            "    if m.name.startswith('visionbench.engines.torch.'):\n"
            "        continue\n"
            "    if not m.name.endswith('__main__'):\n"
            "        importlib.import_module(m.name)\n"
            "print('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", result.stdout


def test_a_failed_calibration_is_one_line_and_exit_1(tmp_path):
    """Entropy calibration on a machine without scipy (here: a scipy that
    cannot be imported, ahead of the real one on the path)."""
    shadow = tmp_path / "shadow" / "scipy"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no scipy on this machine')\n")
    result = subprocess.run(
        ["bash", str(ROOT / "runner"), "--mode", "inference", "--dtype", "int8", "--device", "cpu", "-b", "8",
         "--data-backend", "synthetic", "--num-layers", "18", "--image-size", "32", "--num-classes", "10",
         "-i", "2", "-e", "2", "--calib-images", "8", "--calib-mode", "entropy"],
        capture_output=True, text=True, timeout=120,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(shadow.parent)})
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("train.py: error: INT8 calibration (entropy, 8 images) failed: scipy.stats is "
                                    "required"), result.stderr
