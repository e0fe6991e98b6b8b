"""The GPU path, checked without a GPU: float16 training's contract, the
dali-gpu pipelines' graphs, and each GPU-only decision as a unit.

The contract checks run on the real MXNet and DALI (float16 arrays and
reductions run on CPUs; DALI pipelines can be defined for a GPU without
being built). Each also has a test that breaks what it guards and sees the
check report it."""
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def, types

from conftest import ROOT, one_line_error, run_runner
from visionbench.cli import UsageError
from visionbench.config import resolve
from visionbench.data.dali_contract import GPU_KERNELS, gpu_pipeline_problems, pipeline_problems
from visionbench.engine import float16_contract
from visionbench.engine.float16_contract import (OVERFLOW_MODELS, float16_graph_problems, master_weight_problems,
                                                 overflow_check_problems)


# --- defect 1: the dynamic loss scaler's overflow check ------------------

@pytest.mark.parametrize("model", OVERFLOW_MODELS)
def test_overflow_check_on_the_gradients_of_float16_models(model):
    # ResNet101/152 have more float32 gradient arrays (BatchNorm) than one
    # multi_all_finite call takes; every model mixes float16 and float32.
    assert overflow_check_problems(model) == []


def test_the_overflow_check_contract_catches_one_call_over_mixed_dtypes(monkeypatch):
    # The check as it was: every gradient in one multi_all_finite call.
    def one_call(arrays):
        return mx.nd.multi_all_finite(*arrays, num_arrays=len(arrays))

    monkeypatch.setattr(float16_contract, "all_finite", one_call)
    problems = overflow_check_problems("resnet18_v1.5")
    assert problems and "data type do not match" in problems[0]


# --- the float16 training graph and its optimizer -----------------------

@pytest.mark.parametrize("model, layout, size", [("resnet50_v1.5", "NCHW", 224), ("resnet50_v1.5", "NHWC", 224),
                                                 ("resnet9", "NHWC", 32)])
def test_float16_training_graph_type_checks(model, layout, size):
    assert float16_graph_problems(model, layout, size) == []


def test_the_graph_contract_catches_batchnorm_cast_to_float16(monkeypatch):
    build = float16_contract._float16_net

    def all_float16(model, layout="NCHW", nesterov=False):
        config, net = build(model, layout, nesterov)
        for param in net.collect_params(".*batchnorm.*").values():
            param.cast("float16")
        return config, net

    monkeypatch.setattr(float16_contract, "_float16_net", all_float16)
    problems = float16_graph_problems("resnet18_v1.5", "NCHW", 32)
    assert problems and "batchnorm" in problems[0]


# ResNet50 (161 arrays) is checked by the self-test's float16 contract (tests/test_selftest.py).
@pytest.mark.parametrize("model, nesterov, optimizer", [("resnet18_v1.5", False, "sgd"), ("resnet9", True, "sgd"),
                                                       ("resnet18_v1.5", False, "lars")])
def test_float32_master_weights_for_every_float16_parameter(model, nesterov, optimizer):
    assert master_weight_problems(model, nesterov, optimizer) == []


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_the_master_weight_contract_catches_plain_float16_updates(monkeypatch, optimizer):
    monkeypatch.setattr(float16_contract, "FLOAT16", replace(float16_contract.FLOAT16, multi_precision=False))
    problems = master_weight_problems("resnet9", optimizer=optimizer)
    assert problems and "has no float32 master weight" in problems[0]


# --- defects 2 and 3: the dali-gpu pipelines ------------------------------

def test_every_dali_gpu_pipeline_passes_the_contract():
    assert gpu_pipeline_problems() == []


def _mixed_decoded():
    encoded = fn.external_source(source=iter(()), batch=True, dtype=types.UINT8)
    return encoded, fn.decoders.image(encoded, device="mixed", output_type=types.RGB)


