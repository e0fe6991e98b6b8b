"""``python -m visionbench.gpucheck OUT_DIR [--device cpu --tiny]``: see
the package docstring (visionbench/gpucheck/__init__.py)."""
from __future__ import annotations

import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from ..cli import ArgumentParser, RunFailure, UsageError, last_error_line, run_main
from . import augmentation, realdata, training
from .inference import inference_argv, timed_inference
from .machine import RESNET50_INFER_GFLOP, RESNET50_TRAIN_GFLOP, describe, describe_line
from .report import SKIPPED, Point, build_report, markdown, write_json
from .sizes import GPU, TINY, CheckSizes

OUTPUTS = ("gpucheck.json", "gpucheck.md")
# Seconds the points may start within (a point started in time runs to its end):
# issue 23 asks for the whole check in 8 minutes on one H200, start-up included.
DEFAULT_BUDGET_S = 400.0


class Skip(Exception):
    """A point that cannot run here; the message says why."""


@dataclass
class Check:
    """One run of the check: where, how big, and its points in order, each
    with the function that measures it (run later, within the budget)."""
    device: str
    sizes: CheckSizes
    out_dir: Path
    command: str
    deadline: float
    jpeg_set: Optional[Path] = None
    points: List[Tuple[Point, Callable[[], dict]]] = field(default_factory=list)

    def add(self, point: Point, measure: Callable[[], dict]) -> None:
        self.points.append((point, measure))

    def resnet50_gflop(self, per_image: float) -> Optional[float]:
        """ResNet50's FLOP figures hold at 224 px only (the toy sizes: no MFU)."""
        return per_image if (self.sizes.num_layers, self.sizes.image_size) == (50, 224) else None


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m visionbench.gpucheck",
                            description="GPU readiness and speed of the torch engine in one command "
                                        "(ResNet50 v1.5 training and inference, nvjpeg, ResNet9, MFU)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for gpucheck.json and gpucheck.md (created)")
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                        help="gpu (default: CUDA device 0); cpu only with --tiny")
    parser.add_argument("--tiny", action="store_true", help="every part at toy sizes (ResNet18 at 16 px, tiny batches and sets; sizes.py)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, metavar="SECONDS",
                        help=f"points not started within this many seconds are reported as not run "
                             f"(default {DEFAULT_BUDGET_S:g})")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier check's files in OUT_DIR")
    return parser


def check_machine(args) -> None:
    """One line and exit 2 when the asked-for device is not there."""
    from ..engines import prepare_torch_threads

    prepare_torch_threads()   # before torch starts its threads (engines/__init__.py says why)
    try:
        import torch
    except ImportError:
        raise UsageError(f"PyTorch cannot be imported in {sys.executable}; the check runs the torch engine")
    if args.device == "cpu" and not args.tiny:
        raise UsageError("--device cpu runs the toy sizes only: add --tiny (the full sizes would take hours on CPUs)")
    if args.device == "gpu" and not torch.cuda.is_available():
        raise UsageError(f"no CUDA GPU visible to PyTorch {torch.__version__} here (CUDA build: "
                         f"{torch.version.cuda or 'none'}); `--device cpu --tiny` runs the check at toy sizes on CPUs")
    if args.budget_s <= 0:
        raise UsageError(f"--budget-s must be positive, got {args.budget_s:g}")
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder")
    for name in OUTPUTS:
        if (out_dir / name).exists() and not args.overwrite:
            raise UsageError(f"{out_dir / name} already exists; choose another OUT_DIR or pass --overwrite")


def readiness_points(check: Check) -> None:
    for dtype in ("bfloat16", "float16"):
        argv = training.readiness_argv(check.device, dtype, check.sizes)
        check.add(Point("readiness", f"{check.sizes.readiness_steps} training steps, channels_last",
                        check.sizes.readiness_batch, dtype, training.command_of(argv)),
                  lambda argv=argv: training.readiness(argv, check.sizes.readiness_steps))
    check.add(Point("readiness", "nvjpeg labels match their images", check.sizes.readiness_batch, "bfloat16",
                    check.command), lambda: _label_check(check))


def _nvjpeg_or_skip() -> None:
    from ..data.loader import TORCH_BACKENDS

    if "nvjpeg" not in TORCH_BACKENDS:
        raise Skip("the nvjpeg backend is not in this checkout (--data-backend nvjpeg)")


def _label_check(check: Check) -> dict:
    _nvjpeg_or_skip()
    folder = realdata.write_label_set(check.out_dir / "data" / "labels", check.sizes)
    argv = realdata.label_check_argv(check.device, folder, check.sizes.readiness_batch, check.sizes)
    return realdata.check_labels(argv)


