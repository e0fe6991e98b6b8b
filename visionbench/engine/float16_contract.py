"""What float16 training on GPUs relies on, checked on a CPU.

MXNet has no float16 convolution on CPUs, so a float16 step cannot run here;
but everything around the convolutions can be checked for real:

- ``overflow_check_problems``: the dynamic loss scaler's overflow check
  (precision.all_finite) on the real gradient arrays of a float16-cast model
  (float16 weights, float32 BatchNorm parameters; ResNet152 has 467 arrays).
- ``float16_graph_problems``: the training graph (model, float32 cast of the
  logits, loss) type- and shape-checked symbolically in float16, NCHW or NHWC,
  against the dtypes and shapes of the model's own parameters.
- ``master_weight_problems``: one real optimizer update on float16 weights
  (float16 updates do run on CPUs) keeps a float32 master copy of every
  float16 parameter.

Each returns a list of problems, one line each; empty means the check passed.
``all_problems`` runs the three on one model, as the self-test does.
They build models exactly as training does (trainer.build_net /
build_trainer) and use training's own loss (trainer.device_loss).
"""
from __future__ import annotations

from dataclasses import replace
from typing import List

from ..cli import last_error_line
from ..config import Config
from .precision import LossScaler, Precision, all_finite

FLOAT16 = Precision("float16", True, LossScaler.INITIAL, True)
# Every architecture the suite trains in float16, for the overflow check.
OVERFLOW_MODELS = ("resnet18_v1.5", "resnet50_v1.5", "resnet101_v1.5", "resnet152_v1.5", "resnet9")


def model_config(model: str, layout: str = "NCHW", nesterov: bool = False, optimizer: str = "sgd") -> Config:
    """A Config that builds ``model`` (a registry name) as training would."""
    if model == "resnet9":
        return replace(Config(), arch="resnet9", num_classes=10, input_layout=layout, nesterov=nesterov,
                       optimizer=optimizer, device="cpu", kv_store="device")
    depth, version = model[len("resnet"):].split("_v")
    return replace(Config(), arch="resnetv15" if version == "1.5" else "resnetv1", num_layers=int(depth),
                   num_classes=1000, input_layout=layout, nesterov=nesterov, optimizer=optimizer, device="cpu",
                   kv_store="device")


def _float16_net(model: str, layout: str = "NCHW", nesterov: bool = False, optimizer: str = "sgd"):
    import mxnet as mx

    from .trainer import build_net

    config = model_config(model, layout, nesterov, optimizer)
    return config, build_net(config, [mx.cpu(0)], FLOAT16)