def test_the_contract_catches_gpu_geometry_and_float16_erase():
    @pipeline_def(batch_size=2, num_threads=1, device_id=0)
    def gpu_geometry():
        _, images = _mixed_decoded()
        width = fn.cast(fn.shapes(images, dtype=types.INT32)[1], dtype=types.FLOAT)
        return fn.resize(images, resize_x=width, resize_y=64.0)

    @pipeline_def(batch_size=2, num_threads=1, device_id=0)
    def float16_erase():
        _, images = _mixed_decoded()
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT16, crop=(32, 32))
        return fn.erase(images, anchor=[0.0, 0.0], shape=[8.0, 8.0], axis_names="HW", fill_value=0.0)

    geometry = pipeline_problems(gpu_geometry(), "geometry")
    assert any("takes GPU node" in p and "Resize" in p for p in geometry), geometry
    erase = pipeline_problems(float16_erase(), "erase")
    assert erase == ["erase: Erase (gpu) receives float16; its GPU kernel takes float32, int16, int32, int64, int8, "
                     "uint16, uint32, uint64, uint8 (kernels::erase_gpu_impl<channels, T, ndim>)"]


def test_the_contract_catches_arguments_dali_refuses(monkeypatch):
    from visionbench.data import dali

    build = dali.build_pipeline

    def misspelt(spec, feed, context, seed):
        if spec.train:
            return build(spec, feed, context, seed)

        @pipeline_def(batch_size=2, num_threads=1, device_id=0)
        def pipeline():
            _, images = _mixed_decoded()
            return fn.resize(images, resize_shorter_side=64.0)

        return pipeline()

    monkeypatch.setattr(dali, "build_pipeline", misspelt)
    problems = gpu_pipeline_problems()
    assert problems and all("cannot be defined" in p and '"resize_shorter_side" is not supported' in p
                            for p in problems), problems


_CPP_TYPES = {"bool": "bool", "signed char": "int8", "unsigned char": "uint8", "short": "int16",
              "unsigned short": "uint16", "int": "int32", "unsigned int": "uint32", "long": "int64",
              "unsigned long": "uint64", "dali::float16": "float16", "float": "float32", "double": "float64"}


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm to list the library's kernels")
def test_the_gpu_kernel_table_is_what_the_installed_dali_compiled():
    import nvidia.dali

    library = Path(nvidia.dali.__file__).parent / "libdali_operators.so"
    symbols = subprocess.run(["nm", "-C", str(library)], capture_output=True, text=True, check=True).stdout
    kernels = {schema: kernel for schema, kernel in GPU_KERNELS.items() if kernel.template is not None}
    lines = [line for line in symbols.splitlines() if any(k.template in line for k in kernels.values())]
    read = 0
    for schema, kernel in kernels.items():
        arguments = re.findall(rf"\b{kernel.template}<([^<>()]*)>", "\n".join(l for l in lines if kernel.template in l))
        compiled = {_CPP_TYPES[a.split(", ")[kernel.input_argument]] for a in arguments
                    if a.split(", ")[kernel.input_argument] in _CPP_TYPES}
        assert compiled == set(kernel.input_dtypes), schema
        read += 1
    assert read == 7


# --- the pixels stay as they were -----------------------------------------

