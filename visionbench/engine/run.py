"""A whole run: plan, resume, epochs, checkpoints, reports (train.py --mode train|val|train_val)."""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

from ..cli import Interrupted, UsageError
from ..config import Config, model_name, settle_seed, to_dict
from ..phases import DataSettings
from .checkpoint import (checkpoint_engine, checkpoint_paths, complete_epochs, complete_positions, load_meta,
                         load_weights, prune, refuse_foreign_files, remove_leftovers)
from .plan import TrainingPlan, data_folder, format_rows, make_plan
from .epoch import EpochProgress, capped_steps
from .precision import resolve_precision
from .trainer import _loader, build_net, evaluate


def _train_images(config: Config, settings: DataSettings) -> int:
    if config.data_backend == "synthetic":
        return config.num_examples
    from ..data.recordio import read_index_file

    folder = data_folder(config, settings)
    idx = folder / "train.idx"
    if not idx.is_file():
        raise UsageError(f"{idx} does not exist (data phases read DATA_ROOT/sz/<N>/train.*)")
    return len(read_index_file(idx))


def plan_for(config: Config, devices_per_worker: int, num_workers: int = 1) -> TrainingPlan:
    from ..data.loader import steps_per_epoch

    counts: Dict[str, int] = {}

    def steps_of(settings: DataSettings) -> int:
        key = settings.trndir
        if key not in counts:
            counts[key] = _train_images(config, settings)
        steps = steps_per_epoch(config.data_backend, counts[key], settings.batch_size,
                                devices_per_worker, num_workers)
        return capped_steps(config, steps)

    return make_plan(config, devices_per_worker * num_workers, steps_of)


def print_schedule(config: Config, devices_per_worker: int, num_workers: int = 1) -> int:
    plan = plan_for(config, devices_per_worker, num_workers)
    for line in format_rows(plan):
        print(line)
    return 0


def _check_outputs(config: Config, resuming: bool) -> None:
    """A fresh run never overwrites another run's report or checkpoints."""
    if resuming:
        return
    for path in (config.report, config.dawn_tsv, config.mlperf_log):
        if path and Path(path).exists():
            raise UsageError(f"{path} already exists (another run's?); move it or choose another path")
    for path in (config.report, config.dawn_tsv, config.mlperf_log):
        if path and not Path(path).parent.is_dir():
            raise UsageError(f"{path}: folder {Path(path).parent} does not exist")


def _epoch_line(record: dict, epochs: int) -> str:
    val = (f"val top-1 {record['val_top1']:.4f} top-5 {record['val_top5']:.4f} ({record['val_ips']:.0f} img/s)"
           if record["val_top1"] is not None else "no val")
    left_out = (f"; {record['skipped_records']} undecodable records left out"
                if record.get("skipped_records") else "")
    return (f"epoch {record['epoch'] + 1}/{epochs}: loss {record['train_loss']:.4f}, "
            f"{record['train_ips']:.1f} img/s, {record['epoch_train_s']:.1f} s, lr {record['lr']:.5g}, "
            f"size {record['image_size']}, batch {record['batch_size']}; {val}{left_out}")


SAME_STOP_S = 1.0   # s: a second signal this soon after the first is the same stop (Ctrl-C reaches the whole
                    # foreground group, which the launcher then also stops), not a request to stop at once


