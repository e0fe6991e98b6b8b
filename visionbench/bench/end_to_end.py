"""Path 2 (end to end) of docs/PERFORMANCE.md: training img/s on a real
``.rec`` through the ``dali-cpu`` pipeline against the same training on
``synthetic`` data (no input at all), for a model where compute dominates.

Both are ``./runner --mode train --benchmark`` subprocesses with the same
flags but the data backend, in rotation ``--repeats`` times; img/s counts
the epochs after the first (``--benchmark-warmup-epochs 1``), so every
timed epoch includes its own start: new DALI pipelines and the first batch
decoded before the first step. The set is ``--images`` JPEGs drawn at
``--stored-size`` pixels (the demo generator's shapes on textured
backgrounds; imagenet18 trains its small phases on sets resized like this).

    python -m visionbench.bench.end_to_end --repeats 3
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from ..cli import ArgumentParser, UsageError, positive_int, run_main
from .compare import comparison_report, in_rotation
from .sweep import RUNNER, run_point


def make_set(root: Path, images: int, side: int, seed: int = 0) -> Path:
    """ROOT/train.*: ``images`` JPEGs of side x 3/4 side pixels in 10 classes."""
    import cv2

    from ..data.demo import CLASSES, image_rng, render_image
    from ..data.folder import PrepOptions, list_class_folders, write_record_set

    folder = root / "jpeg"
    height = side * 3 // 4
    for index in range(images):
        label = index % len(CLASSES)
        rgb = render_image(label, image_rng(seed, "train", label, index), height, shape=(height, side))
        (folder / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / CLASSES[label] / f"{index:06d}.jpg"), rgb[:, :, ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
    write_record_set(list_class_folders(folder), root / "train", PrepOptions(progress=False),
                     str(folder), "folder_to_rec")
    return root


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python -m visionbench.bench.end_to_end", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=positive_int, default=320, help="JPEGs in the set")
    parser.add_argument("--stored-size", type=positive_int, default=128, help="stored width, pixels")
    parser.add_argument("--image-size", type=positive_int, default=64, help="training crop side, pixels")
    parser.add_argument("--num-layers", type=int, default=50, choices=(18, 34, 50, 101, 152))
    parser.add_argument("-b", "--batch-size", type=positive_int, default=16)
    parser.add_argument("-i", "--iterations", type=positive_int, default=8, help="steps per epoch")
    parser.add_argument("-e", "--epochs", type=positive_int, default=3, help="epochs per run, the first untimed")
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs of each, in rotation")
    args = parser.parse_args(argv)
    if args.iterations * args.batch_size > args.images:
        raise UsageError(f"-i x -b ({args.iterations * args.batch_size}) is more than the {args.images} images")
    with tempfile.TemporaryDirectory() as scratch:
        data = make_set(Path(scratch), args.images, args.stored_size)
        common = ["--mode", "train", "--benchmark", "--device", "cpu", "-n", "1", "-b", str(args.batch_size),
                  "--num-layers", str(args.num_layers), "--image-size", str(args.image_size), "--num-classes", "10",
                  "-i", str(args.iterations), "-e", str(args.epochs), "--benchmark-warmup-epochs", "1"]
        kinds = {"synthetic": ["--data-backend", "synthetic", "--num-examples", str(args.images)],
                 "dali-cpu (real .rec)": ["--data-backend", "dali-cpu", "--data-root", str(data)]}

        def point(kind: str):
            def run() -> float:
                outcome = run_point([str(RUNNER), *common, *kinds[kind]], timeout=900)
                if outcome["status"] != "ok":
                    raise UsageError(f"{kind}: {outcome['error']}")
                return outcome["ips"]
            return run

        results = in_rotation({kind: point(kind) for kind in kinds}, args.repeats)
    heading = (f"ResNet{args.num_layers} v1.5 at {args.image_size} px, batch {args.batch_size}, float32, 1 CPU "
               f"context; {args.images} JPEGs stored at {args.stored_size}x{args.stored_size * 3 // 4}; "
               f"{args.iterations} steps x {args.epochs - 1} timed epochs per run, {args.repeats} runs each in rotation")
    print(comparison_report(heading, results, "data", "dali-cpu (real .rec)", "synthetic"))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "end_to_end"))
