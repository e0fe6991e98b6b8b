"""Checkpoints named as NVIDIA's example names them, written crash-safe.

    PREFIX-symbol.json    the network (MXNet symbol; loadable with SymbolBlock.imports)
    PREFIX-EEEE.params    weights and BatchNorm statistics after EEEE epochs
    PREFIX-EEEE.states    optimizer state (momentum buffers, float32 master weights)
    PREFIX-EEEE.json      epoch, schedule position, loss scale, model, the epoch
                          records so far: written last, it marks the set complete
    PREFIX-EEEE-IIIIII.*  the same three, written when a signal stopped the run
                          after IIIIII steps of epoch EEEE (0-based); removed
                          once the next end-of-epoch checkpoint exists

Every file is written under a temporary name and renamed; a checkpoint
without its .json is ignored (an interrupted write), so resuming always
starts from the last complete one.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import List, Optional, Tuple

from ..cli import RunFailure, UsageError
from ..files import fsync_dir, partial_path, write_text_atomic

_META = re.compile(r"^(?P<name>.+)-(?P<epoch>\d{4})(-(?P<iteration>\d{6}))?\.json$")


def checkpoint_paths(prefix: Path, epoch: int, iteration: int = 0) -> dict:
    base = f"{prefix}-{epoch:04d}" + (f"-{iteration:06d}" if iteration else "")
    return {"params": Path(base + ".params"), "states": Path(base + ".states"), "meta": Path(base + ".json")}


def complete_positions(prefix: Path) -> List[Tuple[int, int]]:
    """(epoch, iteration) of every complete checkpoint under ``prefix``,
    ascending; (E, 0) is the end of epoch E - 1."""
    prefix = Path(prefix)
    if not prefix.parent.is_dir():
        return []
    found = []
    for path in prefix.parent.iterdir():
        match = _META.match(path.name)
        if match and match["name"] == prefix.name:
            position = (int(match["epoch"]), int(match["iteration"] or 0))
            files = checkpoint_paths(prefix, *position)
            if files["params"].exists() and files["states"].exists():
                found.append(position)
    return sorted(found)


def complete_epochs(prefix: Path) -> List[int]:
    """Epochs with a complete end-of-epoch checkpoint under ``prefix``, ascending."""
    return [epoch for epoch, iteration in complete_positions(prefix) if iteration == 0]


def _disk_full_message(path: Path, needed: int, err: BaseException) -> str:
    free = shutil.disk_usage(path.parent).free
    reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[-1][:200]
    return (f"cannot write checkpoint {path} ({reason}): it needs about {needed / 2**20:.1f} MiB, "
            f"{free / 2**20:.1f} MiB are free in {path.parent}; the previous checkpoints are intact")


def save_checkpoint(net, trainer, prefix: Path, epoch: int, meta: dict, iteration: int = 0) -> None:
    """Write the checkpoint of position (epoch, iteration); a failed write
    (full disk, I/O error) removes its partial files, leaves every earlier
    checkpoint as it was and raises RunFailure naming the path and the space."""
    prefix = Path(prefix)
    final = checkpoint_paths(prefix, epoch, iteration)
    tmp_prefix = partial_path(prefix)
    tag = epoch * 1_000_000 + iteration   # the number net.export puts in its file name
    written = (f"{tmp_prefix}-symbol.json", f"{tmp_prefix}-{tag:04d}.params", str(final["states"]) + ".partial")
    try:
        net.export(str(tmp_prefix), tag)   # writes TMP-symbol.json and TMP-TAG.params
        trainer.save_states(written[2])
        os.replace(written[0], f"{prefix}-symbol.json")
        os.replace(written[1], final["params"])
        os.replace(written[2], final["states"])
        fsync_dir(prefix.parent)
        write_text_atomic(final["meta"], json.dumps(meta, indent=2) + "\n")
    except BaseException as err:
        for leftover in written:
            Path(leftover).unlink(missing_ok=True)
        if isinstance(err, Exception) and _is_write_failure(err):
            previous = complete_epochs(prefix)
            size = sum(p.stat().st_size for p in checkpoint_paths(prefix, previous[-1]).values()) if previous else 0
            raise RunFailure(_disk_full_message(final["params"], size, err)) from None
        raise


def _is_write_failure(err: Exception) -> bool:
    """OSError from Python, or MXNet's C++ writer failing (it raises MXNetError)."""
    return isinstance(err, OSError) or "MXNetError" in type(err).__name__


def remove_leftovers(prefix: Path) -> List[Path]:
    """Delete partial files of checkpoint writes that were killed. Called
    with PREFIX.lock held, so no live writer owns them."""
    prefix = Path(prefix)
    if not prefix.parent.is_dir():
        return []
    leftovers = [path for pattern in (f".{prefix.name}.partial-*", f"{prefix.name}-*.states.partial")
                 for path in prefix.parent.glob(pattern)]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def load_meta(prefix: Path, epoch: int, iteration: int = 0) -> dict:
    path = checkpoint_paths(prefix, epoch, iteration)["meta"]
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"checkpoint {path} is unreadable ({err})")


def load_weights(net, prefix: Path, epoch: int, devices, iteration: int = 0, cast: bool = False) -> None:
    """``cast``: convert each saved array to the dtype of the model's parameter
    (scoring a float16 checkpoint with a float32 model, or the reverse);
    BatchNorm parameters are float32 in both. A resume loads exactly."""
    path = checkpoint_paths(prefix, epoch, iteration)["params"]
    try:
        net.collect_params().load(str(path), ctx=devices, allow_missing=False, ignore_extra=False,
                                  cast_dtype=cast, dtype_source="current")
    except Exception as err:  # noqa: BLE001 - MXNet raises AssertionError/MXNetError/ValueError
        raise UsageError(f"checkpoint {path} does not fit this model ({_last_line(err)})")


def _last_line(err: Exception) -> str:
    """MXNet's errors carry a C++ traceback: their last line says what failed."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[-1] if lines else type(err).__name__
    return text.replace("MXNetError: ", "")[:200]


def load_states(trainer, prefix: Path, epoch: int, iteration: int = 0) -> None:
    path = checkpoint_paths(prefix, epoch, iteration)["states"]
    try:
        trainer.load_states(str(path))
    except Exception as err:  # noqa: BLE001
        raise UsageError(f"optimizer state {path} cannot be loaded ({type(err).__name__})")


def prune(prefix: Path, keep_last: int, best_epoch: Optional[int]) -> None:
    """Delete complete checkpoints other than the last ``keep_last`` and the
    best, and mid-epoch ones older than the newest end-of-epoch checkpoint."""
    epochs = complete_epochs(prefix)
    for epoch, iteration in complete_positions(prefix):
        if iteration and epochs and epoch < epochs[-1]:
            files = checkpoint_paths(prefix, epoch, iteration)
            for name in ("meta", "params", "states"):
                files[name].unlink(missing_ok=True)
    keep = set(epochs[-keep_last:])
    if best_epoch is not None:
        keep.add(best_epoch)
    for epoch in epochs:
        if epoch not in keep:
            files = checkpoint_paths(prefix, epoch)
            files["meta"].unlink(missing_ok=True)   # first: the set stops counting as complete
            files["params"].unlink(missing_ok=True)
            files["states"].unlink(missing_ok=True)
