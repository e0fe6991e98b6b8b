"""The torch engine's optimizer (engines/torch/optim.py) against the MXNet
engine's own trainer (engine/trainer.py build_trainer): same float32 weights,
same gradient sequence, a changing lr and momentum as a schedule gives, and
--no-bn-wd (weight decay on some parameters, not on others).

Bounds: sgd and nag equal MXNet's CPU kernels bit for bit (weights and
momentum states). LARS differs only in how the norms are summed (MXNet's CPU
multi_sum_sq adds squares one by one in float32; torch's reduction in
another order, which may change with the CPU's vector width): a few ulp of
the norms, so of each tensor's rate and of its ``mom``, and a ``w + mom`` that
may round to the neighbouring float32: measured after 5 steps, at most 2 ulp
of the largest |mom| and 1 ulp of the largest |w| (ResNet-like sizes of 100
to 400 elements; on an AMD EPYC); asserted: MOM_ULPS and WEIGHT_ULPS.
BatchNorm parameters and biases (no norms) equal MXNet's bit for bit.
"""
import io
from dataclasses import replace

import mxnet as mx
import numpy as np
import pytest
import torch
from mxnet import autograd, gluon
from torch.utils._python_dispatch import TorchDispatchMode

from visionbench.config import Config
from visionbench.engine.precision import resolve_precision
from visionbench.engine.trainer import build_trainer
from visionbench.engines.torch.optim import MXNetOptimizer, build_optimizer

GLOBAL_BATCH = 24                          # not a power of two: 1/24 is rounded in float32
LRS = [0.1, 0.4, 0.25, 0.05, 0.3]          # one per step, as a schedule sets them
MOMENTA = [0.9, 0.85, 0.0, 0.95, 0.9]      # 0 in the middle: MXNet then omits its momentum argument
WD = 0.05                                  # large, so that decay or its absence shows in every step
ETA, EPS = 0.02, 1e-6
MOM_ULPS = 6      # LARS: float32 ulp of the largest |mom| of a tensor (measured: at most 2; see the docstring)
WEIGHT_ULPS = 2   # LARS: float32 ulp of the largest |w|, for w + mom rounding the other way (measured: 1)


def torch_net(width: int = 4, blocks: int = 1) -> torch.nn.Module:
    """conv (with bias) + BatchNorm, ``blocks`` times, then a linear classifier."""
    torch.manual_seed(0)
    layers, channels = [], 3
    for _ in range(blocks):
        layers += [torch.nn.Conv2d(channels, width, 3, bias=True), torch.nn.BatchNorm2d(width)]
        channels = width
    net = torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(width * 4, 5))
    with torch.no_grad():   # BatchNorm starts at gamma 1, beta 0: move them, so their decay shows
        for param in net.parameters():
            param.uniform_(-0.5, 0.5)
    return net


def gluon_twin(net: torch.nn.Module):
    """The Gluon network with the same parameters in the same order and values
    (conv weight, bias, gamma, beta, ..., dense weight, bias)."""
    twin = gluon.nn.HybridSequential()
    modules = [m for m in net if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear))]
    for module in modules:
        if isinstance(module, torch.nn.Conv2d):
            twin.add(gluon.nn.Conv2D(module.out_channels, 3, in_channels=module.in_channels, use_bias=True))
        elif isinstance(module, torch.nn.BatchNorm2d):
            twin.add(gluon.nn.BatchNorm(in_channels=module.num_features))
        else:
            twin.add(gluon.nn.Dense(module.out_features, in_units=module.in_features))
    twin.initialize(ctx=mx.cpu())
    trained = [p for p in twin.collect_params().values() if p.grad_req != "null"]
    for gluon_param, torch_param in zip(trained, net.parameters(), strict=True):
        gluon_param.set_data(mx.nd.array(torch_param.detach().numpy(), dtype="float32"))
    return twin, trained


def make_config(optimizer: str, nesterov: bool = False, momentum: float = 0.9, bn_wd: bool = False) -> Config:
    return replace(Config(), optimizer=optimizer, nesterov=nesterov, momentum=momentum, wd=WD, bn_wd=bn_wd,
                   lars_eta=ETA, lars_epsilon=EPS, device="cpu", kv_store="device")


def gradients(shapes, steps: int, seed: int = 1):
    """Per step, one float32 array per parameter: sums over GLOBAL_BATCH samples
    (about sqrt(GLOBAL_BATCH) times a mean gradient of 1). At step 3 the classifier weight's is
    zero: LARS then takes the plain lr."""
    rng = np.random.RandomState(seed)
    sequence = []
    for step in range(steps):
        grads = [(rng.randn(*shape) * np.sqrt(GLOBAL_BATCH)).astype(np.float32) for shape in shapes]
        if step == 2:
            grads[-2][:] = 0
        sequence.append(grads)
    return sequence


