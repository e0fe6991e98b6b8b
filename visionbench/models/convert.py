"""Convert weights between the Gluon models and their PyTorch twins
(engines/torch/models.py), both ways, bit for bit:

    python -m visionbench.models.convert IN.params OUT.pt --model resnet50_v1.5
    python -m visionbench.models.convert IN.pt OUT.params --model resnet50_v1.5

The direction comes from the suffixes (``.params`` <-> ``.pt``/``.pth``).
Gluon files: our checkpoints' format ('arg:NAME' weights, 'aux:NAME'
BatchNorm statistics; written that way), or the plain keys Gluon's
``save_parameters`` (structural names like ``features.0.weight``) and
``save_params`` (names without the model's prefix) write. PyTorch files: a
``state_dict`` (``torch.save``; a DistributedDataParallel ``module.`` prefix
is accepted). BatchNorm's ``num_batches_tracked`` is dropped going to Gluon
and set to 0 coming from it. Arrays keep their dtype (a float16 Gluon
checkpoint stays float16), except bfloat16 tensors, widened to float32
(exactly) because MXNet's files do not hold bfloat16.

The name mapping is computed, not typed: both models list their parameters
and statistics in the same order, so the n-th Gluon parameter pairs with the
n-th torch entry; the pairing checks kinds and shapes and is cached per
model. ``--layout NHWC`` reads/writes the convolution weights of a Gluon
model built with layout NHWC (OHWI; torch's are OIHW). The number of classes
comes from the file unless ``--classes`` says it.

Library use, no files: ``gluon_to_torch(arrays, name)`` and
``torch_to_gluon(state_dict, name)``. Both build the Gluon model to learn its
names, so they import mxnet (and torch) when called, never at import.
The output file is never overwritten and appears complete or not at all.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ..cli import ArgumentParser, UsageError, last_error_line, positive_int, run_main
from ..files import write_atomic

GLUON_SUFFIXES = ("running_mean", "running_var", "gamma", "beta", "weight", "bias")
# Gluon parameter kind -> the torch name that holds it
TORCH_SUFFIX = {"running_mean": "running_mean", "running_var": "running_var", "gamma": "weight",
                "beta": "bias", "weight": "weight", "bias": "bias"}
GLUON_SUFFIX_FILES = (".params",)
TORCH_SUFFIX_FILES = (".pt", ".pth")
COUNTER = "num_batches_tracked"
NHWC_TO_NCHW = (0, 3, 1, 2)   # OHWI -> OIHW for 4-D convolution weights
NCHW_TO_NHWC = (0, 2, 3, 1)


@dataclass(frozen=True)
class Pair:
    gluon: str                 # full Gluon name, e.g. resnet50_v15_conv0_weight
    structural: str            # save_parameters' name, e.g. features.0.weight
    torch: str                 # state_dict key, e.g. conv1.weight
    shape: Tuple[int, ...]     # NCHW layout (OIHW convolution weights)
    aux: bool                  # BatchNorm statistic: a Gluon 'aux:' entry, a torch buffer


@dataclass(frozen=True)
class Mapping:
    pairs: Tuple[Pair, ...]
    prefix: str                 # the Gluon model's name prefix, e.g. resnet50_v15_
    torch_keys: Tuple[str, ...]  # every state_dict key in order, counters included


def _gluon_kind(name: str) -> str:
    return next(suffix for suffix in GLUON_SUFFIXES if name.endswith("_" + suffix))


@functools.lru_cache(maxsize=16)
def mapping(name: str, classes: int) -> Mapping:
    """Pair the Gluon model's parameters with the torch model's state, in order."""
    import torch

    from ..engines.torch.models import get_torch_model
    from . import get_model

    net = get_model(name, classes=classes)
    structural = {param.name: key for key, param in net._collect_params_with_prefix().items()}
    with torch.device("meta"):   # shapes only: no memory, no random draws
        model = get_torch_model(name, classes, init_bn0=False)
    buffers = {key for key, _ in model.named_buffers()}
    state = [(key, tuple(value.shape)) for key, value in model.state_dict().items()]
    entries = [(key, shape) for key, shape in state if not key.endswith("." + COUNTER)]
    params = list(net.collect_params().values())
    if len(params) != len(entries):
        raise RuntimeError(f"{name}: {len(params)} Gluon parameters but {len(entries)} torch entries")
    pairs = []
    for param, (key, shape) in zip(params, entries):
        kind = _gluon_kind(param.name)
        if tuple(param.shape) != shape or key.rsplit(".", 1)[1] != TORCH_SUFFIX[kind] \
                or (kind.startswith("running_")) != (key in buffers):
            raise RuntimeError(f"{name}: Gluon {param.name} {param.shape} does not pair with torch {key} {shape}")
        pairs.append(Pair(param.name, structural[param.name], key, shape, key in buffers))
    return Mapping(tuple(pairs), net.prefix, tuple(key for key, _ in state))


def _classifier(name: str) -> Pair:
    return next(pair for pair in mapping(name, 1).pairs if pair.torch == "fc.weight")


def _classes_of(shape: Tuple[int, ...], what: str, name: str) -> int:
    """The number of classes a classifier weight of ``shape`` has (its rows)."""
    if len(shape) != 2:
        raise UsageError(f"parameter {what} has shape {tuple(shape)}; {name}'s classifier weight is 2-D")
    return int(shape[0])


def _check_model(name: str) -> None:
    from ..engines.torch.models import model_names

    if name not in model_names():
        raise UsageError(f"unknown model {name!r} (choose from {', '.join(model_names())})")


def _check_layout(layout: str) -> None:
    if layout not in ("NCHW", "NHWC"):
        raise UsageError(f"layout must be NCHW or NHWC, got {layout!r}")


def _gluon_by_full_name(arrays: Dict[str, np.ndarray], name: str) -> Dict[str, np.ndarray]:
    """Key the arrays by full Gluon name, whichever of the accepted key forms the file used."""
    names = mapping(name, 1)
    full = {pair.gluon for pair in names.pairs}
    by_structural = {pair.structural: pair.gluon for pair in names.pairs}
    keyed = {}
    for key, value in arrays.items():
        bare = key.split(":", 1)[1] if key.startswith(("arg:", "aux:")) else key
        full_name = bare if bare in full else by_structural.get(bare, names.prefix + bare)
        if full_name not in full:
            raise UsageError(f"unexpected parameter {key!r} for {name} (is this a {name} file?)")
        if full_name in keyed:
            raise UsageError(f"parameter {full_name} appears twice (as {key!r})")
        keyed[full_name] = value
    missing = [pair.gluon for pair in names.pairs if pair.gluon not in keyed]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UsageError(f"missing parameter {missing[0]}{more} for {name} (is this a {name} file?)")
    return keyed


def _check_shape(what: str, got: Tuple[int, ...], expected: Tuple[int, ...], name: str, classes: int,
                 layout: str) -> None:
    if tuple(got) != tuple(expected):
        raise UsageError(f"parameter {what} has shape {tuple(got)}, {name} with {classes} classes "
                         f"({layout}) needs {tuple(expected)}")


def _nhwc(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    return tuple(shape[axis] for axis in NCHW_TO_NHWC) if len(shape) == 4 else tuple(shape)


def gluon_to_torch(arrays: Dict[str, np.ndarray], name: str, classes: Optional[int] = None,
                   layout: str = "NCHW") -> "Dict[str, object]":
    """Gluon arrays (any accepted key form, numpy values) -> an ordered torch
    state_dict for ``get_torch_model(name, classes, ...)``; ``classes`` from
    the arrays when None; ``layout`` the Gluon model's."""
    import collections

    import torch

    _check_model(name)
    _check_layout(layout)
    keyed = _gluon_by_full_name(arrays, name)
    classifier = _classifier(name).gluon
    classes = classes or _classes_of(np.shape(keyed[classifier]), classifier, name)
    names = mapping(name, classes)
    state = collections.OrderedDict((key, torch.tensor(0, dtype=torch.long))
                                    for key in names.torch_keys if key.endswith("." + COUNTER))
    for pair in names.pairs:
        array = np.asarray(keyed[pair.gluon])
        expected = pair.shape if layout == "NCHW" else _nhwc(pair.shape)
        _check_shape(pair.gluon, array.shape, expected, name, classes, layout)
        if layout == "NHWC" and array.ndim == 4:
            array = array.transpose(NHWC_TO_NCHW)
        state[pair.torch] = torch.from_numpy(np.array(array, order="C", copy=True))
    return collections.OrderedDict((key, state[key]) for key in names.torch_keys)


