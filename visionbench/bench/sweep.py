"""benchmark.py: sweep device counts x batch sizes x dtypes x engines, one
``./runner`` subprocess per point, into a validated JSON report, Markdown
tables and a plot.

Each point runs in its own process (a crash, an out-of-memory or a hang
costs that point only, and nothing leaks between points), under a timeout,
in its own process group so that a timed-out point is killed with every
thread and child it started. The report is rewritten after every point, so
an interrupted sweep keeps the points it finished.

Engines (``--engine mxnet,torch``) are the innermost axis: each engine runs a
point right after the other, so an interrupted sweep still holds pairs to
compare. A point an engine refuses (the torch engine: -n 2, inference, int8)
is run like any other and fails in a fraction of a second with the runner's
one-line reason: an error record, and the sweep goes on.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..cli import ArgumentParser, UsageError
from ..config import ENGINES
from .timing import find_result

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "runner"
DTYPES = ("float16", "float32", "int8")
# Flags benchmark.py sets for every point itself; passing them through would contradict it.
OWN_FLAGS = {"--mode", "--benchmark", "--benchmark-warmup-epochs", "--report", "--dawn-tsv", "--model-prefix",
             "--print-schedule", "--config"}
# The layout each precision's training recipes use (examples/RN50_FP16_*: NHWC, the layout
# float16 Tensor Core convolutions run in; float32: NCHW), so sweep figures are those of the
# recipes. A --input-layout among the runner flags overrides it for every point.
RECIPE_LAYOUT = {"float16": "NHWC", "float32": "NCHW", "int8": "NCHW"}
FRAMEWORKS = {"mxnet": "MXNet", "torch": "PyTorch"}
KILL_GRACE_S = 10   # seconds between SIGTERM and SIGKILL of a timed-out point
ERROR_CHARS = 500   # longest error message kept per point


def int_list(text: str) -> List[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return list(dict.fromkeys(values))


def dtype_list(text: str) -> List[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    bad = [v for v in values if v not in DTYPES]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"expected float16, float32 and/or int8 separated by commas, got {text!r}")
    return list(dict.fromkeys(values))


def engine_list(text: str) -> List[str]:
    """The engines to sweep, mxnet first (the reference of the torch/mxnet ratios)."""
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values or any(v not in ENGINES for v in values):
        raise argparse.ArgumentTypeError(f"expected mxnet and/or torch separated by commas, got {text!r}")
    return [engine for engine in ENGINES if engine in values]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="benchmark.py", allow_abbrev=False,
        description="Sweep device counts, batch sizes, precisions and engines (MXNet, PyTorch) through ./runner; "
                    "any flag not listed here is passed to every point's ./runner command.")
    parser.add_argument("-n", "--ngpus", type=int_list, required=True, metavar="LIST",
                        help="device counts, e.g. 1,4,8 (GPUs, or CPU contexts with --device cpu)")
    parser.add_argument("-b", "--batch-size", type=int_list, required=True, metavar="LIST",
                        help="images per device per step, e.g. 64,128,208")
    parser.add_argument("--dtype", type=dtype_list, metavar="LIST",
                        help="float16,float32 (GPUs), float32,int8 (CPUs; int8 with --only-inference) "
                             "(default: float16,float32 on GPUs, float32 on CPUs)")
    parser.add_argument("--engine", type=engine_list, default=["mxnet"], metavar="LIST",
                        help="mxnet, torch or mxnet,torch: every point runs once per engine (--engine E on its "
                             "runner command), and the tables put the engines side by side with a torch/mxnet "
                             "ratio; a point an engine refuses (torch: -n above 1, --only-inference, int8) is "
                             "recorded as failed with the reason (default mxnet)")
    parser.add_argument("-i", "--iterations", type=int, default=100, metavar="I", help="steps per epoch (default 100)")
    parser.add_argument("-e", "--num-epochs", type=int, default=2, metavar="E", help="epochs per point (default 2)")
    parser.add_argument("-w", "--warmup-epochs", type=int, default=1, metavar="W",
                        help="first epochs of each point left out of the figures (default 1)")
    parser.add_argument("--num-examples", type=int, metavar="N", help="synthetic data: images per epoch")
    parser.add_argument("--only-inference", action="store_true",
                        help="forward passes only: img/s and latency per batch")
    parser.add_argument("--data-root", metavar="DIR", help="read train/val .rec from DIR (default: synthetic data)")
    parser.add_argument("--data-backend", choices=("dali-gpu", "dali-cpu", "mxnet", "synthetic"),
                        help="input pipeline (default: synthetic without --data-root, else the runner's choice)")
    parser.add_argument("--device", choices=("gpu", "cpu"), help="default: gpu; cpu runs CPU contexts (float32)")
    parser.add_argument("--arch", default="resnetv15", choices=("resnetv1", "resnetv15", "resnet9"),
                        help="network family (default resnetv15)")
    parser.add_argument("--num-layers", type=int, default=50, choices=(18, 34, 50, 101, 152), help="default 50")
    parser.add_argument("--image-size", type=int, default=224, metavar="S", help="input side, pixels (default 224)")
    parser.add_argument("--timeout", type=float, default=1800.0, metavar="SECONDS",
                        help="per point, start-up included (default 1800)")
    parser.add_argument("-o", "--output", default="benchmark_report.json", metavar="REPORT.json",
                        help="the report; REPORT.md and REPORT.png are written beside it "
                             "(default: benchmark_report.json here)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing REPORT.json/.md/.png")
    return parser


def outputs_of(report: Path) -> dict:
    return {"json": report, "md": report.with_suffix(".md"), "png": report.with_suffix(".png")}


def check_args(args, extra: Sequence[str]) -> None:
    for name in ("iterations", "num_epochs", "image_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.warmup_epochs < args.num_epochs:
        raise UsageError(f"-w/--warmup-epochs must be in 0..{args.num_epochs - 1} (-e {args.num_epochs}), "
                         f"got {args.warmup_epochs}: nothing would be timed")
    if args.num_examples is not None and args.num_examples < 1:
        raise UsageError(f"--num-examples must be at least 1, got {args.num_examples}")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout}")
    if args.data_root and not Path(args.data_root).is_dir():
        raise UsageError(f"--data-root {args.data_root} is not a folder")
    if args.data_backend and args.data_backend != "synthetic" and not args.data_root:
        raise UsageError(f"--data-backend {args.data_backend} reads --data-root DIR; give one")
    for flag in extra:
        if flag.split("=", 1)[0] in OWN_FLAGS:
            raise UsageError(f"{flag.split('=', 1)[0]} is set by benchmark.py for every point; leave it out")
    report = Path(args.output)
    if report.suffix != ".json":
        raise UsageError(f"-o {report}: the report must be a .json file (REPORT.md/.png go beside it)")
    if not report.parent.is_dir():
        raise UsageError(f"-o {report}: folder {report.parent} does not exist")
    if not args.overwrite:
        for path in outputs_of(report).values():
            if path.exists():
                raise UsageError(f"{path} already exists; choose another -o or pass --overwrite")


def gpus_seen(engine: str) -> int:
    """How many GPUs the engine's framework sees; UsageError when it cannot be imported."""
    try:
        if engine == "torch":
            import torch
            return torch.cuda.device_count()
        import mxnet as mx
        return mx.context.num_gpus()
    except ImportError:
        raise UsageError(f"--engine {engine}: {FRAMEWORKS[engine]} cannot be imported in {sys.executable} "
                         "(`make install` installs both engines' frameworks)")


