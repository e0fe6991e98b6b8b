"""The torch engine behind the run loop's interface (engines/__init__.py):
the model on this process's device, MXNet's update rules (optim.py),
autocast for bfloat16/float16, GradScaler for float16, checkpoints in
torch's formats under the suite's file rules (engine/checkpoint.py).

Losses are sums over the batch, as the MXNet engine's, and the optimizer
divides by the global batch (``rescale``), so both engines take the same
update from the same gradients."""
from __future__ import annotations

import inspect
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ...cli import RunFailure, UsageError, last_error_line
from ...config import Config, model_name
from ...engine.checkpoint import TORCH_FILES, checkpoint_paths, write_checkpoint
from ...files import fsync_path
from .models import get_torch_model
from .optim import build_optimizer

AUTOCAST_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# Dynamic loss scaling as the MXNet engine's LossScaler (engine/precision.py):
# start at 2^16, halve on overflow, double after 2000 clean steps.
INITIAL_LOSS_SCALE = 2.0 ** 16
GROWTH_INTERVAL = 2000


def torch_devices(device: str, count: int, first_gpu: int = 0) -> list:
    """This process's devices: ``count`` CUDA GPUs from ``first_gpu``, or the CPU."""
    if device == "gpu":
        return [torch.device("cuda", first_gpu + k) for k in range(count)]
    return [torch.device("cpu")] * count


def cudnn_autotune(config: Config) -> bool:
    """Whether cuDNN picks its convolution algorithms by timing them (the MXNet
    engine's MXNET_CUDNN_AUTOTUNE_DEFAULT rule, engine/gpu_settings.py): on,
    except with --rect-val, whose every val batch has a new shape and would be
    timed anew."""
    return not config.rect_val


def build_model(config: Config, device: torch.device) -> torch.nn.Module:
    """The model, initialised from --seed as the MXNet engine's rules say
    (engines/torch/models.py), on ``device``; channels_last for NHWC."""
    torch.manual_seed(config.seed)
    model = get_torch_model(model_name(config), classes=config.num_classes, init_bn0=config.init_bn0,
                            channels_last=config.input_layout == "NHWC")
    memory_format = torch.channels_last if config.input_layout == "NHWC" else torch.contiguous_format
    return model.to(device=device, memory_format=memory_format)


