"""Checkpoints of a multi-device run (issue 21, defects 4 and 5): the .params
holds device 0's copy (never the average of the copies), every device's
BatchNorm statistics come back to that device on resume, and each device's
optimizer state is loaded onto that device."""
import pickle

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from visionbench.cli import UsageError
from visionbench.config import Config
from visionbench.engine import checkpoint
from visionbench.engine.precision import resolve_precision
from visionbench.engine.trainer import build_net, build_trainer


def _meta(epoch):
    return {"epoch": epoch, "model": "resnet18_v1.5", "classes": 10, "loss_scaler": {}, "epochs": []}


def _net_and_trainer(devices, optimizer="sgd"):
    config = Config(device="cpu", num_layers=18, num_classes=10, data_backend="synthetic", optimizer=optimizer)
    precision = resolve_precision("float32", "cpu", None)
    net = build_net(config, devices, precision)
    return net, build_trainer(config, net, precision)


def _step(net, trainer, devices, seed=0):
    """One data-parallel training step on random 16 px images: every device
    then holds the same weights and its own BatchNorm statistics."""
    rng = np.random.default_rng(seed)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    trainer.set_learning_rate(0.1)
    with autograd.record():
        losses = [loss_fn(net(mx.nd.array(rng.normal(size=(4, 3, 16, 16)), ctx=c)),
                          mx.nd.array(rng.integers(0, 10, 4), ctx=c)) for c in devices]
    autograd.backward(losses)
    trainer.allreduce_grads()
    trainer.update(4 * len(devices))
    mx.nd.waitall()


def _per_device(net):
    """{name: [each device's copy as numpy]} of every BatchNorm running statistic."""
    return {p.name: [d.asnumpy() for d in p.list_data()] for p in net.collect_params().values()
            if p.grad_req == "null"}


THREE = [mx.cpu(0), mx.cpu(1), mx.cpu(2)]


def _trained_on_three(optimizer="sgd"):
    net, trainer = _net_and_trainer(THREE, optimizer)
    for seed in (0, 1):   # the first step of a hybridized net leaves BatchNorm's running statistics as they were
        _step(net, trainer, THREE, seed)
    return net, trainer


@pytest.fixture
def trained_on_three():
    return _trained_on_three()


def test_the_params_file_holds_device_0s_copy_not_the_average(tmp_path, trained_on_three):
    net, trainer = trained_on_three
    # Make every copy differ on purpose: a weight, and a BatchNorm statistic.
    for name in ("resnet18_v15_conv0_weight", "resnet18_v15_batchnorm0_running_mean"):
        for k, copy in enumerate(net.collect_params()[name].list_data()):
            copy[:] = copy + 0.1 * k
    prefix = tmp_path / "m"
    checkpoint.save_checkpoint(net, trainer, prefix, 1, _meta(1))
    saved = mx.nd.load(f"{prefix}-0001.params")
    graph_names = {key.split(":", 1)[1] for key in saved}
    assert graph_names == set(net.collect_params().keys())
    for key, array in saved.items():
        assert array.context == mx.cpu(), key   # host arrays: a GPU checkpoint loads on any machine
        param = net.collect_params()[key.split(":", 1)[1]]
        assert np.array_equal(array.asnumpy(), param.list_data()[0].asnumpy()), key
    # Users load it as before: SymbolBlock.imports with the -symbol.json gives device 0's network.
    imported = gluon.SymbolBlock.imports(f"{prefix}-symbol.json", ["data"], f"{prefix}-0001.params", ctx=mx.cpu())
    images = mx.nd.array(np.random.default_rng(1).normal(size=(2, 3, 16, 16)))
    with autograd.predict_mode():
        assert np.array_equal(imported(images).asnumpy(), net(images).asnumpy())


def test_trained_weights_are_identical_on_every_device_and_statistics_are_not(trained_on_three):
    """What the checkpoint's design rests on: after an update with reduced
    gradients every device holds the same weights, bit for bit; BatchNorm's
    running statistics (never reduced) differ."""
    net, trainer = trained_on_three
    for param in net.collect_params().values():
        copies = [d.asnumpy() for d in param.list_data()]
        same = all(np.array_equal(copies[0], c) for c in copies[1:])
        assert same == (param.grad_req != "null"), param.name
    first = trainer._updaters[0].states   # and the optimizer state (momentum), which only device 0's is saved of
    assert len(first) == 62
    for updater in trainer._updaters[1:]:
        for index, state in first.items():
            assert np.array_equal(updater.states[index].asnumpy(), state.asnumpy()), index


def _assert_same_on_every_device(net, other):
    for name, param in net.collect_params().items():
        for k, copy in enumerate(param.list_data()):
            assert np.array_equal(other.collect_params()[name].list_data()[k].asnumpy(), copy.asnumpy()), (name, k)