class StopRequest:
    """Set by SIGTERM, SIGINT or SIGUSR1 (what batch schedulers send before a
    kill): the loop finishes its step, saves its position and exits. A second
    signal exits at once; files are only ever replaced whole, so nothing
    half-written is left."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self):
        self.requested = None
        self._joined = False   # requested by the job (join_the_job), not by a signal to this process
        self._first_at = float("-inf")   # time.monotonic() of the signal that requested the stop
        self._previous = {}

    def join_the_job(self) -> None:
        """Another worker of the job was signalled (epoch.StopAgreement): stop
        with it, as if SIGTERM had come here too (the launcher sends every
        worker the same). A signal that comes after this is the first here."""
        if self.requested is None:
            self.requested, self._joined = signal.SIGTERM, True

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested is not None and time.monotonic() - self._first_at < SAME_STOP_S:
            return   # the same stop reaching this process twice: a group's signal, then the launcher's
        if self.requested is not None and not self._joined:
            raise Interrupted(f"second signal ({name}): stopped at once; the checkpoints on disk are complete "
                              "ones", _exit_status(signum))
        self.requested, self._joined, self._first_at = signum, False, time.monotonic()

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _exit_status(signum: int) -> int:
    return 130 if signum == signal.SIGINT else 143


def check_precision(config: Config) -> None:
    """The engine's precision rules, once --device is resolved."""
    if config.engine == "torch":
        if config.dtype == "float16" and config.device == "cpu":
            raise UsageError("--engine torch --dtype float16 needs GPUs (float16 autocast on CPUs is slow and "
                             "unscaled): on CPUs use --dtype bfloat16 or float32")
        return
    resolve_precision(config.dtype, config.device, config.loss_scale)


def preflight(config: Config) -> None:
    """Everything a training run can refuse before it starts, checked without
    writing anything: precision, the --model-prefix folder, its lock, files
    there that are not checkpoints of ours, whether it resumes, existing
    reports and TSVs, and every RecordIO set the plan reads. Raises the same
    UsageError a run would meet later, so a parameter-server job refuses
    bad input once, in the launcher, before any process starts."""
    from ..files import lock_holder, lock_in_use_message

    check_precision(config)
    if not config.benchmark:
        prefix = Path(config.model_prefix)
        if not prefix.parent.is_dir():
            raise UsageError(f"--model-prefix {prefix}: folder {prefix.parent} does not exist")
        lock = Path(f"{prefix}.lock")
        holder = lock_holder(lock)
        if holder:
            raise UsageError(lock_in_use_message(f"--model-prefix {prefix}", holder, lock))
        refuse_foreign_files(prefix)
        positions = complete_positions(prefix)
        if positions and not config.resume:
            raise UsageError(f"checkpoints exist under {prefix} (epoch {positions[-1][0]}); "
                             "resume with --resume or choose another --model-prefix")
        _check_outputs(config, resuming=bool(positions))
    if config.data_backend != "synthetic":
        from ..data.recordio import RecordReader

        plan = make_plan(config, 1, steps_of=None)
        folders = {data_folder(config, plan.settings(epoch)) for epoch in range(plan.epochs)}
        splits = ("train", "val") if config.mode == "train_val" else ("train",)
        for folder in sorted(folders):
            for split in splits:
                RecordReader(folder / split).close()


def train(config: Config, devices, group=None) -> int:
    """Train on this worker's ``devices``; ``group`` (engine/collective.py) says
    which worker this is and sums metrics over all of them. Rank 0 alone
    prints, writes checkpoints and reports, and holds the lock on
    --model-prefix (PREFIX.lock) so that two runs never write one prefix."""
    from ..files import FolderLock, remove_stale_partials
    from .collective import Single

    group = group or Single()
    prefix = Path(config.model_prefix)
    writes = group.rank == 0 and not config.benchmark
    if group.rank == 0:
        preflight(config)   # (a parameter-server job's launcher ran it too, before starting any process)
    with contextlib.ExitStack() as stack:
        if writes:
            stack.enter_context(FolderLock(Path(f"{prefix}.lock"), f"--model-prefix {prefix}"))
            remove_leftovers(prefix)
            refuse_foreign_files(prefix)   # before anything is written under the prefix
            remove_stale_partials([Path(p) for p in (config.report, config.dawn_tsv) if p])
        stop = stack.enter_context(StopRequest())
        return _train(config, devices, group, stop)


def _resume_position(config: Config, group) -> tuple:
    """(epoch, iteration) to start from: rank 0's newest complete checkpoint,
    the same on every worker (the prefix must be readable by every worker:
    a shared file system, or copies)."""
    prefix = Path(config.model_prefix)
    # A benchmark neither resumes nor writes checkpoints: every point starts cold.
    positions = [] if config.benchmark else complete_positions(prefix)
    latest = positions[-1] if positions else (0, 0)
    position = (group.broadcast_int(latest[0]), group.broadcast_int(latest[1]))
    if position != (0, 0) and position not in positions:
        raise UsageError(f"worker {group.rank}: rank 0 resumes from {prefix}-{position[0]:04d}, which this "
                         "machine cannot read (put --model-prefix on a shared file system or copy it to every machine)")
    if position != (0, 0) and not config.resume:
        raise UsageError(f"checkpoints exist under {prefix} (epoch {position[0]}); "
                         "resume with --resume or choose another --model-prefix")
    return position


