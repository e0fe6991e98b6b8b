"""Start a multi-process job (``--kv-store dist_sync|dist_device_sync``).

MXNet engine: a parameter-server job. On each machine ``./runner`` starts
this machine's part of the job with the DMLC_* variables ps-lite reads:
node 0 also runs the scheduler; every node runs ``--num-servers`` servers and
``--local-workers`` workers (each worker trains on the node's ``-n`` devices).

Torch engine (``--engine torch``): no scheduler and no servers; each node
starts its ``--local-workers`` workers (one device each) with the variables
torch.distributed's ``env://`` reads (MASTER_ADDR, MASTER_PORT, RANK,
WORLD_SIZE, and LOCAL_RANK/LOCAL_WORLD_SIZE as torchrun sets them); rank 0,
on node 0, holds the rendezvous store on --master-port. CPU workers share
the machine's cores (OMP_NUM_THREADS: cores / workers, unless already set).

With ``--local-workers W`` and one node the whole job runs on 127.0.0.1.

The launcher supervises its processes: when every worker has finished it
lets the servers and the scheduler end (or ends them); when any process
fails, it stops all the others at once and exits with the failing worker's
status and its last error line (a SIGKILL that nothing in the job sent is
explained with the run's memory estimate against the machine's: the
out-of-memory killer when those figures make it likely, memory.sigkill_reason). On GPUs, each worker sees only its own
``-n`` GPUs through CUDA_VISIBLE_DEVICES. Children are started with PR_SET_PDEATHSIG
(Linux), so even a SIGKILLed launcher leaves nothing behind.
"""
from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Deque, List, Optional, Sequence

from ..cli import EXIT_SIGINT, EXIT_SIGTERM, EXIT_USAGE, Interrupted, Terminated, UsageError, die_with_parent
from ..config import Config

TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"
LOOPBACK = ("127.0.0.1", "localhost")
LOCAL_WORKER_ENV = "VISIONBENCH_LOCAL_WORKER"   # 0..W-1: which of this machine's workers a process is
DEFAULT_PORT = 9000       # several nodes: every node must be told the same port
POLL_S = 0.05             # seconds between checks on the children (a waitpid each: cheap)
STOP_GRACE_S = 5          # seconds between SIGTERM and SIGKILL when stopping a child after a failure
SAVE_GRACE_S = 60         # seconds signalled workers get to agree on a step, finish it and save
STOPPED = (EXIT_SIGTERM, EXIT_SIGINT)   # a worker's status after a signal stopped it (and it saved): no failure
SERVERS_EXIT_S = 30       # seconds servers and scheduler get to finish after the workers
CAUSE_WAIT_S = 2          # seconds a failed server or scheduler waits for a worker's own failure


@dataclass
class Child:
    role: str                  # scheduler, server, worker
    index: int                 # among this node's processes of that role
    process: subprocess.Popen
    last_lines: Deque[str] = field(default_factory=lambda: collections.deque(maxlen=50))
    reader: Optional[threading.Thread] = None   # takes last_lines from stderr; ends when the child's stderr closes

    @property
    def name(self) -> str:
        return f"{self.role} {self.index}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def job_environment(config: Config, port: int, role: str) -> dict:
    env = dict(os.environ)
    env.update({
        "DMLC_ROLE": role,
        "DMLC_PS_ROOT_URI": config.master_addr,
        "DMLC_PS_ROOT_PORT": str(port),
        "DMLC_NUM_SERVER": str(config.num_servers * config.nnodes),
        "DMLC_NUM_WORKER": str(config.local_workers * config.nnodes),
    })
    if config.master_addr in LOOPBACK:
        env["DMLC_NODE_HOST"] = "127.0.0.1"   # else ps-lite may announce another interface
    return env


def gpu_assignment(visible: Optional[str], count: Optional[int], workers: int, per_worker: int,
                   framework: str = "MXNet") -> List[str]:
    """CUDA_VISIBLE_DEVICES of each of this machine's workers: consecutive
    ``per_worker`` GPUs of those this process sees (``visible``: its own
    CUDA_VISIBLE_DEVICES, indices or UUIDs; else GPUs 0..count-1). A worker
    that sees only its own GPUs creates no CUDA context on the others (every
    CUDA process otherwise takes memory on GPU 0)."""
    gpus = [g.strip() for g in visible.split(",") if g.strip()] if visible is not None else \
        [str(i) for i in range(count or 0)]
    need = workers * per_worker
    if need > len(gpus):
        seen = f"CUDA_VISIBLE_DEVICES={visible}" if visible is not None else f"visible to {framework}"
        raise UsageError(f"--local-workers {workers} x -n {per_worker} needs {need} GPUs on this machine; "
                         f"{len(gpus)} are {seen}")
    return [",".join(gpus[i * per_worker:(i + 1) * per_worker]) for i in range(workers)]


