"""Checkpoints named as NVIDIA's example names them, written crash-safe.

    PREFIX-symbol.json    the network (MXNet symbol; loadable with SymbolBlock.imports)
    PREFIX-EEEE.params    weights and BatchNorm statistics after EEEE epochs
    PREFIX-EEEE.states    optimizer state (momentum buffers, float32 master weights)
    PREFIX-EEEE.json      epoch, schedule position, loss scale, model, the epoch
                          records so far: written last, it marks the set complete

Every file is written under a temporary name and renamed; a checkpoint
without its .json is ignored (an interrupted write), so resuming always
starts from the last complete one.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import List, Optional

from ..cli import UsageError
from ..files import fsync_dir, partial_path, write_text_atomic

_META = re.compile(r"^(?P<name>.+)-(?P<epoch>\d{4})\.json$")


def checkpoint_paths(prefix: Path, epoch: int) -> dict:
    base = f"{prefix}-{epoch:04d}"
    return {"params": Path(base + ".params"), "states": Path(base + ".states"), "meta": Path(base + ".json")}


def complete_epochs(prefix: Path) -> List[int]:
    """Epochs with a complete checkpoint under ``prefix``, ascending."""
    prefix = Path(prefix)
    if not prefix.parent.is_dir():
        return []
    epochs = []
    for path in prefix.parent.iterdir():
        match = _META.match(path.name)
        if match and match["name"] == prefix.name:
            epoch = int(match["epoch"])
            files = checkpoint_paths(prefix, epoch)
            if files["params"].exists() and files["states"].exists():
                epochs.append(epoch)
    return sorted(epochs)


def save_checkpoint(net, trainer, prefix: Path, epoch: int, meta: dict) -> None:
    prefix = Path(prefix)
    final = checkpoint_paths(prefix, epoch)
    tmp_prefix = partial_path(prefix)
    try:
        net.export(str(tmp_prefix), epoch)   # writes TMP-symbol.json and TMP-EEEE.params
        trainer.save_states(str(final["states"]) + ".partial")
        os.replace(f"{tmp_prefix}-symbol.json", f"{prefix}-symbol.json")
        os.replace(f"{tmp_prefix}-{epoch:04d}.params", final["params"])
        os.replace(str(final["states"]) + ".partial", final["states"])
    except BaseException:
        for leftover in (f"{tmp_prefix}-symbol.json", f"{tmp_prefix}-{epoch:04d}.params",
                         str(final["states"]) + ".partial"):
            Path(leftover).unlink(missing_ok=True)
        raise
    fsync_dir(prefix.parent)
    write_text_atomic(final["meta"], json.dumps(meta, indent=2) + "\n")


def load_meta(prefix: Path, epoch: int) -> dict:
    path = checkpoint_paths(prefix, epoch)["meta"]
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"checkpoint {path} is unreadable ({err})")


def load_weights(net, prefix: Path, epoch: int, devices) -> None:
    path = checkpoint_paths(prefix, epoch)["params"]
    try:
        net.collect_params().load(str(path), ctx=devices, allow_missing=False, ignore_extra=False)
    except Exception as err:  # noqa: BLE001 - MXNet raises AssertionError/MXNetError/ValueError
        raise UsageError(f"checkpoint {path} does not fit this model ({_last_line(err)})")


def _last_line(err: Exception) -> str:
    """MXNet's errors carry a C++ traceback: their last line says what failed."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[-1] if lines else type(err).__name__
    return text.replace("MXNetError: ", "")[:200]


def load_states(trainer, prefix: Path, epoch: int) -> None:
    path = checkpoint_paths(prefix, epoch)["states"]
    try:
        trainer.load_states(str(path))
    except Exception as err:  # noqa: BLE001
        raise UsageError(f"optimizer state {path} cannot be loaded ({type(err).__name__})")


def prune(prefix: Path, keep_last: int, best_epoch: Optional[int]) -> None:
    """Delete complete checkpoints other than the last ``keep_last`` and the best."""
    epochs = complete_epochs(prefix)
    keep = set(epochs[-keep_last:])
    if best_epoch is not None:
        keep.add(best_epoch)
    for epoch in epochs:
        if epoch not in keep:
            files = checkpoint_paths(prefix, epoch)
            files["meta"].unlink(missing_ok=True)   # first: the set stops counting as complete
            files["params"].unlink(missing_ok=True)
            files["states"].unlink(missing_ok=True)