class TorchSession:
    """One run's model, optimizer and loss scaling on this process's device."""

    engine = "torch"

    def __init__(self, config: Config, devices, group, plan):
        self.config, self.group = config, group
        self.device = devices[0]
        if self.device.type == "cuda":   # GPU-ONLY
            torch.backends.cudnn.benchmark = cudnn_autotune(config)
        self.model = build_model(config, self.device)
        self.optimizer = build_optimizer(config, self.model)
        self.precision = _Precision(config, self.device)
        network, self.gradient_divisor = _data_parallel(self.model, self.device, group)
        # torch.compile traces on the first call; the model itself keeps the parameters and state_dict.
        self.forward = torch.compile(network) if config.compile else network
        self.stepper = TorchStepper(self)

    def start(self, prefix: Path, position: tuple, meta) -> None:
        if meta is not None:
            self._load(prefix, *position)
        self.model.train()

    def checkpoint_meta(self) -> dict:
        return {"loss_scaler": self.precision.state()}

    def save(self, prefix: Path, epoch: int, meta: dict, iteration: int = 0) -> None:
        write_checkpoint(_TorchFiles(self), prefix, epoch, meta, iteration)

    def training_state(self) -> dict:
        """What a resume needs beyond the weights."""
        return {"optimizer": self.optimizer.state_dict(), "loss_scaler": self.precision.scaler_state(),
                "cpu_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None}

    def load_weights(self, prefix: Path, epoch: int, iteration: int = 0) -> None:
        path = checkpoint_paths(prefix, epoch, iteration)["weights_pt"]
        try:
            self.model.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
        except Exception as err:  # noqa: BLE001 - torch raises RuntimeError/KeyError/UnpicklingError
            raise UsageError(f"checkpoint {path} does not fit this model ({last_error_line(err)})")

    def _load(self, prefix: Path, epoch: int, iteration: int) -> None:
        self.load_weights(prefix, epoch, iteration)
        files = checkpoint_paths(prefix, epoch, iteration)
        try:
            state = torch.load(files["train_pt"], map_location=self.device, weights_only=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.precision.restore_scaler(state["loss_scaler"])
            torch.set_rng_state(state["cpu_rng"].cpu())
            if state["cuda_rng"] is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        except Exception as err:  # noqa: BLE001
            raise UsageError(f"training state {files['train_pt']} cannot be loaded ({last_error_line(err)})")

    def evaluate(self, loader, epoch: int) -> dict:
        """Top-1 and top-5 over every val image exactly once (padding
        excluded), summed over all workers' shards."""
        correct1 = torch.zeros((), dtype=torch.float64, device=self.device)
        correct5 = torch.zeros((), dtype=torch.float64, device=self.device)
        images, left_out_before = 0, loader.skipped_records
        started = time.perf_counter()
        self.model.eval()
        with torch.no_grad():
            for step in loader.epoch(epoch):
                for data, label, pad in step:
                    with self.precision.autocast():
                        logits = self.forward(data)
                    valid = data.shape[0] - pad
                    ranked = logits.float().topk(min(5, logits.shape[1]), dim=1).indices[:valid]
                    hits = ranked == label[:valid].long().unsqueeze(1)
                    correct1 += hits[:, 0].sum()
                    correct5 += hits.sum()
                    images += valid
        self.model.train()
        top1, top5 = float(correct1), float(correct5)
        seconds = time.perf_counter() - started
        left_out = loader.skipped_records - left_out_before
        top1, top5, images, left_out = self.group.sum([top1, top5, images, left_out])
        images, left_out = int(round(images)), int(round(left_out))
        return {"val_top1": top1 / images, "val_top5": top5 / images, "val_ips": images / seconds,
                "val_s": seconds, "val_images": images, "skipped_records": left_out}


def _data_parallel(model: torch.nn.Module, device: torch.device, group):
    """(what the steps call, the divisor already in the gradients). Several
    processes: DDP, whose constructor broadcasts rank 0's weights (and
    BatchNorm statistics) and whose backward allreduces the gradients. From
    then on BatchNorm statistics stay each process's own
    (forward_sync_buffers=False; torch 2.13's name for broadcast_buffers),
    as MXNet keeps each device's; rank 0's are the ones checkpoints hold.

    DDP AVERAGES the gradients over the processes, and the optimizer wants
    their sum over the global batch: the stepper passes rescale = world size /
    global batch rather than replacing DDP's allreduce with a summing comm
    hook, which would put a Python call on every bucket of every step. With
    a power-of-two world size both the division and the larger rescale are
    exact in float32, so the update is the one the summed gradient gives."""
    if group.size == 1:
        return model, 1
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **_own_buffers(DistributedDataParallel)), group.size


def _own_buffers(ddp_class) -> dict:
    """DDP's argument that keeps each process's buffers its own after the
    start: ``forward_sync_buffers=False`` from torch 2.13 on (which deprecates
    ``broadcast_buffers``), ``broadcast_buffers=False`` before (the GPU
    machines' 2.11). Every worker starts from the same buffers either way:
    the same seed, or the same checkpoint."""
    if "forward_sync_buffers" in inspect.signature(ddp_class.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def score_checkpoint(config: Config, devices, prefix: Path, epoch: int, loader) -> dict:
    """--mode val on the torch engine: the weights of checkpoint ``epoch`` scored on ``loader``."""
    from ...engine.collective import Single

    session = TorchSession(config, devices, Single(), plan=None)
    session.load_weights(prefix, epoch)
    return session.evaluate(loader, 0)


class _Precision:
    """float32; bfloat16 (autocast); float16 (autocast and loss scaling:
    dynamic through GradScaler, or a static --loss-scale folded into the
    optimizer's rescale). Parameters stay float32 (the master weights)."""

    def __init__(self, config: Config, device: torch.device):
        self.device_type = device.type
        self.dtype = AUTOCAST_DTYPES.get(config.dtype)
        text = config.loss_scale or "dynamic"
        self.dynamic = config.dtype == "float16" and text == "dynamic"
        self.static_scale = 1.0
        if config.dtype == "float16" and not self.dynamic:
            self.static_scale = _static_scale(text)
        self.scaler = torch.amp.GradScaler(self.device_type, init_scale=INITIAL_LOSS_SCALE,
                                           growth_interval=GROWTH_INTERVAL, enabled=self.dynamic)
        self.skipped_steps = 0

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def state(self) -> dict:
        """The .json's view (as the MXNet engine's loss_scaler entry)."""
        scale = self.scaler.get_scale() if self.dynamic else self.static_scale
        return {"scale": scale, "dynamic": self.dynamic, "skipped_steps": self.skipped_steps}

    def scaler_state(self) -> dict:
        return {"scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps}

    def restore_scaler(self, state: dict) -> None:
        if self.dynamic:
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state["skipped_steps"])


def _static_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--loss-scale must be a number or 'dynamic', got {text!r}")
    if not value > 0:
        raise UsageError(f"--loss-scale must be positive, got {text}")
    return value


class TorchStepper:
    """engine/epoch.py's Stepper on PyTorch: forward under autocast, a
    float32 loss summed over the batch (pad samples masked), backward,
    update; the loss sum stays on the device. A non-finite float32 loss is
    caught one step late, as in the MXNet engine."""

    def __init__(self, session: TorchSession):
        self.session = session
        self.update_batch = 1
        self.loss_sum = None
        self.pending = None   # (loss sum, epoch, iteration) of the previous step

    @property
    def skipped_steps(self) -> int:
        return self.session.precision.skipped_steps

    def begin(self, update_batch: int) -> None:
        self.update_batch = update_batch
        self.loss_sum = torch.zeros((), dtype=torch.float32, device=self.session.device)
        self.pending = None

    def _loss(self, data, label, pad):
        config, session = self.session.config, self.session
        with session.precision.autocast():
            logits = session.forward(data)
        losses = F.cross_entropy(logits.float(), label.long(), reduction="none",
                                 label_smoothing=config.label_smoothing)
        if pad:
            losses = losses[:losses.shape[0] - pad]
        return losses.sum()

    def step(self, batches, lr: float, momentum: float, epoch: int, iteration: int) -> None:
        session = self.session
        precision, optimizer = session.precision, session.optimizer
        for group in optimizer.param_groups:
            group["lr"], group["momentum"] = lr, momentum
        (data, label, pad), = batches
        loss = self._loss(data, label, pad)
        optimizer.zero_grad(set_to_none=True)
        rescale = session.gradient_divisor / self.update_batch   # 1 / global batch, DDP's averaging undone
        if precision.dynamic:
            precision.scaler.scale(loss).backward()
            scale = precision.scaler.get_scale()   # the step's one host read (as MXNet's overflow flag)
            precision.scaler.step(optimizer, rescale=rescale)
            precision.scaler.update()
            if precision.scaler.get_scale() < scale:
                precision.skipped_steps += 1
        else:
            (loss * precision.static_scale if precision.static_scale != 1 else loss).backward()
            if self.pending is not None:
                _check_finite(*self.pending)
            self.pending = (loss.detach(), epoch, iteration)
            optimizer.step(rescale=rescale / precision.static_scale)
        self.loss_sum += loss.detach()

    def loss_so_far(self) -> float:
        return float(self.loss_sum)

    def finish(self) -> float:
        if self.pending is not None:
            _check_finite(*self.pending)
            self.pending = None
        return float(self.loss_sum)   # waits for the epoch's last update too


def _check_finite(loss_sum, epoch: int, iteration: int) -> None:
    if not math.isfinite(float(loss_sum)):
        raise RunFailure(f"the loss is not finite (NaN or Inf) at epoch {epoch + 1}, iteration {iteration}: "
                         "stopping (lower --lr, or use float16's dynamic loss scaling); "
                         "the checkpoints written so far are kept")


class _TorchFiles:
    """What a torch checkpoint writes (engine/checkpoint.write_checkpoint's
    ``files``): the model's state_dict (.pt) and the training state (.train.pt)."""

    def __init__(self, session: TorchSession):
        self.session = session

    def write(self, tmp: dict, final: dict, symbol: Path):
        model_state = {name: value.detach().cpu() for name, value in self.session.model.state_dict().items()}
        contents = {"weights_pt": model_state, "train_pt": _to_cpu(self.session.training_state())}
        for name in TORCH_FILES:
            torch.save(contents[name], tmp[name])
            fsync_path(tmp[name])
        return [(tmp[name], final[name]) for name in TORCH_FILES], {}

    def size(self) -> int:
        params = sum(t.numel() * t.element_size() for t in self.session.model.state_dict().values())
        return 3 * params   # weights, momentum state, and room for the scaler and RNG


def _to_cpu(value):
    """A copy of a nested state with every tensor in host memory."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value