def torch_worker_environment(config: Config, port: int, local: int) -> dict:
    """torch.distributed's env:// variables of this machine's worker ``local``."""
    workers = config.local_workers
    env = {name: value for name, value in os.environ.items() if not name.startswith("DMLC_")}
    env.update({
        "MASTER_ADDR": config.master_addr, "MASTER_PORT": str(port),
        "WORLD_SIZE": str(workers * config.nnodes), "RANK": str(config.node_rank * workers + local),
        "LOCAL_RANK": str(local), "LOCAL_WORLD_SIZE": str(workers), LOCAL_WORKER_ENV: str(local),
    })
    if config.master_addr in LOOPBACK:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")   # else gloo may take the hostname's interface
    if config.device == "cpu":
        # W processes that each take every core run slower than W that share them.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    return env


def _gpus_seen(engine: str) -> int:
    """GPUs the engine's framework sees in this process (no CUDA_VISIBLE_DEVICES set)."""
    if engine == "torch":
        import torch
        return torch.cuda.device_count()
    import mxnet as mx
    return mx.context.num_gpus()


def worker_environments(config: Config, port: int, environ=os.environ) -> List[dict]:
    """The environment of each of this machine's workers."""
    if config.engine == "torch":
        envs = [torch_worker_environment(config, port, i) for i in range(config.local_workers)]
    else:
        envs = [dict(job_environment(config, port, "worker"), **{LOCAL_WORKER_ENV: str(i)})
                for i in range(config.local_workers)]
    if config.device == "gpu":   # GPU-ONLY but for the CUDA_VISIBLE_DEVICES arithmetic (tested on CPU)
        visible = environ.get("CUDA_VISIBLE_DEVICES")
        count = _gpus_seen(config.engine) if visible is None else None
        framework = "PyTorch" if config.engine == "torch" else "MXNet"
        assigned = gpu_assignment(visible, count, config.local_workers, config.num_devices, framework)
        for env, gpus in zip(envs, assigned):
            env["CUDA_VISIBLE_DEVICES"] = gpus
    return envs


def _collect_stderr(child: Child) -> None:
    """Keep the child's last stderr lines (read in a thread so the pipe never fills)."""
    for line in child.process.stderr:
        if line.strip():
            child.last_lines.append(line.rstrip("\n"))


def _start(role: str, index: int, command: List[str], env: dict) -> Child:
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, errors="replace",
                               preexec_fn=die_with_parent)
    child = Child(role, index, process)
    child.reader = threading.Thread(target=_collect_stderr, args=(child,), daemon=True)
    child.reader.start()
    return child


def _stop(children: Sequence[Child], grace_s: float = STOP_GRACE_S) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def _sigkill_explanation(config: Config, workers: int) -> str:
    """memory.py's estimate comes from the Gluon model's graph (the same
    network as the torch engine's); where MXNet cannot be imported (a
    torch-only install), the explanation without the estimate."""
    from .memory import machine_memory, sigkill_explanation, sigkill_reason

    try:
        return sigkill_explanation(config, workers)
    except ImportError:
        return sigkill_reason(None, machine_memory())


def _failure(child: Child, config: Config) -> str:
    total_workers = config.local_workers
    code = child.process.returncode
    how = (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}")
    if code == -signal.SIGKILL:
        # Failures are read before _stop sends anything: this SIGKILL came from outside the job.
        how += f", which nothing in this job sent: {_sigkill_explanation(config, total_workers)}"
    detail = child.last_lines[-1] if child.last_lines else "no error message"
    who = f"worker {child.index} of {total_workers} on this node" if child.role == "worker" else child.name
    return f"{who} failed ({how}): {detail}; every other process of the job was stopped"


def _first_cause(children: Sequence[Child], workers: Sequence[Child]) -> Child:
    """The failure to report: a worker that refused its input (exit 2) over
    any other, then a worker killed by a signal over one that exited with an
    error (torch.distributed peers fail with a connection error when one of
    them disappears), a worker over a server or the scheduler (they abort
    when a worker leaves the job). Waits up to CAUSE_WAIT_S for the workers
    to end."""
    def failed(group):
        return [c for c in group if _failed(c)]

    deadline = time.monotonic() + CAUSE_WAIT_S
    while time.monotonic() < deadline:
        if any(w.process.returncode == EXIT_USAGE for w in failed(workers)):
            break
        if all(w.process.poll() is not None for w in workers):
            break
        time.sleep(POLL_S)
    for child in failed(children):   # their last words: the reader ends when the ended child's stderr closes
        child.reader.join(timeout=CAUSE_WAIT_S)
    usage = [w for w in failed(workers) if w.process.returncode == EXIT_USAGE]
    killed = [w for w in failed(workers) if w.process.returncode < 0]
    return (usage or killed or failed(workers) or failed(children))[0]


def _start_parameter_servers(config: Config, port: int) -> List[Child]:
    """ps-lite's scheduler (node 0) and this node's servers (MXNet engine)."""
    children = []
    if config.node_rank == 0:
        children.append(_start("scheduler", 0, [sys.executable, "-c", "import mxnet"],
                               job_environment(config, port, "scheduler")))
    for i in range(config.num_servers):
        # Importing mxnet with DMLC_ROLE=server runs the server loop and exits.
        children.append(_start("server", i, [sys.executable, "-c", "import mxnet"],
                               job_environment(config, port, "server")))
    return children


