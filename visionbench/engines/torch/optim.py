"""The torch engine's optimizer: MXNet 1.9.1's ``sgd`` (momentum) and ``nag``
(Nesterov) updates and visionbench's LARS (engines/mxnet/lars.py), written with
torch's multi-tensor ``_foreach_*`` operators, so that both engines move the
weights through the same float32 numbers.

What the MXNet engine runs, and this module repeats operation by operation
(every product and sum rounded to float32 in the same order; no fused
multiply-add, which rounds once where MXNet's CPU kernels round twice):

- sgd, MXNet's ``multi_sgd_mom_update`` (src/operator/optimizer_op-inl.h,
  MultiSGDKernel): ``mom = momentum*mom - (lr*wd)*w - (lr*rescale)*g;
  w = w + mom``. At a step with momentum 0 MXNet's SGD calls
  ``multi_sgd_update`` instead: ``w = w - (lr*wd)*w - (lr*rescale)*g``, and
  the momentum state stays as it was.
- nag, MXNet's ``nag_mom_update`` (NAGMomKernel), including its in-place
  detail: the kernel writes the new weight before it updates ``mom``, and
  reads the weight decay term from the weight it has just written:
  ``m1 = momentum*mom; w' = (w - m1) + (momentum+1)*(m1 - lr*(rescale*g + wd*w));
  mom = m1 - lr*(rescale*g + wd*w')``, at momentum 0 too. A parameter
  without a state yet runs ``sgd_update``: ``w = (1 - lr*wd)*w - (lr*rescale)*g``.
- Both create the state (zeros) at the first step whose momentum is not 0
  (MXNet creates it at the first update, and none when the momentum is 0 then;
  MXNet fails where a step with momentum finds none: this starts one).
- lars (engines/mxnet/lars.py, MXNet's ``multi_lars`` then
  ``preloaded_multi_sgd_mom_update``): for the adapted group, each tensor's
  rate ``lr_k = lr*eta*|w| / (|g|*rescale + wd*|w| + eps)`` when ``|w| > 0``
  and ``|g| > 0`` (else ``lr``), then sgd's momentum update with ``lr_k``;
  the unadapted group (BatchNorm parameters and biases) takes the momentum
  update with ``lr`` and wd 0. LARS always keeps a state and runs the momentum
  update (at momentum 0 too). Its norms differ from MXNet's in the last bits: MXNet's CPU kernel
  sums the squares one by one in float32, torch's reduction sums in another
  order.

The momentum state is MXNet's ``mom`` (the weights move by it: ``w += mom``),
which is minus the velocity ``v`` of torch's SGD and of MLPerf's LARS
(``w -= v``); it lives in ``optimizer.state[param]["mom"]``.

``g`` is the gradient as backward leaves it, summed over the global batch
(the torch engine's loss is a sum, as MXNet's); ``rescale`` (1 / global
batch) turns it into the mean, inside the update as MXNet's ``rescale_grad``
does. A float16 loss scale is not part of it: GradScaler unscales before
``step`` (``scaler.step(optimizer, rescale=...)`` passes it on). Under DDP,
whose allreduce averages over the processes, the gradient is the global
sum divided by the world size: rescale = world size / global batch. The
run loop sets ``group["lr"]`` and ``group["momentum"]`` before every step,
as the MXNet engine sets the trainer's.

Exactness (tests/test_torch_optim.py): sgd and nag equal MXNet's CPU kernels
bit for bit; lars within a few float32 ulp of the weights. MXNet's GPU
kernels are compiled with fused multiply-adds (nvcc's default), so MXNet on
a GPU is itself a last-bit away from MXNet on a CPU.

Cost: a step is 4 or 5 foreach calls per group (sgd), 9 to 11 (nag), each
one multi-tensor kernel on a GPU (all parameters float32 on one device),
whatever the number of tensors; LARS adds about 15 small operators on its
vector of rates. LARS reads its per-tensor rates to the host once per step (one small copy;
torch has no foreach operator that takes per-tensor scalars from a device
tensor); GradScaler's step under float16 waits on the device anyway.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch

from ...cli import UsageError

# Layers whose weight and bias are Gluon's gamma and beta.
NORM_LAYERS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)
# Parameter names Gluon's --no-bn-wd and LARS leave alone (lars.UNADAPTED_SUFFIXES), for
# models that keep Gluon's names.
NO_DECAY_SUFFIXES = ("bias", "gamma", "beta")
STATE_KEY = "mom"   # MXNet's momentum state: w += mom
KINDS = ("sgd", "nag", "lars")


def f32(value) -> np.float32:
    return np.float32(value)


@dataclass(frozen=True)
class StepScalars:
    """A group's settings for one step, as the float32 numbers MXNet's kernels use."""
    lr: np.float32
    momentum: np.float32
    wd: np.float32
    rescale: np.float32

    @property
    def lr_wd(self) -> float:          # MXNet: lr*wd, rounded, then times w
        return float(self.lr * self.wd)

    @property
    def lr_rescale(self) -> float:     # MXNet: lr*rescale_grad, rounded, then times g
        return float(self.lr * self.rescale)


class MXNetOptimizer(torch.optim.Optimizer):
    """MXNet's ``sgd`` or ``nag``, or visionbench's LARS (``kind``), as the
    MXNet engine updates; see the module docstring. Group keys: kind, lr,
    momentum, wd, rescale (used when ``step`` gets none); LARS's adapt (the
    trust ratio on this group: the weights, not BatchNorm and biases), eta,
    epsilon."""

    def __init__(self, params, kind: str = "sgd", lr: float = 0.0, momentum: float = 0.0, wd: float = 0.0,
                 rescale: float = 1.0, adapt: bool = False, eta: float = 0.001, epsilon: float = 0.0):
        defaults = dict(kind=kind, lr=lr, momentum=momentum, wd=wd, rescale=rescale, adapt=adapt, eta=eta,
                        epsilon=epsilon)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["kind"] not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {group['kind']!r}")
        if group["adapt"] and group["kind"] != "lars":
            raise ValueError("adapt (the LARS trust ratio) needs kind 'lars'")
        for param in group["params"]:
            # The update's float32 rounding is MXNet's; autocast keeps parameters float32.
            if param.dtype != torch.float32:
                raise ValueError(f"MXNetOptimizer updates float32 parameters, got one of {param.dtype}")

    @torch.no_grad()
    def step(self, closure=None, *, rescale: float = None):
        """One update of every parameter that has a gradient (MXNet updates
        all; a torch parameter without one took no part). ``rescale``: what
        multiplies the gradients (1 / global batch); None: each group's."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise ValueError("MXNetOptimizer takes dense gradients")
            grads = [p.grad for p in params]
            scalars = StepScalars(f32(group["lr"]), f32(group["momentum"]), f32(group["wd"]),
                                  f32(group["rescale"] if rescale is None else rescale))
            if group["kind"] == "nag":
                self._nag_step(params, grads, scalars)
            elif group["kind"] == "lars":
                rates = (lars_rates(params, grads, scalars, f32(group["eta"]), f32(group["epsilon"]))
                         if group["adapt"] else (scalars.lr_wd if scalars.wd else None, scalars.lr_rescale))
                momentum_step(params, grads, self._buffers(params), scalars.momentum, *rates)
            elif scalars.momentum != 0:
                momentum_step(params, grads, self._buffers(params), scalars.momentum,
                              scalars.lr_wd if scalars.wd else None, scalars.lr_rescale)
            else:   # MXNet's SGD at momentum 0: multi_sgd_update, which leaves the state as it was
                sgd_step(params, grads, scalars)
        return loss

    def _buffers(self, params: List[torch.Tensor]) -> List[torch.Tensor]:
        """Each parameter's momentum state, zeros when it has none yet (MXNet's create_state)."""
        buffers = []
        for param in params:
            state = self.state[param]
            if STATE_KEY not in state:
                state[STATE_KEY] = torch.zeros_like(param, memory_format=torch.preserve_format)
            buffers.append(state[STATE_KEY])
        return buffers

    def _nag_step(self, params: List[torch.Tensor], grads: List[torch.Tensor], s: StepScalars) -> None:
        """MXNet's NAG creates no state while the momentum is 0, and runs
        sgd_update without one; with a state, nag_mom_update (at momentum 0 too)."""
        if s.momentum != 0:
            nesterov_step(params, grads, self._buffers(params), s)
            return
        kept = [k for k, p in enumerate(params) if STATE_KEY in self.state[p]]
        fresh = [k for k, p in enumerate(params) if STATE_KEY not in self.state[p]]
        stateless_step([params[k] for k in fresh], [grads[k] for k in fresh], s)
        if kept:
            kept_params = [params[k] for k in kept]
            nesterov_step(kept_params, [grads[k] for k in kept], self._buffers(kept_params), s)


