"""The torch engine across processes (--engine torch --kv-store dist_sync
--local-workers 2: torch.distributed's DDP over gloo on 127.0.0.1, started
by engine/launch.py): two workers take the same steps as one process on the
same global batch, only rank 0 writes, a worker's own bad input ends the
job with its one line, and a worker killed from outside ends the job
without leaving a process."""
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, finish_group, one_line_error, processes_in_group, runner_env, write_palette_sets

HALF = 8            # images per worker per step: the global batch is 16
EXAMPLES = 64       # synthetic images an epoch: 4 steps of 2 x 8
EPOCHS = 2
THREADS = 1         # torch's threads in each worker and in the reference: oneDNN's sums split by them


def _args(prefix, *extra):
    # ResNet18 (with BatchNorm) at 16 px on synthetic data: a fraction of a second a step.
    return ["--engine", "torch", "--device", "cpu", "-n", "1", "-b", str(HALF), "--data-backend", "synthetic",
            "--num-examples", str(EXAMPLES), "--image-size", "16", "--num-layers", "18", "--num-classes", "10",
            "--lr", "0.4", "--warmup-epochs", "0", "--lr-schedule", "cosine", "--mode", "train",
            "--model-prefix", str(prefix), "--seed", "7", "--kv-store", "dist_sync", "--local-workers", "2",
            *map(str, extra)]


def _local_worker(pid):
    """The launcher's index of worker ``pid`` (VISIONBENCH_LOCAL_WORKER in its environment)."""
    try:
        variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:   # ended since pgrep saw it
        return None
    return next((v.split(b"=", 1)[1].decode() for v in variables if v.startswith(b"VISIONBENCH_LOCAL_WORKER=")), None)


