"""One training epoch, the same on every engine: the schedule's values per
step, the resume position, the signal check, progress output, images and
(--sample-log) labels counted on the host, and the epoch's figures summed
over the job's workers. What a step does on the framework lives behind
``Stepper`` (engine/trainer.py for MXNet, engines/torch/session.py for
PyTorch)."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Protocol

from ..config import Config


class Stepper(Protocol):
    """A framework's training step, with the epoch's loss sum kept on the
    devices until ``finish`` reads it once."""

    def begin(self, update_batch: int) -> None:
        """Start an epoch whose updates average over ``update_batch`` images."""

    def step(self, batches, lr: float, momentum: float, epoch: int, iteration: int) -> None:
        """Forward, backward, gradient reduction and update of one step
        (``batches``: one DeviceBatch per device), without waiting for it."""

    def loss_so_far(self) -> float:
        """The epoch's loss sum so far (a host read: only for --disp-batches)."""

    def finish(self) -> float:
        """Wait for the epoch's last update; its loss sum. Raises RunFailure
        for a non-finite float32 loss."""

    @property
    def skipped_steps(self) -> int:
        """Steps skipped by dynamic loss scaling since the run started."""


@dataclass
class EpochProgress:
    """How far an epoch got: where to resume it, and its sums so far over
    every worker of the job (the time: rank 0's), so that a resumed epoch
    reports the same figures as an uninterrupted one. Rank 0 saves it in the
    checkpoint and every worker resumes from that one copy: the sums are the
    job's, added once, after the workers' new sums are added up."""
    iteration: int = 0        # steps of the epoch done
    loss_sum: float = 0.0
    images: int = 0
    seconds: float = 0.0
    skipped_records: int = 0  # left out as undecodable (--bad-records skip)

    def to_dict(self) -> dict:
        return {"iteration": self.iteration, "loss_sum": self.loss_sum, "images": self.images,
                "seconds": self.seconds, "skipped_records": self.skipped_records}


class StopAgreement:
    """Whether to stop after this step, the same answer on every worker of a
    job. A signal reaches the workers at slightly different times, and a
    worker that stops one step before another waits forever in that step's
    collectives (gradients, the epoch's sums), as does the other. So after
    each step every worker casts a vote (1: a signal reached it) in a sum
    begun without waiting (group.start_sum), and reads the vote cast ``LAG``
    steps earlier: every worker reads the same sum at the same step. One
    worker alone does as its signal says, at once."""

    LAG = 2   # steps between casting a vote and reading it: by then it has arrived, so reading costs no wait

    def __init__(self, group, stop):
        self.group, self.stop = group, stop
        self.votes = []

    def after_step(self) -> bool:
        if self.stop is None:
            return False
        if _alone(self.group):
            return self.stop.requested is not None
        self.votes.append(self.group.start_sum([_vote(self.stop)]))
        if len(self.votes) <= self.LAG:
            return False
        return _decided(self.stop, self.votes.pop(0).result()[0])


def agree_to_stop(group, stop) -> bool:
    """At an epoch's end (every worker there, after the same step): whether a
    signal reached any worker, waited for. True makes every worker's ``stop``
    requested."""
    if stop is None:
        return False
    if _alone(group):
        return stop.requested is not None
    return _decided(stop, group.sum([_vote(stop)])[0])


def _alone(group) -> bool:
    return group is None or group.size == 1


def _vote(stop) -> float:
    return 1.0 if stop.requested is not None else 0.0


def _decided(stop, signalled_workers: float) -> bool:
    """The job's answer from the sum of its workers' votes; a worker no signal
    reached joins the stop."""
    if signalled_workers > 0:
        stop.join_the_job()
        return True
    return False


def capped_steps(config: Config, steps: int) -> int:
    """Steps of a training epoch of ``steps`` batches: at most -i."""
    return min(steps, config.iterations) if config.iterations else steps


def result_steps(config: Config, loader) -> int:
    """Steps of a training epoch over ``loader``: what the plan counts too."""
    return capped_steps(config, len(loader))


def update_batch_size(config: Config, loader, devices: int, num_workers: int) -> int:
    """Images one update averages over. Gradients arrive summed over every
    device of every worker; Horovod's DistributedTrainer already divides by
    the number of processes."""
    global_batch = loader.spec.batch_size * devices * num_workers
    return global_batch // num_workers if config.kv_store == "horovod" else global_batch


