"""The MXNet engine behind the run loop's interface (engines/__init__.py)."""
from __future__ import annotations

from pathlib import Path

from ...config import Config
from ...engine.checkpoint import load_checkpoint, save_checkpoint
from ...engine.precision import LossScaler, resolve_precision
from ...engine.trainer import MxnetStepper, Run, build_net, build_trainer, evaluate


class MxnetSession:
    """One run's network, Trainer and loss scaler on this worker's devices."""

    engine = "mxnet"

    def __init__(self, config: Config, devices, group, plan):
        precision = resolve_precision(config.dtype, config.device, config.loss_scale)
        self.devices, self.group = devices, group
        self.net = build_net(config, devices, precision)
        self.trainer = build_trainer(config, self.net, precision, group.kvstore)
        self.scaler = LossScaler(precision.loss_scale, precision.dynamic_loss_scale)
        self.stepper = MxnetStepper(Run(config, devices, precision, self.net, self.trainer, plan, self.scaler, group))

    def start(self, prefix: Path, position: tuple, meta) -> None:
        """Load the checkpoint at ``position`` (when ``meta``), then join the job."""
        if meta is not None:
            load_checkpoint(self.net, self.trainer, prefix, position[0], self.devices, position[1])
            self.scaler.restore(meta["loss_scaler"])
        self.group.prepare_trainer(self.trainer, self.net.collect_params())

    def checkpoint_meta(self) -> dict:
        return {"loss_scaler": self.scaler.state()}

    def save(self, prefix: Path, epoch: int, meta: dict, iteration: int = 0) -> None:
        save_checkpoint(self.net, self.trainer, prefix, epoch, meta, iteration)

    def evaluate(self, loader, epoch: int) -> dict:
        return evaluate(self.net, loader, epoch, self.group)
