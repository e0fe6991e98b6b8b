"""The training thread's share of the dali-cpu input path, per step, in one
process: records read by each device's reader thread (``read-ahead``, what
the loader does) against records read on the main thread when DALI asks for
them (``inline``, ``read_ahead=0``: where the reading was before).

Each step the main thread takes the next batch from the loader (the timed
part: ``next()`` on the epoch, which runs DALI's input callbacks, copies the
outputs into MXNet and schedules the next runs) and then waits
``--device-ms`` with the GIL released, standing in for the devices' forward
and backward (a GPU step keeps the main thread blocked on the one host read
of the overflow flag). Reported per step, median over the timed steps of a
run, then median and min-max over ``--repeats`` runs in rotation:

- main-thread CPU time inside ``next()`` (``time.thread_time``: what the
  main thread itself spends, whatever the other threads do);
- wall time inside ``next()`` (includes waiting for DALI's decoding when
  ``--device-ms`` is shorter than a batch's decoding).

The set is the demo generator's 500x375 JPEGs (~45 KB each), packed by
folder_to_rec (input_compare.make_imagenet_like); ``--packed K`` packs each
drawn image K times (a record's reading cost does not depend on its bytes
being unique, and drawing images is slow), so large batches fit an epoch.

    python -m visionbench.bench.main_thread
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..cli import ArgumentParser, UsageError, positive_int, run_main
from .compare import in_rotation, median_ratio, median_table


def step_times(prefix: Path, devices: int, batch_size: int, size: int, threads: int, read_ahead: int,
               steps: int, warmup: int, device_seconds: float) -> tuple[float, float]:
    """(main-thread CPU ms, wall ms) inside ``next()``, medians over ``steps``
    steps after ``warmup`` untimed ones, of one fresh dali-cpu epoch."""
    import mxnet as mx

    from ..data.dali import dali_epoch
    from ..data.loader import make_loader
    from ..data.spec import LoaderSpec

    loader = make_loader(LoaderSpec(prefix=prefix, train=True, batch_size=batch_size, image_size=size,
                                    devices=[mx.cpu(i) for i in range(devices)], backend="dali-cpu",
                                    threads=threads))
    device_busy = threading.Event()   # never set: wait() is a GIL-free sleep of a fixed length
    epoch = dali_epoch(loader.spec, loader._reader, loader.plans(0), 0, read_ahead=read_ahead)
    cpu, wall = [], []
    try:
        for step in range(warmup + steps):
            started, started_cpu = time.perf_counter(), time.thread_time()
            next(epoch)
            if step >= warmup:
                cpu.append(time.thread_time() - started_cpu)
                wall.append(time.perf_counter() - started)
            device_busy.wait(device_seconds)
    finally:
        epoch.close()
    return 1e3 * statistics.median(cpu), 1e3 * statistics.median(wall)


def pack_repeatedly(prefix: Path, times: int, out: Path) -> Path:
    """A copy of the set at ``prefix`` with every record written ``times``
    times in a row, at ``out``."""
    from ..data.recordio import RecordReader, RecordSetWriter

    reader = RecordReader(prefix)
    with RecordSetWriter(out) as writer:
        for position in range(len(reader)):
            label, payload = reader.read(position)
            for copy in range(times):
                writer.write(int(label), bytes(payload), f"{position}/{copy}.jpg")
        # The side file's schema knows the suite's generators only: this is a
        # generated set, described in `source`.
        writer.finish(tool="self_test", source=f"bench.main_thread: {prefix} with each record {times} times",
                      classes=[str(i) for i in range(10)], seconds=0.0,
                      options={"resize": None, "quality": None, "workers": 1, "shuffle": False, "seed": None,
                               "strict": True})
    return out


def compare(prefix: Path, devices: int, batch_size: int, size: int, threads: int, steps: int, warmup: int,
            repeats: int, device_seconds: float) -> tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """({mode: CPU ms per run}, {mode: wall ms per run}) for inline and read-ahead."""
    from ..data.dali import READ_AHEAD

    walls: Dict[str, List[float]] = {"inline": [], "read-ahead": []}

    def candidate(name: str, read_ahead: int) -> Callable[[], float]:
        def run() -> float:
            cpu_ms, wall_ms = step_times(prefix, devices, batch_size, size, threads, read_ahead, steps,
                                         warmup, device_seconds)
            walls[name].append(wall_ms)
            return cpu_ms
        return run

    cpus = in_rotation({"inline": candidate("inline", 0), "read-ahead": candidate("read-ahead", READ_AHEAD)},
                       repeats)
    return cpus, walls


def format_comparison(cpus: Dict[str, List[float]], walls: Dict[str, List[float]], setup: str) -> str:
    return (f"{setup}\n\n"
            f"{median_table(cpus, 'records read', unit='main-thread CPU ms/step', digits=2)}\n\n"
            f"{median_table(walls, 'records read', unit='wall ms/step in next()', digits=2)}\n\n"
            f"read-ahead / inline, main-thread CPU (ratio of medians): "
            f"**{median_ratio(cpus, 'read-ahead', 'inline'):.3f}**; "
            f"wall: **{median_ratio(walls, 'read-ahead', 'inline'):.3f}**")


def count_records(prefix: Path) -> int:
    """Records of the set at ``prefix`` (BadRecordSet, a UsageError, if it is missing or damaged)."""
    from ..data.recordio import RecordReader

    return len(RecordReader(prefix))


def refuse_steps_beyond_an_epoch(records: int, devices: int, batch_size: int, steps: int, where: str) -> None:
    """UsageError unless ``steps`` (warm-up + timed) fit in one epoch of
    ``records`` cut into ``devices`` x ``batch_size`` steps (no partial step)."""
    per_epoch = records // (batch_size * devices)
    if steps > per_epoch:
        raise UsageError(f"--warmup + --steps ({steps}) must fit in one epoch{where} ({records} records: "
                         f"{per_epoch} steps of {devices} x {batch_size})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python -m visionbench.bench.main_thread", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=positive_int, default=1664, help="500x375 JPEGs to draw")
    parser.add_argument("--packed", type=positive_int, default=4, help="records per drawn image")
    parser.add_argument("-n", "--devices", type=positive_int, default=2, help="CPU contexts, one pipeline each")
    parser.add_argument("-b", "--batch-size", type=positive_int, default=208, help="per device")
    parser.add_argument("--image-size", type=positive_int, default=32, help="training crop side, pixels")
    parser.add_argument("--threads", type=positive_int, default=1, help="decoding threads of every pipeline")
    # Long enough for 2 x 208 500x375 JPEGs to decode on a loaded 2-core
    # machine, so that next() rarely waits for DALI.
    parser.add_argument("--device-ms", type=float, default=1200.0, help="simulated device step, milliseconds")
    parser.add_argument("--steps", type=positive_int, default=8, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="steps before timing, per run")
    parser.add_argument("--repeats", type=positive_int, default=5, help="runs of each mode, in rotation")
    parser.add_argument("--data", type=Path, help="reuse DIR/train.rec instead of drawing a new set in a temp folder")
    args = parser.parse_args(argv)
    images = args.images if args.data is None else count_records(args.data / "train")
    refuse_steps_beyond_an_epoch(images * args.packed, args.devices, args.batch_size, args.warmup + args.steps,
                                 "" if args.data is None else f" of {args.data / 'train'}")
    images_text = f"{args.images} drawn images" if args.data is None else f"{images} images of {args.data / 'train'}"
    setup = (f"dali-cpu train, {images_text} x {args.packed} records each, "
             f"{args.devices} CPU contexts x batch {args.batch_size}, crop {args.image_size} px, "
             f"{args.threads} decoding thread(s) per pipeline, simulated device step {args.device_ms:g} ms, "
             f"{args.steps} timed steps after {args.warmup}, {args.repeats} runs of each in rotation")
    with tempfile.TemporaryDirectory() as scratch:
        from .input_compare import make_imagenet_like

        prefix = args.data / "train" if args.data else make_imagenet_like(Path(scratch), args.images)
        if args.packed > 1:
            prefix = pack_repeatedly(prefix, args.packed, Path(scratch) / "packed")
        cpus, walls = compare(prefix, args.devices, args.batch_size, args.image_size, args.threads, args.steps,
                              args.warmup, args.repeats, args.device_ms / 1e3)
    print(format_comparison(cpus, walls, setup))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "main_thread"))