def run_epoch(stepper: Stepper, config: Config, plan, group, epoch: int, loader, progress: bool,
              start: EpochProgress = None, stop=None) -> dict:
    """Train ``epoch`` from ``start.iteration`` on. ``stop.requested`` (set
    by a signal handler) ends the epoch after the current step (in a job:
    after the step every worker agrees on, StopAgreement); the result then
    has ``complete`` False and the ``progress`` to resume from. Either way
    the epoch's sums are added up over the workers (``group.sum``), so every
    worker of a job must end the epoch after the same step."""
    start = start or EpochProgress()
    devices = len(loader.spec.devices)
    num_workers = group.size if group is not None else 1
    steps = result_steps(config, loader)
    stepper.begin(update_batch_size(config, loader, devices, num_workers))
    skipped_before, left_out_before = stepper.skipped_steps, loader.skipped_records
    shown = _Progress(epoch, plan.epochs, steps, start, progress, config.disp_batches)
    received = [] if config.sample_log else None   # labels each device received, step by step
    agreement = StopAgreement(group, stop)
    images, lr, iteration = 0, 0.0, start.iteration   # images: this worker's since ``start``
    started = time.perf_counter()
    for iteration, batches in zip(range(start.iteration, steps), loader.epoch(epoch, start.iteration)):
        lr, momentum = plan.schedule.at(epoch, iteration, steps)
        stepper.step(batches, lr, momentum, epoch, iteration)
        images += sum(int(data.shape[0]) - pad for data, _, pad in batches)
        if received is not None:
            received.append([_labels(label, pad) for _, label, pad in batches])
        shown.after_step(iteration, lr, images, stepper)
        if agreement.after_step():
            iteration += 1
            break
    else:
        iteration = steps
    loss_sum = stepper.finish()   # the epoch's one wait for the devices
    seconds = start.seconds + time.perf_counter() - started
    shown.close()
    # The job's sums since ``start``, then the saved ones: each worker's counted once.
    loss_sum, images, left_out = _job_sums(group, [loss_sum, images, loader.skipped_records - left_out_before])
    loss_sum, images, left_out = start.loss_sum + loss_sum, start.images + images, start.skipped_records + left_out
    fed = {"first_step": start.iteration, "labels_by_step": received} if received is not None else None
    if iteration < steps:
        return {"complete": False, "progress": EpochProgress(iteration, loss_sum, images, seconds, left_out),
                "lr": lr, "fed": fed}
    return {"complete": True, "train_loss": loss_sum / max(images, 1), "train_ips": images / seconds,
            "epoch_train_s": seconds, "lr": lr, "skipped_steps": stepper.skipped_steps - skipped_before,
            "images": images, "iterations": steps, "skipped_records": left_out, "fed": fed}


def _job_sums(group, values: list) -> list:
    """``values`` (loss sum, images, records left out) summed over every worker;
    the counts back to ints (sums of floats up to 2^24 are exact in float32)."""
    if group is None:
        return values
    loss_sum, images, left_out = group.sum(values)
    return [loss_sum, int(round(images)), int(round(left_out))]


def _labels(label, pad: int) -> list:
    """One device's labels of a step, padding excluded (a host read: --sample-log only)."""
    values = label.asnumpy() if hasattr(label, "asnumpy") else label.cpu().numpy()
    return values[:len(values) - pad].astype(int).tolist()


class _Progress:
    """rank 0's tqdm bar (on a terminal only) and --disp-batches lines."""

    def __init__(self, epoch: int, epochs: int, steps: int, start: EpochProgress, shown: bool, disp_batches: int):
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.disp_batches = disp_batches if shown else 0
        self.last = (0.0, 0, time.perf_counter())   # this run's loss sum, images, clock at the last line
        self.bar = None
        if shown:
            from tqdm import tqdm

            self.bar = tqdm(total=steps, initial=start.iteration, desc=f"epoch {epoch}", unit="step",
                            file=sys.stderr, disable=None, leave=False)

    def after_step(self, iteration: int, lr: float, images: int, stepper: Stepper) -> None:
        if self.bar is not None:
            self.bar.update(1)
        if self.disp_batches and (iteration + 1) % self.disp_batches == 0:
            self._line(iteration, lr, images, stepper.loss_so_far())

    def _line(self, iteration: int, lr: float, images: int, loss_sum: float) -> None:
        """One line on this worker's steps since the last line."""
        last_loss, last_images, last_clock = self.last
        now = time.perf_counter()
        new_images = max(images - last_images, 1)
        print(f"epoch {self.epoch + 1}/{self.epochs} batch {iteration + 1}/{self.steps}: loss "
              f"{(loss_sum - last_loss) / new_images:.4f}, lr {lr:.5g}, "
              f"{new_images / max(now - last_clock, 1e-9):.1f} img/s", flush=True)
        self.last = (loss_sum, images, now)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