def test_every_devices_batchnorm_statistics_come_back_to_that_device(tmp_path, trained_on_three):
    net, trainer = trained_on_three
    prefix = tmp_path / "m"
    checkpoint.save_checkpoint(net, trainer, prefix, 1, _meta(1))
    fresh, _ = _net_and_trainer(THREE)
    checkpoint.load_weights(fresh, prefix, 1, THREE)
    before, after = _per_device(net), _per_device(fresh)
    assert before.keys() == after.keys() and len(before) == 40   # ResNet18: 20 BatchNorm layers
    for name, copies in before.items():
        for k, copy in enumerate(copies):
            assert np.array_equal(after[name][k], copy), (name, k)
    _assert_same_on_every_device(net, fresh)   # the weights too


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_a_resumed_step_equals_the_uninterrupted_step_on_every_device(tmp_path, optimizer):
    """A resume loads what the next step needs, and nothing after it undoes
    that: Gluon's first allreduce (or a resume's loading of the optimizer
    state) copies device 0's value of every parameter to every device when
    it sets up the kvstore, BatchNorm statistics included. With LARS the
    loaded optimizer also knows the parameters' names again (it adapts and
    decays weights only, by name; an unpickled optimizer has none)."""
    net, trainer = _trained_on_three(optimizer)
    prefix = tmp_path / "m"
    checkpoint.save_checkpoint(net, trainer, prefix, 1, _meta(1))
    resumed, resumed_trainer = _net_and_trainer(THREE, optimizer)
    checkpoint.load_checkpoint(resumed, resumed_trainer, prefix, 1, THREE)
    for model, its_trainer in ((net, trainer), (resumed, resumed_trainer)):
        _step(model, its_trainer, THREE, seed=2)
    _assert_same_on_every_device(net, resumed)


def test_on_another_device_count_every_device_takes_device_0s_statistics(tmp_path, trained_on_three):
    net, trainer = trained_on_three
    prefix = tmp_path / "m"
    checkpoint.save_checkpoint(net, trainer, prefix, 1, _meta(1))
    two = THREE[:2]
    fresh, _ = _net_and_trainer(two)
    checkpoint.load_weights(fresh, prefix, 1, two)
    for name, copies in _per_device(fresh).items():
        for copy in copies:
            assert np.array_equal(copy, _per_device(net)[name][0]), name


def test_resume_loads_each_devices_optimizer_state_onto_that_device(tmp_path):
    devices = [mx.cpu(0), mx.cpu(1)]
    net, trainer = _net_and_trainer(devices)
    _step(net, trainer, devices)
    prefix = tmp_path / "m"
    checkpoint.save_checkpoint(net, trainer, prefix, 1, _meta(1))
    fresh, resumed = _net_and_trainer(devices)
    checkpoint.load_weights(fresh, prefix, 1, devices)
    checkpoint.load_states(resumed, prefix, 1)
    saved = trainer._updaters[0].states
    for updater, device in zip(resumed._updaters, devices):
        assert updater.states.keys() == saved.keys() and len(saved) == 62   # ResNet18's trained parameters
        for index, state in updater.states.items():
            assert state.context == device, (index, device)
            assert np.array_equal(state.asnumpy(), saved[index].asnumpy()), index
        assert updater.optimizer is resumed._optimizer   # one optimizer: its schedule and counts are shared
    assert resumed._optimizer.num_update == trainer._optimizer.num_update == 1
    # The file keeps Trainer.save_states's format: MXNet's own reader takes it too.
    _, plain = _net_and_trainer(devices)
    plain.load_states(str(checkpoint.checkpoint_paths(prefix, 1)["states"]))
    assert plain._optimizer.num_update == 1 and plain._updaters[1].states.keys() == saved.keys()


class RefusingOptimizer(mx.optimizer.SGD):
    """An optimizer that refuses an old state of its own when unpickled, the
    way engines/mxnet/lars.py may refuse an older LARS state format."""

    def __setstate__(self, state):
        raise UsageError("optimizer state of an older LARS format: resume it with the release that wrote it")


def test_a_usage_error_while_loading_states_reaches_the_user_unchanged(tmp_path):
    devices = [mx.cpu(0)]
    net, trainer = _net_and_trainer(devices)
    _step(net, trainer, devices)
    prefix = tmp_path / "m"
    checkpoint.save_checkpoint(net, trainer, prefix, 1, _meta(1))
    states = checkpoint.checkpoint_paths(prefix, 1)["states"]
    states.write_bytes(pickle.dumps(({}, RefusingOptimizer())))
    _, resumed = _net_and_trainer(devices)
    with pytest.raises(UsageError) as refused:
        checkpoint.load_states(resumed, prefix, 1)
    assert str(refused.value) == "optimizer state of an older LARS format: resume it with the release that wrote it"
    states.write_bytes(b"not a pickle")   # anything else still names the file
    with pytest.raises(UsageError, match=f"optimizer state {states} cannot be loaded"):
        checkpoint.load_states(resumed, prefix, 1)


def test_scoring_the_last_checkpoint_on_as_many_devices_reproduces_its_validation(tmp_path_factory, capfd):
    """--mode val on 3 devices gives each device its own BatchNorm statistics
    back, as training validated with them: the same top-1 and top-5."""
    import json
    import re

    from conftest import make_small_demo, run_here

    folder = tmp_path_factory.mktemp("scored")
    data = make_small_demo(folder / "demo", 8, val_per_class=20)   # 200 val images: a BatchNorm change shows
    prefix, report = folder / "m", folder / "report.json"
    common = ["--device", "cpu", "-n", "3", "-b", "4", "--data-root", data, "--image-size", "32", "--num-layers", "18",
              "--num-classes", "10", "--model-prefix", prefix]
    # Both runs in this process (run_here: no interpreter start-up each).
    trained = run_here(capfd, *common, "--lr", "0.4", "--warmup-epochs", "0", "-e", "2", "--report", report)
    assert trained.returncode == 0, trained.stderr
    last = json.loads(report.read_text())["epochs"][-1]
    scored = run_here(capfd, *common, "--mode", "val", "--load-epoch", "2")
    assert scored.returncode == 0, scored.stderr
    found = re.search(r"val top-1 ([0-9.]+) top-5 ([0-9.]+) over (\d+) images", scored.stdout)
    assert found, scored.stdout
    assert (found[1], found[2], int(found[3])) == (f"{last['val_top1']:.4f}", f"{last['val_top5']:.4f}",
                                                   last["val_images"])
