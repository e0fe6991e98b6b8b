"""--optimizer lars against a hand computation of MLPerf's LARS, step by step."""
from dataclasses import replace

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from visionbench.config import Config
from visionbench.engine.precision import resolve_precision
from visionbench.engine.trainer import build_trainer

LR, MOMENTUM, WD, ETA, EPS = 0.5, 0.9, 1e-2, 0.02, 1e-6


def small_net(contexts):
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(3, in_units=4), gluon.nn.BatchNorm(in_channels=3), gluon.nn.Dense(2, in_units=3))
    net.initialize(mx.init.Uniform(0.5), ctx=contexts)
    return net


def hand_step(weights, grads, velocity):
    """MLPerf's LARS in numpy: weights/grads/velocity by parameter name."""
    for name, w in weights.items():
        g = grads[name]
        if name.endswith(("gamma", "beta", "bias")):
            velocity[name] = MOMENTUM * velocity[name] + LR * g
        else:
            w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
            trust = ETA * w_norm / (g_norm + WD * w_norm + EPS) if w_norm > 0 and g_norm > 0 else 1.0
            velocity[name] = MOMENTUM * velocity[name] + LR * trust * (g + WD * w)
        weights[name] = w - velocity[name]


@pytest.mark.parametrize("devices", [1, 2])
def test_three_lars_steps_equal_the_hand_computation(devices):
    contexts = [mx.cpu(i) for i in range(devices)]
    net = small_net(contexts)
    config = replace(Config(), optimizer="lars", momentum=MOMENTUM, wd=WD, lars_eta=ETA, lars_epsilon=EPS,
                     device="cpu", kv_store="device")
    trainer = build_trainer(config, net, resolve_precision("float32", "cpu", None))
    trainer.set_learning_rate(LR)
    params = {p.name: p for p in net.collect_params().values() if p.grad_req != "null"}
    weights = {name: p.data().asnumpy().astype(np.float64) for name, p in params.items()}
    velocity = {name: np.zeros_like(w) for name, w in weights.items()}
    rng = np.random.RandomState(0)
    for step in range(3):
        x = rng.uniform(-1, 1, (6, 4)).astype(np.float32)
        with autograd.record():
            losses = [(net(mx.nd.array(x, ctx=c)) ** 2).sum() for c in contexts]
        autograd.backward(losses)
        # the gradient summed over devices is what every device applies
        grads = {name: sum(g.asnumpy().astype(np.float64) for g in p.list_grad()) for name, p in params.items()}
        trainer.step(1)
        hand_step(weights, grads, velocity)
        for name, p in params.items():
            for data in p.list_data():
                np.testing.assert_allclose(data.asnumpy(), weights[name], rtol=2e-5, atol=1e-6,
                                           err_msg=f"step {step + 1}, {name}")


def test_lars_adapts_weights_only():
    net = small_net([mx.cpu()])
    config = replace(Config(), optimizer="lars", device="cpu", kv_store="device")
    trainer = build_trainer(config, net, resolve_precision("float32", "cpu", None))
    optimizer = trainer._optimizer
    adapted = {p.name for i, p in enumerate(trainer._params) if p.grad_req != "null" and optimizer.adapts(i)}
    assert adapted == {p.name for p in net.collect_params().values() if p.name.endswith("weight")}


def test_lars_with_nesterov_is_refused():
    from visionbench.cli import UsageError
    from visionbench.config import resolve

    with pytest.raises(UsageError, match="leave out --nesterov"):
        resolve(["--optimizer", "lars", "--nesterov", "--device", "cpu"])
