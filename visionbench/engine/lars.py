"""LARS as MLPerf Training's ResNet-50 reference defines it (``--optimizer lars``).

For every parameter but BatchNorm's gamma/beta and biases, each step:

    trust  = eta * |w| / (|g| + wd * |w| + eps)   when |w| > 0 and |g| > 0, else 1
    v      = momentum * v + lr * trust * (g + wd * w)
    w      = w - v

BatchNorm parameters and biases take the plain momentum step with neither
the trust ratio nor weight decay (``v = momentum * v + lr * g``). ``g`` is the
gradient after ``rescale_grad`` (and clipping, when set); norms are L2 over
the whole tensor. Everything stays on the device: no host read per layer.

Why not MXNet's own ``mx.optimizer.LARS``: it recognises BatchNorm and bias
parameters by ``idx2name``, which a Gluon Trainer leaves empty (so it would
adapt them too), scales momentum by the LR ratio of consecutive steps
(``momentum_correction``), which MLPerf's reference does not, and reads each
layer's norms back to the host outside its aggregated path.

float16 (``multi_precision=True``): the state of a float16 parameter is
(momentum, float32 master weight), in SGD's order; ``update`` runs on the
master weight with a float32 gradient, then the float16 weight is cast from it.
"""
from __future__ import annotations

import mxnet as mx
import numpy as np

# Parameters LARS leaves unadapted and undecayed (MLPerf: "batch norm and bias").
UNADAPTED_SUFFIXES = ("gamma", "beta", "bias")


@mx.optimizer.Optimizer.register
class VisionbenchLARS(mx.optimizer.Optimizer):
    def __init__(self, momentum: float = 0.9, eta: float = 0.001, epsilon: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.eta = eta
        self.epsilon = epsilon

    def create_state(self, index, weight):
        return mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype)

    def create_state_multi_precision(self, index, weight):
        if self.multi_precision and weight.dtype == np.float16:
            master = weight.astype("float32")
            return (self.create_state(index, master), master)
        return self.create_state(index, weight)

    def update_multi_precision(self, index, weight, grad, state):
        if self.multi_precision and weight.dtype == np.float16:
            momentum, master = state
            self.update(index, master, grad.astype("float32"), momentum)
            mx.nd.cast(master, dtype=weight.dtype, out=weight)
        else:
            self.update(index, weight, grad, state)

    def _name(self, index) -> str:
        if index in self.param_dict:
            return self.param_dict[index].name
        return self.idx2name.get(index, str(index))

    def adapts(self, index) -> bool:
        return not self._name(index).endswith(UNADAPTED_SUFFIXES)

    def update(self, index, weight, grad, state):
        self._update_count(index)
        lr = self._get_lr(index)
        grad = grad * self.rescale_grad
        if self.clip_gradient is not None:
            grad = mx.nd.clip(grad, -self.clip_gradient, self.clip_gradient)
        if not self.adapts(index):
            state[:] = self.momentum * state + lr * grad
        else:
            wd = self._get_wd(index)
            weight_norm = mx.nd.norm(weight)
            grad_norm = mx.nd.norm(grad)
            ratio = self.eta * weight_norm / (grad_norm + wd * weight_norm + self.epsilon)
            usable = (weight_norm > 0) * (grad_norm > 0)
            trust = mx.nd.where(usable, ratio, mx.nd.ones_like(ratio))
            state[:] = self.momentum * state + mx.nd.broadcast_mul(lr * trust, grad + wd * weight)
        weight[:] = weight - state