def _train(config: Config, devices, group, stop: StopRequest) -> int:
    from ..report.mlperf_log import ABORTED

    rank, num_workers = group.rank, group.size
    say = print if rank == 0 else (lambda *args, **kwargs: None)
    plan = plan_for(config, len(devices), num_workers)
    prefix = Path(config.model_prefix)
    start_epoch, start_iteration = _resume_position(config, group)
    resuming = bool(start_epoch or start_iteration)
    if rank == 0:
        _check_outputs(config, resuming)
    meta = None
    if resuming:
        meta = load_meta(prefix, start_epoch, start_iteration)
        name = checkpoint_paths(prefix, start_epoch, start_iteration)["meta"].with_suffix("")
        if meta.get("model") != model_name(config) or meta.get("classes") != config.num_classes:
            raise UsageError(f"checkpoint {name} holds {meta.get('model')} with "
                             f"{meta.get('classes')} classes, not {model_name(config)} with {config.num_classes}")
        if checkpoint_engine(meta) != config.engine:
            raise UsageError(f"checkpoint {name} was written by the {checkpoint_engine(meta)} engine: resume it "
                             f"with --engine {checkpoint_engine(meta)} (python -m visionbench.models.convert "
                             "converts its weights for the other engine)")
        if meta.get("dtype", config.dtype) != config.dtype:
            # float16 and float32 runs keep different optimizer states (master weights)
            raise UsageError(f"checkpoint {name} was trained in {meta['dtype']}: resume it with --dtype "
                             f"{meta['dtype']}, or score it with --mode val")
        say(f"resuming from {name} (epoch {start_epoch} of {plan.epochs} done"
            f"{f', and {start_iteration} steps of the next' if start_iteration else ''})", flush=True)
    # A drawn seed (MLPerf closed, no --seed): rank 0's on every worker, or the checkpoint's when resuming.
    config, seed_line = settle_seed(config, group.broadcast_int, meta, str(name) if resuming else "")
    if seed_line:
        say(seed_line, flush=True)
    reached = _target_reached(config, meta["epochs"] if meta else [])
    if reached is not None or start_epoch >= plan.epochs:
        say(f"{prefix}: " + (f"--target-top1 {config.target_top1} was reached at epoch {reached['epoch'] + 1} "
                             f"(val top-1 {reached['val_top1']:.4f})" if reached is not None
                             else f"all {plan.epochs} epochs are done") + "; nothing to train", flush=True)
        return 0
    mlperf = _open_mlperf_log(config, rank, resuming)
    try:
        status = _train_run(config, devices, group, stop, plan, start_epoch, start_iteration, meta, mlperf)
    finally:
        # An early end (a signal, an error) closes what it left open: "aborted".
        mlperf.finish(ABORTED)
    return status


def _target_reached(config: Config, records: List[dict]):
    """The first epoch record whose val top-1 reached --target-top1, or None."""
    if config.target_top1 is None:
        return None
    return next((r for r in records if r["val_top1"] is not None and r["val_top1"] >= config.target_top1), None)


def _open_mlperf_log(config: Config, rank: int, resuming: bool):
    """Rank 0's MLPerf log, its init interval started; a resumed run writes a
    file of its own (FILE.resumeN), never into an earlier run's log."""
    from ..report.mlperf_log import MlperfLog, NoLog, resumed_log_path

    if rank != 0 or not config.mlperf_log:
        return NoLog()
    path = Path(config.mlperf_log)
    if resuming:
        path = resumed_log_path(path)
        print(f"MLPerf log of this resumed run: {path} (MLPerf times a run from initialization to the "
              "target in one go: a resumed run is not a valid MLPerf result)", flush=True)
    try:
        log = MlperfLog(path)
    except FileExistsError:
        raise UsageError(f"{path} already exists (another run's?); move it or choose another --mlperf-log")
    except OSError as err:
        raise UsageError(f"--mlperf-log {path} cannot be written ({err.strerror})")
    log.start("init_start")
    return log


