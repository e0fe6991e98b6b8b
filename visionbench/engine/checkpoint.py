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
starts from the last complete one. A hidden journal (``.PREFIX.checkpoint-
journal``) lists the final names a write or a prune is about to create or
delete, so what a killed one leaves is known to be ours and removed at the
next start. Files named like checkpoints that are not complete ones of this
suite (another tool's, a damaged one) stop a run before it writes anything:
a run never replaces, renames or deletes a file it did not write.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import List, Optional, Tuple

from ..cli import RunFailure, UsageError, last_error_line
from ..files import fsync_dir, is_dead_partial, partial_path, pid_alive, write_text_atomic

_META = re.compile(r"^(?P<name>.+)-(?P<epoch>\d{4})(-(?P<iteration>\d{6}))?\.json$")
# What a visionbench meta file holds, at least (load_meta's users read these).
_META_KEYS = ("epoch", "model", "classes", "loss_scaler", "epochs")


def checkpoint_paths(prefix: Path, epoch: int, iteration: int = 0) -> dict:
    base = f"{prefix}-{epoch:04d}" + (f"-{iteration:06d}" if iteration else "")
    return {"params": Path(base + ".params"), "states": Path(base + ".states"), "meta": Path(base + ".json")}


def symbol_path(prefix: Path) -> Path:
    return Path(f"{prefix}-symbol.json")


def journal_path(prefix: Path) -> Path:
    """The hidden list of final names a checkpoint write is creating,
    written before the first of them appears and removed after its .json:
    what a killed write leaves is known to be ours."""
    prefix = Path(prefix)
    return prefix.with_name(f".{prefix.name}.checkpoint-journal")


def _is_our_meta(path: Path, epoch: int) -> bool:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and all(key in meta for key in _META_KEYS) and meta["epoch"] == epoch


def complete_positions(prefix: Path) -> List[Tuple[int, int]]:
    """(epoch, iteration) of every complete checkpoint of this suite under
    ``prefix`` (its .json, written last by save_checkpoint, and the .params
    and .states it completes), ascending; (E, 0) is the end of epoch E - 1."""
    prefix = Path(prefix)
    if not prefix.parent.is_dir():
        return []
    found = []
    for path in prefix.parent.iterdir():
        match = _META.match(path.name)
        if match and match["name"] == prefix.name:
            position = (int(match["epoch"]), int(match["iteration"] or 0))
            files = checkpoint_paths(prefix, *position)
            if files["params"].exists() and files["states"].exists() and _is_our_meta(path, position[0]):
                found.append(position)
    return sorted(found)


def complete_epochs(prefix: Path) -> List[int]:
    """Epochs with a complete end-of-epoch checkpoint under ``prefix``, ascending."""
    return [epoch for epoch, iteration in complete_positions(prefix) if iteration == 0]


def foreign_files(prefix: Path) -> List[Path]:
    """Files under ``prefix`` named like checkpoints (-symbol.json, -EEEE.params,
    .states, .json and their -IIIIII mid-epoch forms) that are not part of a
    complete checkpoint of this suite: another tool's checkpoint (NVIDIA's
    example, MXNet's save_checkpoint), a damaged one, or a user's file. A
    run never replaces or deletes them."""
    prefix = Path(prefix)
    if not prefix.parent.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(prefix.name)}-(symbol\.json|\d{{4}}(-\d{{6}})?\.(params|states|json))$")
    ours = {path for position in complete_positions(prefix) for path in checkpoint_paths(prefix, *position).values()}
    if ours:
        ours.add(symbol_path(prefix))
    ours.update(_journal_listed(prefix))   # a killed write's files: ours, removed by remove_leftovers
    return sorted(path for path in prefix.parent.iterdir()
                  if pattern.match(path.name) and path not in ours and path.is_file())