def synthetic_points(check: Check, compiled: bool) -> None:
    sizes = check.sizes
    for batch in reversed(sizes.train_batches):
        for dtype in ("bfloat16", "float16"):
            for layout in ("channels_last", "contiguous"):
                argv = training.resnet_argv(check.device, batch, dtype, layout, sizes, sizes.train_steps)
                argv += training.synthetic_flags(batch * sizes.train_steps) + (["--compile"] if compiled else [])
                point = Point("synthetic", f"{layout}{' compile' if compiled else ''}", batch, dtype,
                              training.command_of(argv), check.resnet50_gflop(RESNET50_TRAIN_GFLOP))
                run = _synthetic_run(check, compiled, batch, dtype, layout)
                check.add(point, lambda argv=argv, run=run: run(argv))


def _synthetic_run(check: Check, compiled: bool, batch: int, dtype: str, layout: str):
    """The measurement of a synthetic point. Both sizes compile one point only
    (sizes.py says why), on CPUs with TorchDynamo's eager backend
    (training.open_run_loop says why)."""
    if not (compiled and check.sizes.compiled_points == "one"):
        return training.timed_training
    if (batch, dtype, layout) != (max(check.sizes.train_batches), "bfloat16", "channels_last"):
        return lambda argv: _skip(f"the check compiles one point (bfloat16 channels_last, batch "
                                  f"{max(check.sizes.train_batches)}): each compiled point is a cold compile")
    return lambda argv: training.timed_training(argv, tiny_compile=check.device == "cpu")


def _skip(reason: str):
    raise Skip(reason)