def _failed(child: Child) -> bool:
    """Ended, neither done (0) nor, for a worker, stopped by a signal after saving (STOPPED)."""
    code = child.process.poll()
    return code not in (None, 0) and not (child.role == "worker" and code in STOPPED)


def _supervise(config: Config, children: Sequence[Child], workers: Sequence[Child]) -> int:
    """Wait until every worker has finished (0) or stopped on a signal (a
    signal to some of the workers stops them all after the same step:
    epoch.StopAgreement), or until a process fails: then stop all the others
    and report the failure; its exit status."""
    first_stopped_at = None   # time.monotonic() when a worker was first seen stopped by a signal
    while True:
        failed = next((c for c in children if _failed(c)), None)
        if failed is not None:
            failed = _first_cause(children, workers)
            _stop(children)
            if failed.role == "worker" and failed.process.returncode == EXIT_USAGE and failed.last_lines:
                # Bad input a worker found: its own line and status, as one process would give.
                sys.stderr.write(failed.last_lines[-1] + "\n")
                return EXIT_USAGE
            sys.stderr.write(f"runner: error: {_failure(failed, config)}\n")
            return failed.process.returncode if failed.process.returncode > 0 else 1
        if all(w.process.poll() == 0 for w in workers):
            return 0
        if all(w.process.poll() is not None for w in workers):   # all ended, some (or all) stopped by a signal
            return _stopped(workers)
        if first_stopped_at is None and any(w.process.poll() in STOPPED for w in workers):
            first_stopped_at = time.monotonic()
        if first_stopped_at is not None and time.monotonic() - first_stopped_at > SAVE_GRACE_S:
            # The others stop after the same step as it (epoch.StopAgreement); one still running is stuck.
            stuck = [w for w in workers if w.process.poll() is None]
            _stop(children)
            sys.stderr.write(f"runner: error: worker {stuck[0].index} of {config.local_workers} on this node had "
                             f"not stopped {SAVE_GRACE_S} s after another stopped on a signal, and was killed; "
                             "every other process of the job was stopped\n")
            return 1
        time.sleep(POLL_S)


def _stopped(workers: Sequence[Child]) -> int:
    """A job its workers stopped on a signal: the line and status of the first
    of this node's workers that stopped (every worker names the checkpoint
    rank 0 saved)."""
    stopped = [w for w in workers if w.process.returncode in STOPPED]
    first = stopped[0]
    first.reader.join(timeout=CAUSE_WAIT_S)   # its last words: the reader ends when its stderr closes
    if first.last_lines:
        sys.stderr.write(first.last_lines[-1] + "\n")
    return first.process.returncode


def launch(config: Config, argv: Sequence[str]) -> int:
    """Run this node's processes of the job until it ends; returns the exit status."""
    port = config.master_port or (free_port() if config.nnodes == 1 else DEFAULT_PORT)
    children: List[Child] = []
    worker_envs = worker_environments(config, port)   # may refuse (too few GPUs) before anything starts
    try:
        if config.engine == "mxnet":
            children += _start_parameter_servers(config, port)
        workers = [_start("worker", i, [sys.executable, str(TRAIN_PY), *argv], env)
                   for i, env in enumerate(worker_envs)]
        children += workers
        servers = f" and {config.num_servers} server(s)" if config.engine == "mxnet" else ""
        print(f"started {config.local_workers} worker(s){servers} on node {config.node_rank} of "
              f"{config.nnodes} ({config.master_addr}:{port})", flush=True)
        status = _supervise(config, children, workers)
        if status == 0:   # the servers and the scheduler leave once every worker has
            deadline = time.monotonic() + SERVERS_EXIT_S
            for child in children:
                try:
                    child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    break   # (stopped below)
        return status
    except (Terminated, KeyboardInterrupt) as signalled:   # SIGTERM or SIGUSR1; SIGINT (Ctrl-C)
        # SIGTERM to each worker: they agree on a step, finish it, and rank 0 saves the position; the servers
        # and the scheduler leave once the workers have (then _stop below finds them gone). After Ctrl-C the
        # workers had SIGINT already: this SIGTERM comes within StopRequest's same-stop window.
        workers = [c for c in children if c.role == "worker"]
        _stop(workers, SAVE_GRACE_S)
        codes = [w.process.returncode for w in workers]
        if all(code in STOPPED for code in codes):
            how = "they stopped after the same step, which rank 0 saved (unless --save-frequency 0)"
        elif any(code == -signal.SIGKILL for code in codes):
            how = (f"a worker that had not stopped {SAVE_GRACE_S} s later was killed: the next run resumes from "
                   "the newest complete checkpoint")
        else:
            how = f"the workers ended with exit status {', '.join(map(str, codes))}"
        status = EXIT_SIGINT if isinstance(signalled, KeyboardInterrupt) else EXIT_SIGTERM
        raise Interrupted(f"stopped by a signal: every worker of the job was sent SIGTERM; {how}; run the same "
                          "command again to resume", status)
    finally:
        _stop(children)
