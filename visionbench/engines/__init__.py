"""The frameworks a run can train on (``--engine``): ``mxnet`` (Gluon; the
reference) and ``torch`` (PyTorch). Each lives in its own sub-package, and
nothing outside ``engines/X`` imports framework X at module level, so the
torch engine runs where ``import mxnet`` fails and the other way round.

The run loop (engine/run.py, engine/epoch.py) talks to a session:

    session = open_session(config, devices, group, plan)
    session.start(prefix, (epoch, iteration), meta)   # meta None: a fresh run
    run_epoch(session.stepper, ...)                   # engine/epoch.py's Stepper
    session.evaluate(loader, epoch) -> {"val_top1", "val_top5", "val_ips", ...}
    session.checkpoint_meta() -> dict                 # what the .json adds
    session.save(prefix, epoch, meta, iteration)      # through checkpoint.write_checkpoint
"""
from __future__ import annotations

import os

from typing import Sequence, Union


def open_session(config, devices, group, plan):
    if config.engine == "torch":
        from .torch.session import TorchSession
        return TorchSession(config, devices, group, plan)
    from .mxnet.session import MxnetSession
    return MxnetSession(config, devices, group, plan)


def framework_versions(engine: Union[str, Sequence[str]]) -> dict:
    """The report's version fields: ``engine``, the one engine that ran (a
    name) or the engines of a sweep that ran several (a list, two or more),
    and the version of each one's framework (the others: None)."""
    engines = [engine] if isinstance(engine, str) else list(engine)
    versions = {"engine": engines[0] if len(engines) == 1 else engines, "mxnet": None, "torch": None}
    if "torch" in engines:
        import torch
        versions["torch"] = torch.__version__
    if "mxnet" in engines:
        import mxnet as mx
        versions["mxnet"] = mx.__version__
    return versions


def prepare_torch_threads() -> None:
    """Call before the first ``import torch``: OMP_WAIT_POLICY=PASSIVE unless
    the user set it. PyTorch's OpenMP threads otherwise spin while they wait
    for work; on a CPU shared with DALI's threads and the reader thread (or
    other jobs) the spinning starves the work itself: the demo recipe's
    training steps ran at 8 img/s with spinning and 67-80 img/s without, on
    2 busy cores (AMD EPYC, load 6; PERFORMANCE path 7 has the figures)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
