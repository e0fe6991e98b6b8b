"""--optimizer lars against a hand computation of MLPerf's LARS, step by step."""
import json
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


def hand_checked_start(net, precision):
    """A LARS trainer over ``net`` as training builds it, its trained
    parameters by name, their starting weights in float64 and zero velocities:
    where the hand computations start."""
    config = replace(Config(), optimizer="lars", momentum=MOMENTUM, wd=WD, lars_eta=ETA, lars_epsilon=EPS,
                     device="cpu", kv_store="device")
    trainer = build_trainer(config, net, precision)
    trainer.set_learning_rate(LR)
    params = {p.name: p for p in net.collect_params().values() if p.grad_req != "null"}
    weights = {name: p.data().asnumpy().astype(np.float64) for name, p in params.items()}
    return trainer, params, weights, {name: np.zeros_like(w) for name, w in weights.items()}


@pytest.mark.parametrize("devices", [1, 2])
def test_three_lars_steps_equal_the_hand_computation(devices):
    contexts = [mx.cpu(i) for i in range(devices)]
    net = small_net(contexts)
    trainer, params, weights, velocity = hand_checked_start(net, resolve_precision("float32", "cpu", None))
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


# --- the fused implementation: operator calls, old states, cost ----------

def resnet18_trainer(contexts, precision="float32", optimizer="lars"):
    """ResNet18 v1.5 (62 parameter arrays) as training builds it, every gradient
    set (to values of a few units) and marked fresh, as backward leaves them."""
    from visionbench.engine.float16_contract import FLOAT16, model_config
    from visionbench.engine.trainer import build_net

    config = replace(model_config("resnet18_v1.5", optimizer=optimizer), num_classes=10)
    resolved = FLOAT16 if precision == "float16" else resolve_precision("float32", "cpu", None)
    net = build_net(config, contexts, resolved)
    trainer = build_trainer(config, net, resolved)
    trainer.set_learning_rate(0.1)
    rng = np.random.RandomState(0)
    for param in net.collect_params().values():
        if param.grad_req != "null":
            values = rng.uniform(-2, 2, param.shape)
            for grad in param.list_grad():
                grad[:] = values.astype(grad.dtype)
    mark_fresh(net)
    return net, trainer


def mark_fresh(net):
    """What backward() marks; an update skips stale gradients otherwise."""
    for param in net.collect_params().values():
        if param.grad_req != "null":
            for data in param.list_data():
                data._fresh_grad = True


def operator_calls(action, tmp_path) -> dict:
    """{operator: calls} that MXNet's profiler counted while ``action`` ran (and finished)."""
    mx.nd.waitall()
    mx.profiler.set_config(profile_imperative=True, aggregate_stats=True, profile_symbolic=False,
                           filename=str(tmp_path / "profile.json"))
    mx.profiler.dumps(reset=True)
    mx.profiler.set_state("run")
    try:
        action()
        mx.nd.waitall()
    finally:
        mx.profiler.set_state("stop")
    stats = json.loads(mx.profiler.dumps(reset=True, format="json"))["Time"].get("operator", {})
    # DeleteVariable: the engine freeing temporaries, not a call
    return {name: s["Count"] for name, s in stats.items() if name != "DeleteVariable"}


@pytest.mark.parametrize("devices, precision", [(1, "float32"), (2, "float32"), (1, "float16")])
def test_a_lars_update_takes_a_bounded_number_of_operator_calls(devices, precision, tmp_path):
    contexts = [mx.cpu(i) for i in range(devices)]
    net, trainer = resnet18_trainer(contexts, precision)
    arrays = sum(p.grad_req != "null" for p in net.collect_params().values())
    trainer.update(1)   # the first creates the states
    mark_fresh(net)
    calls = operator_calls(lambda: trainer.update(1), tmp_path)
    # Per device and dtype: 3 fills (LRs, wds), 1 or 2 multi_sum_sq, multi_lars,
    # and one fused update per distinct array size (16 calls in all for ResNet18
    # in float32); the per-array implementation made 749 (793 in float16).
    assert arrays == 62
    assert sum(calls.values()) <= 20 * devices, calls
    assert calls.get("multi_lars") == devices, calls


def test_states_saved_by_the_per_array_lars_are_refused_in_one_line(tmp_path):
    from visionbench.cli import UsageError

    _, trainer = resnet18_trainer([mx.cpu()])
    trainer.update(1)
    # What the per-array implementation pickled: no state_format, Optimizer's aggregate_num 0.
    old = trainer._optimizer
    del old.state_format
    old.aggregate_num = 0
    path = tmp_path / "old.states"
    trainer.save_states(str(path))
    saved = path.read_bytes()
    _, resumed = resnet18_trainer([mx.cpu()])
    with pytest.raises(UsageError, match=r"^the checkpoint's optimizer state \(\.states\) was saved by "
                                         r"visionbench's earlier --optimizer lars, whose momentum has the "
                                         r"opposite sign") as refused:
        resumed.load_states(str(path))
    assert "\n" not in str(refused.value)
    assert path.read_bytes() == saved


def test_a_resumed_lars_trainer_continues_exactly(tmp_path):
    """Saved after one update and loaded into a fresh trainer, the second update
    equals the uninterrupted one's, bit for bit."""
    net, trainer = resnet18_trainer([mx.cpu()])
    trainer.update(1)
    trainer.save_states(str(tmp_path / "lars.states"))
    weights = {name: p.data().copy() for name, p in net.collect_params().items()}
    resumed_net, resumed = resnet18_trainer([mx.cpu()])
    for name, param in resumed_net.collect_params().items():
        param.set_data(weights[name])
    resumed.load_states(str(tmp_path / "lars.states"))
    mark_fresh(net)
    mark_fresh(resumed_net)
    trainer.update(1)
    resumed.update(1)
    for (name, param), other in zip(net.collect_params().items(), resumed_net.collect_params().values()):
        assert np.array_equal(param.data().asnumpy(), other.data().asnumpy()), name


