"""Parameter-server training (--kv-store dist_sync) on 127.0.0.1: the same
steps as one worker, disjoint shards, failure of one worker ends the job,
rank 0 alone writes, and a 2-worker job resumes."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from conftest import (ROOT, finish_group, make_small_demo, one_line_error, processes_in_group, processes_left_in_group,
                      run_runner)
from visionbench.config import Config
from visionbench.engine.run import train
from visionbench.report.schema import validate_report

TRAIN_IMAGES, VAL_IMAGES = 80, 40   # the demo below: 10 classes x 8 train, x 4 val


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_small_demo(tmp_path_factory.mktemp("dist") / "demo", 8)


def _args(data, prefix, *extra):
    # ResNet18 (with BatchNorm), 8 images per device, 5 steps per epoch per device shard.
    return ["--device", "cpu", "-b", "8", "--data-root", data, "--data-backend", "dali-cpu", "--image-size", "32",
            "--num-layers", "18", "--num-classes", "10", "--lr", "0.4", "--warmup-epochs", "0", "--lr-steps", "100",
            "--model-prefix", prefix, "--seed", "3", *extra]


def _params(prefix, epoch):
    return {k: v.asnumpy() for k, v in mx.nd.load(f"{prefix}-{epoch:04d}.params").items()}


def _report(path):
    report = json.loads(Path(path).read_text())
    validate_report(report, "train_report")
    return report


@pytest.fixture(scope="module")
def runs(demo, tmp_path_factory):
    """One worker with 2 devices x 8 (3 epochs, uninterrupted) and a
    2-worker job with 1 device x 8 each: 2 epochs, then resumed to 3."""
    root = tmp_path_factory.mktemp("runs")
    (root / "single").mkdir()
    (root / "dist").mkdir()
    (root / "samples").mkdir()
    single = run_runner(*_args(demo, root / "single" / "m", "-n", "2", "-e", "3", "--report", root / "single.json"))
    assert single.returncode == 0, single.stderr
    dist_args = _args(demo, root / "dist" / "m", "-n", "1", "--kv-store", "dist_sync", "--local-workers", "2",
                      "--report", root / "dist.json", "--sample-log", root / "samples")
    first = run_runner(*dist_args, "-e", "2", timeout=240)
    assert first.returncode == 0, first.stderr
    files_after_first = sorted(p.name for p in (root / "dist").iterdir())
    resumed = run_runner(*dist_args, "-e", "3", timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    return {"root": root, "first": first, "resumed": resumed, "files_after_first": files_after_first}


def test_two_workers_take_the_same_steps_as_one_worker_with_two_devices(runs):
    # Compared with one worker holding both devices (global batch 16 either way), so every
    # BatchNorm sees the same 8 images and the shards are the same: only the summation
    # order of the gradients differs (server vs local kvstore).
    root = runs["root"]
    single, dist = _report(root / "single.json"), _report(root / "dist.json")
    assert [e["epoch"] for e in dist["epochs"]] == [0, 1, 2]
    losses_single = [e["train_loss"] for e in single["epochs"]]
    losses_dist = [e["train_loss"] for e in dist["epochs"]]
    np.testing.assert_allclose(losses_dist, losses_single, rtol=1e-4)
    for e in dist["epochs"]:   # metrics cover both workers: every image once
        assert e["train_images"] == TRAIN_IMAGES and e["val_images"] == VAL_IMAGES
    a, b = _params(root / "single" / "m", 3), _params(root / "dist" / "m", 3)
    assert a.keys() == b.keys()
    # Learned weights agree. BatchNorm running statistics ("aux:") are not
    # compared here: each checkpoint's .params holds one device's (device 0 of
    # the one worker, device 0 of rank 0); tests/test_multi_device_checkpoint.py
    # checks what is saved of every device's.
    learned = [name for name in a if name.startswith("arg:")]
    assert len(learned) > 40
    for name in learned:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_workers_read_disjoint_shards_that_cover_the_set(runs, demo):
    from visionbench.data.recordio import RecordReader

    samples = runs["root"] / "samples"
    reader = RecordReader(Path(demo) / "train")
    for epoch in range(3):
        logs = [json.loads((samples / f"rank-{r}-epoch-{epoch}.json").read_text()) for r in (0, 1)]
        for log in logs:   # each device received the labels of the records it was fed
            assert log["labels"] == [int(reader.read(p)[0]) for p in log["positions"]]
        shards = [log["positions"] for log in logs]
        assert len(shards[0]) == len(shards[1]) == TRAIN_IMAGES // 2
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == list(range(TRAIN_IMAGES))
    assert sorted(p.name for p in samples.iterdir()) == [f"rank-{r}-epoch-{e}.json" for r in (0, 1) for e in range(3)]


def test_only_rank_0_prints_and_a_two_worker_job_resumes(runs):
    assert runs["files_after_first"] == ["m-0001.json", "m-0001.params", "m-0001.states", "m-0002.json",
                                         "m-0002.params", "m-0002.states", "m-symbol.json"]
    first, resumed = runs["first"].stdout, runs["resumed"].stdout
    assert first.count("epoch 1/2:") == 1 and first.count("epoch 2/2:") == 1   # one worker speaks
    assert resumed.count("resuming from") == 1 and "epoch 3/3:" in resumed and "epoch 1/3:" not in resumed


class _Rank1Of2:
    """Our own collective as the second of two workers would see it, without
    the other worker: sums double (a symmetric twin), rank 0's integer is ours."""
    rank, size, kvstore = 1, 2, None

    def sum(self, values):
        return [2 * float(v) for v in values]

    def start_sum(self, values):
        from visionbench.engine.collective import Done

        return Done(self.sum(values))

    def broadcast_int(self, value):
        return int(value)

    def barrier(self):
        pass

    def prepare_trainer(self, trainer, params):
        pass