def mxnet_run(config: Config, net: torch.nn.Module, sequence, moms=MOMENTA):
    """Weights and momentum states (None where MXNet keeps none) after the
    sequence, trained by the MXNet engine's trainer as train_epoch drives it."""
    twin, trained = gluon_twin(net)
    if not config.bn_wd:   # what build_net does for --no-bn-wd
        for param in twin.collect_params(".*gamma|.*beta|.*bias").values():
            param.wd_mult = 0.0
    trainer = build_trainer(config, twin, resolve_precision("float32", "cpu", None))
    for lr, momentum, grads in zip(LRS, moms, sequence):
        trainer.set_learning_rate(lr)
        trainer._optimizer.momentum = momentum
        with autograd.record():   # d/dw of sum(w * G) is G, exactly
            loss = mx.nd.add_n(*[(p.data() * mx.nd.array(g)).sum() for p, g in zip(trained, grads)])
        loss.backward()
        trainer.step(GLOBAL_BATCH)
    states = trainer._updaters[0].states
    index = {id(p): i for i, p in enumerate(trainer._params)}
    moms_out = [states[index[id(p)]] for p in trained]
    return ([p.data().asnumpy() for p in trained],
            [None if m is None else m.asnumpy() for m in moms_out])


def torch_steps(optimizer, net, sequence, lrs, moms):
    for lr, momentum, grads in zip(lrs, moms, sequence):
        for group in optimizer.param_groups:
            group["lr"], group["momentum"] = lr, momentum
        for param, grad in zip(net.parameters(), grads):
            param.grad = torch.from_numpy(grad.copy())
        optimizer.step(rescale=1.0 / GLOBAL_BATCH)


def torch_state(optimizer, net):
    return ([p.detach().numpy().copy() for p in net.parameters()],
            [optimizer.state[p]["mom"].numpy().copy() if "mom" in optimizer.state[p] else None
             for p in net.parameters()])


def torch_run(config: Config, net: torch.nn.Module, sequence, moms=MOMENTA):
    optimizer = build_optimizer(config, net)
    torch_steps(optimizer, net, sequence, LRS, moms)
    return torch_state(optimizer, net)


