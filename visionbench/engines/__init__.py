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


def open_session(config, devices, group, plan):
    if config.engine == "torch":
        from .torch.session import TorchSession
        return TorchSession(config, devices, group, plan)
    from .mxnet.session import MxnetSession
    return MxnetSession(config, devices, group, plan)


def framework_versions(engine: str) -> dict:
    """The report's version fields of the engine that ran (the other one: None)."""
    versions = {"engine": engine, "mxnet": None, "torch": None}
    if engine == "torch":
        import torch
        versions["torch"] = torch.__version__
    else:
        import mxnet as mx
        versions["mxnet"] = mx.__version__
    return versions