def test_a_worker_other_than_rank_0_writes_nothing(demo, tmp_path):
    config = Config(device="cpu", num_devices=1, batch_size=8, data_root=str(demo), data_backend="dali-cpu",
                    image_size=32, num_layers=18, num_classes=10, num_epochs=1, model_prefix=str(tmp_path / "m"),
                    report=str(tmp_path / "r.json"), dawn_tsv=str(tmp_path / "d.tsv"))
    assert train(config, [mx.cpu(0)], _Rank1Of2()) == 0
    assert list(tmp_path.iterdir()) == []


def _start_job(demo, prefix, epochs=50):
    """A 2-worker job in its own process group, past its first training step: (command, job, worker pids)."""
    command = ["bash", str(ROOT / "runner"), *map(str, _args(demo, prefix, "-n", "1", "--kv-store", "dist_sync",
                                                               "--local-workers", "2", "-e", epochs,
                                                               "--disp-batches", "1"))]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, env=dict(os.environ, PYTHON=sys.executable))
    try:
        lines = [job.stdout.readline()]
        assert lines[0].startswith("started 2 worker(s)"), lines
        # rank 0's first step line: both workers are training (dist_sync: a step needs both)
        while lines[-1] and not lines[-1].startswith(f"epoch 1/{epochs} batch 1/"):
            lines.append(job.stdout.readline())
        assert lines[-1], f"the job ended before its first step: {lines}"
        workers = [pid for pid in processes_in_group(job.pid)
                   if "DMLC_ROLE=worker" in Path(f"/proc/{pid}/environ").read_text(errors="replace")]
        assert len(workers) == 2, workers
    except BaseException:
        os.killpg(job.pid, signal.SIGKILL)
        raise
    return command, job, workers


@pytest.mark.parametrize("how", ["SIGUSR1 to the launcher", "Ctrl-C to the whole group"])
def test_a_signal_to_the_launcher_stops_the_whole_job_cleanly(demo, tmp_path, how):
    """SIGUSR1 (what a batch scheduler sends before a kill) to the launcher,
    or SIGINT to every process of the group (Ctrl-C in a terminal): the
    workers stop after the same step and rank 0 saves it."""
    from visionbench.engine.checkpoint import complete_positions, load_meta

    command, job, _ = _start_job(demo, tmp_path / "m")
    try:
        if how == "SIGUSR1 to the launcher":
            job.send_signal(signal.SIGUSR1)
        else:
            os.killpg(job.pid, signal.SIGINT)
        _, stderr = job.communicate(timeout=90)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    status = 143 if how == "SIGUSR1 to the launcher" else 130
    assert job.returncode == status, stderr
    assert one_line_error(subprocess.CompletedProcess(command, status, "", stderr)) == (
        "train.py: stopped by a signal: every worker of the job was sent SIGTERM; they stopped after the same step, "
        "which rank 0 saved (unless --save-frequency 0); run the same command again to resume")
    assert processes_left_in_group(job.pid) == []
    saved = complete_positions(tmp_path / "m")   # the step they stopped after (nothing was saved before)
    assert len(saved) == 1, saved
    for epoch, iteration in saved:
        assert load_meta(tmp_path / "m", epoch, iteration)["epoch"] == epoch