def resolve_device(args) -> str:
    """The device of the sweep; refuses what this machine cannot do with any of the sweep's engines."""
    device = args.device or "gpu"
    for engine in args.engine:
        gpus = gpus_seen(engine)
        if device == "gpu" and gpus == 0:
            raise UsageError(f"{FRAMEWORKS[engine]} sees no GPU (CPU build of {engine}, or no CUDA driver); "
                             "benchmark this machine's CPU with --device cpu (float32, and int8 with "
                             "--only-inference)")
        if device == "gpu" and max(args.ngpus) > gpus:
            raise UsageError(f"-n {max(args.ngpus)} asks for more GPUs than {FRAMEWORKS[engine]} sees ({gpus})")
    if device == "gpu" and args.engine == ["mxnet"]:
        # GPU-ONLY: once for the sweep, not once per point. Beside torch, the mxnet points
        # on a GPU MXNet cannot run fail one by one with this reason, and torch's still run.
        from ..engine.gpus import refuse_unsupported_gpus
        refuse_unsupported_gpus()
    return device


def point_argv(args, device: str, ngpus: int, batch: int, dtype: str, extra: Sequence[str],
               engine: str = "mxnet") -> List[str]:
    """The runner flags of one point (without the runner itself)."""
    argv = ["--engine", engine, "--mode", "inference" if args.only_inference else "train"]
    if not args.only_inference:
        argv.append("--benchmark")
    argv += ["--device", device, "-n", str(ngpus), "-b", str(batch), "--dtype", dtype,
             "-i", str(args.iterations), "-e", str(args.num_epochs),
             "--benchmark-warmup-epochs", str(args.warmup_epochs),
             "--arch", args.arch, "--num-layers", str(args.num_layers), "--image-size", str(args.image_size)]
    if not any(flag.split("=", 1)[0] == "--input-layout" for flag in extra):
        argv += ["--input-layout", RECIPE_LAYOUT[dtype]]
    if args.data_root:
        argv += ["--data-root", str(Path(args.data_root).resolve())]
    backend = args.data_backend or (None if args.data_root else "synthetic")
    if backend:
        argv += ["--data-backend", backend]
    if args.num_examples is not None:
        argv += ["--num-examples", str(args.num_examples)]
    return argv + list(extra)


