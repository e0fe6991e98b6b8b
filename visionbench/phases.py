"""imagenet18 phase lists -> per-epoch data settings and a per-iteration LR.

The format is imagenet18's own, a Python literal list of dicts, e.g.

    [{'ep': 0, 'sz': 128, 'bs': 512, 'trndir': '-sz/160'},
     {'ep': (0, 7), 'lr': (1.0, 2.0)}, ...]

- A data phase has an integer ``ep`` (its first epoch) and ``sz`` (image
  size, pixels), ``bs`` (batch size per device, as imagenet18's per-GPU
  batch), ``trndir`` (data folder suffix: ``'-sz/160'`` reads
  ``DATA_ROOT/sz/160/{train,val}``), ``min_scale`` (smallest random crop
  area) and ``rect_val``. It sets all of them from that epoch on, as
  imagenet18 did: a key it leaves out takes the run's setting (``--image-size``,
  ``-b``, ``--min-random-area``, ``--rect-val``; no ``trndir`` = the
  full-size set), not the previous phase's. Before the first data phase the
  run's settings hold.
- An LR phase has ``ep: (start, end)`` and ``lr``: a pair, interpolated
  linearly over the iterations of [start, end) (the first iteration of the
  phase gets the first value), or one number held constant. The LR is used as
  given: it is not scaled by the batch size. LR phases must cover every epoch
  from 0 to the last one's end, which is the total epoch count.

Parsed with ``ast.literal_eval``: a phase string cannot run code.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .cli import UsageError

DATA_KEYS = {"sz": int, "bs": int, "trndir": str, "min_scale": float, "rect_val": bool}


@dataclass(frozen=True)
class DataPhase:
    start: int
    image_size: Optional[int] = None
    batch_size: Optional[int] = None
    trndir: Optional[str] = None
    min_scale: Optional[float] = None
    rect_val: Optional[bool] = None


@dataclass(frozen=True)
class LrPhase:
    start: int
    end: int
    lr_start: float
    lr_end: float


@dataclass(frozen=True)
class DataSettings:
    """What the loaders use in one epoch."""
    image_size: int
    batch_size: int
    trndir: str
    min_scale: float
    rect_val: bool


@dataclass(frozen=True)
class Phases:
    data: Tuple[DataPhase, ...]
    lr: Tuple[LrPhase, ...]
    momentum: float = 0.9

    @property
    def epochs(self) -> int:
        return self.lr[-1].end

    def settings(self, epoch: int, defaults: DataSettings) -> DataSettings:
        """The data settings of ``epoch``: its latest data phase over ``defaults``."""
        current = [phase for phase in self.data if phase.start <= epoch]
        if not current:
            return defaults
        phase = current[-1]
        values = {name: getattr(phase, name) for name in vars(defaults)}
        return DataSettings(**{name: getattr(defaults, name) if value is None else value
                               for name, value in values.items()})

    def at(self, epoch: int, iteration: int, iterations: int) -> Tuple[float, float]:
        for phase in self.lr:
            if phase.start <= epoch < phase.end:
                fraction = (epoch - phase.start + iteration / iterations) / (phase.end - phase.start)
                return phase.lr_start + (phase.lr_end - phase.lr_start) * fraction, self.momentum
        raise ValueError(f"epoch {epoch} is outside the phases (0..{self.epochs - 1})")


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{where} must be a number, got {value!r}")
    return float(value)


def parse_phases(text: str, momentum: float = 0.9) -> Phases:
    try:
        raw = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        raise UsageError(f"--phases is not a Python literal list of dicts ({type(err).__name__}: {err})")
    if not isinstance(raw, (list, tuple)) or not raw:
        raise UsageError("--phases must be a non-empty list of dicts")
    data: List[DataPhase] = []
    lrs: List[LrPhase] = []
    for number, phase in enumerate(raw):
        where = f"--phases: phase {number} ({phase!r})"
        if not isinstance(phase, dict):
            raise UsageError(f"{where}: must be a dict")
        if "ep" not in phase:
            raise UsageError(f"{where}: has no 'ep'")
        unknown = set(phase) - set(DATA_KEYS) - {"ep", "lr"}
        if unknown:
            raise UsageError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        epochs = phase["ep"]
        if isinstance(epochs, (tuple, list)):
            if len(epochs) != 2 or not all(isinstance(e, int) and not isinstance(e, bool) for e in epochs) \
                    or not 0 <= epochs[0] < epochs[1]:
                raise UsageError(f"{where}: 'ep' must be (start, end) with 0 <= start < end")
            if "lr" not in phase:
                raise UsageError(f"{where}: an (start, end) phase needs 'lr'")
            extra = set(phase) - {"ep", "lr"}
            if extra:
                raise UsageError(f"{where}: key {sorted(extra)[0]!r} belongs in a data phase ('ep': int)")
            lr = phase["lr"]
            if isinstance(lr, (tuple, list)):
                if len(lr) != 2:
                    raise UsageError(f"{where}: 'lr' must be a number or (start, end)")
                start_lr, end_lr = (_number(v, f"{where}: 'lr'") for v in lr)
            else:
                start_lr = end_lr = _number(lr, f"{where}: 'lr'")
            if start_lr < 0 or end_lr < 0:
                raise UsageError(f"{where}: 'lr' must not be negative")
            lrs.append(LrPhase(epochs[0], epochs[1], start_lr, end_lr))
            continue
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise UsageError(f"{where}: 'ep' must be an epoch (int >= 0) or (start, end)")
        if "lr" in phase:
            raise UsageError(f"{where}: 'lr' needs 'ep': (start, end)")
        values = {}
        for key, kind in DATA_KEYS.items():
            if key not in phase:
                continue
            value = phase[key]
            if kind is float:
                value = _number(value, f"{where}: '{key}'")
            elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise UsageError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
            values[key] = value
        if "sz" in values and values["sz"] < 8:
            raise UsageError(f"{where}: 'sz' must be at least 8")
        if "bs" in values and values["bs"] < 1:
            raise UsageError(f"{where}: 'bs' must be at least 1")
        if "min_scale" in values and not 0 < values["min_scale"] <= 1:
            raise UsageError(f"{where}: 'min_scale' must be in (0, 1]")
        if "trndir" in values and values["trndir"] and not values["trndir"].startswith("-sz/"):
            raise UsageError(f"{where}: 'trndir' must look like '-sz/<N>' (or '' for full size)")
        data.append(DataPhase(epochs, values.get("sz"), values.get("bs"), values.get("trndir"),
                              values.get("min_scale"), values.get("rect_val")))
    if not lrs:
        raise UsageError("--phases has no LR phase ('ep': (start, end), 'lr': ...)")
    lrs.sort(key=lambda p: p.start)
    reached = 0
    for phase in lrs:
        if phase.start > reached:
            raise UsageError(f"--phases leave epochs {reached}..{phase.start - 1} without an LR")
        if phase.start < reached:
            raise UsageError(f"--phases give epoch {phase.start} two LRs")
        reached = phase.end
    for phase in data:
        if phase.start >= reached:
            raise UsageError(f"--phases: a data phase starts at epoch {phase.start}, after the last LR "
                             f"phase ends ({reached})")
    return Phases(tuple(sorted(data, key=lambda p: p.start)), tuple(lrs), momentum)


def trndir_folder(trndir: str) -> str:
    """'-sz/160' -> 'sz/160' (under the data root); '' -> '' (the root)."""
    return trndir[1:] if trndir else ""