def real_data_points(check: Check) -> None:
    sizes = check.sizes
    steps = max(1, sizes.jpeg_images // sizes.train_batches[-1])
    folder = check.out_dir / "data" / "jpeg"
    nvjpeg = realdata.real_data_argv(check.device, folder, "nvjpeg", sizes, steps)
    cpu = realdata.real_data_argv(check.device, folder, "dali-cpu", sizes, steps, sizes.cpu_decode_threads)
    gflop = check.resnet50_gflop(RESNET50_TRAIN_GFLOP)
    check.add(Point("real data", "nvjpeg, channels_last", sizes.train_batches[-1], "bfloat16",
                    training.command_of(nvjpeg), gflop), lambda: _real_data(check, nvjpeg, "nvjpeg"))
    check.add(Point("real data", f"CPU decoding (dali-cpu, {sizes.cpu_decode_threads} threads), channels_last",
                    sizes.train_batches[-1], "bfloat16", training.command_of(cpu), gflop),
              lambda: _real_data(check, cpu, "dali-cpu"))


def _real_data(check: Check, argv: List[str], backend: str) -> dict:
    reason = realdata.dali_missing() if backend == "dali-cpu" else None
    if reason:
        raise Skip(reason)
    if backend == "nvjpeg":
        _nvjpeg_or_skip()
    if check.jpeg_set is None:
        check.jpeg_set = realdata.write_jpeg_set(check.out_dir / "data" / "jpeg", check.sizes)
    return training.timed_training(argv)


def augmentation_points(check: Check) -> None:
    command = augmentation.augmentation_command(check.command, check.device, check.sizes)
    for candidate in augmentation.candidates():
        check.add(Point("augmentation", f"nvjpeg train crops, {candidate}", check.sizes.train_batches[-1],
                        "float32", command),
                  lambda candidate=candidate: augmentation.timed_augmentation(check.device, check.sizes, candidate))


def inference_points(check: Check) -> None:
    for batch in check.sizes.inference_batches:
        argv = inference_argv(check.device, batch, check.sizes)
        point = Point("inference", "channels_last, autocast, torch.inference_mode", batch, "bfloat16",
                      f"{check.command}  # inference: {shlex.join(argv)}", check.resnet50_gflop(RESNET50_INFER_GFLOP))
        check.add(point, lambda argv=argv: timed_inference(argv, check.sizes.inference_steps))


def resnet9_points(check: Check) -> None:
    # GPUs: the DAWN recipe's float16 (examples/RN9_CIFAR10_DAWN.sh). CPUs: bfloat16, as float16
    # convolutions in NCHW ran 30x slower there (16 images in 33 s on 2 cores, torch 2.13).
    dtype = "float16" if check.device == "gpu" else "bfloat16"
    argv = training.resnet9_argv(check.device, dtype, check.sizes)
    check.add(Point("resnet9", f"DAWN recipe settings, {check.sizes.resnet9_images} synthetic 32 px images",
                    check.sizes.resnet9_batch, dtype, training.command_of(argv)),
              lambda: training.resnet9_epoch(argv))


def plan_points(check: Check) -> None:
    """Every point, most telling first: a point the time budget leaves out costs least at the end."""
    readiness_points(check)
    synthetic_points(check, compiled=False)
    real_data_points(check)
    augmentation_points(check)
    inference_points(check)
    resnet9_points(check)
    synthetic_points(check, compiled=True)


def run_point(point: Point, measure: Callable[[], dict], deadline: float) -> None:
    if time.perf_counter() > deadline:
        point.status, point.error = "timeout", "not run: the check's --budget-s was spent before this point"
        point.done = True
        return
    started = time.perf_counter()
    try:
        outcome = measure()
    except Skip as reason:
        point.status, point.error = "error", f"{SKIPPED}{reason}"
    except Exception as err:  # noqa: BLE001 - a failed point is a record, and the check goes on
        point.status, point.error = "error", last_error_line(err)[:500]
    else:
        point.note = outcome.pop("note", "")
        point.error = outcome.pop("error", None)
        point.status = "error" if point.error else "ok"
        point.figures = outcome
    point.wall_s, point.done = time.perf_counter() - started, True


def add_ratios(points: List[Point]) -> None:
    """Real-data img/s over synthetic img/s at the same batch, dtype and layout (eager)."""
    synthetic = {(p.batch, p.dtype): p.figures.get("ips") for p in points
                 if p.part == "synthetic" and p.label == "channels_last" and p.status == "ok"}
    for p in points:
        reference = synthetic.get((p.batch, p.dtype))
        if p.part == "real data" and p.status == "ok" and reference and "of synthetic" not in p.note:
            p.note = f"{p.figures['ips'] / reference:.3f} of synthetic ({reference:.4g} img/s); {p.note}"


def environment_of(check: Check, machine: dict) -> dict:
    from ..report.train_report import environment

    return {**environment(check.device, 1, "torch"), "gpucheck_device": machine}


def write_outputs(check: Check, machine: dict, config: dict, status: str) -> str:
    points = [point for point, _ in check.points if point.done]
    add_ratios(points)
    write_json(check.out_dir / OUTPUTS[0], build_report(config, environment_of(check, machine), points, status))
    header = [describe_line(machine), "", check.sizes.scaled() + f"; `{check.command}`.",
              "Training img/s: the timed epoch after an untimed one, data loading included, fenced by the epoch's "
              "loss read back. MFU: ResNet50 at 224 px (24.5 GFLOP per training image, 8.2 per inference image) "
              "over the device's dense bfloat16 peak."]
    text = markdown("GPU check (torch engine)", header, points, machine["peak_bf16_tflops"])
    from ..files import write_text_atomic

    write_text_atomic(check.out_dir / OUTPUTS[1], text)
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_machine(args)
    started = time.perf_counter()
    machine = describe(args.device)
    print(describe_line(machine), flush=True)
    sizes = TINY if args.tiny else GPU
    shown = ["python", "-m", "visionbench.gpucheck", *(sys.argv[1:] if argv is None else argv)]
    check = Check(args.device, sizes, Path(args.out_dir), shlex.join(shown), started + args.budget_s)
    check.out_dir.mkdir(parents=True, exist_ok=True)
    config = {"check": "gpucheck", "device": args.device, "tiny": args.tiny, "budget_s": args.budget_s,
              "sizes": asdict(sizes)}
    plan_points(check)
    for index, (point, measure) in enumerate(check.points):
        run_point(point, measure, check.deadline)
        shown_ips = f"{point.figures['ips']:.4g} img/s" if point.figures.get("ips") else point.error or "ok"
        print(f"[{index + 1}/{len(check.points)}] {point.part}: {point.label}, batch {point.batch}, "
              f"{point.dtype}: {shown_ips} ({point.wall_s:.1f} s)", file=sys.stderr, flush=True)
        write_outputs(check, machine, config, "running")
    print(write_outputs(check, machine, config, "complete"), flush=True)
    return outcome([point for point, _ in check.points])


def outcome(points: List[Point]) -> int:
    """0 when no point failed; points the budget left out are named, not failed."""
    left_out = [point for point in points if point.status == "timeout"]
    if left_out:
        print(f"gpucheck: {len(left_out)} of {len(points)} points were not run within --budget-s (the last: "
              f"{left_out[-1].part}, {left_out[-1].label}, batch {left_out[-1].batch})", file=sys.stderr)
    failed = [point for point in points if point.failed]
    if failed:
        raise RunFailure(f"{len(failed)} of {len(points)} points failed (first: {failed[0].part}, "
                         f"{failed[0].label}: {failed[0].error}); the table says which")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "gpucheck"))
