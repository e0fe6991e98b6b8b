"""The PyTorch twins of the Gluon models (engines/torch/models.py) and the
weight converter (models/convert.py): every registry name pairs up with its
Gluon model; converted weights give the same logits on both engines; a
Gluon -> torch -> Gluon trip returns every array bit for bit; initialisation
follows the same rules; bad input is one line and exit status 2."""
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
import torch

from visionbench.cli import UsageError, run_main
from visionbench.engine.checkpoint import _write_weights
from visionbench.engines.torch import models as torch_models
from visionbench.engines.mxnet import resnet, resnet9
from visionbench.models import convert, get_model, model_names

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10
SIDE = 64             # pixels: small, and still 2x2 maps in ResNet's last stage
LOGIT_TOLERANCE = 1e-4
HE = mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2)   # engine/trainer.py build_net


def _randomise(net, seed: int) -> None:
    """Non-trivial values everywhere (BatchNorm statistics and biases too),
    scaled so that ResNet50's logits stay of order 1 in float32."""
    rng = np.random.RandomState(seed)
    draws = {"gamma": lambda shape: rng.uniform(0.3, 0.9, shape), "beta": lambda shape: rng.normal(0, 0.1, shape),
             "running_mean": lambda shape: rng.normal(0, 0.1, shape),
             "running_var": lambda shape: rng.uniform(1.0, 2.0, shape), "bias": lambda shape: rng.normal(0, 0.1, shape)}
    for param in net.collect_params().values():
        kind = next((k for k in draws if param.name.endswith("_" + k)), None)
        if kind:
            param.set_data(mx.nd.array(draws[kind](param.shape)))