Point = Tuple[int, int, str, str]   # (devices, batch per device, dtype, engine)


def refusal_of(args, device: str, point: Point, extra: Sequence[str]) -> Optional[str]:
    """None when the point's engine takes its flags; its one-line refusal
    when another engine would take them (the point then fails on its own,
    an error record). Flags that no engine takes raise UsageError: the sweep
    stops before any point runs."""
    from ..config import resolve

    ngpus, batch, dtype, engine = point
    prog = "benchmark.py (runner flags)"
    try:
        resolve(point_argv(args, device, ngpus, batch, dtype, extra, engine), prog=prog)
        return None
    except UsageError as refusal:
        for other in ENGINES:
            if other == engine:
                continue
            try:
                resolve(point_argv(args, device, ngpus, batch, dtype, extra, other), prog=prog)
            except UsageError:
                continue
            return str(refusal)
        raise


def sweep_points(args, device: str, dtypes: Sequence[str], extra: Sequence[str]) -> List[Point]:
    """Every point, engines innermost; every point's flags are checked before
    the first one runs, and a sweep whose every point is refused stops here."""
    points = [(n, b, dtype, engine) for dtype in dtypes for n in args.ngpus for b in args.batch_size
              for engine in args.engine]
    refusals = [refusal_of(args, device, point, extra) for point in points]
    if all(refusals):
        raise UsageError(f"{refusals[0]}; no point of the sweep would run")
    return points


def _last_line(text: str) -> Optional[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:ERROR_CHARS] if lines else None


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM the point's process group, SIGKILL what is left after the grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_point(command: List[str], timeout: float) -> dict:
    """Run one point; returns the fields of its result record."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        process.communicate()
        return {"status": "timeout", "error": f"no result within --timeout {timeout:g} s; the point was killed",
                "wall_s": time.perf_counter() - started}
    finally:
        if process.poll() is None:   # benchmark.py itself was interrupted
            _kill_group(process)
    wall = time.perf_counter() - started
    result = find_result(stdout)
    if process.returncode == 0 and result is not None:
        return {"status": "ok", "error": None, "wall_s": wall, **result}
    if process.returncode < 0:
        error = f"killed by {signal.Signals(-process.returncode).name} (out of memory?)"
    else:
        error = _last_line(stderr) or f"exit status {process.returncode} without a result line"
    return {"status": "error", "error": error, "wall_s": wall}


def record_of(point: Point, command: List[str], outcome: dict) -> dict:
    ngpus, batch, dtype, engine = point
    latency = outcome.get("latency_ms")
    return {"ngpus": ngpus, "batch_size": batch, "dtype": dtype, "engine": engine, "status": outcome["status"],
            "error": outcome["error"], "ips": outcome.get("ips"), "latency_ms": latency,
            "weak_scaling": None, "speedup_vs_float32": None, "timed_images": outcome.get("timed_images"),
            "timed_iterations": outcome.get("timed_iterations"), "timed_s": outcome.get("timed_s"),
            "wall_s": outcome["wall_s"], "calibration": outcome.get("calibration"), "command": shlex.join(command)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from tqdm import tqdm

    from ..report.benchmark_report import build_report, write_outputs, write_report
    from ..report.train_report import environment

    args, extra = build_parser().parse_known_args(argv)
    device = resolve_device(args)   # first: a machine without GPUs hears that before anything else
    check_args(args, extra)
    dtypes = args.dtype or (["float16", "float32"] if device == "gpu" else ["float32"])
    points = sweep_points(args, device, dtypes, extra)
    mode = "inference" if args.only_inference else "train"
    config = {**{k: v for k, v in vars(args).items() if k != "overwrite"}, "dtype": dtypes, "device": device,
              "runner_flags": list(extra)}
    env = environment(device, max(args.ngpus), args.engine)
    outputs = outputs_of(Path(args.output))
    records: List[dict] = []
    bar = tqdm(points, desc="benchmark", unit="point", file=sys.stderr, disable=None)
    for point in bar:
        n, b, dtype, engine = point
        command = [str(RUNNER)] + point_argv(args, device, n, b, dtype, extra, engine)
        record = record_of(point, command, run_point(command, args.timeout))
        records.append(record)
        figure = f"{record['ips']:.1f} img/s" if record["status"] == "ok" else f"{record['status']}: {record['error']}"
        bar.write(f"n {n} batch {b} {dtype} {engine}: {figure}", file=sys.stderr)
        write_report(outputs["json"], build_report(mode, config, env, records, "running"))
    report = build_report(mode, config, env, records, "complete")
    write_report(outputs["json"], report)
    print(write_outputs(report, outputs), flush=True)
    return 0