def _torch_entries(state_dict) -> Dict[str, object]:
    """The state_dict without counters and without DDP's ``module.`` prefix."""
    import torch

    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise UsageError("expected a PyTorch state_dict (a dict of tensors)")
    keys = list(state_dict)
    strip = "module." if keys and all(key.startswith("module.") for key in keys) else ""
    return {key[len(strip):]: value for key, value in state_dict.items() if not key.endswith("." + COUNTER)}


def torch_to_gluon(state_dict, name: str, classes: Optional[int] = None,
                   layout: str = "NCHW") -> Dict[str, np.ndarray]:
    """A torch state_dict -> Gluon arrays keyed as our checkpoints ('arg:NAME',
    'aux:NAME'), numpy values, for the Gluon model ``name`` built with
    ``layout``; ``classes`` from the state_dict when None."""
    import torch

    _check_model(name)
    _check_layout(layout)
    entries = _torch_entries(state_dict)
    classifier = _classifier(name).torch
    if classifier not in entries:
        raise UsageError(f"missing parameter {classifier} for {name} (is this a {name} file?)")
    classes = classes or _classes_of(tuple(entries[classifier].shape), classifier, name)
    names = mapping(name, classes)
    known = {pair.torch for pair in names.pairs}
    unexpected = [key for key in entries if key not in known]
    if unexpected:
        raise UsageError(f"unexpected parameter {unexpected[0]!r} for {name} (is this a {name} file?)")
    arrays = {}
    for pair in names.pairs:
        if pair.torch not in entries:
            raise UsageError(f"missing parameter {pair.torch} for {name} (is this a {name} file?)")
        tensor = entries[pair.torch].detach().cpu()
        _check_shape(pair.torch, tuple(tensor.shape), pair.shape, name, classes, "NCHW")
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()   # exact; MXNet's files hold no bfloat16
        array = tensor.numpy()
        if layout == "NHWC" and array.ndim == 4:
            array = array.transpose(NCHW_TO_NHWC)
        arrays[("aux:" if pair.aux else "arg:") + pair.gluon] = np.array(array, order="C", copy=True)
    return arrays