def overflow_check_problems(model: str, built=None) -> List[str]:
    """all_finite over the gradient arrays of float16-cast ``model``: True when
    all are finite; False after one inf or NaN in the first float16 array, in
    the first float32 array, in the last array and in the last float32 array.
    ``built``: _float16_net(model) already built (its gradients are overwritten)."""
    import math

    import numpy as np

    _, net = built or _float16_net(model)
    grads = [p.list_grad()[0] for p in net.collect_params().values() if p.grad_req != "null"]
    dtypes = [np.dtype(g.dtype) for g in grads]
    first = {dtype: dtypes.index(np.dtype(dtype)) for dtype in ("float16", "float32") if np.dtype(dtype) in dtypes}
    if set(first) != {"float16", "float32"}:
        return [f"{model}: a float16-cast model should have float16 and float32 gradients, has {sorted(set(map(str, dtypes)))}"]
    last_float32 = len(dtypes) - 1 - dtypes[::-1].index(np.dtype("float32"))
    # The last float32 array sits in the last chunk of its group (ResNet101
    # and 152 have more float32 gradients than one multi_all_finite call takes).
    cases = [("no non-finite value", None, None), ("an inf in the first float16 array", first["float16"], math.inf),
             ("a NaN in the first float32 array", first["float32"], math.nan),
             ("a NaN in the last array", len(grads) - 1, math.nan),
             ("an inf in the last float32 array", last_float32, -math.inf)]
    problems = []
    for what, index, value in cases:
        for grad in grads:
            grad[:] = 0
        if index is not None:
            flat = np.zeros(grads[index].size, dtype=dtypes[index])
            flat[flat.size // 2] = value
            grads[index][:] = flat.reshape(grads[index].shape)
        try:
            finite = bool(all_finite(grads).asscalar())
        except Exception as err:  # noqa: BLE001 - MXNet raises MXNetError; any failure is the finding
            problems.append(f"{model} ({len(grads)} gradient arrays): the overflow check failed with {what}: "
                            f"{last_error_line(err, limit=300)}")
            continue
        if finite != (index is None):
            problems.append(f"{model} ({len(grads)} gradient arrays): the overflow check says "
                            f"{'finite' if finite else 'overflow'} with {what}")
    return problems


def float16_graph_problems(model: str, layout: str, image_size: int = 224, batch: int = 2,
                           built=None) -> List[str]:
    """Type- and shape-check the float16 training graph of ``model`` in
    ``layout`` (sparse labels and label-smoothed dense targets): logits cast
    to float32, a float32 loss of one value per sample; every parameter's
    inferred dtype and shape equal to the model's, convolution and dense
    weights float16, BatchNorm parameters and statistics float32. ``built``:
    _float16_net(model, layout) already built (only read here)."""
    import mxnet as mx
    import numpy as np

    from .trainer import device_loss, make_loss

    config, net = built or _float16_net(model, layout)
    params = {name: p for name, p in net.collect_params().items()}
    shape = (batch, 3, image_size, image_size) if layout == "NCHW" else (batch, image_size, image_size, 3)
    where = f"{model} float16 {layout}"
    problems = []
    for smoothing, label_shape in ((0.0, (batch,)), (0.1, (batch, config.num_classes))):
        loss = device_loss(net, make_loss(smoothing), mx.sym.var("data"), mx.sym.var("label"))
        try:
            arg_shapes, out_shapes, aux_shapes = loss.infer_shape(data=shape, label=label_shape)
            arg_types, out_types, aux_types = loss.infer_type(data="float16", label="float32")
        except Exception as err:  # noqa: BLE001 - MXNetError: the graph does not type-check
            return [f"{where}: the training graph does not type-check: {last_error_line(err, limit=300)}"]
        if [np.dtype(t) for t in out_types] != [np.dtype("float32")] or list(out_shapes) != [(batch,)]:
            problems.append(f"{where}: the loss is {out_types} {out_shapes}, not float32 of shape ({batch},)")
        inferred = dict(zip(loss.list_arguments(), zip(arg_types, arg_shapes)))
        inferred.update(zip(loss.list_auxiliary_states(), zip(aux_types, aux_shapes)))
        for name, param in params.items():
            if name not in inferred:
                problems.append(f"{where}: parameter {name} is not in the training graph")
                continue
            dtype, param_shape = inferred[name]
            if np.dtype(dtype) != np.dtype(param.dtype) or tuple(param_shape) != tuple(param.shape):
                problems.append(f"{where}: {name} is {np.dtype(param.dtype)} {param.shape} in the model but "
                                f"{np.dtype(dtype)} {tuple(param_shape)} in the graph")
            batchnorm = "batchnorm" in name
            wanted = np.dtype("float32") if batchnorm else np.dtype("float16")
            if np.dtype(param.dtype) != wanted:
                problems.append(f"{where}: {name} is {np.dtype(param.dtype)}; "
                                f"{'BatchNorm parameters stay float32' if batchnorm else 'weights are float16'}")
        if problems:
            break
    return problems


def master_weight_problems(model: str, nesterov: bool = False, optimizer: str = "sgd", built=None) -> List[str]:
    """One real update of float16-cast ``model`` through the trainer training
    builds (SGD, Nesterov or LARS, multi_precision): every float16 parameter
    must get a float32 master copy equal to it, and every parameter must move.
    ``built``: _float16_net(model, nesterov=..., optimizer=...) already built
    (its gradients are set here, its weights updated)."""
    import mxnet as mx
    import numpy as np

    from .trainer import build_trainer

    config, net = built or _float16_net(model, nesterov=nesterov, optimizer=optimizer)
    trainer = build_trainer(replace(config, wd=1e-4), net, FLOAT16)
    trainer.set_learning_rate(0.1)
    before = {}
    for param in net.collect_params().values():
        if param.grad_req == "null":
            continue
        param.list_grad()[0][:] = 1
        before[param.name] = param.data().asnumpy().copy()
        for data in param.list_data():
            data._fresh_grad = True   # what backward() marks; the update skips stale gradients otherwise
    trainer.allreduce_grads()
    trainer.update(1)
    mx.nd.waitall()
    states = trainer._updaters[0].states
    optimizer = "nag" if nesterov else optimizer
    problems = []
    for index, param in enumerate(trainer._params):
        if param.grad_req == "null":
            continue
        weight = param.data()
        if np.array_equal(weight.asnumpy(), before[param.name]):
            problems.append(f"{model} {optimizer}: {param.name} did not change in an update")
        if np.dtype(param.dtype) != np.float16:
            continue
        state = states.get(index)
        master = state[-1] if isinstance(state, (tuple, list)) else None
        if master is None or np.dtype(master.dtype) != np.float32:
            problems.append(f"{model} {optimizer}: float16 {param.name} has no float32 master weight "
                            f"(optimizer state {type(state).__name__})")
        elif not np.array_equal(master.astype("float16").asnumpy(), weight.asnumpy()):
            problems.append(f"{model} {optimizer}: the float32 master weight of {param.name} is not its value")
    return problems


def all_problems(model: str) -> List[str]:
    """The overflow check, the graph check in NCHW and NHWC and the master
    weight update of ``model``, in that order (what the self-test runs). The
    NCHW float16 model is built once for the three checks that take it (about
    a second of CPU a build for ResNet50): the overflow check only writes
    gradients, the graph check only reads, and the update sets every gradient
    itself."""
    built = _float16_net(model)
    problems = overflow_check_problems(model, built)
    problems += float16_graph_problems(model, "NCHW", built=built)
    problems += float16_graph_problems(model, "NHWC")
    return problems + master_weight_problems(model, built=built)
