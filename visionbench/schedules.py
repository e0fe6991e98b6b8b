"""Learning-rate and momentum schedules: pure functions of training progress.

Every schedule answers ``at(epoch, iteration, iterations_in_epoch) -> (lr,
momentum)`` for one training iteration; the caller passes time in and the
schedule keeps no state. The LR changes every iteration.

- ``StepSchedule``: linear warmup from 0 over ``warmup_epochs`` (reaching the
  base LR at the end of the warmup; the first iteration already has
  base / warmup_iterations), then the base LR multiplied by ``factor`` once
  for every decay epoch reached. ``warmup_epochs = 0`` starts at the base LR.
- ``CosineSchedule``: the same warmup, then a half cosine from the base LR to
  0 at the end of the last iteration.
- ``PolySchedule``: the same warmup, then MLPerf's polynomial decay
  ``end + (base - end) * (1 - t / T) ** power`` where ``t`` is the progress
  past the warmup and ``T`` the epochs after it, reaching ``end`` at the end
  of the last iteration (power 2 under MLPerf's closed-division rules).
- ``OneCycleSchedule``: Smith's one-cycle as PyTorch's ``OneCycleLR``
  (``three_phase=False``, cosine annealing) defines it over global steps
  ``s = 0 .. total - 1``: the LR rises from ``max_lr / div_factor`` to
  ``max_lr`` at step ``pct_start * total - 1``, then falls to
  ``max_lr / (div_factor * final_div_factor)`` at the last step; momentum
  moves the opposite way between ``momentum_max`` and ``momentum_min``.

Warmup and cosine progress is measured at the end of the iteration
(``epoch + (iteration + 1) / iterations_in_epoch``); decay epochs compare
with the integer epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple


def _end_progress(epoch: int, iteration: int, iterations: int) -> float:
    return epoch + (iteration + 1) / iterations


class _WarmupSchedule:
    """Linear warmup from 0 over ``warmup_epochs``, then ``after_warmup``."""

    def at(self, epoch: int, iteration: int, iterations: int) -> Tuple[float, float]:
        progress = _end_progress(epoch, iteration, iterations)
        if self.warmup_epochs > 0 and progress <= self.warmup_epochs:
            return self.base_lr * progress / self.warmup_epochs, self.momentum
        return self.after_warmup(epoch, progress), self.momentum


@dataclass(frozen=True)
class StepSchedule(_WarmupSchedule):
    base_lr: float
    epochs: int
    warmup_epochs: float = 5
    decay_epochs: Tuple[int, ...] = (30, 60, 80)
    factor: float = 0.1
    momentum: float = 0.9

    def after_warmup(self, epoch: int, progress: float) -> float:
        decays = sum(1 for step in self.decay_epochs if epoch >= step)
        return self.base_lr * self.factor ** decays


@dataclass(frozen=True)
class CosineSchedule(_WarmupSchedule):
    base_lr: float
    epochs: int
    warmup_epochs: float = 5
    momentum: float = 0.9

    def after_warmup(self, epoch: int, progress: float) -> float:
        span = self.epochs - self.warmup_epochs
        fraction = min(1.0, (progress - self.warmup_epochs) / span) if span > 0 else 1.0
        return self.base_lr * 0.5 * (1 + math.cos(math.pi * fraction))


@dataclass(frozen=True)
class PolySchedule(_WarmupSchedule):
    base_lr: float
    epochs: int
    warmup_epochs: float = 5
    end_lr: float = 1e-4
    power: float = 2.0
    momentum: float = 0.9

    def after_warmup(self, epoch: int, progress: float) -> float:
        span = self.epochs - self.warmup_epochs
        fraction = min(1.0, (progress - self.warmup_epochs) / span) if span > 0 else 1.0
        return self.end_lr + (self.base_lr - self.end_lr) * (1 - fraction) ** self.power


def _cosine_anneal(start: float, end: float, fraction: float) -> float:
    return end + (start - end) / 2 * (1 + math.cos(math.pi * fraction))


@dataclass(frozen=True)
class OneCycleSchedule:
    max_lr: float
    epochs: int
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    momentum_max: float = 0.95
    momentum_min: float = 0.85

    def at(self, epoch: int, iteration: int, iterations: int) -> Tuple[float, float]:
        total = self.epochs * iterations
        step = epoch * iterations + iteration
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        peak_step = float(self.pct_start * total) - 1
        if step <= peak_step:
            fraction = step / peak_step if peak_step > 0 else 1.0
            return (_cosine_anneal(initial, self.max_lr, fraction),
                    _cosine_anneal(self.momentum_max, self.momentum_min, fraction))
        fraction = (step - peak_step) / (total - 1 - peak_step)
        return (_cosine_anneal(self.max_lr, final, fraction),
                _cosine_anneal(self.momentum_min, self.momentum_max, fraction))