def refuse_foreign_files(prefix: Path) -> None:
    """UsageError naming the files under ``prefix`` a run would otherwise
    write over or prune (see foreign_files)."""
    found = foreign_files(prefix)
    if found:
        names = ", ".join(str(path) for path in found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise UsageError(f"--model-prefix {prefix}: {names} look like checkpoints but are not complete ones of "
                         "visionbench (no matching .json, .params and .states written by it); a run never replaces "
                         "or deletes them: move them, or choose another --model-prefix")


def _disk_full_message(path: Path, needed: int, err: BaseException) -> str:
    free = shutil.disk_usage(path.parent).free
    reason = getattr(err, "strerror", None)
    if not reason:   # MXNet's C++ writer: "... Check failed: ...: FileStream.Write incomplete"
        reason = "MXNet's file writer: " + str(err).strip().splitlines()[-1].rsplit(": ", 1)[-1][:200]
    return (f"cannot write checkpoint {path} ({reason}): it needs about {needed / 2**20:.1f} MiB, "
            f"{free / 2**20:.1f} MiB are free in {path.parent}; the previous checkpoints are intact")


def checkpoint_bytes(net, trainer) -> int:
    """What one checkpoint takes on disk, about: the weights and BatchNorm
    statistics, and the optimizer state as save_states writes it."""
    import numpy as np

    # list_data()[0]: the first device's copy (data() alone looks on the current context, cpu(0))
    size = sum(p.list_data()[0].size * np.dtype(p.dtype).itemsize for p in net.collect_params().values())
    try:
        size += len(trainer._updaters[0].get_states(dump_optimizer=False))
    except Exception:  # noqa: BLE001 - an estimate: the weights alone if the state cannot be serialised
        pass
    return size


def save_checkpoint(net, trainer, prefix: Path, epoch: int, meta: dict, iteration: int = 0) -> None:
    """Write the checkpoint of position (epoch, iteration). Every file is
    written under a temporary name first; the final names appear only after
    a journal listing them, and the .json comes last. A failure at any step
    (full disk, I/O error, a signal) removes what this write created, so the
    folder is as it was before; a write failure raises RunFailure naming the
    path, the space needed and the space free."""
    prefix = Path(prefix)
    final = checkpoint_paths(prefix, epoch, iteration)
    symbol = symbol_path(prefix)
    tmp_prefix = partial_path(prefix)
    tag = epoch * 1_000_000 + iteration   # the number net.export puts in its file name
    tmp_symbol, tmp_params = Path(f"{tmp_prefix}-symbol.json"), Path(f"{tmp_prefix}-{tag:04d}.params")
    tmp_states = Path(str(final["states"]) + ".partial")
    journal = journal_path(prefix)
    if (epoch, iteration) in complete_positions(prefix):
        return   # stopped again where it had stopped: nothing changed since that checkpoint
    created: List[Path] = []
    try:
        net.export(str(tmp_prefix), tag)   # writes TMP-symbol.json and TMP-TAG.params
        trainer.save_states(str(tmp_states))
        moves = [(tmp_params, final["params"]), (tmp_states, final["states"])]
        if not symbol.exists():
            moves.append((tmp_symbol, symbol))   # the network, written by the first checkpoint of the prefix
        write_text_atomic(journal, json.dumps([str(target) for _, target in moves] + [str(final["meta"])]) + "\n")
        for source, target in moves:
            os.replace(source, target)
            created.append(target)
        fsync_dir(prefix.parent)
        write_text_atomic(final["meta"], json.dumps(meta, indent=2) + "\n")
        created.append(final["meta"])
        journal.unlink()
        fsync_dir(prefix.parent)
    except BaseException as err:
        for path in (*created, tmp_symbol, tmp_params, tmp_states, journal):
            path.unlink(missing_ok=True)
        if isinstance(err, Exception) and _is_write_failure(err):
            raise RunFailure(_disk_full_message(final["params"], checkpoint_bytes(net, trainer), err)) from None
        raise
    finally:
        tmp_symbol.unlink(missing_ok=True)   # when the symbol already existed


def _is_write_failure(err: Exception) -> bool:
    """OSError from Python, or MXNet's C++ writer failing (it raises MXNetError)."""
    return isinstance(err, OSError) or "MXNetError" in type(err).__name__


def _journal_listed(prefix: Path) -> List[Path]:
    """The final names an unfinished checkpoint write or prune listed."""
    try:
        names = json.loads(journal_path(prefix).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []   # none, or one cut short: written before any final name appeared
    return [Path(name) for name in names if Path(name).parent == Path(prefix).parent]


def remove_leftovers(prefix: Path) -> List[Path]:
    """Delete what killed checkpoint writes left: their temporary files, and
    the final-named files a journal says the write created, unless they
    became part of a complete checkpoint. Called with PREFIX.lock held, so no
    live writer owns them; touches nothing a visionbench write did not create."""
    prefix = Path(prefix)
    if not prefix.parent.is_dir():
        return []
    leftovers = [path for pattern in (f".{prefix.name}.partial-*", f"{prefix.name}-*.states.partial")
                 for path in prefix.parent.glob(pattern)]
    # the .json of a checkpoint and the journal are written under .NAME.partial-PID (files.write_text_atomic)
    ours = re.compile(rf"^\.({re.escape(prefix.name)}-\d{{4}}(-\d{{6}})?\.json|{re.escape(journal_path(prefix).name)})"
                      rf"\.partial-\d+$")
    leftovers += [path for path in prefix.parent.glob(".*.partial-*") if ours.match(path.name) and is_dead_partial(path)]
    # what a killed save of an INT8 model left (engine/quantize.py: .P-EEEE.int8-....partial-PID[-symbol.json|-0000.params])
    int8 = re.compile(rf"^\.{re.escape(prefix.name)}-\d{{4}}\.int8-[^/]*\.partial-(?P<pid>\d+)(-symbol\.json|-0000\.params)?$")
    for path in prefix.parent.glob(f".{prefix.name}-*.int8-*.partial-*"):
        match = int8.match(path.name)
        if match and not pid_alive(int(match["pid"])):
            leftovers.append(path)
    journal = journal_path(prefix)
    if journal.exists():
        listed = _journal_listed(prefix)
        complete = {path for position in complete_positions(prefix)
                    for path in checkpoint_paths(prefix, *position).values()}
        if complete:
            complete.add(symbol_path(prefix))
        leftovers += [path for path in listed if path not in complete and path.exists()]
        leftovers.append(journal)
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
        raise UsageError(f"checkpoint {path} does not fit this model ({last_error_line(err)})")


def load_states(trainer, prefix: Path, epoch: int, iteration: int = 0) -> None:
    path = checkpoint_paths(prefix, epoch, iteration)["states"]
    try:
        trainer.load_states(str(path))
    except Exception as err:  # noqa: BLE001
        raise UsageError(f"optimizer state {path} cannot be loaded ({type(err).__name__})")


def _int8_models_of(params: Path) -> List[Path]:
    """The files of INT8 models calibrated from checkpoint ``params`` (engine/quantize.py),
    recognised by their own meta: nothing else named like them is touched."""
    found = []
    for meta in params.parent.glob(f"{params.stem}.int8-*.json"):
        if meta.name.endswith(".symbol.json"):
            continue
        try:
            settings = json.loads(meta.read_text(encoding="utf-8")).get("settings", {})
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(settings, dict) and settings.get("checkpoint") == params.name:
            base = str(meta)[:-len(".json")]
            found += [Path(base + ".symbol.json"), Path(base + ".params"), meta]
    return sorted(found)


def prune(prefix: Path, keep_last: int, best_epoch: Optional[int]) -> None:
    """Delete complete checkpoints other than the last ``keep_last`` and the
    best, and mid-epoch ones older than the newest end-of-epoch checkpoint."""
    epochs = complete_epochs(prefix)
    doomed = [position for position in complete_positions(prefix)
              if position[1] and epochs and position[0] < epochs[-1]]
    keep = set(epochs[-keep_last:])
    if best_epoch is not None:
        keep.add(best_epoch)
    doomed += [(epoch, 0) for epoch in epochs if epoch not in keep]
    for position in doomed:
        files = checkpoint_paths(prefix, *position)
        # INT8 models calibrated from this checkpoint (engine/quantize.py) go with it
        int8 = _int8_models_of(files["params"]) if not position[1] else []
        # The journal first: a kill part-way leaves files the next start
        # knows to be ours (remove_leftovers), never ones that look foreign.
        write_text_atomic(journal_path(prefix), json.dumps([str(files[name]) for name in ("meta", "params",
                                                                                          "states")]
                                                           + [str(path) for path in int8]) + "\n")
        files["meta"].unlink(missing_ok=True)   # first: the set stops counting as complete
        files["params"].unlink(missing_ok=True)
        files["states"].unlink(missing_ok=True)
        for path in int8:
            path.unlink(missing_ok=True)
        journal_path(prefix).unlink()
