"""Every registered model: forward shapes on CPU; architecture details that
the CPU cannot execute (NHWC, float16) checked through symbolic inference."""
import mxnet as mx
import numpy as np
import pytest

from visionbench.cli import UsageError
from visionbench.models import get_model, model_names


def _trainable(net):
    return sum(int(np.prod(p.shape)) for p in net.collect_params().values() if p.grad_req != "null")


@pytest.mark.parametrize("name", model_names())
def test_forward_shape(name):
    classes = 10 if name == "resnet9" else 17
    net = get_model(name, classes=classes)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    for side in (32, 48):   # any input size: global pooling
        assert net(mx.nd.random.uniform(shape=(2, 3, side, side))).shape == (2, classes)


def test_parameter_counts():
    net = get_model("resnet50_v1.5", classes=1000)
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    assert _trainable(net) == 25_557_032
    # no convolution carries a bias
    assert not [n for n in net.collect_params() if "conv" in n and n.endswith("bias")]


def _conv_strides(name):
    sym = get_model(name, classes=10)(mx.sym.var("data"))
    nodes = [n for n in __import__("json").loads(sym.tojson())["nodes"] if n["op"] == "Convolution"]
    return [(n["attrs"]["kernel"], n["attrs"]["stride"]) for n in nodes]


def test_v1_5_strides_the_3x3_and_v1_the_1x1():
    # the first block of stage 2: convolutions 11, 12, 13 (+ shortcut) after the stem and stage 1
    v1, v15 = _conv_strides("resnet50_v1"), _conv_strides("resnet50_v1.5")
    assert len(v1) == len(v15) == 53
    block = slice(11, 14)
    assert v1[block] == [("(1, 1)", "(2, 2)"), ("(3, 3)", "(1, 1)"), ("(1, 1)", "(1, 1)")]
    assert v15[block] == [("(1, 1)", "(1, 1)"), ("(3, 3)", "(2, 2)"), ("(1, 1)", "(1, 1)")]


def test_nhwc_shapes_by_inference():
    sym = get_model("resnet50_v1.5", classes=10, layout="NHWC")(mx.sym.var("data"))
    _, out_shapes, _ = sym.infer_shape(data=(2, 160, 96, 3))
    assert out_shapes == [(2, 10)]


def test_float16_cast_keeps_batchnorm_float32():
    net = get_model("resnet18_v1.5", classes=10)
    net.cast("float16")
    sym = net(mx.sym.var("data"))
    arg_types, out_types, aux_types = sym.infer_type(data="float16")
    types = dict(zip(sym.list_arguments(), arg_types))
    assert out_types == [np.float16]
    assert all(t == np.float16 for n, t in types.items() if n.endswith("weight") and "batchnorm" not in n)
    assert all(t == np.float32 for n, t in types.items() if "batchnorm" in n)
    assert all(t == np.float32 for t in aux_types)   # running mean / var


def test_init_bn0_zeroes_the_last_batchnorm_of_each_block():
    net = get_model("resnet50_v1.5", classes=10, init_bn0=True)
    net.initialize()   # every shape is known at construction: no forward pass needed
    gammas = {n: p.data().asnumpy() for n, p in net.collect_params(".*gamma").items()}
    zero = sorted(n for n, g in gammas.items() if not g.any())
    assert len(zero) == 16   # 3 + 4 + 6 + 3 blocks
    assert all("body_batchnorm2" in n for n in zero)
    plain = get_model("resnet50_v1.5", classes=10)
    plain.initialize()
    assert all(p.data().asnumpy().all() for p in plain.collect_params(".*gamma").values())


def test_resnet9_head():
    net = get_model("resnet9")
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    names = list(net.collect_params())
    assert "resnet9_dense0_weight" in names and "resnet9_dense0_bias" not in names


def test_unknown_model():
    with pytest.raises(UsageError, match="unknown model 'resnet51'"):
        get_model("resnet51")