def _data_files(config: Config, plan: TrainingPlan) -> List[Path]:
    folders = {data_folder(config, plan.settings(epoch)) for epoch in range(plan.epochs)}
    return [folder / f"{split}.{kind}" for folder in sorted(folders) for split in ("train", "val")
            for kind in ("rec", "idx")]


def _start_mlperf_run(config: Config, mlperf, plan: TrainingPlan, devices_total: int) -> None:
    """Clear the data files from the page cache (on every worker: each
    machine has its own), log the run's settings, end init, start the run."""
    from ..data.recordio import read_index_file
    from ..files import drop_from_page_cache
    from ..report.mlperf_log import log_run_settings
    from .devices import platform_name

    if not config.mlperf_log:
        return
    settings = plan.settings(0)
    folder = data_folder(config, settings)
    samples = {split: len(read_index_file(folder / f"{split}.idx")) for split in ("train", "val")}
    cleared = drop_from_page_cache(_data_files(config, plan))   # after the last read before run_start
    if not mlperf.writes:
        return   # a worker other than rank 0
    global_batch = settings.batch_size * devices_total
    log_run_settings(mlperf, config, global_batch=global_batch, train_samples=samples["train"],
                     eval_samples=samples["val"], steps_per_epoch=plan.steps_of(settings),
                     base_lr=config.lr * global_batch / 256,
                     platform=config.mlperf_platform or platform_name(config.device, devices_total, config.nnodes),
                     cache_cleared=cleared)
    mlperf.stop("init_start")
    mlperf.start("run_start")


class _RunRecords:
    """The epoch records of a run (a resumed run's start with its
    checkpoint's), the best validation so far, training time, and the
    epochs timed by --benchmark."""

    def __init__(self, records: List[dict]):
        self.records = records
        self.elapsed = records[-1]["elapsed_s"] if records else 0.0
        self.best = max((r for r in records if r["val_top1"] is not None), key=lambda r: r["val_top1"], default=None)
        self.timed = {"images": 0, "seconds": 0.0, "iterations": 0}   # epochs after the benchmark warm-up

    def add_training(self, config: Config, epoch: int, result: dict) -> None:
        self.elapsed += result["epoch_train_s"]
        if epoch >= config.benchmark_warmup_epochs:
            self.timed["images"] += result["images"]
            self.timed["seconds"] += result["epoch_train_s"]
            self.timed["iterations"] += result["iterations"]

    def add(self, record: dict) -> None:
        self.records.append(record)
        if record["val_top1"] is not None and (self.best is None or record["val_top1"] > self.best["val_top1"]):
            self.best = record


class _Run:
    """What one training run holds between epochs: its session (the
    engine's model, optimizer and step), records, reports and MLPerf log."""

    def __init__(self, config: Config, devices, group, stop: StopRequest, plan: TrainingPlan, meta, mlperf):
        from ..engines import open_session

        self.config, self.devices, self.group, self.stop, self.plan, self.mlperf = (
            config, devices, group, stop, plan, mlperf)
        self.prefix = Path(config.model_prefix)
        self.say = print if group.rank == 0 else (lambda *args, **kwargs: None)
        self.session = open_session(config, devices, group, plan)
        self.history = _RunRecords(meta["epochs"] if meta else [])
        self.loaders: Dict = {}
        self.config_record = to_dict(config)
        self.started = time.time()
        self.env = None

    def meta_of(self, epoch: int, **extra) -> dict:
        config = self.config
        return {"epoch": epoch, "engine": config.engine, "model": model_name(config), "classes": config.num_classes,
                "layout": config.input_layout, "dtype": config.dtype, "seed": config.seed,
                **self.session.checkpoint_meta(), "epochs": self.history.records, "config": self.config_record,
                **extra}

    def write_reports(self, status: str) -> None:
        from ..files import write_text_atomic
        from ..report.train_report import build_report, dawn_tsv, environment, summarize, write_report

        config, records = self.config, self.history.records
        if self.group.rank != 0:
            return
        if self.env is None:
            self.env = environment(config.device, len(self.devices) * self.group.size, config.engine)
        summary = summarize(records, self.started, config.target_top1, config.target_top5)
        if config.report:
            write_report(Path(config.report), build_report(self.config_record, self.env, records, summary, status))
        if config.dawn_tsv:
            write_text_atomic(Path(config.dawn_tsv), "epoch\thours\ttop1Accuracy\ttop5Accuracy\n" + dawn_tsv(records))

    def job_saves(self) -> bool:
        return bool(self.config.save_frequency) and not self.config.benchmark

    def saves(self) -> bool:
        """This process writes the job's checkpoints: rank 0 of a job that saves."""
        return self.group.rank == 0 and self.job_saves()

    def loader(self, split: str, settings: DataSettings):
        return _loader(self.config, split, settings, self.devices, self.group.rank, self.group.size, self.loaders)


