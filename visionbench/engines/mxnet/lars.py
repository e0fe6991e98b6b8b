"""LARS as MLPerf Training's ResNet-50 reference defines it (``--optimizer lars``).

For every parameter but BatchNorm's gamma/beta and biases, each step:

    trust  = eta * |w| / (|g| + wd * |w| + eps)   when |w| > 0 and |g| > 0, else 1
    v      = momentum * v + lr * trust * (g + wd * w)
    w      = w - v

BatchNorm parameters and biases take the plain momentum step with neither
the trust ratio nor weight decay (``v = momentum * v + lr * g``). ``g`` is the
gradient after ``rescale_grad``; norms are L2 over the whole tensor.

How: MXNet's fused multi-tensor operators, a handful of calls per update of
all parameters of one dtype on one device. The per-array arithmetic this
replaces made 749 operator calls per update of ResNet18's 62 arrays (MXNet's
profiler), each a Python dispatch and, on GPUs, a wait on the stream; this
makes 16:

- ``device_rates``: the LRs and wds as one device array, filled by 3
  asynchronous operators (no host copy to wait for).
- ``multi_sum_sq`` once over the weights and gradients (twice in float16,
  where their dtypes differ), then ``multi_lars``, turn each adapted array's
  LR into ``lr * trust``. Its formula, in MXNet 1.9.1's
  src/operator/contrib/multi_lars-inl.h, is ours with the epsilon in the
  same place: ``lr * eta * |w| / (|g_raw| * rescale_grad + wd * |w| + eps)``,
  valid when ``|w| > 0`` and ``|g_raw|^2 > 0``; ``|g_raw| * rescale_grad``
  equals ``|g|`` up to float32 rounding.
- ``preloaded_multi_sgd_mom_update`` (``preloaded_multi_mp_sgd_mom_update``
  for float16), one call per array size (``fused_chunks``), applies
  ``m = momentum * m - lr * wd * w - lr * g; w = w + m`` with those LRs,
  and wd 0 for the unadapted arrays.

So the optimizer state is MXNet's momentum ``m = -v`` (same magnitude,
opposite sign); the weights follow the same sequence. The pickled optimizer
(Gluon's ``Trainer.save_states`` stores it beside the states) carries
``state_format``: states saved by the earlier per-array implementation
(``v``, no ``state_format``) are refused in one line. Converting them would
flip the sign of every state, but the optimizer is unpickled after the
states, with no reference to them.

Differences from the earlier implementation, all float32 rounding (within
tests/test_lars.py's tolerances): ``|g_raw| * rescale_grad`` for ``|g|``;
MXNet's CPU ``multi_sum_sq`` sums squares one by one in float32 where
``norm`` did its own reduction; the update multiplies ``lr * trust`` once.

Gradient clipping (``clip_gradient``) is refused: the fused norms are of the
unclipped gradient, and the suite never clips.

Why not MXNet's own ``mx.optimizer.LARS``: it recognises BatchNorm and bias
parameters by ``idx2name``, which a Gluon Trainer leaves empty (so it would
adapt them too), scales momentum by the LR ratio of consecutive steps
(``momentum_correction``), which MLPerf's reference does not, and updates
MXNET_OPTIMIZER_AGGREGATION_SIZE arrays per call (4 by default).

float16 (``multi_precision=True``): the state of a float16 parameter is
(momentum, float32 master weight), in SGD's order; the norms are of the
master weight and of the float16 gradient, the update runs on the master
weight and casts the float16 weight from it (one fused operator).
"""
from __future__ import annotations

import itertools
from typing import List, Sequence, Tuple

import mxnet as mx
import numpy as np

from ...cli import UsageError