def test_fused_chunks_keep_one_size_per_call_and_small_arrays_together():
    from visionbench.engines.mxnet.lars import FUSED_UPDATE_LIMIT, fused_chunks

    assert fused_chunks([]) == []
    big = [2359296] * 3 + [1179648] + [589824] * 3
    assert fused_chunks(big) == [(0, 3), (3, 4), (4, 7)]
    assert fused_chunks([512] * 20 + [256] * 20 + [64] * 3) == [(0, 43)]
    assert fused_chunks([8] * (2 * FUSED_UPDATE_LIMIT + 1)) == [(0, 60), (60, 120), (120, 121)]


def test_device_rates_fill_runs_and_copy_the_rest():
    from visionbench.engines.mxnet.lars import device_rates

    for values in ([0.1] * 5 + [1e-4] * 3 + [0.0] * 4, [0.5, 0.25, 0.125, 1.0, 2.0, 3.0]):
        rates = device_rates(values, mx.cpu())
        assert rates.dtype == np.float32
        np.testing.assert_array_equal(rates.asnumpy(), np.array(values, dtype=np.float32))


# At most 2 x SGD, for ResNet18 v1.5 at 32 px, batch 8: a small batch leaves the
# update a large part of the step, so a slower LARS shows. Measured by this
# test on a shared 2-core AMD EPYC (AVX-512 VNNI): the fused LARS 1.08 to 1.50
# (15 measurements), the per-array LARS of commit a564572^ 3.4 to 3.9 (6);
# at batch 32 they were 1.02 to 1.36 and 1.77 to 2.57, too close together.
LARS_STEP_BOUND = 2.0
# Measurements before the test fails: a slow spell of a shared machine passes
# on a later one, a LARS that really costs more fails all of them.
STEP_MEASUREMENTS = 3


def test_a_lars_step_costs_about_an_sgd_step():
    """LARS and SGD training steps (visionbench.bench.optimizer_step), runs
    of 3 steps, 7 of each in rotation, ratio of the medians; the same two
    models are measured again when a ratio is over the bound."""
    from visionbench.bench.compare import in_rotation
    from visionbench.bench.optimizer_step import OPTIMIZERS, lars_step_ratio, step_config, step_timers

    config = step_config(18, 32, 8, 1)
    steps = {optimizer: step_timers(config, optimizer)["step"] for optimizer in OPTIMIZERS}
    for run in steps.values():
        run(2)   # untimed: allocates the static graphs and the optimizer states
    candidates = {f"{optimizer} step": (lambda run=run: run(3)) for optimizer, run in steps.items()}
    measured = []
    for _ in range(STEP_MEASUREMENTS):
        results = in_rotation(candidates, repeats=7)
        measured.append((round(lars_step_ratio(results), 3), results))
        if measured[-1][0] <= LARS_STEP_BOUND:
            return
    pytest.fail(f"LARS step / SGD step over {LARS_STEP_BOUND} in each of {STEP_MEASUREMENTS} measurements "
                f"(ratio, ms per step): {measured}")


def test_float16_lars_steps_on_float32_master_weights_equal_the_hand_computation():
    """multi_precision: the norms of the master weight and of the float16
    gradient, the update on the master weight, the float16 weight cast from it.
    Gradients are set by hand (no float16 forward on CPUs)."""
    from visionbench.engine.float16_contract import FLOAT16

    net = small_net([mx.cpu()])
    net.cast("float16")   # BatchNorm keeps float32 parameters
    trainer, params, weights, velocity = hand_checked_start(net, FLOAT16)
    rng = np.random.RandomState(0)
    for step in range(3):
        grads = {}
        for name, param in params.items():
            # float16 squares stay normal float16 numbers on CPUs (see lars.py)
            grads[name] = rng.uniform(0.05, 2, param.shape).astype(param.dtype).astype(np.float64)
            param.grad()[:] = grads[name]
        mark_fresh(net)
        trainer.update(1)
        hand_step(weights, grads, velocity)
        states = trainer._updaters[0].states
        for index, param in enumerate(trainer._params):
            if param.grad_req == "null":
                continue
            master = states[index][1] if np.dtype(param.dtype) == np.float16 else param.data()
            np.testing.assert_allclose(master.asnumpy(), weights[param.name], rtol=2e-5, atol=1e-6,
                                       err_msg=f"step {step + 1}, {param.name}")
            np.testing.assert_array_equal(param.data().asnumpy(), master.asnumpy().astype(param.dtype))


def test_optimizer_states_written_before_lars_moved_into_the_mxnet_engine_still_load():
    """A .states file pickles its optimizer by module path: files written when
    LARS lived in visionbench/engine/lars.py name that module."""
    import io
    import pickle

    from visionbench.engine.checkpoint import _StatesUnpickler
    from visionbench.engines.mxnet.lars import VisionbenchLARS

    written_before = b"cvisionbench.engine.lars\nVisionbenchLARS\n."   # protocol 0: the class by its old path
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(written_before)
    assert _StatesUnpickler(io.BytesIO(written_before)).load() is VisionbenchLARS