def test_a_signal_to_one_worker_stops_every_worker_after_the_same_step_and_the_job_resumes(demo, tmp_path):
    """SIGTERM to one worker only (kill PID; a scheduler signalling one
    task): every worker stops after the same step (epoch.StopAgreement),
    rank 0 saves it, the job ends with status 143 and rank 0's line, and the
    same command resumes and finishes. A worker that stopped alone would
    leave both waiting in each other's collectives, for ever."""
    command, job, workers = _start_job(demo, tmp_path / "m", epochs=2)
    try:
        os.kill(workers[1], signal.SIGTERM)
        _, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 143, stderr
    line = one_line_error(subprocess.CompletedProcess(command, 143, "", stderr))
    assert re.fullmatch(r"train\.py: stopped by SIGTERM (at epoch 1, iteration [1-4]: saved \S+; |after epoch 1: )"
                        r"run the same command again to resume", line), line
    assert processes_left_in_group(job.pid) == []
    resumed = run_runner(*command[2:])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and (tmp_path / "m-0002.params").exists()


def test_killing_one_worker_ends_the_job_and_leaves_no_process(demo, tmp_path):
    command, job, workers = _start_job(demo, tmp_path / "m")
    try:
        os.kill(workers[1], signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = job.communicate(timeout=60)
        assert time.monotonic() - killed_at < 20   # promptly, not after a ps-lite timeout
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0
    message = one_line_error(subprocess.CompletedProcess(command, job.returncode, "", stderr))
    assert "worker" in message and "killed by SIGKILL" in message and "stopped" in message
    # A SIGKILL nobody in the job sent, explained by both figures: this small job is far below any
    # machine's memory, so it came from outside the job (here, this test).
    found = re.search(r"killed by SIGKILL, which nothing in this job sent: it was killed from outside the job \(the "
                      r"kernel's out-of-memory killer is still possible if other processes use the memory\): this "
                      r"run needs an estimated ([\d.]+) GiB \(2 workers x [\d.]+ GiB: .*batch 8 at 32 px\), and this "
                      r"machine has ([\d.]+) GiB", message)
    assert found and float(found[1]) < float(found[2]) / 1.5, message
    assert processes_left_in_group(job.pid) == []


@pytest.mark.parametrize("args, words", [
    (["--local-workers", "2"], "add --kv-store dist_sync"),
    (["--kv-store", "dist_sync", "--nnodes", "2", "--node-rank", "2"], "--node-rank must be in 0..1"),
    (["--kv-store", "dist_sync", "--master-port", "70000"], "--master-port must be in 1..65535"),
    (["--kv-store", "dist_sync", "--mode", "val"], "use --mode train or train_val"),
    (["--kv-store", "dist_sync", "--data-backend", "mxnet", "--data-root", "."], "use dali-gpu or dali-cpu"),
    (["--kv-store", "horovod", "-n", "2"], "one device per process"),
    (["--kv-store", "horovod"], "Horovod is not installed"),
])
def test_bad_distributed_input(tmp_path, args, words):
    result = run_runner("--device", "cpu", "--data-backend", "synthetic", "--model-prefix", tmp_path / "m",
                        "-e", "1", "--num-examples", "16", "-b", "8", "--num-layers", "18", "--image-size", "32",
                        *args)
    assert result.returncode == 2
    assert words in one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def _single_process_line(args):
    """The line a single process gives for ``args`` (its preflight refuses them)."""
    from visionbench.cli import UsageError
    from visionbench.config import resolve
    from visionbench.engine.run import preflight

    with pytest.raises(UsageError) as refusal:
        preflight(resolve(list(map(str, args))))
    return f"train.py: error: {refusal.value}"


def _job(args, timeout=120):
    """A 2-worker loopback job in its own process group: (result, processes left in it)."""
    command = ["bash", str(ROOT / "runner"), *map(str, args), "-n", "1", "--kv-store", "dist_sync",
               "--local-workers", "2"]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, env=dict(os.environ, PYTHON=sys.executable))
    return finish_group(job, timeout)


@pytest.mark.parametrize("case", ["prefix folder missing", "no val set", "report exists", "prefix locked",
                                  "foreign checkpoint"])
def test_bad_input_to_a_parameter_server_job_is_refused_once_before_any_process_starts(demo, tmp_path, case):
    import fcntl
    import shutil

    prefix, data, extra = tmp_path / "m", demo, []
    if case == "prefix folder missing":
        prefix = tmp_path / "missing" / "folder" / "m"
    elif case == "no val set":
        data = tmp_path / "data"
        data.mkdir()
        for suffix in (".rec", ".idx"):
            shutil.copy(Path(demo) / f"train{suffix}", data / f"train{suffix}")
    elif case == "report exists":
        (tmp_path / "r.json").write_text("{}")
        extra = ["--report", tmp_path / "r.json"]
    elif case == "foreign checkpoint":
        (tmp_path / "m-0001.params").write_bytes(b"another tool's checkpoint")
    lock = None
    if case == "prefix locked":
        lock = open(tmp_path / "m.lock", "w")
        lock.write("pid 4242\n")
        lock.flush()
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    try:
        args = _args(data, prefix, "-e", "1", *extra)
        expected = _single_process_line(args)
        result, left = _job(args)
    finally:
        if lock is not None:
            lock.close()
    assert result.returncode == 2, result.stderr
    assert one_line_error(result) == expected
    assert "started" not in result.stdout   # refused before any process started
    assert left == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_a_workers_own_usage_error_ends_the_job_with_its_line(demo, tmp_path):
    # 80 train images in 2 worker shards of 40, fewer than a batch of 64:
    # only the workers' loaders can tell (the launcher's checks pass).
    result, left = _job(_args(demo, tmp_path / "m", "-e", "1", "-b", "64"), timeout=180)
    assert result.returncode == 2, result.stderr
    line = one_line_error(result)
    assert line.startswith("train.py: error: ") and "fewer than the batch size 64" in line, line
    assert "server" not in line
    assert left == []