def momentum_step(params, grads, buffers, momentum: np.float32, lr_wds, lr_rescales) -> None:
    """MXNet's MultiSGDKernel: mom = momentum*mom - lr_wd*w - lr_rescale*g;
    w = w + mom. ``lr_wds``/``lr_rescales``: float32 values, one for all
    tensors or one per tensor (LARS); ``lr_wds`` None: no weight decay (MXNet's
    ``- (lr*0)*w`` leaves every value as it is)."""
    torch._foreach_mul_(buffers, float(momentum))
    if lr_wds is not None:
        torch._foreach_sub_(buffers, torch._foreach_mul(params, lr_wds))
    torch._foreach_sub_(buffers, torch._foreach_mul(grads, lr_rescales))
    torch._foreach_add_(params, buffers)


def nesterov_step(params, grads, buffers, s: StepScalars) -> None:
    """MXNet's NAGMomKernel, weight written before the momentum (see the module docstring)."""
    torch._foreach_mul_(buffers, float(s.momentum))                                  # m1
    step = _decayed_gradient(params, grads, s)                                       # lr*(rescale*g + wd*w)
    ahead = torch._foreach_sub(buffers, step)
    torch._foreach_mul_(ahead, float(s.momentum + f32(1)))
    torch._foreach_sub_(params, buffers)
    torch._foreach_add_(params, ahead)                                               # (w - m1) + (momentum+1)*(..)
    if s.wd:
        step = _decayed_gradient(params, grads, s)                                   # with the new weight
    torch._foreach_sub_(buffers, step)


