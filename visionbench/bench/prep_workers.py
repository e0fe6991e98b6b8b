"""Path 4 of docs/PERFORMANCE.md: ``data_prep/folder_to_rec.py`` with 1 and 2
worker processes on one folder of ImageNet-shaped JPEGs (pass-through: each
file is read, its header parsed and its scans walked at 1/8 scale to check it
decodes, then its original bytes are written).

The folder is drawn once (500x375 JPEGs, see jpeg_folder); each run
packs it into a fresh prefix with the real tool in a subprocess, in rotation
``--repeats`` times. img/s is images / the tool's own ``seconds`` (its
PREFIX.prep.json: listing done, interpreter start-up excluded); peak memory
is the tool's, from ``getrusage`` of the finished child, writer and workers
separately.

    python -m visionbench.bench.prep_workers --images 3000 --repeats 5
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..cli import ArgumentParser, RunFailure, positive_int, run_main
from .compare import comparison_report, in_rotation

TOOL = Path(__file__).resolve().parents[2] / "data_prep" / "folder_to_rec.py"


def jpeg_folder(root: Path, images: int, distinct: int = 100, seed: int = 0) -> Path:
    """ROOT/<class>/<i>.jpg: ``images`` files of 500x375 px (quality 90) in 10
    classes, cycling through ``distinct`` rendered pictures (drawing is the
    slow part; pass-through work is the same for a repeated file)."""
    import cv2

    from ..data.demo import CLASSES, image_rng, render_image

    encoded = []
    for index in range(min(images, distinct)):
        label = index % len(CLASSES)
        rgb = render_image(label, image_rng(seed, "train", label, index), 375, shape=(375, 500))
        encoded.append(cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    for index in range(images):
        folder = root / CLASSES[index % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:06d}.jpg").write_bytes(encoded[index % len(encoded)])
    return root


def pack(source: Path, prefix: Path, workers: int) -> dict:
    """Run folder_to_rec once; returns its prep.json summary."""
    result = subprocess.run([sys.executable, str(TOOL), str(source), str(prefix), "--workers", str(workers),
                             "--no-progress", "--overwrite"], capture_output=True, text=True)
    if result.returncode:
        raise RunFailure(f"folder_to_rec exited {result.returncode}: {result.stderr.strip()[-300:]}")
    return json.loads(Path(f"{prefix}.prep.json").read_text())


def compare(source: Path, scratch: Path, repeats: int) -> Dict[str, List[float]]:
    def run(workers: int):
        def once() -> float:
            summary = pack(source, scratch / f"w{workers}", workers)
            return summary["images_written"] / summary["seconds"]
        return once

    return in_rotation({"1 worker": run(1), "2 workers": run(2)}, repeats)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python -m visionbench.bench.prep_workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=positive_int, default=3000, help="500x375 JPEGs in the folder")
    parser.add_argument("--repeats", type=positive_int, default=5, help="runs of each worker count, in rotation")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        source = jpeg_folder(scratch / "jpeg", args.images)
        results = compare(source, scratch, args.repeats)
        megabytes = sum(f.stat().st_size for f in source.rglob("*.jpg")) / 2**20
    print(comparison_report(f"{args.images} JPEGs of 500x375 px ({megabytes:.1f} MiB), pass-through, page cache "
                            f"warm, {os.cpu_count()} cores, {args.repeats} runs each in rotation",
                            results, "folder_to_rec", "2 workers", "1 worker", ratio_digits=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "prep_workers"))