# Parameters LARS leaves unadapted and undecayed (MLPerf: "batch norm and bias").
UNADAPTED_SUFFIXES = ("gamma", "beta", "bias")
# Arrays per update call (Optimizer.aggregate_num, set here rather than by
# MXNET_OPTIMIZER_AGGREGATION_SIZE): all of one dtype on one device at once
# (ResNet152 has 467), so the norms and trust ratios take 2 or 3 operators.
ARRAYS_PER_CALL = 4096
# preloaded_multi_*sgd_mom_update takes at most 60 arrays a call
# (PreloadedMultiSGDKernelParam::N in MXNet 1.9.1; more would overrun it).
FUSED_UPDATE_LIMIT = 60
# That operator walks every array of a call for each element index up to the
# largest size: a call holds arrays of one size, or small ones (BatchNorm's and
# the biases', a few hundred elements each) while it visits at most SMALL_WORK
# elements. On an AMD EPYC (2 shared cores), ResNet18's weights in calls of up
# to 60 whose largest size was at most twice the elements updated took 4 times
# as long as one call per array (224 vs 52 ms); same-size calls, about as long.
SMALL_WORK = 1 << 16
# device_rates: at most this many fills (asynchronous operators) before it copies instead.
MAX_FILLS = 4
# What the pickled optimizer says its states are: MXNet's momentum (w += m).
STATE_FORMAT = "mxnet-momentum"
OLD_STATES = ("the checkpoint's optimizer state (.states) was saved by visionbench's earlier --optimizer lars, "
              "whose momentum has the opposite sign to this version's fused update: resume it with the version "
              "that saved it, or start a new run under another --model-prefix")


def as_lists(index, weight, grad, state):
    """Updater calls with lists when aggregate_num > 0; anyone else may not."""
    if isinstance(index, (tuple, list)):
        return list(index), list(weight), list(grad), list(state)
    return [index], [weight], [grad], [state]


