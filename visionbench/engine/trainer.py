"""The training and validation loop: one step function for every precision
and device count, metrics accumulated on the devices and read once per epoch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Dict

from ..config import Config, model_name
from ..phases import DataSettings
from .epoch import EpochProgress, capped_steps, result_steps, run_epoch  # noqa: F401 - the run loop's names
from .plan import TrainingPlan, data_folder
from .precision import LossScaler, Precision, all_finite


@dataclass
class Run:
    """Everything built once per run."""
    config: Config
    devices: list
    precision: Precision
    net: object
    trainer: object
    plan: TrainingPlan
    scaler: LossScaler
    group: object = None        # engine/collective.py: this worker among all (None: the only one)

    @property
    def num_workers(self) -> int:
        return self.group.size if self.group is not None else 1


def build_net(config: Config, devices, precision: Precision):
    import mxnet as mx

    from ..models import get_model

    net = get_model(model_name(config), classes=config.num_classes, layout=config.input_layout,
                    init_bn0=config.init_bn0)
    mx.random.seed(config.seed)
    # He initialisation (Gaussian, fan-in, magnitude 2), as NVIDIA's example.
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2), ctx=devices)
    if precision.dtype != "float32":
        net.cast(precision.dtype)   # BatchNorm keeps float32 parameters
    net.hybridize(static_alloc=True, static_shape=True)
    if not config.bn_wd:
        for param in net.collect_params(".*gamma|.*beta|.*bias").values():
            param.wd_mult = 0.0
    return net


def build_trainer(config: Config, net, precision: Precision, kvstore=None):
    """``kvstore``: the job's parameter-server kvstore object, or None for
    this machine's kvstore named by --kv-store."""
    from mxnet import gluon

    optimizer = "nag" if config.nesterov else "sgd"
    options = {"learning_rate": 0.0, "momentum": config.momentum, "wd": config.wd,
               "multi_precision": precision.multi_precision}
    if config.optimizer == "lars":
        from ..engines.mxnet.lars import VisionbenchLARS

        optimizer = VisionbenchLARS(eta=config.lars_eta, epsilon=config.lars_epsilon, **options)
        options = None
    if config.kv_store == "horovod":   # optional extra; not installed on the test machines
        import horovod.mxnet as hvd
        return hvd.DistributedTrainer(net.collect_params(), optimizer, options)
    if kvstore is None:
        kvstore = "device" if config.kv_store == "nccl" and config.device == "cpu" else config.kv_store
    # update_on_kvstore=False: gradients are reduced, checked for overflow,
    # then applied by the same code on every device count.
    return gluon.Trainer(net.collect_params(), optimizer, options, kvstore=kvstore, update_on_kvstore=False)


def _loader(config: Config, split: str, settings: DataSettings, devices, rank: int, num_workers: int, cache: Dict):
    from ..data.loader import make_loader
    from ..data.spec import loader_spec

    folder = data_folder(config, settings)
    key = (split, settings, str(folder))
    if key not in cache:
        spec = loader_spec(config, split, devices, rank, num_workers)
        spec = replace(spec, prefix=(folder / split) if folder else None, batch_size=settings.batch_size,
                       image_size=settings.image_size,
                       augment=replace(spec.augment, min_scale=settings.min_scale, rect_val=settings.rect_val))
        if len(cache) >= 4:   # phases change settings a few times; keep memory bounded
            cache.clear()
        cache[key] = make_loader(spec)
    return cache[key]


def _float32(out):
    """Logits in float32 for the loss. NDArray.astype copies outside autograd
    (no gradient flows back): use the Cast operator, and only when needed.
    A Symbol (the float16 contract checks type-check this very graph) is
    always cast: its dtype is known only after inference."""
    import numpy as np
    import mxnet as mx

    if isinstance(out, mx.sym.Symbol):
        return mx.sym.cast(out, dtype="float32")
    return out if out.dtype == np.float32 else mx.nd.cast(out, dtype="float32")


def make_loss(label_smoothing: float):
    """Softmax cross-entropy; with label smoothing the targets are dense rows."""
    from mxnet import gluon

    return gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=label_smoothing == 0)


def device_loss(net, loss_fn, data, targets):
    """Per-sample losses of one device's batch, float32 whatever the model's
    dtype: what every training step differentiates (NDArrays), and what the
    float16 contract checks infer types through (Symbols)."""
    return loss_fn(_float32(net(data)), targets)


def _pad_mask(size: int, pad: int, context):
    import mxnet as mx
    import numpy as np

    mask = np.ones(size, dtype=np.float32)
    mask[size - pad:] = 0
    return mx.nd.array(mask, ctx=context)


def _targets(label, classes: int, smoothing: float):
    import mxnet as mx

    if smoothing == 0:
        return label
    return mx.nd.one_hot(label, classes) * (1 - smoothing) + smoothing / classes


def _check_finite(step_sums, epoch: int, iteration: int) -> None:
    """Raise RunFailure if the loss of step ``iteration`` was NaN or Inf:
    ``step_sums`` are its per-device loss sums, which are finite exactly when
    every sample's loss is (losses are >= 0: nothing cancels)."""
    import math

    from ..cli import RunFailure

    if not all(math.isfinite(s.asscalar()) for s in step_sums):
        raise RunFailure(f"the loss is not finite (NaN or Inf) at epoch {epoch + 1}, iteration {iteration}: "
                         "stopping (lower --lr, or use float16's dynamic loss scaling); "
                         "the checkpoints written so far are kept")