def _decayed_gradient(params, grads, s: StepScalars) -> List[torch.Tensor]:
    """lr * (rescale*g + wd*w), rounded as NAGMomKernel rounds it."""
    step = torch._foreach_mul(grads, float(s.rescale))
    if s.wd:
        torch._foreach_add_(step, torch._foreach_mul(params, float(s.wd)))
    torch._foreach_mul_(step, float(s.lr))
    return step


def stateless_step(params, grads, s: StepScalars) -> None:
    """MXNet's SGDKernel (sgd_update, NAG without a state): w = (1 - lr*wd)*w - (lr*rescale)*g."""
    if not params:
        return
    if s.wd:
        torch._foreach_mul_(params, float(f32(1) - s.lr * s.wd))
    torch._foreach_sub_(params, torch._foreach_mul(grads, s.lr_rescale))


def sgd_step(params, grads, s: StepScalars) -> None:
    """MXNet's MultiSGDKernel without momentum (multi_sgd_update):
    w = w + ((0 - (lr*wd)*w) - (lr*rescale)*g), which is w - ((lr*wd)*w + (lr*rescale)*g)
    to the bit (rounding is symmetric in sign)."""
    step = torch._foreach_mul(grads, s.lr_rescale)
    if s.wd:
        decay = torch._foreach_mul(params, s.lr_wd)
        torch._foreach_add_(decay, step)
        step = decay
    torch._foreach_sub_(params, step)


def lars_rates(params, grads, s: StepScalars, eta: np.float32, epsilon: np.float32) -> Tuple[list, list]:
    """(lr_k*wd, lr_k*rescale) per tensor, float32, where lr_k is MXNet's
    multi_lars rate: lr*eta*|w| / (|g|*rescale + wd*|w| + eps) when |w| > 0
    and |g| > 0, else lr. Computed on the parameters' device; one host read."""
    # _foreach_norm, not torch 2.13's _foreach_powsum: the GPU machines run 2.11.
    weight_norm = torch.stack(torch._foreach_norm(params))
    grad_norm = torch.stack(torch._foreach_norm(grads))
    denominator = grad_norm * float(s.rescale) + weight_norm * float(s.wd) + float(epsilon)
    trusted = weight_norm * float(s.lr * eta) / denominator
    rates = torch.where((weight_norm > 0) & (grad_norm > 0), trusted, float(s.lr))
    lr_wds, lr_rescales = torch.stack([rates * float(s.wd), rates * float(s.rescale)]).tolist()
    return lr_wds, lr_rescales


def is_no_decay(name: str, owner: torch.nn.Module) -> bool:
    """Gluon's gamma, beta or bias: a normalisation layer's parameter, or any bias."""
    return isinstance(owner, NORM_LAYERS) or name.rsplit(".", 1)[-1].endswith(NO_DECAY_SUFFIXES)


def split_parameters(model: torch.nn.Module) -> Tuple[List[torch.nn.Parameter], List[torch.nn.Parameter]]:
    """(weights, BatchNorm parameters and biases) among the trained parameters, in
    named_parameters() order: what --no-bn-wd exempts and LARS leaves unadapted."""
    weights, exempt = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            owner = model.get_submodule(name.rpartition(".")[0])
            (exempt if is_no_decay(name, owner) else weights).append(param)
    return weights, exempt


def build_optimizer(config, model: torch.nn.Module) -> MXNetOptimizer:
    """The optimizer the MXNet engine's build_trainer builds, for a torch model:
    group 0 the weights (decayed; adapted by LARS), group 1 BatchNorm
    parameters and biases (decayed only with --bn-wd and sgd; LARS neither
    adapts nor decays them, as engines/mxnet/lars.py). lr starts at 0: the run loop
    sets lr and momentum before every step."""
    if config.optimizer == "lars" and config.nesterov:
        raise UsageError("--optimizer lars takes plain momentum (as MLPerf's reference); leave out --nesterov")
    kind = "lars" if config.optimizer == "lars" else "nag" if config.nesterov else "sgd"
    weights, exempt = split_parameters(model)
    exempt_wd = config.wd if config.bn_wd and kind != "lars" else 0.0
    groups = [{"params": weights, "name": "weights", "adapt": kind == "lars"},
              {"params": exempt, "name": "bn_and_bias", "wd": exempt_wd}]
    return MXNetOptimizer(groups, kind=kind, lr=0.0, momentum=config.momentum, wd=config.wd,
                          eta=config.lars_eta, epsilon=config.lars_epsilon)