@mx.optimizer.Optimizer.register
class VisionbenchLARS(mx.optimizer.Optimizer):
    def __init__(self, momentum: float = 0.9, eta: float = 0.001, epsilon: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if self.clip_gradient is not None:
            raise ValueError("VisionbenchLARS does not clip gradients (its fused norms are of the unclipped ones)")
        self.momentum = momentum
        self.eta = eta
        self.epsilon = epsilon
        self.aggregate_num = ARRAYS_PER_CALL
        self.state_format = STATE_FORMAT

    def __setstate__(self, state):
        if state.get("state_format") != STATE_FORMAT:
            raise UsageError(OLD_STATES)
        super().__setstate__(state)
        self.aggregate_num = ARRAYS_PER_CALL

    def create_state(self, index, weight):
        return mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype)

    def create_state_multi_precision(self, index, weight):
        if self.multi_precision and weight.dtype == np.float16:
            master = weight.astype("float32")
            return (self.create_state(index, master), master)
        return self.create_state(index, weight)

    def _name(self, index) -> str:
        if index in self.param_dict:
            return self.param_dict[index].name
        return self.idx2name.get(index, str(index))

    def adapts(self, index) -> bool:
        return not self._name(index).endswith(UNADAPTED_SUFFIXES)

    def update(self, index, weight, grad, state):
        self._update_fused(*as_lists(index, weight, grad, state), multi_precision=False)

    def update_multi_precision(self, index, weight, grad, state):
        indices, weights, grads, states = as_lists(index, weight, grad, state)
        multi_precision = self.multi_precision and weights[0].dtype == np.float16
        self._update_fused(indices, weights, grads, states, multi_precision)

    def _update_fused(self, indices: List, weights: List, grads: List, states: List, multi_precision: bool):
        """One update of arrays of one dtype on one device (Updater's groups)."""
        self._update_count(indices)
        adapted = [self.adapts(index) for index in indices]
        # Adapted arrays first (multi_lars rescales one leading slice of the LRs in
        # place), each part largest first for fused_chunks.
        order = sorted(range(len(indices)), key=lambda k: (not adapted[k], -weights[k].size))
        count, num_adapted = len(order), sum(adapted)
        lrs = self._get_lrs(indices)
        wds = [wd if adapts else 0.0 for wd, adapts in zip(self._get_wds(indices), adapted)]
        rates = device_rates([lrs[k] for k in order] + [wds[k] for k in order], weights[0].context)
        step_lrs, step_wds = rates[:count], rates[count:]   # views, not copies
        if num_adapted:
            first = order[:num_adapted]
            masters = [states[k][1] if multi_precision else weights[k] for k in first]
            weight_sum_sq, grad_sum_sq = self._sums_of_squares(masters, [grads[k] for k in first])
            mx.nd.multi_lars(step_lrs[:num_adapted], weight_sum_sq, grad_sum_sq, step_wds[:num_adapted],
                             eta=self.eta, eps=self.epsilon, rescale_grad=self.rescale_grad,
                             out=step_lrs[:num_adapted])
        sizes = [weights[k].size for k in order]
        for offset, part in ((0, sizes[:num_adapted]), (num_adapted, sizes[num_adapted:])):
            for start, stop in fused_chunks(part):
                start, stop = start + offset, stop + offset
                self._apply(order[start:stop], weights, grads, states, multi_precision,
                            step_lrs[start:stop], step_wds[start:stop])

    @staticmethod
    def _sums_of_squares(masters: List, grads: List):
        """(sums of squares of the weights, of the gradients): one multi_sum_sq
        when their dtypes agree (it takes one dtype), else one each."""
        count = len(masters)
        # GPU-ONLY (float16 gradients): MXNet's GPU multi_sum_sq widens each element to
        # float before squaring (multi_sum_sq.cu, MultiSumSqKernel); its CPU kernel
        # squares in float16, but float16 training does not run on CPUs.
        if masters[0].dtype != grads[0].dtype:
            return (mx.nd.multi_sum_sq(*masters, num_arrays=count),
                    mx.nd.multi_sum_sq(*grads, num_arrays=count))
        both = mx.nd.multi_sum_sq(*masters, *grads, num_arrays=2 * count)
        return both[:count], both[count:]

    def _apply(self, chunk: Sequence[int], weights, grads, states, multi_precision: bool, lrs, wds):
        """m = momentum * m - lr * wd * w - lr * g; w = w + m (MXNet's sign)."""
        inputs = []
        for k in chunk:
            inputs += [weights[k], grads[k], *(states[k] if multi_precision else (states[k],))]
        fused = mx.nd.preloaded_multi_mp_sgd_mom_update if multi_precision else mx.nd.preloaded_multi_sgd_mom_update
        fused(*inputs, lrs, wds, out=[weights[k] for k in chunk], num_weights=len(chunk),
              momentum=self.momentum, rescale_grad=self.rescale_grad)


def device_rates(values: Sequence[float], context):
    """``values`` as a float32 NDArray on ``context``. Few runs of one value
    each (the suite's: the LR for every array, wd for the adapted ones, 0 for
    the rest) take one asynchronous fill each; more take ``mx.nd.array``, a
    synchronous copy from the host."""
    runs = [(value, len(list(group))) for value, group in itertools.groupby(values)]
    if len(runs) > MAX_FILLS:
        return mx.nd.array(values, ctx=context, dtype="float32")
    rates = mx.nd.empty((len(values),), ctx=context, dtype="float32")
    start = 0
    for value, length in runs:
        rates[start:start + length] = value
        start += length
    return rates


def fused_chunks(sizes: Sequence[int]) -> List[Tuple[int, int]]:
    """[start, stop) ranges of ``sizes`` (element counts, largest first), one
    preloaded_multi_*sgd_mom_update call each: arrays of one size together, or
    arrays so small that the call visits at most SMALL_WORK elements; at most
    FUSED_UPDATE_LIMIT arrays a call."""
    chunks: List[Tuple[int, int]] = []
    start = 0
    for stop, size in enumerate(sizes):
        joins = size == sizes[start] or sizes[start] * (stop - start + 1) <= SMALL_WORK
        if stop > start and (stop - start >= FUSED_UPDATE_LIMIT or not joins):
            chunks.append((start, stop))
            start = stop
    if sizes:
        chunks.append((start, len(sizes)))
    return chunks
