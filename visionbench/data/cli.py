"""Command lines of data_prep/: parsers and mains, importable and testable.

Each ``*_main(argv)`` returns an exit status; data_prep/*.py call them through
``cli.run_main`` so bad input is one line on stderr with status 2.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from ..cli import ArgumentParser, UsageError, positive_int


def _quality(text: str) -> int:
    value = positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"JPEG quality must be 1..100, got {value}")
    return value


def folder_to_rec_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="folder_to_rec.py",
        description="Pack SRC_DIR/<class>/<images> into OUT_PREFIX.lst/.rec/.idx (pass-through RecordIO).")
    parser.add_argument("src_dir", type=Path, help="folder with one sub-folder per class")
    parser.add_argument("out_prefix", type=Path, help="writes OUT_PREFIX.{lst,rec,idx,classes.txt,skipped.txt,prep.json}")
    parser.add_argument("--resize", type=positive_int, metavar="N",
                        help="store JPEG copies whose shorter side is N pixels instead of the original bytes")
    parser.add_argument("--quality", type=_quality, default=90, metavar="Q",
                        help="JPEG quality of resized copies (default: %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=1, metavar="K",
                        help="processes checking images, this one (which also writes) included: K - 1 helpers "
                             "(default: %(default)s)")
    parser.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True,
                        help="shuffle the record order (default: on, as im2rec)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default: %(default)s)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first file that is not a usable image instead of skipping it")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--classes", type=Path, metavar="FILE",
                        help="class list to label with (one name per line, e.g. the train set's "
                             "PREFIX.classes.txt); a folder not in it is an error")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _read_class_file(path: Path) -> list:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as err:
        raise UsageError(f"class list {path} cannot be read ({err.strerror})")
    if not names:
        raise UsageError(f"class list {path} is empty")
    if len(set(names)) != len(names):
        raise UsageError(f"class list {path} names a class twice")
    return names


def folder_to_rec_main(argv: Optional[Sequence[str]] = None) -> int:
    from .folder import PrepOptions, list_class_folders, write_record_set
    from .recordio import format_summary

    args = folder_to_rec_parser().parse_args(argv)
    classes = _read_class_file(args.classes) if args.classes else None
    listing = list_class_folders(args.src_dir, classes)
    options = PrepOptions(resize=args.resize, quality=args.quality, workers=args.workers,
                          shuffle=args.shuffle, seed=args.seed, strict=args.strict,
                          overwrite=args.overwrite, progress=not args.no_progress)
    summary = write_record_set(listing, args.out_prefix, options, str(args.src_dir), "folder_to_rec")
    print(format_summary(summary))
    return 0


def cifar10_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="cifar10_to_rec.py",
        description="CIFAR-10 python release -> OUT_DIR/train.* (50000) and OUT_DIR/val.* (10000), PNG payloads.")
    parser.add_argument("source", type=Path, help="cifar-10-python.tar.gz or its extracted folder")
    parser.add_argument("out_dir", type=Path, help="created if missing (its parent must exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def cifar10_main(argv: Optional[Sequence[str]] = None) -> int:
    from .cifar10 import cifar10_to_rec
    from .recordio import format_summary

    args = cifar10_parser().parse_args(argv)
    for summary in cifar10_to_rec(args.source, args.out_dir, overwrite=args.overwrite).values():
        print(format_summary(summary))
    return 0


def demo_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="make_demo_data.py",
        description="Generate the demo dataset (10 shape classes) as JPEG folders and RecordIO sets "
                    "OUT_DIR/train.* and OUT_DIR/val.*.")
    parser.add_argument("out_dir", type=Path, help="created if missing (its parent must exist)")
    # Defaults: what `make demo` trains on (ResNet18 at 32 px: the val resize
    # to round(32 / 0.875) = 37 pixels is then the identity).
    parser.add_argument("--train-per-class", type=positive_int, default=600, metavar="N",
                        help="train images per class (default: %(default)s)")
    parser.add_argument("--val-per-class", type=positive_int, default=50, metavar="M",
                        help="val images per class (default: %(default)s)")
    parser.add_argument("--size", type=positive_int, default=37, metavar="S",
                        help="shorter image side in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=2, metavar="K",
                        help="worker processes for packing (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing demo dataset in OUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def demo_main(argv: Optional[Sequence[str]] = None) -> int:
    from ..files import check_writable_folder
    from .demo import write_demo_images
    from .folder import PrepOptions, list_class_folders, write_record_set
    from .recordio import existing_outputs, format_summary

    args = demo_parser().parse_args(argv)
    out_dir: Path = args.out_dir
    check_writable_folder(out_dir.parent, "output folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output folder {out_dir} is a file")
    found = [p for split in ("train", "val") for p in existing_outputs(out_dir / split)]
    images_root = out_dir / "images"
    if (found or images_root.exists()) and not args.overwrite:
        raise UsageError(f"{(found or [images_root])[0]} already exists; pass --overwrite to replace the demo dataset")
    out_dir.mkdir(exist_ok=True)
    # The JPEG tree is ours (made by this tool), so it is rebuilt from scratch.
    shutil.rmtree(images_root, ignore_errors=True)
    counts = {"train": args.train_per_class, "val": args.val_per_class}
    started = time.perf_counter()
    write_demo_images(images_root, counts, args.size, args.seed)
    print(f"{out_dir}: drew {10 * sum(counts.values())} images in {time.perf_counter() - started:.1f} s")
    classes = None
    for split in ("train", "val"):
        listing = list_class_folders(images_root / split, classes)
        classes = listing.classes
        options = PrepOptions(workers=args.workers, seed=args.seed, strict=True,
                              overwrite=args.overwrite, progress=not args.no_progress)
        summary = write_record_set(listing, out_dir / split, options, str(images_root / split), "make_demo_data")
        print(format_summary(summary))
    return 0


def verify_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="verify_rec.py",
        description="Check PREFIX.rec/.idx record by record; exit 2 naming the first bad record.")
    parser.add_argument("prefix", type=Path, help="reads PREFIX.rec, PREFIX.idx (and PREFIX.lst, PREFIX.classes.txt if present)")
    parser.add_argument("--decode", action="store_true", help="also decode every image")
    parser.add_argument("--num-classes", type=positive_int, metavar="C",
                        help="class count for the label check (default: lines of PREFIX.classes.txt)")
    return parser


def verify_main(argv: Optional[Sequence[str]] = None) -> int:
    from .recordio import verify_record_set

    args = verify_parser().parse_args(argv)
    started = time.perf_counter()
    result = verify_record_set(args.prefix, decode=args.decode, num_classes=args.num_classes)
    seconds = time.perf_counter() - started
    names = result.classes or []
    decoded = f", {result.decoded} decoded" if args.decode else ""
    print(f"{args.prefix}: OK, {result.records} records, {result.rec_bytes / 1e6:.1f} MB{decoded} ({seconds:.1f} s)")
    for label in sorted(result.label_counts):
        name = names[label] if label < len(names) else str(label)
        print(f"  {label:5d} {name}: {result.label_counts[label]}")
    return 0


def entry(main, prog: str) -> None:
    """``sys.exit`` with ``main``'s status; used by the data_prep scripts."""
    from ..cli import run_main

    sys.exit(run_main(main, prog))