class MxnetStepper:
    """The MXNet engine's training step (engine/epoch.py's Stepper): one
    step function for every precision and device count, loss sums kept on
    the devices. Non-finite float32 losses are caught one step late (the
    flag of step i is read while step i + 1 runs), so the host does not wait
    for every step; float16's dynamic loss scaling reads one overflow flag
    per step."""

    def __init__(self, run: Run):
        self.run = run
        self.loss_fn = make_loss(run.config.label_smoothing)
        self.update_batch = 1
        self.loss_sums = []
        self.pending = None   # (loss sums per device, epoch, iteration) of the previous step
        # After allreduce every device holds the same reduced gradients: the
        # overflow check reads the first device's (the same arrays every step,
        # listed after the first backward: a model may initialise deferred).
        self.first_device_grads = None

    @property
    def skipped_steps(self) -> int:
        return self.run.scaler.skipped_steps

    def begin(self, update_batch: int) -> None:
        import mxnet as mx

        self.update_batch = update_batch
        self.loss_sums = [mx.nd.zeros(1, ctx=c) for c in self.run.devices]
        self.pending = None

    def _losses(self, batches) -> list:
        config, net = self.run.config, self.run.net
        losses = []
        for data, label, pad in batches:
            loss = device_loss(net, self.loss_fn, data, _targets(label, config.num_classes, config.label_smoothing))
            if pad:
                loss = loss * _pad_mask(data.shape[0], pad, data.context)
            losses.append(loss)
        return losses

    def step(self, batches, lr: float, momentum: float, epoch: int, iteration: int) -> None:
        from mxnet import autograd

        trainer, scaler = self.run.trainer, self.run.scaler
        trainer.set_learning_rate(lr)
        trainer._optimizer.momentum = momentum
        with autograd.record():
            losses = self._losses(batches)
            scaled = [loss * scaler.scale for loss in losses] if scaler.scale != 1 else losses
        autograd.backward(scaled)
        step_sums = [loss.sum() for loss in losses]
        if not scaler.dynamic:
            if self.pending is not None:
                _check_finite(*self.pending)
            self.pending = (step_sums, epoch, iteration)
        trainer.allreduce_grads()
        finite = True
        if scaler.dynamic:
            if self.first_device_grads is None:
                self.first_device_grads = [p.list_grad()[0] for p in self.run.net.collect_params().values()
                                           if p.grad_req != "null"]
            finite = bool(all_finite(self.first_device_grads).asscalar())   # the step's one host read
        used_scale = scaler.scale   # the scale this step's backward ran with; update() may change it
        if scaler.update(finite):
            trainer.update(self.update_batch * used_scale)   # unscales the gradients exactly once
        for total, step_sum in zip(self.loss_sums, step_sums):
            total += step_sum

    def loss_so_far(self) -> float:
        return sum(float(s.asscalar()) for s in self.loss_sums)

    def finish(self) -> float:
        import mxnet as mx

        if self.pending is not None:
            _check_finite(*self.pending)
            self.pending = None
        loss_sum = self.loss_so_far()   # one sync per epoch
        mx.nd.waitall()   # the last update too: the epoch's time covers all of its work
        return loss_sum


def train_epoch(run: Run, epoch: int, loader, progress: bool, start: EpochProgress = None, stop=None) -> dict:
    """engine/epoch.py's run_epoch with the MXNet step."""
    return run_epoch(MxnetStepper(run), run.config, run.plan, run.group, epoch, loader, progress, start, stop)


def evaluate(net, loader, epoch: int = 0, group=None) -> dict:
    """Top-1 and top-5 over every val image exactly once (padding excluded),
    summed over all workers' shards when ``group`` has several."""
    import mxnet as mx

    devices = loader.spec.devices
    top1 = [mx.nd.zeros(1, ctx=c) for c in devices]
    top5 = [mx.nd.zeros(1, ctx=c) for c in devices]
    images = 0
    left_out_before = loader.skipped_records
    started = time.perf_counter()
    for step in loader.epoch(epoch):
        for i, (data, label, pad) in enumerate(step):
            out = _float32(net(data))
            k = min(5, out.shape[1])
            ranked = mx.nd.topk(out, k=k, ret_typ="indices").astype("float32")
            hits = ranked == label.reshape((-1, 1))
            valid = data.shape[0] - pad
            top1[i] += hits[:valid, 0].sum()
            top5[i] += hits[:valid].sum()
            images += valid
    correct1 = sum(float(t.asscalar()) for t in top1)
    correct5 = sum(float(t.asscalar()) for t in top5)
    seconds = time.perf_counter() - started
    left_out = loader.skipped_records - left_out_before
    if group is not None:
        correct1, correct5, images, left_out = group.sum([correct1, correct5, images, left_out])
        images, left_out = int(round(images)), int(round(left_out))
    return {"val_top1": correct1 / images, "val_top5": correct5 / images, "val_ips": images / seconds,
            "val_s": seconds, "val_images": images, "skipped_records": left_out}