def _start(args):
    """./runner in its own process group (so that every process it started can be found)."""
    return subprocess.Popen(["bash", str(ROOT / "runner"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=dict(runner_env(), OMP_NUM_THREADS=str(THREADS)))


def _reference(prefix):
    """The same epochs in this process: the real loaders of rank 0 and
    rank 1, the torch engine's own session and stepper with a Single group
    (no DDP, rescale 1/16), and each step fed the global batch of 16. One
    process sees the whole batch, so each half goes through the model on its
    own: BatchNorm normalises over 8 images, as on each worker (and as
    MXNet's one worker with two devices does). The BatchNorm running
    statistics follow rank 0's: the second half updates copies, since a
    job's checkpoint holds rank 0's. Returns (state_dict, optimizer state,
    loss per epoch)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _reference_steps(prefix)
    finally:
        torch.set_num_threads(threads)


def _reference_steps(prefix):
    from visionbench.config import resolve
    from visionbench.engine.collective import Single
    from visionbench.engine.run import plan_for
    from visionbench.engine.trainer import _loader
    from visionbench.engines.torch.session import TorchSession

    config = resolve(_args(prefix, "-e", EPOCHS))
    plan = plan_for(config, 1, 2)
    devices = [torch.device("cpu")]
    loaders = [_loader(config, "train", plan.settings(0), devices, rank, 2, {}) for rank in (0, 1)]
    session = TorchSession(config, devices, Single(), plan)
    model = session.model
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    names = ("running_mean", "running_var", "num_batches_tracked")

    def forward_each_half(data):
        first = model(data[:HALF])
        rank0 = [[getattr(m, name) for name in names] for m in norms]
        for norm in norms:   # the second half updates copies (the first half's backward needs the originals)
            for name in names:
                setattr(norm, name, getattr(norm, name).clone())
        second = model(data[HALF:])
        for norm, kept in zip(norms, rank0):
            for name, buffer in zip(names, kept):
                setattr(norm, name, buffer)
        return torch.cat([first, second])

    session.forward = forward_each_half
    session.start(prefix, (0, 0), None)
    losses = []
    for epoch in range(EPOCHS):
        steps = plan.steps_of(plan.settings(epoch))
        session.stepper.begin(2 * HALF)
        halves = zip(loaders[0].epoch(epoch), loaders[1].epoch(epoch))
        for iteration, (((d0, l0, p0),), ((d1, l1, p1),)) in zip(range(steps), halves):
            assert p0 == p1 == 0
            lr, momentum = plan.schedule.at(epoch, iteration, steps)
            session.stepper.step([(torch.cat([d0, d1]), torch.cat([l0, l1]), 0)], lr, momentum, epoch, iteration)
        losses.append(session.stepper.finish() / EXAMPLES)
    return model.state_dict(), session.optimizer.state_dict()["state"], losses


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchdist")
    (root / "job").mkdir()
    started = time.monotonic()
    result, left = finish_group(_start(_args(root / "job" / "m", "-e", EPOCHS, "--report", root / "report.json")))
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    return {"root": root, "result": result, "left": left, "seconds": seconds}


def test_two_workers_take_the_same_steps_as_one_process_on_the_global_batch(job):
    root = job["root"]
    out = job["result"].stdout
    assert out.count(f"epoch {EPOCHS}/{EPOCHS}:") == 1 and "started 2 worker(s) on node 0" in out   # rank 0 speaks
    assert job["left"] == []
    # Only rank 0 writes: one checkpoint per epoch, in the torch engine's files.
    assert sorted(p.name for p in (root / "job").iterdir()) == [
        f"m-{e:04d}{suffix}" for e in range(1, EPOCHS + 1) for suffix in (".json", ".pt", ".train.pt")]
    (root / "reference").mkdir()
    weights, optimizer_state, losses = _reference(root / "reference" / "m")
    saved = torch.load(root / "job" / f"m-{EPOCHS:04d}.pt", weights_only=True)
    state = torch.load(root / "job" / f"m-{EPOCHS:04d}.train.pt", weights_only=True)["optimizer"]["state"]
    assert saved.keys() == weights.keys() and len(saved) > 100
    # Bit for bit, BatchNorm statistics included: each worker's backward runs the same kernels
    # on the same 8 images as the reference's half (same thread count); DDP halves the sum of
    # the two gradients and the stepper's rescale of 2/16 doubles the 1/16 it then multiplies
    # by, both exact in float32; gloo adds two operands (in either order, the same float).
    # A missing or doubled rescale, one worker's data dropped, rank 1 starting from other
    # weights, or rank 1's statistics in the checkpoint all show as differences.
    for name, tensor in weights.items():
        assert torch.equal(saved[name], tensor), name
    assert state.keys() == optimizer_state.keys() and len(state) > 50
    for index, entry in optimizer_state.items():   # the momentum (MXNet's mom), every parameter
        assert torch.equal(state[index]["mom"], entry["mom"]), index
    # The report's loss and image count sum both workers (TorchGroup.sum).
    report = json.loads((root / "report.json").read_text())
    assert [e["train_images"] for e in report["epochs"]] == [EXAMPLES] * EPOCHS
    # (The job adds two float32 sums in float64; the reference one float32 sum: rounding apart.)
    torch.testing.assert_close([e["train_loss"] for e in report["epochs"]], losses, rtol=1e-6, atol=0)


def test_a_workers_own_usage_error_ends_the_job_with_its_line(tmp_path):
    # 80 train images in 2 worker shards of 40, fewer than a batch of 64: only the workers'
    # loaders can tell (the launcher's checks pass), and both refuse.
    data = write_palette_sets(tmp_path / "palette", 80, 20)
    (tmp_path / "out").mkdir()
    args = [a for a in _args(tmp_path / "out" / "m", "-e", 1) if a not in ("--data-backend", "synthetic")]
    result, left = finish_group(_start([*args, "-b", "64", "--data-root", str(data), "--data-backend", "dali-cpu"]))
    assert result.returncode == 2, result.stderr
    line = one_line_error(result)
    assert line.startswith("train.py: error: ") and "fewer than the batch size 64" in line, line
    assert "started 2 worker(s)" in result.stdout   # found by the workers, not the launcher
    assert left == []
    assert list((tmp_path / "out").iterdir()) == []


def test_a_signal_to_one_worker_stops_every_worker_after_the_same_step_and_the_job_resumes(tmp_path):
    """SIGTERM to worker 1 only: both workers agree on a step (their votes
    summed over gloo), rank 0 saves it, the job ends 143 with its line, and
    the same command resumes and finishes; no process is left."""
    args = _args(tmp_path / "m", "-e", 3, "--disp-batches", 1)
    job = _start(args)
    try:
        assert "started 2 worker(s)" in job.stdout.readline()
        line = job.stdout.readline()   # rank 0's first step line: both workers are training
        assert line.startswith("epoch 1/3 batch 1/"), line
        workers = {_local_worker(pid): pid for pid in processes_in_group(job.pid) if pid != job.pid}
        os.kill(workers["1"], signal.SIGTERM)
        result, left = finish_group(job, timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert result.returncode == 143, result.stderr
    assert re.fullmatch(r"train\.py: stopped by SIGTERM (at epoch \d, iteration \d: saved \S+; |after epoch \d: )"
                        r"run the same command again to resume", one_line_error(result)), result.stderr
    assert left == []
    resumed, left = finish_group(_start(args))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and list(tmp_path.glob("m-0003*")) and left == []


def test_killing_one_worker_ends_the_job_and_leaves_no_process(tmp_path):
    job = _start(_args(tmp_path / "m", "-e", 100, "--disp-batches", 1))
    try:
        assert "started 2 worker(s)" in job.stdout.readline()
        line = job.stdout.readline()   # rank 0's first step line: both workers are training
        assert line.startswith("epoch 1/100 batch 1/"), line
        workers = {_local_worker(pid): pid for pid in processes_in_group(job.pid) if pid != job.pid}
        workers.pop(None, None)
        assert sorted(workers) == ["0", "1"], workers   # (./runner execs the launcher: job.pid)
        os.kill(workers["1"], signal.SIGKILL)
        killed_at = time.monotonic()
        result, left = finish_group(job, timeout=60)
        assert time.monotonic() - killed_at < 20   # promptly, not after a gloo timeout
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert result.returncode != 0
    message = one_line_error(result)
    # The killed worker is named, not its peer's connection error that followed.
    assert "worker 1 of 2 on this node failed (killed by SIGKILL" in message, message
    assert "every other process of the job was stopped" in message
    assert left == []


@pytest.mark.parametrize("flags, words", [
    (["-n", "2"], "-n 2: the torch engine trains on one device per process (-n 1); for 2 devices start 2 "
                  "processes: -n 1 --kv-store dist_sync --local-workers 2"),
    (["-n", "1", "--kv-store", "dist_sync", "--num-servers", "2"], "--num-servers starts MXNet's parameter servers"),
    (["-n", "1", "--kv-store", "horovod"], "--kv-store horovod is MXNet's Horovod"),
    (["-n", "1", "--local-workers", "2"], "start torch.distributed jobs: add --kv-store dist_sync"),
])
def test_what_a_torch_job_cannot_run_is_refused_with_one_line(flags, words):
    from visionbench.cli import UsageError
    from visionbench.config import resolve

    with pytest.raises(UsageError, match=re.escape(words)):
        resolve(["--engine", "torch", "--device", "cpu", "--data-backend", "synthetic", *flags])


def test_each_torch_worker_gets_its_rank_and_its_own_gpu():
    # What torch.distributed's env:// reads, for node 1 of 2 with 2 workers each, and the one GPU
    # each worker sees (computed from CUDA_VISIBLE_DEVICES: no GPU needed). GPU-ONLY: NCCL itself.
    from visionbench.config import Config
    from visionbench.engine.launch import worker_environments

    config = Config(engine="torch", device="gpu", kv_store="dist_sync", local_workers=2, nnodes=2, node_rank=1,
                    master_addr="10.0.0.1")
    envs = worker_environments(config, 9100, environ={"CUDA_VISIBLE_DEVICES": "3,2"})
    names = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "CUDA_VISIBLE_DEVICES", "DMLC_ROLE")
    assert [{name: env.get(name) for name in names} for env in envs] == [
        {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "9100", "RANK": str(2 + i), "WORLD_SIZE": "4",
         "LOCAL_RANK": str(i), "CUDA_VISIBLE_DEVICES": gpu, "DMLC_ROLE": None} for i, gpu in enumerate(("3", "2"))]


class _ThreadGroup:
    """The workers of a job as threads of this process, with the one
    collective run_epoch uses (a sum over the workers): every worker adds the
    same lists in the same order, so all get the same floats."""

    def __init__(self, rank, size, slots, barrier):
        self.rank, self.size, self._slots, self._barrier = rank, size, slots, barrier

    def sum(self, values):
        self._slots[self.rank] = [float(v) for v in values]
        self._barrier.wait()
        total = [sum(column) for column in zip(*self._slots)]
        self._barrier.wait()   # every worker has read before the next sum writes
        return total

    def start_sum(self, values):
        from visionbench.engine.collective import Done

        return Done(self.sum(values))


class _StopDuringStep:
    """A SIGTERM that lands during step ``step`` (from 1) of an epoch: run_epoch reads
    ``requested`` once after each step."""

    def __init__(self, step):
        self._reads_left = step

    @property
    def requested(self):
        self._reads_left -= 1
        return signal.SIGTERM if self._reads_left <= 0 else None

    def join_the_job(self):
        pass   # (both workers' signals land in the same step here)


def _epoch_on_two_workers(workers, plan, epoch, start=None, stop_step=None):
    """run_epoch on each worker (a thread each, as a job's processes): each worker's result."""
    import threading

    from visionbench.engine.epoch import run_epoch

    slots, barrier = [None] * len(workers), threading.Barrier(len(workers))
    results = [None] * len(workers)

    def work(rank):
        torch.set_num_threads(THREADS)   # per thread: OpenMP's thread count is each thread's own setting
        session, loader = workers[rank]
        stop = _StopDuringStep(stop_step) if stop_step else None
        results[rank] = run_epoch(session.stepper, session.config, plan, _ThreadGroup(rank, 2, slots, barrier),
                                  epoch, loader, progress=False, start=start, stop=stop)

    threads = [threading.Thread(target=work, args=(rank,)) for rank in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(result is not None for result in results), "a worker failed (its traceback is above)"
    return results


def test_a_resumed_epoch_counts_each_workers_images_and_loss_once(tmp_path):
    """A 2-worker job stopped mid-epoch and resumed reports the epoch's loss and
    images as an uninterrupted job: rank 0's checkpoint holds the position and
    the epoch's sums so far, and every worker resumes from that checkpoint."""
    from visionbench.config import resolve
    from visionbench.engine.collective import Single
    from visionbench.engine.epoch import EpochProgress, StopAgreement
    from visionbench.engine.run import plan_for
    from visionbench.engine.trainer import _loader
    from visionbench.engines.torch.session import TorchSession

    config = resolve(_args(tmp_path / "m", "-e", 1))
    plan = plan_for(config, 1, 2)
    devices = [torch.device("cpu")]

    def two_workers():
        # Each worker's own model, same seed (no DDP: the sums over workers are what is tested); rank r's shard.
        return [(TorchSession(config, devices, Single(), plan),
                 _loader(config, "train", plan.settings(0), devices, rank, 2, {})) for rank in (0, 1)]

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)   # two workers on a loaded 2-core machine: 0.15 s a step, not seconds
    try:
        whole = _epoch_on_two_workers(two_workers(), plan, 0)
        cut_job = two_workers()
        cut = _epoch_on_two_workers(cut_job, plan, 0, stop_step=1)
        assert [result["complete"] for result in cut] == [False, False]
        saved = cut[0]["progress"].to_dict()   # what rank 0 writes into the checkpoint's meta
        assert saved["iteration"] == 1 + StopAgreement.LAG   # the step whose vote saw the signal, read LAG later
        resumed = _epoch_on_two_workers(cut_job, plan, 0, start=EpochProgress(**saved))
    finally:
        torch.set_num_threads(threads)
    assert whole[0]["images"] == resumed[0]["images"] == resumed[1]["images"] == EXAMPLES
    # Rank 1's shard has other images than rank 0's: counting rank 0's first two steps twice (and
    # rank 1's not at all) moves the mean loss by far more than float rounding.
    assert resumed[0]["train_loss"] == resumed[1]["train_loss"]
    assert resumed[0]["train_loss"] == pytest.approx(whole[0]["train_loss"], rel=1e-6)


def test_ddp_keeps_each_workers_buffers_on_torch_2_13_and_before():
    """torch 2.13's DDP calls it forward_sync_buffers, 2.11's (the GPU
    machines') broadcast_buffers: either way False."""
    from visionbench.engines.torch.session import _own_buffers

    class Before:   # the constructor's arguments up to torch 2.12
        def __init__(self, module, device_ids=None, broadcast_buffers=True):
            pass

    assert _own_buffers(torch.nn.parallel.DistributedDataParallel) == {"forward_sync_buffers": False}
    assert _own_buffers(Before) == {"broadcast_buffers": False}