def _train_run(config: Config, devices, group, stop: StopRequest, plan: TrainingPlan, start_epoch: int,
               start_iteration: int, meta, mlperf) -> int:
    run = _Run(config, devices, group, stop, plan, meta, mlperf)
    run.session.start(run.prefix, (start_epoch, start_iteration), meta)
    progress = EpochProgress(**meta["progress"]) if meta is not None and start_iteration else EpochProgress()
    _start_mlperf_run(config, mlperf, plan, len(devices) * group.size)
    for epoch in range(start_epoch, plan.epochs):
        record = _train_and_validate(run, epoch, progress if epoch == start_epoch else None,
                                     first=epoch == start_epoch)
        if _after_epoch(run, epoch, record):
            break
    if group.rank == 0:
        from ..report.tables import epoch_table
        print(epoch_table(run.history.records), flush=True)
    if config.benchmark and group.rank == 0:
        _print_benchmark_result(config, run.history.timed, len(devices) * group.size)
    return 0


def _train_and_validate(run: _Run, epoch: int, start: Optional[EpochProgress], first: bool) -> dict:
    """Epoch ``epoch``'s training (from ``start`` on) and, when the plan
    says so, its validation: the epoch's record. A signal during training
    saves the position and raises Interrupted."""
    from .epoch import run_epoch

    config, plan, mlperf = run.config, run.plan, run.mlperf
    settings = plan.settings(epoch)
    validate = config.mode == "train_val"
    if first or (validate and plan.validates(epoch - 1)):
        # MLPerf's block: the epochs up to the next validation.
        block_end = plan.next_validation(epoch) if validate else plan.epochs - 1
        mlperf.start("block_start", first_epoch_num=epoch + 1, epoch_count=block_end - epoch + 1)
    mlperf.start("epoch_start", epoch_num=epoch + 1)
    train_loader = run.loader("train", settings)
    result = run_epoch(run.session.stepper, config, plan, run.group, epoch, train_loader,
                       progress=run.group.rank == 0, start=start, stop=run.stop)
    if result["fed"] is not None:
        _log_samples(Path(config.sample_log), run.group.rank, epoch, train_loader, result["fed"])
    if not result["complete"]:
        _stop_inside_epoch(run, epoch, result["progress"])
    mlperf.stop("epoch_start")
    run.history.add_training(config, epoch, result)
    record = {"epoch": epoch, "elapsed_s": run.history.elapsed, "epoch_train_s": result["epoch_train_s"],
              "val_s": None, "train_loss": result["train_loss"], "train_ips": result["train_ips"],
              "val_top1": None, "val_top5": None, "val_ips": None, "lr": result["lr"],
              "image_size": settings.image_size, "batch_size": settings.batch_size,
              "skipped_steps": result["skipped_steps"], "train_images": result["images"], "val_images": None,
              "skipped_records": result["skipped_records"]}
    if validate and plan.validates(epoch):
        _validate(run, epoch, settings, record)
    return record