def _old_resize_shorter_center_crop(images, encoded, shorter, size):
    """The val geometry before the fix: from the decoded images' shapes
    (fine on CPUs, refused on GPUs)."""
    shape = fn.shapes(images, dtype=types.INT32)
    height, width = shape[0], shape[1]
    portrait = height > width
    new_h = portrait * (shorter * height // width) + (1 - portrait) * shorter
    new_w = portrait * shorter + (1 - portrait) * (shorter * width // height)
    images = fn.resize(images, resize_x=fn.cast(new_w, dtype=types.FLOAT), resize_y=fn.cast(new_h, dtype=types.FLOAT))
    anchor = fn.cat(fn.reshape((new_h - size) // 2, shape=[1]), fn.reshape((new_w - size) // 2, shape=[1]))
    return fn.slice(images, start=anchor, shape=[size, size], axis_names="HW")


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    """Textured JPEGs (the demo set's drawings) of landscape, portrait and
    square shapes, so resampling and crop offsets all show."""
    import cv2

    from visionbench.data.demo import image_rng, render_image
    from visionbench.data.recordio import RecordSetWriter

    prefix = tmp_path_factory.mktemp("textured") / "t"
    with RecordSetWriter(prefix) as writer:
        for i in range(12):
            rgb = render_image(i % 10, image_rng(0, "val", i % 10, i), 40 + 3 * i)
            if i % 3 == 1:
                rgb = rgb.transpose(1, 0, 2)
            writer.write(i % 10, cv2.imencode(".jpg", rgb[:, :, ::-1])[1].tobytes(), f"t/{i}.jpg")
        writer.finish(tool="self_test", source="test", classes=[str(i) for i in range(10)],
                      options={"resize": None, "quality": 95, "workers": 1, "shuffle": False, "seed": 0,
                               "strict": True}, seconds=0.1)
    return prefix


def _epoch_pixels(spec):
    from visionbench.data.loader import make_loader

    return np.concatenate([step[0].data.asnumpy() for step in make_loader(spec).epoch(0)])


def _spec(prefix, **changes):
    from visionbench.data.spec import LoaderSpec

    return replace(LoaderSpec(prefix=prefix, train=False, batch_size=4, image_size=32, devices=[mx.cpu(0)],
                              threads=1), **changes)


@pytest.mark.parametrize("dtype, layout", [("float32", "NCHW"), ("float16", "NHWC")])
def test_val_pixels_are_those_of_the_decoded_shape_geometry(textured, monkeypatch, dtype, layout):
    from visionbench.data import dali

    spec = _spec(textured, dtype=dtype, layout=layout)
    now = _epoch_pixels(spec)
    monkeypatch.setattr(dali, "_resize_shorter_center_crop", _old_resize_shorter_center_crop)
    before = _epoch_pixels(spec)
    assert now.shape == before.shape and np.array_equal(now, before)


def test_cifar_cutout_in_float16_is_the_float32_pixels_rounded(textured):
    from visionbench.data.spec import Augment

    cifar = Augment(recipe="cifar", cutout=8)
    float32 = _epoch_pixels(_spec(textured, train=True, augment=cifar, seed=3))
    float16 = _epoch_pixels(_spec(textured, train=True, augment=cifar, seed=3, dtype="float16"))
    assert float16.dtype == np.float16
    assert np.array_equal(float16, float32.astype(np.float16))
    # Cutout happened: a square of each image is exactly the mean (0).
    assert all((sample == 0).all(axis=0).sum() >= 8 * 8 for sample in float16)


# --- defect 4: GPUs this MXNet build cannot run ---------------------------

def test_hopper_and_newer_are_refused_under_mxnet_cu112_and_the_rest_run():
    from visionbench.engine.gpus import Gpu, check_gpus_supported, unsupported_gpus

    build = ("mxnet-cu112", "1.9.1")
    runs = [Gpu(0, "Tesla V100-SXM2-16GB", (7, 0)), Gpu(1, "Tesla T4", (7, 5)), Gpu(2, "A100-SXM4-40GB", (8, 0)),
            Gpu(3, "NVIDIA A10", (8, 6)), Gpu(4, "NVIDIA L4", (8, 9)), Gpu(5, "Tesla P100", (6, 0)),
            Gpu(6, "GTX 1080", (6, 1)), Gpu(7, "Tesla M60", (5, 2))]
    refused = [Gpu(0, "NVIDIA H100 80GB HBM3", (9, 0)), Gpu(1, "NVIDIA H200", (9, 0)),
               Gpu(2, "NVIDIA B200", (10, 0)), Gpu(3, "Tesla K80", (3, 7))]
    assert unsupported_gpus(runs, build) == []
    assert unsupported_gpus(refused, build) == refused
    assert unsupported_gpus(refused, None) == []   # an MXNet we do not know (built from source): trusted
    with pytest.raises(UsageError) as refusal:
        check_gpus_supported(runs[:2] + refused[:1], build)
    message = str(refusal.value)
    assert "\n" not in message
    assert message.startswith("GPU 0 (NVIDIA H100 80GB HBM3) has compute capability 9.0, which mxnet-cu112 1.9.1 "
                              "cannot run (it carries GPU code for sm_50/60/70/80/86 only, no PTX)")
    assert "Ada" in message and "--device cpu" in message
    assert "on this GPU train with --engine torch" in message   # the way forward on Hopper and newer


def test_a_gpu_run_stops_at_start_on_a_hopper_gpu(monkeypatch):
    from visionbench.engine import gpus

    monkeypatch.setattr(gpus, "visible_gpus", lambda: [gpus.Gpu(0, "NVIDIA H100 80GB HBM3", (9, 0))])
    monkeypatch.setattr(gpus, "installed_mxnet", lambda: ("mxnet-cu112", "1.9.1"))
    with pytest.raises(UsageError, match="compute capability 9.0"):
        gpus.refuse_unsupported_gpus()
    monkeypatch.setattr(gpus, "visible_gpus", lambda: None)   # no driver to ask: MXNet speaks for itself
    gpus.refuse_unsupported_gpus()


def test_the_readme_and_dockerfile_name_the_gpus_that_run():
    for path in (ROOT / "README.md", ROOT / "Dockerfile"):
        text = " ".join(path.read_text().split())
        assert "Hopper" in text and "compute capability 5.0 to 8.9" in text, path


# --- defect 5: nvJPEG memory and decoder threads --------------------------

def test_gpu_decoding_threads_and_memory_per_pipeline():
    from visionbench.data.gpu_decoding import GPU_DECODER_THREADS, decoder_options, default_threads, nvjpeg_memory
    from visionbench.data.spec import LoaderSpec

    assert GPU_DECODER_THREADS == 6
    assert default_threads(1, "dali-gpu", cpu_count=16) == 6         # was 16: 16 nvJPEG buffers per GPU
    assert default_threads(8, "dali-gpu", cpu_count=256) == 6        # a DGX A100: 6 per GPU, not 32
    assert default_threads(4, "dali-gpu", cpu_count=8) == 2          # never more than the cores per GPU
    assert default_threads(1, "dali-cpu", cpu_count=16) == 16        # CPU decoding takes every core
    spec = LoaderSpec(prefix=None, train=True, batch_size=1, image_size=32, devices=[mx.gpu(0)], backend="dali-gpu")
    assert spec.pipeline_threads == min(6, __import__("os").cpu_count())
    assert replace(spec, threads=3).pipeline_threads == 3            # --dali-threads wins
    assert decoder_options("mixed") == {"device_memory_padding": 64 * 2**20, "host_memory_padding": 64 * 2**20,
                                        "hw_decoder_load": 0.65}
    gpu_bytes, host_bytes = nvjpeg_memory(GPU_DECODER_THREADS)
    assert (gpu_bytes, host_bytes) == (384 * 2**20, 768 * 2**20)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "384 MiB of GPU memory and 768 MiB of pinned host memory" in readme


# --- defect 6: cuDNN autotune follows the resolved plan --------------------

def _example_argv(name):
    """The runner flags an examples/*.sh script passes."""
    line = next(l for l in (ROOT / "examples" / name).read_text().splitlines() if '"$here/../runner"' in l)
    words = shlex.split(line)
    return words[words.index("$here/../runner") + 1:words.index("$@")]


@pytest.mark.parametrize("name, rect_val", [("RN50_FP16_8GPU_PHASES.sh", True), ("RN50_FP16_8GPU.sh", False)])
def test_autotune_is_off_when_any_phase_validates_rectangularly(name, rect_val):
    from visionbench.engine.gpu_settings import mxnet_environment
    from visionbench.engine.plan import uses_rect_val

    config = resolve(_example_argv(name))
    assert config.rect_val is False   # the flag is not set: only the phases turn it on
    assert uses_rect_val(config) is rect_val
    assert mxnet_environment("gpu", uses_rect_val(config))["MXNET_CUDNN_AUTOTUNE_DEFAULT"] == ("0" if rect_val else "1")
    assert uses_rect_val(replace(config, rect_val=True, phases=None)) is True


# --- defect 7: a float16 checkpoint scored by a float32 model --------------

@pytest.fixture(scope="module")
def float16_checkpoint(trained_demo, tmp_path_factory):
    """A trained float32 checkpoint and its float16 twin, cast as a float16
    GPU run saves it: weights float16, BatchNorm parameters float32."""
    data, trained, _ = trained_demo
    half = tmp_path_factory.mktemp("f16") / "m16"
    params = mx.nd.load(f"{trained}-0001.params")
    cast = {name: (array if "batchnorm" in name else array.astype("float16")) for name, array in params.items()}
    assert {a.dtype for a in cast.values()} == {np.float16, np.float32}
    mx.nd.save(f"{half}-0001.params", cast)
    meta = json.loads(Path(f"{trained}-0001.json").read_text())
    Path(f"{half}-0001.json").write_text(json.dumps(dict(meta, dtype="float16")))
    shutil.copy(f"{trained}-0001.states", f"{half}-0001.states")
    shutil.copy(f"{trained}-symbol.json", f"{half}-symbol.json")
    return data, trained, half


@pytest.fixture(scope="module")
def rounded_checkpoint(float16_checkpoint, tmp_path_factory):
    """The float16 twin's weights widened back to float32, saved as a float32
    checkpoint: the very numbers a float32 model holds after loading the twin."""
    data, _, half = float16_checkpoint
    rounded = tmp_path_factory.mktemp("rounded") / "m32"
    params = mx.nd.load(f"{half}-0001.params")
    mx.nd.save(f"{rounded}-0001.params", {name: array.astype("float32") for name, array in params.items()})
    for suffix in ("-0001.json", "-0001.states", "-symbol.json"):
        shutil.copy(f"{half}{suffix}", f"{rounded}{suffix}")
    Path(f"{rounded}-0001.json").write_text(json.dumps(dict(json.loads(Path(f"{half}-0001.json").read_text()),
                                                            dtype="float32")))
    return rounded


def _score(data, prefix):
    return run_runner("--mode", "val", "--device", "cpu", "--data-root", data, "--image-size", "32",
                      "--num-layers", "18", "--num-classes", "10", "--model-prefix", prefix, "--load-epoch", "1",
                      "-b", "8")


def test_a_float16_checkpoint_is_scored_by_a_float32_model(float16_checkpoint, rounded_checkpoint):
    """Scoring the float16 checkpoint gives exactly the scores of a float32
    checkpoint holding the same numbers: the weights are widened, not
    reinterpreted or dropped. (Compared with the float32 original instead,
    the rounding flips images near a class boundary, and which ones depends
    on the CPU's oneDNN kernels.)"""
    data, _, half = float16_checkpoint
    scored, widened = _score(data, half), _score(data, rounded_checkpoint)
    assert scored.returncode == 0, scored.stderr
    assert widened.returncode == 0, widened.stderr
    scores = [re.search(r"top-1 ([0-9.]+) top-5 ([0-9.]+) over (\d+) images", r.stdout).groups()
              for r in (scored, widened)]
    assert scores[0] == scores[1] and scores[0][2] == "40", (scored.stdout, widened.stdout)


def test_a_float16_checkpoint_loads_into_a_float32_model_as_its_widened_numbers(float16_checkpoint,
                                                                              rounded_checkpoint):
    """The load the scoring above goes through, logit by logit: the float32
    model holding the float16 checkpoint computes exactly what it computes
    from the widened float32 one, and not what the unrounded original gives."""
    from visionbench.engine.checkpoint import load_weights
    from visionbench.engine.precision import resolve_precision
    from visionbench.engine.trainer import build_net

    _, trained, half = float16_checkpoint
    config = resolve(["--device", "cpu", "--image-size", "32", "--num-layers", "18", "--num-classes", "10"])
    images = mx.nd.random.uniform(-2, 2, (8, 3, 32, 32), ctx=mx.cpu())
    logits = {}
    for name, prefix, cast in (("half", half, True), ("widened", rounded_checkpoint, False), ("original", trained, False)):
        net = build_net(config, [mx.cpu()], resolve_precision("float32", "cpu", None))
        load_weights(net, prefix, 1, [mx.cpu()], cast=cast)
        logits[name] = net(images).asnumpy()
    assert np.array_equal(logits["half"], logits["widened"])
    assert not np.array_equal(logits["half"], logits["original"])


def test_resuming_a_float16_checkpoint_in_float32_is_refused(float16_checkpoint):
    data, _, half = float16_checkpoint
    before = {p: p.read_bytes() for p in half.parent.glob("m16-*")}
    result = run_runner("--device", "cpu", "-n", "1", "-b", "8", "--data-root", data, "--image-size", "32",
                        "--num-layers", "18", "--num-classes", "10", "-e", "2", "--model-prefix", half)
    assert result.returncode == 2
    assert "was trained in float16: resume it with --dtype float16" in one_line_error(result)
    assert {p: p.read_bytes() for p in half.parent.glob("m16-*")} == before
