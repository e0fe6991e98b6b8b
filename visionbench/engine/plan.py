"""The resolved training plan: per epoch, the data settings and step count;
per step, the learning rate and momentum. What ``--print-schedule`` prints
and what the training loop follows, from one definition."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..config import Config, lr_steps
from ..phases import DataSettings, Phases, parse_phases, trndir_folder
from ..schedules import CosineSchedule, OneCycleSchedule, PolySchedule, StepSchedule


def base_data_settings(config: Config) -> DataSettings:
    return DataSettings(image_size=config.image_size, batch_size=config.batch_size, trndir="",
                        min_scale=config.min_random_area, rect_val=config.rect_val)


def data_folder(config: Config, settings: DataSettings) -> Optional[Path]:
    if not config.data_root:
        return None
    return Path(config.data_root) / trndir_folder(settings.trndir)


@dataclass(frozen=True)
class TrainingPlan:
    epochs: int
    schedule: object                  # .at(epoch, iteration, iterations) -> (lr, momentum)
    phases: Optional[Phases]
    defaults: DataSettings
    steps_of: Callable[[DataSettings], int]   # steps per epoch for given data settings
    eval_period: int = 1              # validate every eval_period epochs ...
    eval_offset: int = 0              # ... from this epoch (counted from 0) on, and after the last

    def validates(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (counted from 0) ends with a validation."""
        due = epoch >= self.eval_offset and (epoch - self.eval_offset) % self.eval_period == 0
        return due or epoch + 1 == self.epochs

    def next_validation(self, epoch: int) -> int:
        """The first epoch from ``epoch`` on that validates (MLPerf's block of epochs ends there)."""
        return next(e for e in range(epoch, self.epochs) if self.validates(e))

    def settings(self, epoch: int) -> DataSettings:
        return self.phases.settings(epoch, self.defaults) if self.phases else self.defaults

    def rows(self) -> Iterator[tuple]:
        """(epoch, iteration, lr, momentum, image_size, batch_size) for every step."""
        for epoch in range(self.epochs):
            settings = self.settings(epoch)
            steps = self.steps_of(settings)
            for iteration in range(steps):
                lr, momentum = self.schedule.at(epoch, iteration, steps)
                yield epoch, iteration, lr, momentum, settings.image_size, settings.batch_size


def make_plan(config: Config, devices_total: int, steps_of: Callable[[DataSettings], int]) -> TrainingPlan:
    """``devices_total``: devices over all workers (the global batch is
    batch size x devices_total)."""
    defaults = base_data_settings(config)
    if config.phases:
        phases = parse_phases(config.phases, momentum=config.momentum)
        return TrainingPlan(phases.epochs, phases, phases, defaults, steps_of, config.eval_period, config.eval_offset)
    base_lr = config.lr * config.batch_size * devices_total / 256
    if config.lr_schedule == "step":
        schedule = StepSchedule(base_lr, config.num_epochs, config.warmup_epochs, lr_steps(config),
                                config.lr_factor, config.momentum)
    elif config.lr_schedule == "cosine":
        schedule = CosineSchedule(base_lr, config.num_epochs, config.warmup_epochs, config.momentum)
    elif config.lr_schedule == "poly":
        schedule = PolySchedule(base_lr, config.num_epochs, config.warmup_epochs, config.end_lr, config.lr_power,
                                config.momentum)
    else:
        schedule = OneCycleSchedule(base_lr, config.num_epochs, config.pct_start, config.div_factor,
                                    config.final_div_factor, config.mom_max, config.mom_min)
    return TrainingPlan(config.num_epochs, schedule, None, defaults, steps_of, config.eval_period, config.eval_offset)


def uses_rect_val(config: Config) -> bool:
    """Whether any epoch of the run validates with rectangular batches
    (--rect-val, or a phase turning it on), read from the resolved plan."""
    plan = make_plan(config, 1, steps_of=None)   # settings only: no steps counted
    return any(plan.settings(epoch).rect_val for epoch in range(plan.epochs))


def format_rows(plan: TrainingPlan) -> Iterator[str]:
    yield "epoch,iteration,lr,momentum,image_size,batch_size"
    for epoch, iteration, lr, momentum, size, batch in plan.rows():
        yield f"{epoch},{iteration},{lr:.10g},{momentum:.10g},{size},{batch}"