def _validate(run: _Run, epoch: int, settings: DataSettings, record: dict) -> None:
    """Score the val set into ``record``; MLPerf's eval interval and accuracy."""
    from ..report.mlperf_log import SUCCESS

    mlperf = run.mlperf
    mlperf.stop("block_start")
    mlperf.start("eval_start", epoch_num=epoch + 1)
    scores = run.session.evaluate(run.loader("val", settings), epoch)
    mlperf.stop("eval_start")
    mlperf.event("eval_accuracy", scores["val_top1"], epoch_num=epoch + 1)
    if _target_reached(run.config, [scores]) is not None:
        mlperf.finish(SUCCESS)   # the timed run ends here: the checkpoint and reports below are not in it
    record.update({k: scores[k] for k in ("val_top1", "val_top5", "val_ips", "val_s", "val_images")})
    record["skipped_records"] += scores["skipped_records"]


def _stop_inside_epoch(run: _Run, epoch: int, done: EpochProgress) -> None:
    """A signal stopped the epoch after ``done.iteration`` steps: save that
    position (rank 0), write the reports, and raise Interrupted."""
    stop, prefix = run.stop, run.prefix
    saved = "nothing saved (--save-frequency 0)"
    if run.saves():
        run.session.save(prefix, epoch, run.meta_of(epoch, iteration=done.iteration, progress=done.to_dict()),
                         done.iteration)
    if run.job_saves():   # every worker says what rank 0 saved: they all stopped after this step
        saved = f"saved {checkpoint_paths(prefix, epoch, done.iteration)['meta'].with_suffix('')}"
    run.write_reports("interrupted")
    raise Interrupted(f"stopped by {signal.Signals(stop.requested).name} at epoch {epoch + 1}, iteration "
                      f"{done.iteration}: {saved}; run the same command again to resume",
                      _exit_status(stop.requested))


def _after_epoch(run: _Run, epoch: int, record: dict) -> bool:
    """Record the epoch, checkpoint it, write the reports; True when the run
    ends here (the target reached). A signal that came during the epoch's
    last step or its validation keeps the epoch, then raises Interrupted."""
    from .epoch import agree_to_stop

    config, stop, history = run.config, run.stop, run.history
    # Decided once, the same on every worker of a job; a signal that comes after this is voted on in the
    # next epoch's first steps (re-reading stop.requested below could split the workers).
    stopping = agree_to_stop(run.group, stop)
    history.add(record)
    run.say(_epoch_line(record, run.plan.epochs), flush=True)
    reached = _target_reached(config, [record])
    last = epoch + 1 == run.plan.epochs or reached is not None
    if run.saves() and ((epoch + 1) % config.save_frequency == 0 or last or stopping):
        run.session.save(run.prefix, epoch + 1, run.meta_of(epoch + 1))
        prune(run.prefix, config.keep_checkpoints, history.best["epoch"] + 1 if history.best else None)
    run.write_reports("complete" if last else ("interrupted" if stopping else "running"))
    if reached is not None:
        run.say(f"val top-1 {record['val_top1']:.4f} reached --target-top1 {config.target_top1} at epoch "
                f"{epoch + 1}: stopping ({history.elapsed:.1f} s of training)", flush=True)
        return True
    if stopping and not last:
        raise Interrupted(f"stopped by {signal.Signals(stop.requested).name} after epoch {epoch + 1}: "
                          "run the same command again to resume", _exit_status(stop.requested))
    return False


def _print_benchmark_result(config: Config, timed: dict, devices_total: int) -> None:
    from ..bench.timing import result_line

    ips = timed["images"] / timed["seconds"]
    print(f"benchmark: {ips:.1f} img/s over {timed['images']} images in {timed['iterations']} steps "
          f"({timed['seconds']:.2f} s; data loading, forward, backward, gradient reduction and update; "
          f"first {config.benchmark_warmup_epochs} epoch(s) not timed)", flush=True)
    print(result_line({"mode": "train", "ips": ips, "timed_images": timed["images"],
                       "timed_s": timed["seconds"], "timed_iterations": timed["iterations"],
                       "devices": devices_total, "latency_ms": None}), flush=True)


