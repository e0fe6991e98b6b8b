"""How a run decides to stop on a signal (engine/run.py StopRequest,
engine/epoch.py StopAgreement), without a job: signals to this process, and a
group of two workers whose votes are summed by hand."""
import os
import signal

import pytest

import visionbench.engine.epoch as epoch_module
from conftest import one_line_error, run_here
from visionbench.cli import Interrupted
from visionbench.engine import checkpoint
from visionbench.engine import run as run_module
from visionbench.engine.collective import Done
from visionbench.engine.epoch import StopAgreement, agree_to_stop
from visionbench.engine.run import StopRequest


def test_a_second_signal_stops_at_once_unless_it_is_the_same_stop_arriving_twice(monkeypatch):
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)     # (handlers run in the main thread, before the next line)
        os.kill(os.getpid(), signal.SIGTERM)     # within SAME_STOP_S: Ctrl-C to the group, then the launcher's
        assert stop.requested == signal.SIGUSR1
        monkeypatch.setattr(run_module, "SAME_STOP_S", 0.0)
        with pytest.raises(Interrupted, match=r"^second signal \(SIGTERM\): stopped at once") as second:
            os.kill(os.getpid(), signal.SIGTERM)
        assert second.value.status == 143


def test_a_worker_that_joined_the_jobs_stop_takes_its_own_first_signal_as_the_first():
    with StopRequest() as stop:
        stop.join_the_job()
        assert stop.requested == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)      # no Interrupted: the first signal this process got
        assert stop.requested == signal.SIGINT


class _Votes:
    """Two workers' start_sum: a sum is known once both have cast the vote of that round."""

    size = 2

    def __init__(self, other_signalled=False):
        self.cast = {0: [], 1: []}
        self.other_signalled = other_signalled   # what the other worker adds to a blocking sum

    def worker(self, rank):
        votes = self

        class Worker:
            size = 2

            def start_sum(self, values):
                votes.cast[rank].append(values[0])
                round_ = len(votes.cast[rank]) - 1
                return _Pending(votes, round_)

            def sum(self, values):
                return [values[0] + (1.0 if votes.other_signalled else 0.0)]

        return Worker()


class _Pending:
    def __init__(self, votes, round_):
        self.votes, self.round = votes, round_

    def result(self):
        return [self.votes.cast[0][self.round] + self.votes.cast[1][self.round]]


class _Signal:
    def __init__(self):
        self.requested = None

    def join_the_job(self):
        if self.requested is None:
            self.requested = signal.SIGTERM


def test_workers_signalled_steps_apart_stop_after_the_same_step():
    """Worker 0's signal lands during step 2, worker 1's during step 3: both
    stop after step 2 + LAG, worker 1 included, though its own vote came later."""
    votes = _Votes()
    stops = [_Signal(), _Signal()]
    agreements = [StopAgreement(votes.worker(rank), stops[rank]) for rank in (0, 1)]
    stopped_after = [None, None]
    for step in range(1, 10):
        if step == 2:
            stops[0].requested = signal.SIGTERM
        if step == 3:
            stops[1].requested = signal.SIGTERM
        for rank in (0, 1):   # lockstep, as dist_sync's gradients keep them
            if stopped_after[rank] is None and agreements[rank].after_step():
                stopped_after[rank] = step
    assert stopped_after == [2 + StopAgreement.LAG] * 2


def test_without_a_signal_no_worker_stops():
    votes = _Votes()
    stops = [_Signal(), _Signal()]
    agreements = [StopAgreement(votes.worker(rank), stops[rank]) for rank in (0, 1)]
    assert not any(agreements[rank].after_step() for _ in range(10) for rank in (0, 1))
    assert stops[0].requested is None and stops[1].requested is None


def test_one_signalled_worker_stops_both_and_the_other_joins():
    votes = _Votes()
    stops = [_Signal(), _Signal()]
    agreements = [StopAgreement(votes.worker(rank), stops[rank]) for rank in (0, 1)]
    stops[1].requested = signal.SIGUSR1
    decisions = [[agreements[rank].after_step() for rank in (0, 1)] for _ in range(StopAgreement.LAG + 1)]
    assert decisions[-1] == [True, True] and not any(any(d) for d in decisions[:-1])
    assert stops[0].requested == signal.SIGTERM and stops[1].requested == signal.SIGUSR1   # joined; its own kept