class Checkpoint:
    """A randomised Gluon model, its logits on a batch, and its weights as our checkpoints write them."""

    def __init__(self, name: str, folder: Path):
        self.name = name
        self.net = get_model(name, classes=CLASSES)
        mx.random.seed(0)
        self.net.initialize(HE)
        _randomise(self.net, seed=1)
        self.net.hybridize()
        self.batch = np.random.RandomState(2).normal(size=(2, 3, SIDE, SIDE)).astype(np.float32)
        self.logits = self.net(mx.nd.array(self.batch)).asnumpy()   # inference mode: running statistics
        self.params = folder / f"{name}.params"
        _write_weights(self.net, self.params)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> Checkpoint, each built once for the module."""
    built = {}

    def get(name: str) -> Checkpoint:
        if name not in built:
            built[name] = Checkpoint(name, tmp_path_factory.mktemp(name))
        return built[name]
    return get


@pytest.fixture(params=["resnet18_v1.5", "resnet50_v1.5", "resnet9"])
def checkpoint(request, checkpoints):
    return checkpoints(request.param)


def _torch_model(name: str, state, channels_last: bool = False):
    model = torch_models.get_torch_model(name, CLASSES, init_bn0=False, channels_last=channels_last)
    model.load_state_dict(state)   # strict: every key, every shape
    return model.eval()


def _torch_logits(model, batch: np.ndarray, channels_last: bool = False) -> np.ndarray:
    x = torch.from_numpy(batch)
    with torch.no_grad():
        return model(x.to(memory_format=torch.channels_last) if channels_last else x).numpy()


def test_round_trip_is_bit_for_bit_and_logits_match(checkpoint, tmp_path):
    pt, back = tmp_path / "w.pt", tmp_path / "back.params"
    if checkpoint.name == "resnet18_v1.5":   # once through the real command line
        result = subprocess.run([sys.executable, "-m", "visionbench.models.convert", str(checkpoint.params), str(pt),
                                 "--model", checkpoint.name], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 0, result.stderr
    else:
        convert.convert_file(checkpoint.params, pt, checkpoint.name)
    state = torch.load(pt, weights_only=True)
    assert all(v.item() == 0 for k, v in state.items() if k.endswith("num_batches_tracked"))
    logits = _torch_logits(_torch_model(checkpoint.name, state), checkpoint.batch)
    assert checkpoint.logits.std() > 0.02   # the comparison below is not of near-zeros (ResNet9: 0.06)
    assert np.abs(logits - checkpoint.logits).max() < LOGIT_TOLERANCE
    if checkpoint.name == "resnet18_v1.5":   # channels-last memory, same state_dict, same arithmetic
        model = _torch_model(checkpoint.name, state, channels_last=True)
        assert np.abs(_torch_logits(model, checkpoint.batch, True) - checkpoint.logits).max() < LOGIT_TOLERANCE

    convert.convert_file(pt, back, checkpoint.name)
    original, returned = mx.nd.load(str(checkpoint.params)), mx.nd.load(str(back))
    assert sorted(original) == sorted(returned)
    for key, array in original.items():
        assert returned[key].dtype == array.dtype and np.array_equal(returned[key].asnumpy(), array.asnumpy()), key


def test_gluon_save_parameters_keys_convert_the_same(checkpoints, tmp_path):
    """save_parameters' structural keys (features.0.weight) and save_params'
    prefix-less names give the state_dict our checkpoint format gives."""
    checkpoint = checkpoints("resnet9")
    structural, prefixless = tmp_path / "s.params", tmp_path / "p.params"
    checkpoint.net.save_parameters(str(structural))
    checkpoint.net.collect_params().save(str(prefixless), strip_prefix=checkpoint.net.prefix)
    expected = convert.gluon_to_torch(convert.read_gluon_file(checkpoint.params), checkpoint.name)
    for path in (structural, prefixless):
        arrays = convert.read_gluon_file(path)
        assert not any(key.startswith(("arg:", "aux:")) for key in arrays)
        state = convert.gluon_to_torch(arrays, checkpoint.name)
        assert list(state) == list(expected)
        assert all(torch.equal(state[key], expected[key]) for key in state)


def test_float16_and_nhwc_gluon_weights_keep_dtype_and_layout():
    """A float16 run's weights (BatchNorm float32) and an NHWC model's OHWI
    convolution weights go to torch and back unchanged."""
    net = get_model("resnet18_v1.5", classes=CLASSES, layout="NHWC")
    net.initialize(HE)
    net.cast("float16")
    arrays = {("aux:" if "running" in p.name else "arg:") + p.name: p.data().asnumpy()
              for p in net.collect_params().values()}
    assert {a.dtype for a in arrays.values()} == {np.dtype(np.float16), np.dtype(np.float32)}
    state = convert.gluon_to_torch(arrays, "resnet18_v1.5", layout="NHWC")
    stem = arrays["arg:resnet18_v15_conv0_weight"]
    assert stem.shape == (64, 7, 7, 3) and state["conv1.weight"].shape == (64, 3, 7, 7)
    assert np.array_equal(state["conv1.weight"].numpy(), stem.transpose(0, 3, 1, 2))
    assert state["conv1.weight"].dtype == torch.float16 and state["bn1.weight"].dtype == torch.float32
    back = convert.torch_to_gluon(state, "resnet18_v1.5", layout="NHWC")
    assert sorted(back) == sorted(arrays)
    assert all(back[k].dtype == a.dtype and np.array_equal(back[k], a) for k, a in arrays.items())
    with pytest.raises(UsageError, match="resnet18_v15_conv0_weight has shape"):
        convert.gluon_to_torch(arrays, "resnet18_v1.5")   # NCHW expected
    bfloat16 = {key: value.to(torch.bfloat16) for key, value in state.items()}
    widened = convert.torch_to_gluon(bfloat16, "resnet18_v1.5")   # MXNet's files hold no bfloat16: float32, exactly
    for pair in convert.mapping("resnet18_v1.5", CLASSES).pairs:
        array = widened[("aux:" if pair.aux else "arg:") + pair.gluon]
        assert array.dtype == np.float32 and np.array_equal(array, bfloat16[pair.torch].float().numpy()), pair.torch


def _trainable_gluon(net) -> int:
    return sum(int(np.prod(p.shape)) for p in net.collect_params().values() if p.grad_req != "null")


def test_every_registered_model_pairs_up_and_counts_match():
    assert torch_models.model_names() == model_names()
    assert torch_models.DEPTHS == resnet.DEPTHS and torch_models.STAGE_WIDTHS == resnet.STAGE_WIDTHS
    assert torch_models.RESNET9_OUTPUT_SCALE == resnet9.OUTPUT_SCALE
    for name in model_names():
        pairs = convert.mapping(name, 1000).pairs   # raises unless every kind and shape pairs up in order
        with torch.device("meta"):
            model = torch_models.get_torch_model(name, 1000, init_bn0=False)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable == _trainable_gluon(get_model(name, classes=1000)), name
        assert len(pairs) == len(model.state_dict()) - sum(isinstance(m, torch.nn.BatchNorm2d)
                                                           for m in model.modules())
    model = torch_models.get_torch_model("resnet50_v1.5", 1000, init_bn0=False)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 25_557_032


@pytest.mark.parametrize("name, blocks", [("resnet18_v1.5", 8), ("resnet50_v1.5", 16), ("resnet9", 0)])
def test_init_bn0_zeroes_the_same_gammas_as_gluon(name, blocks):
    net = get_model(name, classes=CLASSES, init_bn0=True)
    net.initialize(HE)
    gluon_zero = {n for n, p in net.collect_params(".*gamma").items() if not p.data().asnumpy().any()}
    to_torch = {pair.gluon: pair.torch for pair in convert.mapping(name, CLASSES).pairs}
    model = torch_models.get_torch_model(name, CLASSES, init_bn0=True)
    torch_zero = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.any()}
    assert len(gluon_zero) == blocks
    assert {to_torch[n].rsplit(".", 1)[0] for n in gluon_zero} == torch_zero
    plain = torch_models.get_torch_model(name, CLASSES, init_bn0=False)
    assert all(m.weight.all() for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d))


def _initial_values_follow_the_rules(arrays: dict) -> None:
    """He normal fan-in weights (std sqrt(2 / fan_in)), zero biases, BatchNorm 1, 0, 0, 1;
    ``arrays``: kind ('weight', 'bias', 'gamma', 'beta', 'running_mean', 'running_var') -> list of arrays."""
    for weight in arrays["weight"]:
        if weight.size >= 20_000:   # enough draws for a 5 % test of the spread
            fan_in = int(np.prod(weight.shape[1:]))
            assert abs(weight.std() / np.sqrt(2 / fan_in) - 1) < 0.05 and abs(weight.mean()) < 0.01, weight.shape
    for kind, value in (("bias", 0), ("gamma", 1), ("beta", 0), ("running_mean", 0), ("running_var", 1)):
        assert arrays[kind] and all((a == value).all() for a in arrays[kind]), kind


def test_initialisation_follows_gluons_rules():
    pairs = convert.mapping("resnet18_v1.5", 1000).pairs
    torch.manual_seed(0)
    state = torch_models.get_torch_model("resnet18_v1.5", 1000, init_bn0=False).state_dict()
    net = get_model("resnet18_v1.5", classes=1000)
    net.initialize(HE)
    gluon = net.collect_params()
    for engine_values in ({pair: state[pair.torch].numpy() for pair in pairs},
                          {pair: gluon[pair.gluon].data().asnumpy() for pair in pairs}):
        by_kind = {}
        for pair, value in engine_values.items():
            by_kind.setdefault(convert._gluon_kind(pair.gluon), []).append(value)
        _initial_values_follow_the_rules(by_kind)


@pytest.mark.parametrize("name", ["resnet18_v1.5", "resnet9"])
def test_no_weight_decay_names_are_what_no_bn_wd_exempts_in_gluon(name):
    net = get_model(name, classes=CLASSES)
    exempt_in_gluon = set(net.collect_params(".*gamma|.*beta|.*bias").keys())
    expected = [pair.torch for pair in convert.mapping(name, CLASSES).pairs if pair.gluon in exempt_in_gluon]
    model = torch_models.get_torch_model(name, CLASSES, init_bn0=False)
    assert torch_models.no_weight_decay_names(model) == expected and expected
    decayed, exempt = torch_models.parameter_groups(model, 5e-5, bn_wd=False)
    assert exempt["weight_decay"] == 0 and decayed["weight_decay"] == 5e-5
    assert len(exempt["params"]) == len(expected)
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))


def _refused(capsys, target: Path, *argv, match: str, before=None) -> None:
    """The command line (in this process) refuses ``argv``: exit 2, one line, ``target`` as ``before`` (or absent)."""
    status = run_main(convert.main, "convert", [str(a) for a in argv])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith("convert: error: ") and match in err, err
    assert (target.read_bytes() == before) if before is not None else not target.exists()
    assert not list(target.parent.glob(".*partial*"))   # no temporary left behind


def test_bad_input_is_one_line_exit_2_and_leaves_the_output_alone(checkpoints, tmp_path, capsys):
    params, out = checkpoints("resnet9").params, tmp_path / "out.pt"
    _refused(capsys, out, params, out, "--model", "resnet9", "--classes", "7",
             match="resnet9_dense0_weight has shape (10, 512)")
    _refused(capsys, out, params, out, "--model", "resnet51",
             match="unknown model 'resnet51' (choose from resnet101_v1")
    _refused(capsys, out, params, out, "--model", "resnet18_v1.5", match="unexpected parameter")
    _refused(capsys, tmp_path / "out.txt", params, tmp_path / "out.txt", "--model", "resnet9",
             match="cannot tell the direction")
    out.write_bytes(b"someone else's file")
    _refused(capsys, out, params, out, "--model", "resnet9", match="exists; not overwritten",
             before=b"someone else's file")
    state = convert.gluon_to_torch(convert.read_gluon_file(params), "resnet9")
    state["res1.res2.conv.weight"] = state["res1.res2.conv.weight"][:, :64]
    bad_pt, back = tmp_path / "bad.pt", tmp_path / "back.params"
    torch.save(state, bad_pt)
    _refused(capsys, back, bad_pt, back, "--model", "resnet9", match="res1.res2.conv.weight has shape (128, 64, 3, 3)")
    with pytest.raises(UsageError, match="unknown model 'resnet51'"):
        torch_models.get_torch_model("resnet51", CLASSES, init_bn0=False)
