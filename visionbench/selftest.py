"""``./runner --self-test``: is this machine ready for a long run?

It prints what the run would use (CPU, GPUs with their compute capability,
MXNet, DALI, CUDA, cuDNN and NCCL versions), then runs a few short checks
and ends with a table, one line a check: pass, fail (with the one-line
reason and what to do), or skipped (with why). The exit status is 0 only
when every check that ran passed.

On GPUs (``--device gpu``, the default where MXNet sees one), on each of the
``-n`` GPUs: float16 NHWC ResNet50 training steps with dynamic loss scaling,
and dali-gpu train and val pipelines over a small generated RecordIO set;
then an allreduce over all ``-n`` GPUs with ``--kv-store``. On CPUs the same
checks run as float32 NCHW steps, dali-cpu pipelines and an allreduce over
``-n`` CPU contexts, and the GPU checks are listed as skipped. Everywhere,
the contract checks of the float16 GPU path that need no GPU
(engine/float16_contract.py, data/dali_contract.py) run too.

Everything here but the GPU branches runs in ``make test``.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, List

from .config import Config

SET_IMAGES = 24            # records in the generated RecordIO set
SET_SIZES = [(40, 52), (52, 40), (48, 48), (44, 60), (60, 36)]   # (height, width): landscape and portrait
COLOUR_STEP = 12           # colour levels per index digit: survives JPEG and resizing


@dataclass
class Check:
    name: str
    where: str
    status: str = "skipped"    # pass | fail | skipped
    detail: str = ""


def index_colour(index: int) -> tuple:
    """The RGB colour that spells ``index`` (0..399): any crop, flip or resize
    of a solid image keeps it, so every output sample says which record it is."""
    return (COLOUR_STEP * (index % 20) + 8, COLOUR_STEP * (index // 20) + 8, 128)


def colour_index(rgb) -> int:
    import numpy as np

    red, green = (np.asarray(rgb[:2], dtype=np.float64) - 8) / COLOUR_STEP
    return int(round(green)) * 20 + int(round(red))


def colour_jpeg(index: int) -> bytes:
    """A solid JPEG of colour index_colour(index), of one of SET_SIZES."""
    import cv2
    import numpy as np

    height, width = SET_SIZES[index % len(SET_SIZES)]
    image = np.empty((height, width, 3), np.uint8)
    image[:] = index_colour(index)
    return cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def write_colour_set(prefix: Path, count: int = SET_IMAGES, labels=None, payload_of=colour_jpeg) -> Path:
    """A RecordIO set of ``count`` records: record i holds ``payload_of(i)``
    (by default a solid JPEG of colour index_colour(i)) and label
    ``labels[i]`` (default i)."""
    from .data.recordio import RecordSetWriter

    with RecordSetWriter(prefix) as writer:
        for i in range(count):
            writer.write(labels[i] if labels else i, payload_of(i), f"colour/{i}.jpg")
        writer.finish(tool="self_test", source="generated", classes=[str(i) for i in range(count)],
                      options={"resize": None, "quality": 95, "workers": 1, "shuffle": False, "seed": 0,
                               "strict": True}, seconds=0.1)
    return prefix


# --- the checks: each returns a detail line or raises CheckFailed ----------

class CheckFailed(Exception):
    """A check that ran and found a problem: its one-line reason and fix."""


def _problems(problems: List[str], fix: str) -> str:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckFailed(f"{problems[0]}{more}; {fix}")
    return "all as required"


def float16_contract_check() -> str:
    from .engine.float16_contract import all_problems

    _problems(all_problems("resnet50_v1.5"),
              "this MXNet build does not behave as visionbench's float16 path needs (report it)")
    return "overflow check on 161 gradient arrays, float16 graph types (NCHW, NHWC), float32 master weights"


def dali_contract_check() -> str:
    from .data.dali_contract import gpu_loader_specs, gpu_pipeline_problems

    _problems(gpu_pipeline_problems(), "this DALI build does not accept visionbench's GPU pipelines (report it)")
    return f"{len(gpu_loader_specs())} GPU pipelines: CPU named arguments, DALI's argument check, kernel dtypes"


def _plan(config: Config, steps: int):
    from .engine.plan import make_plan

    return make_plan(config, config.num_devices, lambda settings: steps)


def training_check(config: Config, context) -> str:
    """A few steps on one device over one fixed synthetic batch, through the
    training loop itself: the loss must fall (or the float16 loss scale
    move), every weight must change, nothing may fail."""
    import numpy as np

    from .data.loader import make_loader
    from .data.spec import LoaderSpec
    from .engine.precision import LossScaler, Precision
    from .engine.trainer import Run, build_net, build_trainer, train_epoch

    float16 = config.dtype == "float16"
    precision = (Precision("float16", True, LossScaler.INITIAL, True) if float16
                 else Precision("float32", False, 1.0, False))
    steps, epochs = 2, 3
    run_config = replace(config, arch="resnetv15", num_layers=50, init_bn0=True, bn_wd=True, wd=1e-4,
                         momentum=0.9, nesterov=False, num_devices=1, batch_size=8, image_size=64, num_classes=10,
                         phases=f"[{{'ep': (0, {epochs}), 'lr': 0.05}}]", warmup_epochs=0.0,
                         kv_store="device", label_smoothing=0.0)
    net = build_net(run_config, [context], precision)
    trainer = build_trainer(run_config, net, precision)
    scaler = LossScaler(precision.loss_scale, precision.dynamic_loss_scale)
    run = Run(run_config, [context], precision, net, trainer, _plan(run_config, steps), scaler)
    loader = make_loader(LoaderSpec(prefix=None, train=True, batch_size=8, image_size=64, devices=[context],
                                    backend="synthetic", dtype=precision.dtype, layout=run_config.input_layout,
                                    num_classes=10, synthetic_images=8 * steps))
    before = {name: p.data(context).astype("float32").asnumpy() for name, p in net.collect_params().items()
              if p.grad_req != "null"}
    losses = [train_epoch(run, epoch, loader, progress=False)["train_loss"] for epoch in range(epochs)]
    unchanged = [name for name, p in net.collect_params().items()
                 if name in before and np.array_equal(before[name], p.data(context).astype("float32").asnumpy())]
    if not all(np.isfinite(losses)):
        raise CheckFailed(f"the loss is not finite ({losses}); the GPU or its driver computes wrongly: "
                          "check the driver and `nvidia-smi -q` for errors")
    if unchanged:
        raise CheckFailed(f"{len(unchanged)} weights did not change ({unchanged[0]}, ...) in {epochs * steps} "
                          "steps; the optimizer update does not reach them")
    scale_moved = float16 and scaler.scale != LossScaler.INITIAL
    if not (losses[-1] < losses[0] or scale_moved):
        raise CheckFailed(f"the loss did not fall over {epochs * steps} steps on one batch ({losses[0]:.3f} -> "
                          f"{losses[-1]:.3f})")
    scale = f", loss scale {scaler.scale:g}" if float16 else ""
    return (f"ResNet50 v1.5 {config.dtype} {run_config.input_layout}, {epochs * steps} steps of batch 8 at 64 px: "
            f"loss {losses[0]:.3f} -> {losses[-1]:.3f}{scale}")


def pipelines_check(config: Config, context, folder: Path) -> str:
    """Train and val batches of the loader over the generated set: shapes,
    dtype, device, and each label the one of its image; val sees every
    record exactly once."""
    import numpy as np

    from .data.loader import make_loader
    from .data.spec import IMAGENET_MEAN, IMAGENET_STD, LoaderSpec

    prefix = folder / "colour"
    if not Path(f"{prefix}.idx").exists():
        write_colour_set(prefix)
    size, batch = 32, 4
    seen = {}
    for train in (True, False):
        spec = LoaderSpec(prefix=prefix, train=train, batch_size=batch, image_size=size, devices=[context],
                          backend=config.data_backend, dtype=config.dtype, layout=config.input_layout, threads=2)
        want = (batch, 3, size, size) if spec.layout == "NCHW" else (batch, size, size, 3)
        labels = []
        for step in make_loader(spec).epoch(0):
            data, label, pad = step[0]
            if data.shape != want or np.dtype(data.dtype) != np.dtype(spec.dtype) or data.context != context:
                raise CheckFailed(f"{'train' if train else 'val'} batch is {data.shape} {data.dtype} on "
                                  f"{data.context}, not {want} {spec.dtype} on {context}")
            if label.context != context:
                raise CheckFailed(f"{'train' if train else 'val'} labels arrive on {label.context}, not on "
                                  f"{context} with their images")
            pixels = data.asnumpy().astype(np.float32)
            if spec.layout == "NHWC":
                pixels = pixels.transpose(0, 3, 1, 2)
            pixels = pixels * np.array(IMAGENET_STD).reshape(1, 3, 1, 1) + np.array(IMAGENET_MEAN).reshape(1, 3, 1, 1)
            valid = batch - pad
            named = [colour_index(p.mean(axis=(1, 2))) for p in pixels[:valid]]
            got = label.asnumpy()[:valid].astype(int).tolist()
            if named != got:
                raise CheckFailed(f"labels {got} do not belong to their images {named}: the pipeline mixes "
                                  "images and labels")
            labels += got
        seen[train] = labels
    if sorted(seen[False]) != list(range(SET_IMAGES)):
        raise CheckFailed(f"val read records {sorted(seen[False])}, not each of the {SET_IMAGES} once")
    return (f"{config.data_backend} {config.dtype} {config.input_layout}: {len(seen[True])} train and "
            f"{len(seen[False])} val images, labels match their images")


def allreduce_check(kv_store: str, contexts) -> str:
    """Device i pushes the value i + 1; every device must pull the sum."""
    import mxnet as mx
    import numpy as np

    kvstore = mx.kv.create(kv_store)
    shape = (1024,)
    kvstore.init(0, mx.nd.zeros(shape, ctx=contexts[0]))
    values = [mx.nd.full(shape, i + 1, ctx=c) for i, c in enumerate(contexts)]
    outputs = [mx.nd.zeros(shape, ctx=c) for c in contexts]
    kvstore.pushpull(0, values, out=outputs)
    expected = len(contexts) * (len(contexts) + 1) / 2
    for context, output in zip(contexts, outputs):
        got = output.asnumpy()
        if not np.all(got == expected):
            raise CheckFailed(f"{context} pulled {got[0]:g}, not the sum {expected:g}: the {kv_store} kvstore "
                              "does not reduce across these devices (try --kv-store device)")
    return f"{len(contexts)} devices, kvstore {kv_store}: each pulled the sum {expected:g}"


# --- the run ---------------------------------------------------------------

def _run_check(check: Check, body: Callable[[], str]) -> Check:
    try:
        check.detail = body()
        check.status = "pass"
    except CheckFailed as failed:
        check.status, check.detail = "fail", str(failed)
    except Exception as err:  # noqa: BLE001 - any error of a check is its result, not a crash
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        check.status = "fail"
        check.detail = f"{type(err).__name__}: {(lines[-1] if lines else '')[:300]}"
    return check


def header_lines(config: Config) -> List[str]:
    import platform

    import mxnet as mx
    import nvidia.dali as dali

    from .engine.devices import cpu_model

    features = mx.runtime.Features()
    gpu_build = features.is_enabled("CUDA")
    lines = [f"machine: {platform.node()}, {cpu_model()}, Python {platform.python_version()}",
             f"MXNet {mx.__version__} ({'CUDA' if gpu_build else 'CPU'} build; "
             f"{', '.join(f for f in ('CUDA', 'CUDNN', 'NCCL', 'MKLDNN') if features.is_enabled(f)) or 'no accelerators'}), "
             f"DALI {dali.__version__}",
             # Where CUDA, cuDNN and NCCL are found and which GPUs show: a test harness or batch
             # system that drops these runs a different machine than the user's shell.
             "environment: " + ", ".join(f"{name}={os.environ.get(name, 'unset')}"
                                         for name in ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH"))]
    if config.device != "gpu":
        gpus = mx.context.num_gpus()
        lines.append(f"GPUs: {'none visible to MXNet' if not gpus else f'{gpus} visible, not used (--device cpu)'}; "
                     "CUDA, cuDNN, NCCL: not used")
        return lines
    # GPU-ONLY: the driver's GPUs and the CUDA libraries MXNet loads
    from .engine.gpus import installed_mxnet, library_versions, nvrtc_version, unsupported_gpus, visible_gpus

    gpus = visible_gpus() or []
    bad = set(unsupported_gpus(gpus, installed_mxnet()))
    for gpu in gpus:
        lines.append(f"GPU {gpu.index}: {gpu.name}, compute capability {gpu.capability_text}"
                     f"{' (this MXNet build cannot run it)' if gpu in bad else ''}")
    versions = library_versions()
    lines.append(", ".join(f"{name} {value or 'not found'}" for name, value in versions.items()))
    lines.append(fusion_line(gpus, nvrtc_version(), os.environ.get("MXNET_USE_FUSION")))
    return lines


def fusion_line(gpus, nvrtc, setting) -> str:
    """Whether MXNet's pointwise fusion is on, and why (GPU runs; main.py has applied
    engine/gpu_settings.py by then, so ``setting`` is what the run itself uses)."""
    from .engine.gpus import fusion_blocking_gpus, fusion_message

    blocking = fusion_blocking_gpus(gpus, nvrtc)
    state = "off" if setting == "0" else "on"
    line = f"pointwise fusion: {state} (MXNET_USE_FUSION={setting if setting is not None else 'unset'})"
    if blocking and state == "on":
        return f"{line}: WILL FAIL at the first fused kernel: {fusion_message(blocking[0], nvrtc)}; unset it or set 0"
    return f"{line}: {fusion_message(blocking[0], nvrtc)}" if blocking else line


def self_test(config: Config, out=print) -> List[Check]:
    """Run every check for ``config.device`` and ``-n``; print as it goes."""
    import mxnet as mx

    from .engine.devices import make_contexts

    for line in header_lines(config):
        out(line)
    gpu = config.device == "gpu"
    checks: List[Check] = []

    def run(check: Check, body: Callable[[], str]) -> None:
        started = time.perf_counter()
        checks.append(_run_check(check, body))
        out(f"  {check.status:7s} {check.name} [{check.where}] ({time.perf_counter() - started:.1f} s)")

    run(Check("float16 contract", "CPU"), float16_contract_check)
    run(Check("dali-gpu pipeline contract", "CPU"), dali_contract_check)
    contexts = make_contexts(config.device, config.num_devices)
    with tempfile.TemporaryDirectory(prefix="visionbench-selftest-") as folder:
        if gpu:
            # GPU-ONLY: float16 NHWC steps and nvJPEG pipelines on every GPU.
            steps = replace(config, dtype="float16", input_layout="NHWC", data_backend="dali-gpu")
            for context in contexts:
                run(Check("float16 NHWC training steps", str(context)), lambda: training_check(steps, context))
                run(Check("dali-gpu train and val pipelines", str(context)),
                    lambda: pipelines_check(steps, context, Path(folder)))
        else:
            cpu = replace(config, dtype="float32", input_layout="NCHW", data_backend="dali-cpu")
            run(Check("float32 training steps", str(contexts[0])), lambda: training_check(cpu, contexts[0]))
            run(Check("dali-cpu train and val pipelines", str(contexts[0])),
                lambda: pipelines_check(cpu, contexts[0], Path(folder)))
    kv_store = config.kv_store if gpu and config.kv_store in ("device", "local", "nccl") else "device"
    where = f"{len(contexts)} x {config.device}"
    run(Check(f"allreduce (kvstore {kv_store})", where), lambda: allreduce_check(kv_store, contexts))
    if not gpu:
        reason = "no GPU visible to MXNet" if mx.context.num_gpus() == 0 else "--device cpu"
        for name in ("float16 NHWC training steps", "dali-gpu train and val pipelines",
                     f"allreduce over GPUs (kvstore {config.kv_store})"):
            checks.append(Check(name, "GPU", "skipped", reason))
    return checks


def format_table(checks: List[Check]) -> str:
    import pandas as pd

    frame = pd.DataFrame([{"check": c.name, "where": c.where, "result": c.status, "detail": c.detail}
                          for c in checks])
    return frame.to_markdown(index=False)


def run_self_test(config: Config) -> int:
    """--self-test: 0 when every check that ran passed, 1 otherwise."""
    started = time.perf_counter()
    checks = self_test(config, out=lambda line: print(line, flush=True))
    print(format_table(checks), flush=True)
    failed = [c for c in checks if c.status == "fail"]
    ran = [c for c in checks if c.status != "skipped"]
    print(f"self-test: {len(ran) - len(failed)} of {len(ran)} checks passed, {len(checks) - len(ran)} skipped, "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return 1 if failed else 0
