"""Checkpoints named as NVIDIA's example names them, written crash-safe.

    PREFIX-symbol.json    the network (MXNet symbol; loadable with SymbolBlock.imports)
    PREFIX-EEEE.params    device 0's weights and BatchNorm statistics after EEEE epochs
    PREFIX-EEEE.states    optimizer state (momentum buffers, float32 master weights),
                          MXNet Trainer.save_states's format, arrays in host memory
    PREFIX-EEEE.bnstats   every device's BatchNorm running mean and variance
                          (runs on 2 or more devices only)
    PREFIX-EEEE.json      epoch, schedule position, loss scale, model, the epoch
                          records so far: written last, it marks the set complete
    PREFIX-EEEE-IIIIII.*  the same files, written when a signal stopped the run
                          after IIIIII steps of epoch EEEE (0-based); removed
                          once the next end-of-epoch checkpoint exists

What is saved of a run on several devices. Gradients are summed over the
devices before every update and each device applies the same update to the
same weights (float16 runs: to the same float32 master weights), so every
device holds the same weights and optimizer state, bit for bit (tested in
float32 on CPU contexts; float16 updates are the same elementwise kernels):
device 0's copy is saved, never an average of the copies (MXNet's export
averages, and that rounds). BatchNorm's running statistics are not reduced:
each device keeps its own, from its own shard of every batch. The .params
file, the model users load, holds device 0's; the .bnstats file (an
``mx.nd.save`` dict, keys ``K:NAME`` for device K) holds every device's, and a
resume or a score on the same number of devices gives each device its own
back, so a resumed run continues exactly and ``--mode val`` reproduces the
validation of the epoch it scores (each device evaluates its shard of the val
set with its own statistics, as in training). On another number of devices
every device takes device 0's statistics: the .params model. A
parameter-server job saves rank 0's devices' statistics; every worker
resumes with them. The .json of a checkpoint with a .bnstats says so
(``bnstats_devices``), and the set is complete only with it. A resume loads
the optimizer state first and the statistics after it: setting up the
Trainer's kvstore copies device 0's value of every parameter, statistics
included, to every device. Optimizer state is loaded onto each device
directly from host memory, never through device 0.

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

import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..cli import RunFailure, UsageError, last_error_line
from ..files import fsync_dir, fsync_path, is_dead_partial, partial_path, pid_alive, write_text_atomic

_META = re.compile(r"^(?P<name>.+)-(?P<epoch>\d{4})(-(?P<iteration>\d{6}))?\.json$")
# What a visionbench meta file holds, at least (load_meta's users read these).
_META_KEYS = ("epoch", "model", "classes", "loss_scaler", "epochs")
# The meta key saying how many devices' BatchNorm statistics the .bnstats holds
# (absent: no .bnstats, a one-device run or a checkpoint older than the file).
BNSTATS_DEVICES = "bnstats_devices"


# The files of a torch engine checkpoint (meta "engine": "torch"): the model's
# state_dict (device 0's; what users load with torch.load) and the training
# state (optimizer, GradScaler, RNG), both torch.save files.
TORCH_FILES = ("weights_pt", "train_pt")


def checkpoint_paths(prefix: Path, epoch: int, iteration: int = 0) -> dict:
    base = f"{prefix}-{epoch:04d}" + (f"-{iteration:06d}" if iteration else "")
    return {"params": Path(base + ".params"), "states": Path(base + ".states"), "bnstats": Path(base + ".bnstats"),
            "weights_pt": Path(base + ".pt"), "train_pt": Path(base + ".train.pt"), "meta": Path(base + ".json")}


def checkpoint_engine(meta: dict) -> str:
    """The engine that wrote a checkpoint (checkpoints older than the torch engine are MXNet's)."""
    return meta.get("engine", "mxnet")


def symbol_path(prefix: Path) -> Path:
    return Path(f"{prefix}-symbol.json")


def journal_path(prefix: Path) -> Path:
    """The hidden list of final names a checkpoint write is creating,
    written before the first of them appears and removed after its .json:
    what a killed write leaves is known to be ours."""
    prefix = Path(prefix)
    return prefix.with_name(f".{prefix.name}.checkpoint-journal")


def _our_meta(path: Path, epoch: int) -> Optional[dict]:
    """The meta file at ``path`` when it is one of ours for ``epoch``, else None."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(meta, dict) and all(key in meta for key in _META_KEYS) and meta["epoch"] == epoch:
        return meta
    return None


def _files_of(prefix: Path, position: Tuple[int, int], meta: dict) -> List[Path]:
    """The files of the checkpoint at ``position`` whose meta is ``meta``, the .json first."""
    files = checkpoint_paths(prefix, *position)
    if checkpoint_engine(meta) == "torch":
        return [files[name] for name in ("meta", *TORCH_FILES)]
    names = ["meta", "params", "states"] + (["bnstats"] if meta.get(BNSTATS_DEVICES) else [])
    return [files[name] for name in names]


def complete_checkpoints(prefix: Path) -> Dict[Tuple[int, int], List[Path]]:
    """{(epoch, iteration): its files} of every complete checkpoint of this
    suite under ``prefix``: its .json, written last by save_checkpoint, and
    the .params, .states (and .bnstats, when the .json says so) it completes.
    (E, 0) is the end of epoch E - 1."""
    prefix = Path(prefix)
    if not prefix.parent.is_dir():
        return {}
    found = {}
    for path in prefix.parent.iterdir():
        match = _META.match(path.name)
        if match and match["name"] == prefix.name:
            position = (int(match["epoch"]), int(match["iteration"] or 0))
            meta = _our_meta(path, position[0])
            files = _files_of(prefix, position, meta) if meta is not None else []
            if files and all(file.exists() for file in files[1:]):
                found[position] = files
    return found


def complete_positions(prefix: Path) -> List[Tuple[int, int]]:
    """(epoch, iteration) of every complete checkpoint under ``prefix``, ascending."""
    return sorted(complete_checkpoints(prefix))


def complete_epochs(prefix: Path) -> List[int]:
    """Epochs with a complete end-of-epoch checkpoint under ``prefix``, ascending."""
    return [epoch for epoch, iteration in complete_positions(prefix) if iteration == 0]


def foreign_files(prefix: Path) -> List[Path]:
    """Files under ``prefix`` named like checkpoints (-symbol.json, -EEEE.params,
    .states, .bnstats, .json and their -IIIIII mid-epoch forms) that are not part of a
    complete checkpoint of this suite: another tool's checkpoint (NVIDIA's
    example, MXNet's save_checkpoint), a damaged one, or a user's file. A
    run never replaces or deletes them."""
    prefix = Path(prefix)
    if not prefix.parent.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(prefix.name)}-(symbol\.json|\d{{4}}(-\d{{6}})?\.(params|states|bnstats|json|pt|train\.pt))$")
    ours = {path for files in complete_checkpoints(prefix).values() for path in files}
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


def _per_device_params(net) -> list:
    """Parameters the optimizer never updates, so each device's copy can
    differ: BatchNorm's running mean and variance in this suite's models."""
    return [param for param in net.collect_params().values() if param.grad_req == "null"]


def _device_count(net) -> int:
    return len(next(iter(net.collect_params().values())).list_ctx())


def checkpoint_bytes(net, trainer) -> int:
    """What one checkpoint takes on disk, about: the weights and BatchNorm
    statistics, the optimizer state as save_states writes it, and every
    device's statistics when there are several devices."""
    import numpy as np

    def nbytes(param) -> int:
        # list_data()[0]: the first device's copy (data() alone looks on the current context, cpu(0))
        return param.list_data()[0].size * np.dtype(param.dtype).itemsize

    size = sum(nbytes(p) for p in net.collect_params().values())
    devices = _device_count(net)
    if devices > 1:
        size += devices * sum(nbytes(p) for p in _per_device_params(net))
    try:
        size += len(trainer._updaters[0].get_states(dump_optimizer=False))
    except Exception:  # noqa: BLE001 - an estimate: the weights alone if the state cannot be serialised
        pass
    return size


def _fsynced(path: Path) -> None:
    fsync_path(path)   # the data on disk before its rename makes it count


def _graph(net):
    """The graph net.export saves (the hybridized net's cached graph, what
    SymbolBlock.imports reads); it exists once the net has run forward."""
    if not net._cached_graph:
        raise RuntimeError("a checkpoint needs one forward pass of the hybridized network first")
    return net._cached_graph[1]


def _write_network(net, symbol: Path) -> None:
    _graph(net).save(str(symbol), remove_amp_cast=True)
    _fsynced(symbol)


def _write_weights(net, path: Path) -> None:
    """Device 0's copy of every parameter of the graph, in host memory, under
    the names net.export gives them ('arg:NAME' for weights, 'aux:NAME' for
    BatchNorm statistics), so SymbolBlock.imports loads the file on any
    machine. net.export would save the average of the devices' copies."""
    import mxnet as mx

    graph = _graph(net)
    kinds = {name: "arg" for name in graph.list_arguments()}
    kinds.update({name: "aux" for name in graph.list_auxiliary_states()})
    arrays = {f"{kinds[p.name]}:{p.name}": p.list_data()[0].copyto(mx.cpu())
              for p in net.collect_params().values() if p.name in kinds}
    mx.nd.save(str(path), arrays)
    _fsynced(path)


def _write_device_statistics(net, path: Path) -> None:
    """Every device's copy of the parameters each device keeps its own of
    (keys 'K:NAME' for device K), in host memory."""
    import mxnet as mx

    arrays = {f"{k}:{p.name}": copy.copyto(mx.cpu()) for p in _per_device_params(net)
              for k, copy in enumerate(p.list_data())}
    mx.nd.save(str(path), arrays)
    _fsynced(path)


def _set_up_kvstore(trainer) -> None:
    """Create the Trainer's kvstore (this decides _update_on_kvstore) and
    initialise its keys, as Gluon does lazily at the first allreduce. That
    initialisation copies device 0's value of every parameter to every
    device, BatchNorm statistics included: in a fresh run at its first
    step, and here, so a resume loads every device's own statistics after
    it (load_checkpoint)."""
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()


def _write_states(trainer, path: Path) -> None:
    """The optimizer state of device 0's updater (every device's is the same:
    same gradients, same weights, same update), in Trainer.save_states's
    format (a pickle of (states, optimizer)) but with every array in host
    memory: unpickling an NDArray puts it on the device it was saved from,
    and a resume then copies it from the host to each device."""
    import pickle

    import mxnet as mx

    _set_up_kvstore(trainer)   # what Trainer.save_states does first
    if trainer._update_on_kvstore:   # the state lives in the kvstore: MXNet's own writer
        trainer.save_states(str(path))
        return
    updater = trainer._updaters[0]
    host = {index: updater.sync_state_context(state, mx.cpu()) for index, state in updater.states.items()}
    with open(path, "wb") as handle:
        pickle.dump((host, updater.optimizer), handle)
        handle.flush()
        os.fsync(handle.fileno())


class MxnetFiles:
    """What an MXNet checkpoint writes (write_checkpoint's ``files``)."""

    def __init__(self, net, trainer):
        self.net, self.trainer = net, trainer

    def write(self, tmp: dict, final: dict, symbol: Path) -> Tuple[List[Tuple[Path, Path]], dict]:
        moves, devices = _write_temporaries(self.net, self.trainer, tmp, final, symbol)
        # the .json says the .bnstats belongs to the set
        return moves, ({BNSTATS_DEVICES: devices} if devices > 1 else {})

    def size(self) -> int:
        return checkpoint_bytes(self.net, self.trainer)


def save_checkpoint(net, trainer, prefix: Path, epoch: int, meta: dict, iteration: int = 0) -> None:
    """An MXNet engine's checkpoint of position (epoch, iteration)."""
    write_checkpoint(MxnetFiles(net, trainer), prefix, epoch, meta, iteration)


def temporary_paths(prefix: Path, epoch: int, iteration: int) -> dict:
    """Where a checkpoint's files are written before their renames."""
    final = checkpoint_paths(prefix, epoch, iteration)
    tmp_prefix = partial_path(prefix)
    tag = epoch * 1_000_000 + iteration   # the number in the temporary .params name
    tmp = {"symbol": Path(f"{tmp_prefix}-symbol.json"), "params": Path(f"{tmp_prefix}-{tag:04d}.params")}
    tmp.update({name: Path(str(final[name]) + ".partial") for name in ("states", "bnstats", *TORCH_FILES)})
    return tmp


def write_checkpoint(files, prefix: Path, epoch: int, meta: dict, iteration: int = 0) -> None:
    """Write the checkpoint of position (epoch, iteration); ``files`` (an
    engine's: MxnetFiles, or the torch engine's) writes the framework's
    files under the temporary names. Every file is written under a temporary
    name first; the final names appear only after a journal listing them, and
    the .json comes last. A failure at any step (full disk, I/O error, a
    signal) removes what this write created, so the folder is as it was
    before; a write failure raises RunFailure naming the path, the space
    needed and the space free."""
    prefix = Path(prefix)
    final = checkpoint_paths(prefix, epoch, iteration)
    symbol = symbol_path(prefix)
    tmp = temporary_paths(prefix, epoch, iteration)
    journal = journal_path(prefix)
    if (epoch, iteration) in complete_positions(prefix):
        return   # stopped again where it had stopped: nothing changed since that checkpoint
    created: List[Path] = []
    try:
        moves, extra_meta = files.write(tmp, final, symbol)
        meta = {**meta, **extra_meta}
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
        for path in (*created, *tmp.values(), journal):
            path.unlink(missing_ok=True)
        if isinstance(err, Exception) and _is_write_failure(err):
            target = final[TORCH_FILES[0]] if checkpoint_engine(meta) == "torch" else final["params"]
            raise RunFailure(_disk_full_message(target, files.size(), err)) from None
        raise


def _write_temporaries(net, trainer, tmp: dict, final: dict, symbol: Path) -> Tuple[List[Tuple[Path, Path]], int]:
    """Write a checkpoint's files under their temporary names ``tmp``; returns
    the (temporary, final) names and the number of devices."""
    _write_weights(net, tmp["params"])
    _write_states(trainer, tmp["states"])
    moves = [(tmp["params"], final["params"]), (tmp["states"], final["states"])]
    devices = _device_count(net)
    if devices > 1:
        _write_device_statistics(net, tmp["bnstats"])
        moves.append((tmp["bnstats"], final["bnstats"]))
    if not symbol.exists():
        _write_network(net, tmp["symbol"])
        moves.append((tmp["symbol"], symbol))   # the network, written by the first checkpoint of the prefix
    return moves, devices


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
    leftovers = [path for pattern in (f".{prefix.name}.partial-*", f"{prefix.name}-*.states.partial",
                                      f"{prefix.name}-*.bnstats.partial", f"{prefix.name}-*.pt.partial")
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
        complete = {path for files in complete_checkpoints(prefix).values() for path in files}
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


def load_checkpoint(net, trainer, prefix: Path, epoch: int, devices, iteration: int = 0) -> None:
    """What a resume loads, in the order that keeps every device's own
    BatchNorm statistics: the optimizer state first (loading it sets up the
    Trainer's kvstore, which copies device 0's value of every parameter to
    every device), then the weights and each device's statistics."""
    load_states(trainer, prefix, epoch, iteration)
    load_weights(net, prefix, epoch, devices, iteration)


def load_weights(net, prefix: Path, epoch: int, devices, iteration: int = 0, cast: bool = False) -> None:
    """Device 0's weights and statistics (the .params) onto every device, then,
    when the checkpoint was written on as many devices, each device's own
    BatchNorm statistics (the .bnstats). ``cast``: convert each saved array
    to the dtype of the model's parameter (scoring a float16 checkpoint with
    a float32 model, or the reverse); BatchNorm parameters are float32 in
    both. A resume loads exactly."""
    files = checkpoint_paths(prefix, epoch, iteration)
    try:
        net.collect_params().load(str(files["params"]), ctx=devices, allow_missing=False, ignore_extra=False,
                                  cast_dtype=cast, dtype_source="current")
    except Exception as err:  # noqa: BLE001 - MXNet raises AssertionError/MXNetError/ValueError
        raise UsageError(f"checkpoint {files['params']} does not fit this model ({last_error_line(err)})")
    if len(devices) > 1 and load_meta(prefix, epoch, iteration).get(BNSTATS_DEVICES) == len(devices):
        _load_device_statistics(net, files["bnstats"])


def _load_device_statistics(net, path: Path) -> None:
    """Each device's own copy of the per-device parameters, from ``path``
    (written by _write_device_statistics on as many devices)."""
    import mxnet as mx

    try:
        saved = mx.nd.load(str(path))
        for param in _per_device_params(net):
            for k, copy in enumerate(param.list_data()):
                array = saved[f"{k}:{param.name}"]
                if array.shape != copy.shape or array.dtype != copy.dtype:
                    raise ValueError(f"{param.name} is {array.dtype.__name__} {array.shape} there, "
                                     f"{copy.dtype.__name__} {copy.shape} in the model")
                copy[:] = array   # a copy from host memory onto device k
    except Exception as err:  # noqa: BLE001 - MXNet raises MXNetError; a missing key KeyError
        raise UsageError(f"checkpoint {path} does not fit this model ({last_error_line(err)})")


def load_states(trainer, prefix: Path, epoch: int, iteration: int = 0) -> None:
    """The optimizer state of the checkpoint, each device's copy made from
    host memory straight onto that device. A UsageError raised while loading
    (an optimizer refusing a state format it no longer reads, say) reaches
    the user unchanged; any other failure names the file."""
    path = checkpoint_paths(prefix, epoch, iteration)["states"]
    try:
        _set_states_on_each_device(trainer, path)
    except UsageError:
        raise
    except Exception as err:  # noqa: BLE001
        raise UsageError(f"optimizer state {path} cannot be loaded ({type(err).__name__})")


def _set_states_on_each_device(trainer, path: Path) -> None:
    """What Trainer.load_states does, but without unpickling the file once
    per device: Updater.set_states would put every device's copy on the
    device the file was saved from (device 0) until the first update moves
    them. The file is unpickled once (host memory for files of this suite;
    an older file's arrays land on the device it was saved from, once), and
    each updater gets its own copy on its own device."""
    _set_up_kvstore(trainer)   # what Trainer.load_states does first
    if trainer._update_on_kvstore:   # the state lives in the kvstore: MXNet's own reader
        trainer.load_states(str(path))
        return
    saved = _StatesUnpickler(io.BytesIO(path.read_bytes())).load()
    states, optimizer = saved if isinstance(saved, tuple) and len(saved) == 2 else (saved, trainer._optimizer)
    # updater K applies the updates of every parameter's copy K (Trainer._update), on context K
    for updater, context in zip(trainer._updaters, trainer._contexts):
        updater.states = {index: updater.sync_state_context(state, context) for index, state in states.items()}
        updater.states_synced = dict.fromkeys(updater.states, True)
        updater.optimizer = optimizer
    trainer._optimizer = optimizer
    optimizer.param_dict = dict(enumerate(trainer._params))   # not pickled: the Trainer's own parameters


# Modules that moved since checkpoints named them: a .states file pickles its
# optimizer by module path (LARS moved into the MXNet engine's package).
_MOVED_MODULES = {"visionbench.engine.lars": "visionbench.engines.mxnet.lars"}


class _StatesUnpickler(pickle.Unpickler):
    """pickle's reader, with the optimizer classes of older files found where they live now."""

    def find_class(self, module: str, name: str):
        return super().find_class(_MOVED_MODULES.get(module, module), name)


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
    complete = complete_checkpoints(prefix)
    for position in doomed:
        # its files, the .json first: the set stops counting as complete
        files = complete[position]
        # INT8 models calibrated from this checkpoint (engine/quantize.py) go with it
        int8 = _int8_models_of(checkpoint_paths(prefix, *position)["params"]) if not position[1] else []
        # The journal first: a kill part-way leaves files the next start
        # knows to be ours (remove_leftovers), never ones that look foreign.
        write_text_atomic(journal_path(prefix), json.dumps([str(path) for path in files + int8]) + "\n")
        for path in files + int8:
            path.unlink(missing_ok=True)
        journal_path(prefix).unlink()
