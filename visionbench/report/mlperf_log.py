"""MLPerf Training logs (``--mlperf-log FILE``): the ``:::MLLOG`` lines of one
run, written by the mlperf-logging package's ``mllog`` and judged by its
compliance checker (``python -m mlperf_logging.compliance_checker --usage
training --ruleset 4.0.0 FILE``; 4.0.0 is the last ruleset with ResNet-50).

Rank 0 alone writes. Epochs are numbered from 1 in the log, as MLPerf's
rules ask. A run that ends early (a signal, an error, the last epoch without
reaching the target) still closes every interval it opened and ends with
``run_stop`` status ``aborted``; one that reaches the target ends with
``success``.
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import List, Tuple

SUCCESS = "success"
ABORTED = "aborted"
_REPO = Path(__file__).resolve().parents[2]
_loggers = itertools.count()


def resumed_log_path(path: Path) -> Path:
    """Where a resumed run writes its log: FILE with ``.resumeN`` before its
    suffix, N the first number not taken, so that no earlier log is touched."""
    for number in itertools.count(1):
        candidate = path.with_name(f"{path.stem}.resume{number}{path.suffix}")
        if not candidate.exists():
            return candidate


class MlperfLog:
    """The log of one run. Intervals (init, run, block, epoch, eval) are
    tracked as they open, so that :meth:`finish` can close what an early end
    left open, innermost first."""

    writes = True

    def __init__(self, path: Path):
        # The class behind mllog.get_mllogger(), made per run so that no global logger is reconfigured.
        from mlperf_logging.mllog.mllog import MLLogger

        self.path = Path(path)
        self._logger = logging.getLogger(f"visionbench.mlperf.{next(_loggers)}")
        self._logger.propagate = False    # the log file only, never the console
        self._logger.setLevel(logging.INFO)
        # "x": created here, never an existing file (a racing run fails instead of mixing logs).
        self._handler = logging.FileHandler(self.path, mode="x", encoding="utf-8")
        self._logger.addHandler(self._handler)
        # stack offset 2: the line each record names is our caller's, not this module's.
        self._mllog = MLLogger(logger=self._logger, default_stack_offset=2, root_dir=str(_REPO))
        self._open: List[Tuple[str, dict]] = []   # (start key, its metadata), outermost first
        self.run_started = False
        self.finished = False

    def event(self, key: str, value=None, **metadata) -> None:
        self._mllog.event(key=key, value=value, metadata=metadata or None)

    def start(self, key: str, value=None, **metadata) -> None:
        self._mllog.start(key=key, value=value, metadata=metadata or None)
        self._open.append((key, metadata))
        self.run_started |= key == "run_start"

    def stop(self, start_key: str, value=None, **metadata) -> None:
        """End the innermost open interval ``start_key`` (``epoch_start`` ends with ``epoch_stop``)."""
        index = max(i for i, (key, _) in enumerate(self._open) if key == start_key)
        _, opened = self._open.pop(index)
        self._mllog.end(key=_stop_key(start_key), value=value, metadata={**opened, **metadata} or None)

    def finish(self, status: str) -> None:
        """Close every interval still open, then ``run_stop`` with ``status``
        (once; later calls do nothing). A log that never reached
        ``run_start`` (the run failed while starting) is removed: it holds no
        run, and a rerun of the same command must not find it in its way."""
        if self.finished:
            return
        self.finished = True
        try:
            if self.run_started:
                for key, _ in reversed(list(self._open)):
                    if key == "run_start":
                        self.stop(key, status=status)
                    else:
                        self.stop(key)
        finally:
            self._logger.removeHandler(self._handler)
            self._handler.close()
            if not self.run_started:
                self.path.unlink(missing_ok=True)


def _stop_key(start_key: str) -> str:
    return start_key[:-len("start")] + "stop"


def log_run_settings(log: MlperfLog, config, *, global_batch: int, train_samples: int, eval_samples: int,
                     steps_per_epoch: int, base_lr: float, platform: str, cache_cleared: bool) -> None:
    """The submission keys and the hyperparameters under MLPerf's names, as
    its ResNet-50 rules define them (``lars_opt_*`` or ``sgd_opt_*``)."""
    from mlperf_logging.mllog import constants as C

    log.event(C.SUBMISSION_BENCHMARK, C.RESNET)
    log.event(C.SUBMISSION_ORG, config.mlperf_org)
    log.event(C.SUBMISSION_DIVISION, config.mlperf_division)
    log.event(C.SUBMISSION_STATUS, config.mlperf_status)
    log.event(C.SUBMISSION_PLATFORM, platform)
    log.event(C.CACHE_CLEAR, cache_cleared)
    log.event(C.SEED, config.seed)
    log.event(C.GLOBAL_BATCH_SIZE, global_batch)
    log.event(C.GRADIENT_ACCUMULATION_STEPS, 1)
    log.event(C.TRAIN_SAMPLES, train_samples)
    log.event(C.EVAL_SAMPLES, eval_samples)
    # BatchNorm statistics are per device (not synchronised across devices).
    log.event(C.MODEL_BN_SPAN, config.batch_size)
    log.event(C.OPT_NAME, config.optimizer)
    # The poly decay runs over the steps after the warmup (schedules.PolySchedule).
    decay_steps = int(round((config.num_epochs - config.warmup_epochs) * steps_per_epoch))
    if config.optimizer == "lars":
        log.event(C.LARS_OPT_BASE_LEARNING_RATE, base_lr)
        log.event(C.LARS_OPT_END_LR, config.end_lr)
        log.event(C.LARS_OPT_LR_DECAY_POLY_POWER, config.lr_power)
        log.event(C.LARS_OPT_LR_DECAY_STEPS, decay_steps)
        log.event(C.LARS_EPSILON, config.lars_epsilon)
        log.event(C.LARS_OPT_LEARNING_RATE_WARMUP_EPOCHS, config.warmup_epochs)
        log.event(C.LARS_OPT_MOMENTUM, config.momentum)
        log.event(C.LARS_OPT_WEIGHT_DECAY, config.wd)
    else:
        # mllog's constants have no sgd_opt_* names; these are the ResNet-50 rules' own.
        log.event("sgd_opt_base_learning_rate", base_lr)
        log.event("sgd_opt_end_learning_rate", config.end_lr)
        log.event("sgd_opt_learning_rate_decay_poly_power", config.lr_power)
        log.event("sgd_opt_learning_rate_decay_steps", decay_steps)
        log.event("sgd_opt_weight_decay", config.wd)
        log.event("sgd_opt_momentum", config.momentum)
        log.event(C.OPT_LR_WARMUP_EPOCHS, config.warmup_epochs)
    log.event("label_smoothing", config.label_smoothing)
    log.event("eval_offset", config.eval_offset)
    log.event("eval_period", config.eval_period)


class NoLog:
    """What a run without --mlperf-log (or a worker other than rank 0) logs: nothing."""

    writes = False
    run_started = False

    def event(self, key: str, value=None, **metadata) -> None:
        pass

    def start(self, key: str, value=None, **metadata) -> None:
        pass

    def stop(self, start_key: str, value=None, **metadata) -> None:
        pass

    def finish(self, status: str) -> None:
        pass