ENV_OF_WORKER = """
import json, os, sys
with open(sys.argv[1] + os.environ["VISIONBENCH_LOCAL_WORKER"], "w") as out:
    json.dump({name: os.environ.get(name) for name in ("CUDA_VISIBLE_DEVICES", "DMLC_ROLE")}, out)
"""


@pytest.mark.parametrize("visible, expected", [("3,2,1,0", ["3,2", "1,0"]), ("GPU-a,GPU-b,GPU-c,GPU-d,GPU-e",
                                                                          ["GPU-a,GPU-b", "GPU-c,GPU-d"])])
def test_each_local_gpu_worker_sees_only_its_own_gpus(tmp_path, monkeypatch, visible, expected):
    # Without this every worker creates a CUDA context on GPU 0 (and its -n GPUs are GPUs
    # i*n.. of all of them). Through the launcher itself, its workers replaced by a script
    # that writes the environment it was given; the real scheduler and server start and stop.
    from visionbench.engine import launch

    script = tmp_path / "env_of_worker.py"
    script.write_text(ENV_OF_WORKER)
    monkeypatch.setattr(launch, "TRAIN_PY", script)
    monkeypatch.setattr(launch, "SERVERS_EXIT_S", 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    config = Config(device="gpu", num_devices=2, kv_store="dist_sync", local_workers=2)
    assert launch.launch(config, [str(tmp_path / "worker-")]) == 0
    seen = [json.loads((tmp_path / f"worker-{i}").read_text()) for i in (0, 1)]
    assert seen == [{"CUDA_VISIBLE_DEVICES": gpus, "DMLC_ROLE": "worker"} for gpus in expected]


def test_each_local_gpu_worker_numbers_its_own_gpus_from_0(monkeypatch):
    # Worker i sees only its own -n GPUs (above), so the first of them is GPU 0 in that worker,
    # not i x n (worker 1 of 2 x -n 2 would ask for gpu(2), gpu(3) of the 2 it sees). Through
    # the launcher's environments and the index train.py's main() passes to make_contexts.
    from visionbench.engine.collective import HorovodGroup, KVStoreGroup
    from visionbench.engine.launch import LOCAL_WORKER_ENV, worker_environments
    from visionbench.main import first_gpu_index

    config = Config(device="gpu", num_devices=2, kv_store="dist_sync", local_workers=2)
    worker_group = KVStoreGroup.__new__(KVStoreGroup)   # its class, without joining a job
    used = []
    for env in worker_environments(config, 9000, environ={"CUDA_VISIBLE_DEVICES": "7,6,5,4"}):
        monkeypatch.setenv(LOCAL_WORKER_ENV, env[LOCAL_WORKER_ENV])
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env["CUDA_VISIBLE_DEVICES"])
        visible = env["CUDA_VISIBLE_DEVICES"].split(",")
        first = first_gpu_index(worker_group)
        assert first + config.num_devices <= len(visible), (env[LOCAL_WORKER_ENV], first, visible)
        used.append(visible[first:first + config.num_devices])
    assert used == [["7", "6"], ["5", "4"]]
    # Horovod starts one process per GPU, each seeing all of them: its local rank picks its GPU.
    horovod_process = HorovodGroup.__new__(HorovodGroup)
    horovod_process.local_rank = 3
    assert first_gpu_index(horovod_process) == 3


def test_gpu_workers_that_need_more_gpus_than_visible_are_refused():
    from visionbench.cli import UsageError
    from visionbench.engine.launch import gpu_assignment

    assert gpu_assignment(None, 8, 4, 2) == ["0,1", "2,3", "4,5", "6,7"]
    with pytest.raises(UsageError, match=r"--local-workers 2 x -n 2 needs 4 GPUs on this machine; 3 are "
                                         r"CUDA_VISIBLE_DEVICES=0,1,2"):
        gpu_assignment("0,1,2", None, 2, 2)