def read_gluon_file(path: Path) -> Dict[str, np.ndarray]:
    import mxnet as mx

    try:
        loaded = mx.nd.load(str(path))
    except mx.base.MXNetError as err:
        raise UsageError(f"cannot read {path} as MXNet .params: {last_error_line(err)}")
    if not isinstance(loaded, dict):
        raise UsageError(f"{path} holds unnamed arrays, not a model's parameters")
    return {key: value.asnumpy() for key, value in loaded.items()}


def write_gluon_file(arrays: Dict[str, np.ndarray], path: Path) -> None:
    import mxnet as mx

    nd_arrays = {key: mx.nd.array(value, dtype=value.dtype) for key, value in arrays.items()}
    _write_new(Path(path), lambda tmp: mx.nd.save(str(tmp), nd_arrays))


def read_torch_file(path: Path):
    import pickle

    import torch

    try:
        # weights_only: tensors and plain containers only; a file cannot run code here
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        marker = "WeightsUnpickler error:"
        detail = text.split(marker, 1)[1].strip().splitlines()[0] if marker in text else last_error_line(err)
        raise UsageError(f"cannot read {path} as a PyTorch state_dict ({detail})")
    except (OSError, RuntimeError, EOFError) as err:
        raise UsageError(f"cannot read {path} as a PyTorch file: {last_error_line(err)}")
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise UsageError(f"{path} does not hold a PyTorch state_dict (a dict of tensors)")
    return loaded


def write_torch_file(state_dict, path: Path) -> None:
    import torch

    _write_new(Path(path), lambda tmp: torch.save(state_dict, str(tmp)))


def _write_new(final: Path, write: Callable[[Path], None]) -> None:
    """files.write_atomic that never overwrites: a killed conversion leaves
    no finished-looking file, and a file that appeared meanwhile is kept."""
    try:
        write_atomic(final, write, overwrite=False)
    except FileExistsError:
        raise UsageError(f"{final} exists; not overwritten")


def _direction(source: Path, target: Path) -> str:
    if source.suffix in GLUON_SUFFIX_FILES and target.suffix in TORCH_SUFFIX_FILES:
        return "gluon_to_torch"
    if source.suffix in TORCH_SUFFIX_FILES and target.suffix in GLUON_SUFFIX_FILES:
        return "torch_to_gluon"
    raise UsageError(f"cannot tell the direction from {source.name} -> {target.name}: "
                     "convert .params -> .pt/.pth or .pt/.pth -> .params")


def _check_paths(source: Path, target: Path) -> None:
    if not source.is_file():
        raise UsageError(f"{source} does not exist or is not a file")
    if target.exists():
        raise UsageError(f"{target} exists; not overwritten (choose another name or delete it)")
    if not target.parent.is_dir():
        raise UsageError(f"folder {target.parent} does not exist")


def convert_file(source: Path, target: Path, name: str, classes: Optional[int] = None,
                 layout: str = "NCHW") -> int:
    """Convert ``source`` into the new file ``target``; returns the number of arrays written."""
    source, target = Path(source), Path(target)
    direction = _direction(source, target)
    _check_model(name)
    _check_paths(source, target)
    if direction == "gluon_to_torch":
        state = gluon_to_torch(read_gluon_file(source), name, classes, layout)
        write_torch_file(state, target)
        return len(state)
    arrays = torch_to_gluon(read_torch_file(source), name, classes, layout)
    write_gluon_file(arrays, target)
    return len(arrays)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python -m visionbench.models.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="IN: a Gluon .params or a PyTorch .pt/.pth file")
    parser.add_argument("target", type=Path, help="OUT: the file to create (.pt/.pth or .params)")
    parser.add_argument("--model", required=True, help="registry name, e.g. resnet50_v1.5")
    parser.add_argument("--classes", type=positive_int, default=None, help="default: from IN")
    parser.add_argument("--layout", choices=("NCHW", "NHWC"), default="NCHW",
                        help="layout the Gluon model was built with (its convolution weights' order)")
    args = parser.parse_args(argv)
    count = convert_file(args.source, args.target, args.model, args.classes, args.layout)
    print(f"wrote {args.target} ({count} arrays, {args.model})")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "convert"))
