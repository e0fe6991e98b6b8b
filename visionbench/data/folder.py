"""Folder of class sub-folders -> pass-through RecordIO set (folder_to_rec).

Labels are the index of the class folder name in sorted (code point, i.e.
UTF-8 byte) order, as im2rec does, unless a class list is given (val sets
take the train set's list). Files are checked by K processes: K - 1 helpers
and this one, which also writes every record in list order (see
ordered_map); at most ``WINDOW_CHUNKS_PER_WORKER * CHUNK_SIZE`` images per
process are in flight, so memory does not grow with the number of images.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import random
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from tqdm import tqdm

from ..cli import UsageError, die_with_parent
from ..files import check_writable_folder
from .images import DEFAULT_JPEG_QUALITY, Prepared, prepare_file, read_stamped
from .recordio import RecordSetWriter

CHUNK_SIZE = 64               # images per task
WINDOW_CHUNKS_PER_WORKER = 4  # tasks in flight per worker (bounds memory)
HELPER_LOOKAHEAD = 2          # tasks queued per helper process


@dataclass(frozen=True)
class Listing:
    """What a source folder holds: class names and (relative path, label) items."""
    root: Path
    classes: List[str]
    items: List[Tuple[str, int]]
    outside_classes: List[str]   # files directly in the root: no class, skipped


def _visible(name: str) -> bool:
    # Hidden entries (.DS_Store, .ipynb_checkpoints, our own partial files)
    # are not data.
    return not name.startswith(".")


def list_class_folders(src: Path, classes: Optional[Sequence[str]] = None) -> Listing:
    """Walk ``src/<class>/**`` in sorted order."""
    src = Path(src)
    if not src.exists():
        raise UsageError(f"source folder {src} does not exist")
    if not src.is_dir():
        raise UsageError(f"source {src} is not a folder")
    entries = sorted(e for e in os.listdir(src) if _visible(e))
    folders = [e for e in entries if (src / e).is_dir()]
    outside = [e for e in entries if not (src / e).is_dir()]
    if not folders:
        raise UsageError(f"source folder {src} holds no class sub-folders")
    if classes is None:
        class_names = folders
    else:
        class_names = list(classes)
        known = set(class_names)
        for folder in folders:
            if folder not in known:
                raise UsageError(f"class folder {src / folder} is not among the {len(class_names)} given classes")
    label_of = {name: i for i, name in enumerate(class_names)}
    items: List[Tuple[str, int]] = []
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(src / folder):
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            rel_dir = Path(dirpath).relative_to(src).as_posix()
            for name in sorted(f for f in filenames if _visible(f)):
                items.append((f"{rel_dir}/{name}", label_of[folder]))
    return Listing(src, class_names, items, outside)


@dataclass(frozen=True)
class PrepOptions:
    resize: Optional[int] = None          # shorter side in pixels; None = pass-through
    quality: int = DEFAULT_JPEG_QUALITY   # JPEG quality of resized copies
    workers: int = 1
    shuffle: bool = True
    seed: int = 0
    strict: bool = False
    overwrite: bool = False
    progress: bool = True


def _prepare_chunk(root: str, chunk: Sequence[Tuple[str, int]], resize: Optional[int],
                   quality: int) -> List[Prepared]:
    return [prepare_file(os.path.join(root, rel), resize, quality) for rel, _ in chunk]


def _check_chunk(root: str, chunk: Sequence[Tuple[str, int]], resize: Optional[int],
                 quality: int) -> List[Prepared]:
    """A worker's share: like _prepare_chunk, but a pass-through image's bytes
    are not sent back. The writer reads the file again (page cache: ~0.02 ms
    for a 45 KiB JPEG), which costs it less than receiving and unpickling the
    bytes from another process (docs/PERFORMANCE.md, path 4); the (size,
    mtime) stamp proves the file unchanged."""
    return [replace(p, payload=None) if p.unchanged else p for p in _prepare_chunk(root, chunk, resize, quality)]


def _payload(root: Path, rel_path: str, prepared: Prepared) -> Prepared:
    """What to store for a worker's result: a checked pass-through file is
    read again here; one that changed since it was checked is rejected."""
    if prepared.payload is not None or not prepared.unchanged:
        return prepared
    try:
        data, stamp = read_stamped(str(root / rel_path))
    except OSError as err:
        return Prepared(None, reason=f"cannot be read ({err.strerror})")
    if stamp != prepared.stamp or len(data) != stamp[0]:
        return Prepared(None, reason="changed while being packed")
    return replace(prepared, payload=data)


def _worker_init() -> None:
    # Die with the parent (Linux): a SIGKILLed data_prep must not leave
    # workers behind. Ctrl-C is handled by the parent alone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()


def ordered_map(fn: Callable, tasks: Iterable, workers: int, local_fn: Optional[Callable] = None) -> Iterator:
    """``map(fn, tasks)`` in order, over ``workers`` processes counting this
    one: ``workers - 1`` helpers run ``fn`` with ``HELPER_LOOKAHEAD`` tasks
    queued each, and whenever the oldest task is not back yet this process
    runs the next one itself with ``local_fn`` (default ``fn``) instead of
    waiting. At most ``workers * WINDOW_CHUNKS_PER_WORKER`` tasks are in
    flight (``Pool.imap`` would queue every task at once)."""
    local_fn = local_fn or fn
    if workers <= 1:
        for task in tasks:
            yield local_fn(*task)
        return
    # fork: helpers start in milliseconds; MXNet registers fork handlers.
    context = multiprocessing.get_context("fork")
    pool = context.Pool(workers - 1, initializer=_worker_init)
    window = workers * WINDOW_CHUNKS_PER_WORKER
    tasks = iter(tasks)
    try:
        pending: deque = deque()   # AsyncResults, and (result,) for tasks run here
        in_pool = 0                # AsyncResults in pending
        task = next(tasks, None)
        while task is not None or pending:
            while task is not None and in_pool < (workers - 1) * HELPER_LOOKAHEAD and len(pending) < window:
                pending.append(pool.apply_async(fn, task))
                in_pool += 1
                task = next(tasks, None)
            head = pending[0]
            local = not isinstance(head, multiprocessing.pool.AsyncResult)
            if not local and not head.ready() and task is not None and len(pending) < window:
                pending.append((local_fn(*task),))
                task = next(tasks, None)
                continue
            pending.popleft()
            if local:
                yield head[0]
            else:
                in_pool -= 1
                yield head.get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def write_record_set(listing: Listing, out_prefix: Path, options: PrepOptions,
                     source_description: str, tool: str) -> dict:
    """Prepare and write every listed image; returns the summary (also saved
    as OUT_PREFIX.prep.json)."""
    out_prefix = Path(out_prefix)
    check_writable_folder(out_prefix.parent, "output prefix")
    items = list(listing.items)
    if not items:
        raise UsageError(f"source folder {listing.root} holds no files in its class folders")
    if options.shuffle:
        random.Random(options.seed).shuffle(items)
    skipped: List[Tuple[str, str]] = [(name, "not inside a class folder") for name in listing.outside_classes]
    if options.strict and skipped:
        raise UsageError(f"{listing.root / skipped[0][0]}: {skipped[0][1]} (--strict)")
    started = time.perf_counter()
    with RecordSetWriter(out_prefix, overwrite=options.overwrite) as writer:
        tasks = ((str(listing.root), chunk, options.resize, options.quality) for chunk in _chunks(items, CHUNK_SIZE))
        progress = tqdm(total=len(items), unit="img", desc=out_prefix.name,
                        disable=None if options.progress else True, file=sys.stderr)
        with progress:
            chunk_iter = _chunks(items, CHUNK_SIZE)
            for results in ordered_map(_check_chunk, tasks, options.workers, local_fn=_prepare_chunk):
                for (rel_path, label), prepared in zip(next(chunk_iter), results):
                    prepared = _payload(listing.root, rel_path, prepared)
                    if prepared.payload is None:
                        if options.strict:
                            raise UsageError(f"{listing.root / rel_path}: {prepared.reason} (--strict)")
                        skipped.append((rel_path, prepared.reason))
                    else:
                        writer.write(label, prepared.payload, rel_path)
                progress.update(len(results))
        if writer.count == 0:
            raise UsageError(f"no image in {listing.root} could be used ({len(skipped)} files skipped, e.g. {skipped[0][0]}: {skipped[0][1]})")
        return writer.finish(
            tool=tool, source=source_description, classes=listing.classes,
            options={"resize": options.resize, "quality": options.quality, "workers": options.workers,
                     "shuffle": options.shuffle, "seed": options.seed, "strict": options.strict},
            seconds=time.perf_counter() - started, skipped=skipped)
