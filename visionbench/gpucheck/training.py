"""Training points of the check, each a fresh torch-engine session fed by
the run loop (engine/epoch.py's run_epoch over the engine's own loaders),
configured by the very runner flags that ``command`` records: rerunning
that command through ./runner measures the same thing over a longer run."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence

from .sizes import CheckSizes

RUNNER = "./runner"
LAYOUTS = {"channels_last": "NHWC", "contiguous": "NCHW"}
# examples/RN9_CIFAR10_DAWN.sh's settings (its --phases: LR 0 -> 0.4 over
# epochs 0-5, then -> 0 at epoch 24), on synthetic 32 px images.
DAWN_EPOCHS = 24
# Readiness in float16: skipped steps allowed on top of the applied ones (2^16 / 2^16 = a scale of 1).
MAX_SKIPPED = 16
DAWN_FLAGS = ["--arch", "resnet9", "--num-classes", "10", "--image-size", "32", "--wd", "5e-4", "--mom", "0.9",
              "--nesterov", "--phases", "[{'ep': (0, 5), 'lr': (0.0, 0.4)}, {'ep': (5, 24), 'lr': (0.4, 0.0)}]"]


def command_of(argv: Sequence[str]) -> str:
    return shlex.join([RUNNER, *argv])


def resnet_argv(device: str, batch: int, dtype: str, layout: str, sizes: CheckSizes, steps: int) -> List[str]:
    """Runner flags of a ResNet v1.5 training point timed as --benchmark times
    it: one untimed epoch of ``steps`` steps, then one timed epoch."""
    return ["--engine", "torch", "--mode", "train", "--benchmark", "--device", device, "-n", "1",
            "-b", str(batch), "--dtype", dtype, "--input-layout", LAYOUTS[layout], "--arch", "resnetv15",
            "--num-layers", str(sizes.num_layers), "--image-size", str(sizes.image_size),
            "--num-classes", str(sizes.num_classes), "-i", str(steps), "-e", "2", "--benchmark-warmup-epochs", "1"]


def synthetic_flags(images: int) -> List[str]:
    return ["--data-backend", "synthetic", "--num-examples", str(images)]


@dataclass
class RunLoop:
    """One session of the torch engine with its plan and training loader."""
    config: object
    plan: object
    session: object
    loader: object

    def epoch(self, epoch: int, steps: Optional[int] = None) -> dict:
        """run_epoch's record of one epoch (capped at ``steps`` steps)."""
        from ..engine.epoch import run_epoch

        config = self.config if steps is None else replace(self.config, iterations=steps)
        return run_epoch(self.session.stepper, config, self.plan, None, epoch, self.loader, progress=False)

    def close(self) -> None:
        """Free the device memory before the next point builds its model."""
        import gc

        import torch

        self.session = self.loader = None
        gc.collect()   # the model, optimizer state and (compiled) graphs may sit in reference cycles
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def open_run_loop(argv: Sequence[str], tiny_compile: bool = False) -> RunLoop:
    """The session ./runner would train with ``argv``. ``tiny_compile``
    (--tiny's compiled points on CPUs): TorchDynamo's graph capture with its
    ``eager`` backend instead of inductor, whose C++ build of ResNet18 took
    93 s on 2 cores: the capture of our model is checked, not its kernels."""
    import torch

    from ..config import resolve
    from ..engine.collective import Single
    from ..engine.run import plan_for
    from ..engine.trainer import _loader
    from ..engines import open_session
    from ..main import make_devices

    config = resolve(list(argv), prog="gpucheck")
    devices = make_devices(config)
    plan = plan_for(config, len(devices))
    if config.compile:
        torch._dynamo.reset()   # a fresh model per point: keep dynamo's recompile limit from falling back to eager
    session = open_session(config, devices, Single(), plan)
    if tiny_compile:
        session.forward = torch.compile(session.model, backend="eager")
    session.start(None, (0, 0), None)
    loader = _loader(config, "train", plan.settings(0), devices, 0, 1, {})
    return RunLoop(config, plan, session, loader)


def timed_training(argv: Sequence[str], tiny_compile: bool = False) -> dict:
    """--benchmark's figures of ``argv``: its epoch 0 untimed, epoch 1 timed."""
    loop = open_run_loop(argv, tiny_compile)
    try:
        first = loop.epoch(0)
        timed = loop.epoch(1)
    finally:
        loop.close()
    # The untimed epoch's seconds show what start-up costs (--compile: the compilation).
    return {"ips": timed["train_ips"], "timed_images": timed["images"], "timed_iterations": timed["iterations"],
            "timed_s": timed["epoch_train_s"], "note": f"untimed first epoch {first['epoch_train_s']:.1f} s"}


def readiness_argv(device: str, dtype: str, sizes: CheckSizes) -> List[str]:
    """One step per epoch on one fixed synthetic batch at a constant LR (no
    warmup, the step schedule's first decay far away): its loss must fall."""
    argv = resnet_argv(device, sizes.readiness_batch, dtype, "channels_last", sizes, 1)
    argv[argv.index("-e") + 1] = str(sizes.readiness_steps + MAX_SKIPPED)
    argv.remove("--benchmark")
    return argv + synthetic_flags(sizes.readiness_batch) + ["--warmup-epochs", "0", "--lr", "0.1"]


def readiness(argv: Sequence[str], steps: int) -> dict:
    """Train until ``steps`` updates were applied (float16: steps that
    dynamic loss scaling skips, halving the scale from 2^16, come on top, at
    most MAX_SKIPPED): ok when the loss falls or the loss scale moves, and
    every weight changed; the error says what did not happen."""
    import torch

    loop = open_run_loop(argv)
    try:
        model, precision = loop.session.model, loop.session.precision
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        scale_before, losses = precision.state()["scale"], []
        while len(losses) - precision.skipped_steps < steps and precision.skipped_steps <= MAX_SKIPPED:
            losses.append(loop.epoch(len(losses))["train_loss"])
        scale_after, skipped = precision.state()["scale"], precision.skipped_steps
        unchanged = [name for name, p in model.named_parameters() if torch.equal(p.detach(), before[name])]
    finally:
        loop.close()
    note = (f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps; loss scale {scale_before:g} -> "
            f"{scale_after:g} ({skipped} steps skipped); {len(before) - len(unchanged)} of {len(before)} weights changed")
    problems = []
    if not (losses[-1] < losses[0] or scale_after != scale_before):
        problems.append("the loss did not fall and the loss scale did not move")
    if unchanged:
        problems.append(f"{len(unchanged)} weights never changed (first: {unchanged[0]})")
    return {"note": note, "error": "; ".join(problems) or None}


def resnet9_argv(device: str, dtype: str, sizes: CheckSizes) -> List[str]:
    return ["--engine", "torch", "--mode", "train", "--benchmark", "--device", device, "-n", "1",
            "-b", str(sizes.resnet9_batch), "--dtype", dtype, *DAWN_FLAGS,
            "--benchmark-warmup-epochs", "1", *synthetic_flags(sizes.resnet9_images)]


def resnet9_epoch(argv: Sequence[str]) -> dict:
    """One whole untimed epoch, then one timed: seconds per epoch, evaluation
    excluded (as DAWNBench's training time), and the 24 epochs projected."""
    figures = timed_training(argv)
    return {**figures, "note": f"{figures['timed_s']:.2f} s per epoch of {figures['timed_images']} images; "
                               f"{DAWN_EPOCHS} epochs: {DAWN_EPOCHS * figures['timed_s']:.1f} s projected; "
                               + figures["note"]}

