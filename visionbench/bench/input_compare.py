"""Input pipelines side by side on one ImageNet-like set, in one process:

- ``bare-dali``: a DALI pipeline written by hand with DALI's own RecordIO
  reader and the same operators as visionbench's train pipeline, its batches
  copied into MXNet NDArrays by DALI's MXNet plugin;
- ``bare-dali-no-copy``: the same pipeline, its batches left in DALI (what
  decoding alone costs; no training loop can use batches this way);
- ``dali-cpu``: visionbench's loader (our sampler + external source + DALI);
- ``mxnet``: visionbench's loader over ``mx.io.ImageRecordIter``.

Each is run ``--repeats`` times in rotation (so machine noise hits all alike);
the report gives the median img/s with the min-max spread and the ratios of
the medians. The set is drawn by the demo generator at 500x375 pixels (the
typical ImageNet shape, ~63 KiB a JPEG) and packed by folder_to_rec. Every
run starts a fresh loader and stays inside one epoch (warm-up + timed steps
< images / batch): the figures are steady-state throughput, not start-up.

    python -m visionbench.bench.input_compare
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import cv2

from ..cli import ArgumentParser, UsageError, positive_int, run_main
from .compare import in_rotation, median_ratio, median_table


def make_imagenet_like(root: Path, images: int, seed: int = 0) -> Path:
    """``images`` 500x375 JPEGs (quality 90) in 10 classes, packed as ROOT/train.*."""
    from ..data.demo import CLASSES, image_rng, render_image
    from ..data.folder import PrepOptions, list_class_folders, write_record_set

    folder = root / "jpeg"
    for index in range(images):
        label = index % len(CLASSES)
        rgb = render_image(label, image_rng(seed, "train", label, index), 375, shape=(375, 500))
        (folder / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / CLASSES[label] / f"{index:06d}.jpg"), rgb[:, :, ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
    write_record_set(list_class_folders(folder), root / "train", PrepOptions(progress=False),
                     str(folder), "folder_to_rec")
    return root / "train"


def bare_dali(prefix: Path, batch_size: int, size: int, threads: int, seed: int, dtype: str,
              to_mxnet: bool = True) -> Callable[[int, int], float]:
    """The hand-written baseline: returns run(steps, warmup) -> img/s."""
    from nvidia.dali import fn, pipeline_def, types

    from ..data.spec import IMAGENET_MEAN, IMAGENET_STD

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=None, seed=seed, prefetch_queue_depth=2)
    def pipeline():
        encoded, labels = fn.readers.mxnet(path=[f"{prefix}.rec"], index_path=[f"{prefix}.idx"],
                                           random_shuffle=True, name="reader")
        images = fn.decoders.image_random_crop(encoded, device="cpu", output_type=types.RGB,
                                               random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3],
                                               num_attempts=100)
        images = fn.resize(images, resize_x=size, resize_y=size)
        images = fn.crop_mirror_normalize(images, mirror=fn.random.coin_flip(),
                                          dtype=types.FLOAT16 if dtype == "float16" else types.FLOAT,
                                          output_layout="CHW", mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
        return images, labels

    def run(steps: int, warmup: int) -> float:
        import mxnet as mx
        from nvidia.dali.plugin.mxnet import DALIGenericIterator

        pipe = pipeline()
        if not to_mxnet:
            pipe.build()
            for _ in range(warmup):
                pipe.run()
            started = time.perf_counter()
            for _ in range(steps):
                pipe.run()
            return steps * batch_size / (time.perf_counter() - started)
        iterator = DALIGenericIterator(
            [pipe], [("data", DALIGenericIterator.DATA_TAG), ("label", DALIGenericIterator.LABEL_TAG)],
            reader_name="reader", auto_reset=True)

        def batches():
            while True:
                yield from iterator

        stream = batches()
        for _ in range(warmup):
            next(stream)
        mx.nd.waitall()
        started = time.perf_counter()
        for _ in range(steps):
            next(stream)
        mx.nd.waitall()
        return steps * batch_size / (time.perf_counter() - started)

    return run


def visionbench_loader(prefix: Path, backend: str, batch_size: int, size: int, threads: int,
                       seed: int, dtype: str) -> Callable[[int, int], float]:
    import mxnet as mx

    from ..data.loader import make_loader
    from ..data.spec import LoaderSpec
    from .io import measure_loader

    def run(steps: int, warmup: int) -> float:
        loader = make_loader(LoaderSpec(prefix=prefix, train=True, batch_size=batch_size, image_size=size,
                                        devices=[mx.cpu(0)], backend=backend, threads=threads, seed=seed,
                                        dtype=dtype))
        return measure_loader(loader, steps, warmup)["images_per_second"]

    return run


def compare(prefix: Path, batch_size: int, size: int, threads: int, steps: int, warmup: int,
            repeats: int, dtype: str = "float32", seed: int = 0) -> Dict[str, List[float]]:
    runs = {
        "bare-dali-no-copy": bare_dali(prefix, batch_size, size, threads, seed, dtype, to_mxnet=False),
        "bare-dali": bare_dali(prefix, batch_size, size, threads, seed, dtype),
        "dali-cpu": visionbench_loader(prefix, "dali-cpu", batch_size, size, threads, seed, dtype),
        "mxnet": visionbench_loader(prefix, "mxnet", batch_size, size, threads, seed, dtype),
    }
    return in_rotation({name: (lambda run=run: run(steps, warmup)) for name, run in runs.items()}, repeats)


def format_comparison(results: Dict[str, List[float]]) -> str:
    return (median_table(results, "pipeline", digits=0) + "\n\n"
            f"dali-cpu / mxnet = {median_ratio(results, 'dali-cpu', 'mxnet'):.2f}; "
            f"dali-cpu / bare-dali = {median_ratio(results, 'dali-cpu', 'bare-dali'):.3f}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python -m visionbench.bench.input_compare", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=positive_int, default=2048, help="500x375 JPEGs in the set")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--image-size", type=positive_int, default=224, help="training crop side, pixels")
    parser.add_argument("--threads", type=positive_int, default=2, help="decoding threads of every pipeline")
    parser.add_argument("--steps", type=positive_int, default=25, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps before timing, per run")
    parser.add_argument("--repeats", type=positive_int, default=5, help="runs of each pipeline, in rotation")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                        help="dtype every pipeline emits")
    parser.add_argument("--data", type=Path, help="reuse DIR/train.rec instead of drawing a new set in a temp folder")
    args = parser.parse_args(argv)
    if args.data is None and args.warmup + args.steps > args.images // args.batch_size:
        raise UsageError(f"--warmup + --steps ({args.warmup + args.steps}) must fit in one epoch "
                         f"({args.images // args.batch_size} steps of {args.batch_size})")
    with tempfile.TemporaryDirectory() as scratch:
        prefix = args.data / "train" if args.data else make_imagenet_like(Path(scratch), args.images)
        results = compare(prefix, args.batch_size, args.image_size, args.threads, args.steps,
                          args.warmup, args.repeats, args.dtype)
    print(format_comparison(results))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "input_compare"))