CASES = {   # name: (config, momenta)
    "sgd": (make_config("sgd"), MOMENTA),
    "sgd-bn-wd": (make_config("sgd", bn_wd=True), MOMENTA),
    "nag": (make_config("sgd", nesterov=True), MOMENTA),
    "nag-no-momentum": (make_config("sgd", nesterov=True, momentum=0.0), [0.0] * 5),
    "sgd-no-momentum": (make_config("sgd", momentum=0.0), [0.0] * 5),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sgd_and_nag_equal_mxnet_bit_for_bit(case):
    config, moms = CASES[case]
    net = torch_net()
    sequence = gradients([tuple(p.shape) for p in net.parameters()], len(LRS))
    mx_weights, mx_moms = mxnet_run(config, net, sequence, moms)
    weights, buffers = torch_run(config, net, sequence, moms)
    names = [name for name, _ in net.named_parameters()]
    for name, ours, theirs in zip(names, weights, mx_weights):
        assert ours.tobytes() == theirs.tobytes(), f"{case}: {name} differs by up to {np.abs(ours - theirs).max()}"
    for name, ours, theirs in zip(names, buffers, mx_moms):
        if theirs is None:   # MXNet keeps no state at momentum 0: ours is absent (nag) or zeros (sgd)
            assert ours is None or not ours.any(), f"{case}: {name}"
        else:
            assert ours.tobytes() == theirs.tobytes(), f"{case}: {name}'s momentum differs by up to " \
                                                       f"{np.abs(ours - theirs).max()}"


def test_lars_equals_mxnet_within_a_few_ulp():
    config = make_config("lars")
    net = torch_net(width=8)   # larger tensors: the norms' summation order matters more
    sequence = gradients([tuple(p.shape) for p in net.parameters()], len(LRS))
    mx_weights, mx_moms = mxnet_run(config, net, sequence)
    weights, buffers = torch_run(config, net, sequence)
    for name, ours, theirs, ours_m, theirs_m in zip([n for n, _ in net.named_parameters()], weights, mx_weights,
                                                    buffers, mx_moms):
        if name.endswith("bias") or name.startswith("1."):   # unadapted: no norms, so MXNet's bits
            assert ours.tobytes() == theirs.tobytes() and ours_m.tobytes() == theirs_m.tobytes(), name
            continue
        mom_ulp, weight_ulp = np.spacing(np.abs(theirs_m).max()), np.spacing(np.abs(theirs).max())
        assert np.abs(ours_m - theirs_m).max() <= MOM_ULPS * mom_ulp, \
            f"{name}'s momentum: {np.abs(ours_m - theirs_m).max() / mom_ulp} ulp"
        assert np.abs(ours - theirs).max() <= WEIGHT_ULPS * weight_ulp + MOM_ULPS * mom_ulp, \
            f"{name}: {np.abs(ours - theirs).max() / weight_ulp} ulp"


@pytest.mark.parametrize("optimizer,nesterov", [("sgd", True), ("lars", False)])
def test_state_dict_round_trip_continues_identically(optimizer, nesterov):
    """2 steps, save model + optimizer through bytes, load into fresh ones, 3 more:
    the same bits as 5 uninterrupted steps."""
    config = make_config(optimizer, nesterov=nesterov)
    sequence = gradients([tuple(p.shape) for p in torch_net().parameters()], len(LRS))
    whole = torch_net()
    whole_optimizer = build_optimizer(config, whole)
    torch_steps(whole_optimizer, whole, sequence, LRS, MOMENTA)

    first = torch_net()
    first_optimizer = build_optimizer(config, first)
    torch_steps(first_optimizer, first, sequence[:2], LRS[:2], MOMENTA[:2])
    saved = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": first_optimizer.state_dict()}, saved)
    saved.seek(0)
    checkpoint = torch.load(saved)
    resumed = torch_net()
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer = build_optimizer(config, resumed)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    torch_steps(resumed_optimizer, resumed, sequence[2:], LRS[2:], MOMENTA[2:])
    for ours, theirs in zip(torch_state(resumed_optimizer, resumed), torch_state(whole_optimizer, whole)):
        assert all(a.tobytes() == b.tobytes() for a, b in zip(ours, theirs))


class OpCounter(TorchDispatchMode):
    """Counts the operators called from Python (a foreach call is one, whatever
    the number of tensors it updates)."""
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append(str(func))
        return func(*args, **(kwargs or {}))


def operators_per_step(config: Config, blocks: int) -> list:
    net = torch_net(blocks=blocks)
    optimizer = build_optimizer(config, net)
    sequence = gradients([tuple(p.shape) for p in net.parameters()], 2)
    torch_steps(optimizer, net, sequence[:1], LRS[:1], MOMENTA[:1])   # states created
    for param, grad in zip(net.parameters(), sequence[1]):
        param.grad = torch.from_numpy(grad)
    with OpCounter() as counter:
        optimizer.step(rescale=1.0 / GLOBAL_BATCH)
    return counter.calls


@pytest.mark.parametrize("optimizer,nesterov", [("sgd", False), ("sgd", True), ("lars", False)])
def test_a_step_is_a_few_foreach_calls_whatever_the_parameter_count(optimizer, nesterov):
    config = make_config(optimizer, nesterov=nesterov)
    small, large = operators_per_step(config, blocks=1), operators_per_step(config, blocks=4)   # 6 and 18 tensors
    assert small == large
    assert len(large) <= 40, large   # measured: sgd 12, nag 24, lars 32 (2 of them the profiler's)


def test_groups_follow_bn_wd_and_lars():
    net = torch_net()
    names = {id(p): name for name, p in net.named_parameters()}
    exempt = {"0.bias", "1.weight", "1.bias", "3.bias"}   # conv bias, BatchNorm gamma/beta, linear bias
    for config, exempt_wd in [(make_config("sgd"), 0.0), (make_config("sgd", bn_wd=True), WD),
                              (make_config("lars", bn_wd=True), 0.0)]:
        weights_group, exempt_group = build_optimizer(config, net).param_groups
        assert {names[id(p)] for p in exempt_group["params"]} == exempt
        assert {names[id(p)] for p in weights_group["params"]} == {"0.weight", "3.weight"}
        assert (weights_group["wd"], exempt_group["wd"]) == (WD, exempt_wd)
        assert (weights_group["adapt"], exempt_group["adapt"]) == (config.optimizer == "lars", False)
        assert weights_group["kind"] == exempt_group["kind"] == config.optimizer


def test_refusals():
    from visionbench.cli import UsageError

    with pytest.raises(UsageError, match="nesterov"):
        build_optimizer(make_config("lars", nesterov=True), torch_net())
    with pytest.raises(ValueError, match="float32"):
        MXNetOptimizer(torch_net().half().parameters())