def _log_samples(folder: Path, rank: int, epoch: int, loader, fed: dict) -> None:
    """--sample-log: per step, the dataset positions this worker's devices
    were fed (the sampler's plan, padding excluded) and the labels they
    received, as one JSON file per worker, epoch and starting step."""
    import json

    from ..files import write_text_atomic

    first = fed["first_step"]
    labels = fed["labels_by_step"]
    plans = loader.plans(epoch)
    positions = [[int(p) for plan in plans for p in plan.positions[step][:len(plan.positions[step]) - int(plan.pads[step])]]
                 for step in range(first, first + len(labels))]
    received = [[label for device in step for label in device] for step in labels]
    name = f"rank-{rank}-epoch-{epoch}" + (f"-from-{first:06d}" if first else "") + ".json"
    write_text_atomic(folder / name, json.dumps({
        "rank": rank, "epoch": epoch, "first_step": first, "positions_by_step": positions,
        "labels_by_step": received, "positions": [p for step in positions for p in step],
        "labels": [label for step in received for label in step]}) + "\n")


def _checkpoint_to_score(config: Config) -> int:
    """The epoch --mode val scores (--load-epoch, or the newest), checked
    against the model and engine asked for."""
    prefix = Path(config.model_prefix)
    done = complete_epochs(prefix)
    epoch = config.load_epoch if config.load_epoch is not None else (done[-1] if done else None)
    if epoch is None or epoch not in done:
        raise UsageError(f"no complete checkpoint {prefix}-{(epoch or 0):04d} (found: {done or 'none'})")
    meta = load_meta(prefix, epoch)
    if meta.get("model") != model_name(config) or meta.get("classes") != config.num_classes:
        raise UsageError(f"checkpoint {prefix}-{epoch:04d} holds {meta.get('model')} with {meta.get('classes')} "
                         f"classes, not {model_name(config)} with {config.num_classes} (set --arch/--num-layers/--num-classes)")
    if checkpoint_engine(meta) != config.engine:
        raise UsageError(f"checkpoint {prefix}-{epoch:04d} was written by the {checkpoint_engine(meta)} engine: "
                         f"score it with --engine {checkpoint_engine(meta)}, or convert its weights with "
                         "python -m visionbench.models.convert")
    return epoch


def score(config: Config, devices) -> int:
    """--mode val: top-1/top-5 and img/s of a checkpoint on the val set."""
    from .plan import base_data_settings

    prefix = Path(config.model_prefix)
    epoch = _checkpoint_to_score(config)
    settings = base_data_settings(config)
    loader = _loader(config, "val", settings, devices, 0, 1, {})
    name = f"{prefix}-{epoch:04d}"
    if config.engine == "torch":
        from ..engines.torch.session import score_checkpoint
        print(f"{name}: {_scores_text(score_checkpoint(config, devices, prefix, epoch, loader))}", flush=True)
        return 0
    precision = resolve_precision(config.dtype, config.device, config.loss_scale)
    net = build_net(config, devices, precision)
    load_weights(net, prefix, epoch, devices, cast=True)   # a float16 GPU checkpoint scores on a CPU too
    scores = evaluate(net, loader)
    if config.dtype != "int8":
        print(f"{name}: {_scores_text(scores)}", flush=True)
        return 0
    from dataclasses import replace

    from .quantize import int8_net

    print(f"{name} float32: {_scores_text(scores)}", flush=True)
    # Calibration batches are square center crops, even when val batches are rectangular.
    square = replace(settings, rect_val=False)
    calib_loader = loader if not settings.rect_val else _loader(replace(config, rect_val=False), "val", square,
                                                                 devices, 0, 1, {})
    qnet, calibration = int8_net(net, calib_loader, config, devices, checkpoint_paths(prefix, epoch)["params"])
    quantized = evaluate(qnet, loader)
    print(f"{name} int8 ({calibration.describe()}): {_scores_text(quantized)}; top-1 "
          f"{quantized['val_top1'] - scores['val_top1']:+.4f} and top-5 {quantized['val_top5'] - scores['val_top5']:+.4f} "
          "against float32", flush=True)
    return 0


def _scores_text(scores: dict) -> str:
    return (f"val top-1 {scores['val_top1']:.4f} top-5 {scores['val_top5']:.4f} over {scores['val_images']} images, "
            f"{scores['val_ips']:.1f} img/s")
