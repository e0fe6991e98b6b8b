"""Crash-safe file output: temporary names, fsync, rename into place.

A file is written as ``.NAME.partial-PID`` beside its final path and renamed
only when complete, so a killed process never leaves a finished-looking file.
Leftovers of killed writers are recognised by their pattern and removed once
their process is gone.
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Callable, Iterable

_PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)$")


def partial_path(final: Path) -> Path:
    """Temporary name of ``final`` for this process, in the same folder (so the
    rename is atomic on one file system)."""
    return final.with_name(f".{final.name}.partial-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_dead_partial(path: Path) -> bool:
    """A partial file (``.NAME.partial-PID``) whose writer is gone."""
    match = _PARTIAL.match(path.name)
    return bool(match) and not pid_alive(int(match["pid"]))


def remove_stale_partials(final_paths: Iterable[Path]) -> list[Path]:
    """Delete partial files of the given outputs left by processes that died."""
    removed = []
    for final in final_paths:
        for candidate in final.parent.glob(f".{final.name}.partial-*"):
            match = _PARTIAL.match(candidate.name)
            if match and match["name"] == final.name and not pid_alive(int(match["pid"])):
                candidate.unlink(missing_ok=True)
                removed.append(candidate)
    return removed


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (best effort where unsupported)."""
    try:
        fsync_path(folder)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EACCES, errno.EISDIR):
            raise


def write_text_atomic(final: Path, text: str) -> None:
    write_bytes_atomic(final, text.encode("utf-8"))


def write_bytes_atomic(final: Path, data: bytes) -> None:
    write_atomic(final, lambda tmp: tmp.write_bytes(data))


def write_atomic(final: Path, write: Callable[[Path], None], overwrite: bool = True) -> None:
    """``write(tmp)`` fills a temporary file beside ``final`` (for libraries
    that save to a path: ``mx.nd.save``, ``torch.save``); it is fsynced and
    renamed into place, or removed if anything fails. With ``overwrite``
    False an existing ``final`` is kept and FileExistsError raised."""
    tmp = partial_path(final)
    try:
        write(tmp)
        fsync_path(tmp)
        if not overwrite and final.exists():   # appeared while ``write`` ran
            raise FileExistsError(errno.EEXIST, "exists; not overwritten", str(final))
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def check_writable_folder(folder: Path, what: str) -> None:
    """Raise UsageError unless files can be created in ``folder``.

    Tries to create a file rather than trusting ``os.access``, which says yes
    to root even on read-only mounts."""
    from .cli import UsageError

    if not folder.exists():
        raise UsageError(f"{what}: folder {folder} does not exist")
    if not folder.is_dir():
        raise UsageError(f"{what}: {folder} is not a folder")
    probe = folder / f".visionbench-write-test-{os.getpid()}"
    try:
        with open(probe, "w"):
            pass
    except OSError as err:
        raise UsageError(f"{what}: folder {folder} is not writable ({err.strerror})")
    probe.unlink(missing_ok=True)


def lock_holder(path: Path):
    """Who holds the FolderLock ``path`` ("pid N"), or None when no live
    process does. Writes nothing: an absent lock file stays absent."""
    import fcntl

    try:
        handle = open(path, "r", encoding="utf-8")
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return None


def lock_in_use_message(what: str, holder: str, path: Path) -> str:
    return f"{what} is in use by a run still going ({holder}; lock {path}); wait for it or choose another prefix"


class FolderLock:
    """An exclusive lock file ``path`` (``fcntl.flock``), held while the run
    lives: the kernel releases it when the process dies however it dies, so
    a crashed run never blocks the next one (its file stays, unlocked, and is
    taken over). Removed on a clean exit. Local file systems only (NFS
    locking is not reliable)."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = Path(path), what
        self._handle = None

    def __enter__(self) -> "FolderLock":
        import fcntl

        from .cli import UsageError

        while True:
            handle = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise UsageError(lock_in_use_message(self.what, holder, self.path))
            try:   # the holder may have removed the file between our open and our lock: retry then
                same = os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self.path.unlink(missing_ok=True)   # while still holding it, so no one else owns that file
            self._handle.close()
            self._handle = None


def drop_from_page_cache(paths) -> bool:
    """Ask the kernel to drop ``paths``' pages from its page cache
    (posix_fadvise DONTNEED: no root needed, unlike /proc/sys/vm/drop_caches),
    so that a timed run reads its data from the disk as MLPerf's rules ask
    ("flush the cache ... prior to benchmarking"). Dirty pages cannot be
    dropped: each file is written back first (fsync). Pages another process
    has mapped may stay. True when every file was asked."""
    import os

    asked = True
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            asked = False
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)   # offset 0, length 0: the whole file
        except OSError:
            asked = False
        finally:
            os.close(fd)
    return asked