def test_at_an_epochs_end_a_signal_anywhere_in_the_job_stops_every_worker():
    unsignalled = _Signal()
    assert agree_to_stop(_Votes(other_signalled=False).worker(0), unsignalled) is False
    assert unsignalled.requested is None
    assert agree_to_stop(_Votes(other_signalled=True).worker(0), unsignalled) is True
    assert unsignalled.requested == signal.SIGTERM
    assert agree_to_stop(None, _Signal()) is False
    assert StopAgreement(None, None).after_step() is False and Done([1, 2]).result() == [1.0, 2.0]


# --- the launcher (engine/launch.py) reading its workers' ends: real processes standing in for workers ---

def _worker(index, code, line="", seconds=0):
    """A process in a worker's place: writes ``line`` to stderr, then exits ``code`` after ``seconds``."""
    import sys

    from visionbench.engine.launch import _start

    program = f"import sys, time; sys.stderr.write({line!r} + '\\n'); time.sleep({seconds}); sys.exit({code})"
    return _start("worker", index, [sys.executable, "-c", program], dict(os.environ))


def _supervised(workers, capfd, monkeypatch):
    from visionbench.config import Config
    from visionbench.engine import launch

    monkeypatch.setattr(launch, "SAVE_GRACE_S", 1.0)
    status = launch._supervise(Config(local_workers=len(workers)), workers, workers)
    for worker in workers:
        worker.process.wait(timeout=30)
    return status, capfd.readouterr().err


STOPPED_LINE = "train.py: stopped by SIGTERM at epoch 1, iteration 3: saved P-0000-000003; run the same command again"


def test_workers_that_all_stopped_on_a_signal_end_the_job_with_their_line_and_status(capfd, monkeypatch):
    status, err = _supervised([_worker(0, 143, STOPPED_LINE), _worker(1, 143, STOPPED_LINE, 0.3)], capfd, monkeypatch)
    assert status == 143 and err.strip().splitlines() == [STOPPED_LINE]


def test_a_worker_failing_after_another_stopped_is_the_failure_reported(capfd, monkeypatch):
    status, err = _supervised([_worker(0, 143, STOPPED_LINE), _worker(1, 1, "OSError: no space left", 0.3)], capfd,
                              monkeypatch)
    assert status == 1 and "worker 1 of 2 on this node failed (exit status 1): OSError: no space left" in err


def test_a_worker_still_running_long_after_another_stopped_is_killed_and_reported(capfd, monkeypatch):
    workers = [_worker(0, 143, STOPPED_LINE), _worker(1, 0, "training", 60)]
    status, err = _supervised(workers, capfd, monkeypatch)
    assert status == 1 and workers[1].process.returncode != 0
    assert "worker 1 of 2 on this node had not stopped 1.0 s after another stopped on a signal" in err


def test_a_signal_just_after_the_epoch_end_agreement_keeps_that_epoch_and_stops_after_the_next_step(
        tmp_path, capfd, monkeypatch):
    """The epoch's end decides once (agree_to_stop): a signal that lands after
    that decision is voted on in the next epoch's steps. Re-reading the
    flag later in the epoch's end could split a job's workers: one that saw
    the signal there would stop at the epoch's end, the others one step on."""
    agreed = epoch_module.agree_to_stop
    calls = []

    def agree_then_signal(group, stop):
        decision = agreed(group, stop)
        calls.append(decision)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)   # the handler runs here, before the epoch's end goes on
        return decision

    monkeypatch.setattr(epoch_module, "agree_to_stop", agree_then_signal)
    prefix = tmp_path / "m"
    result = run_here(capfd, "--device", "cpu", "-b", "8", "--data-backend", "synthetic", "--num-examples", "64",
                      "--image-size", "16", "--num-layers", "18", "--num-classes", "10", "--mode", "train",
                      "--model-prefix", prefix, "-e", "3", "--seed", "7")
    assert result.returncode == 143, result.stderr
    assert calls == [False]   # epoch 1's end agreed not to stop; no other epoch ended
    assert "stopped by SIGTERM at epoch 2, iteration 1" in one_line_error(result)
    assert checkpoint.complete_positions(prefix) == [(1, 0), (1, 1)]   # epoch 1's own, then one step of epoch 2
