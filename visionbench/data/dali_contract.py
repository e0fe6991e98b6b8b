"""The dali-gpu pipelines, checked without a GPU.

Building a DALI pipeline for a GPU needs CUDA, so no machine here can build,
let alone run, the pipelines ``--data-backend dali-gpu`` uses. Their graphs,
though, are plain Python objects once defined. ``gpu_pipeline_problems``
defines every pipeline the suite builds for a GPU (data/dali.build_pipeline
with a GPU context; nothing runs) and checks each operator the way DALI 1.34
would at build and run time:

1. DALI's own argument check (``OpSchema.CheckArgs``: names, types and
   values of the arguments against the operator's schema);
2. named-argument inputs are CPU nodes (DALI's pipeline.cc refuses a GPU
   node there when the pipeline is built: "Named arguments inputs to
   operators must be CPU data nodes");
3. every GPU or mixed operator receives data of a dtype its GPU kernel is
   compiled for (GPU_KERNELS below), the dtypes being propagated through the
   graph from the sources;
4. the images and the labels leave the pipeline on the GPU (the MXNet plugin
   puts CPU outputs on cpu(0), and MXNet refuses operators across devices).

Each problem is one line; an empty list means every check passed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, FrozenSet, List, Optional

# Every dtype DALI has, by numpy name.
ALL_DTYPES = frozenset({"bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                        "float16", "float32", "float64"})
INTEGER_AND_FLOAT32 = frozenset({"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                                 "float32"})


@dataclass(frozen=True)
class GpuKernel:
    """What the GPU (or mixed) implementation of one DALI operator accepts as
    its data input, and where that was read."""
    input_dtypes: FrozenSet[str]
    source: str
    # The kernel class template in libdali_operators.so and which of its
    # template arguments is the input element type: the instantiations `nm -C`
    # lists are the dtypes compiled in (tests/test_gpu_contract.py re-reads
    # them from the installed library). None: not a per-dtype kernel.
    template: Optional[str] = None
    input_argument: int = 0
    output_dtypes: Optional[FrozenSet[str]] = None   # for operators with a dtype argument


# nvidia-dali-cuda110 1.34.0, read from the C++ template instantiations in
# nvidia/dali/libdali_operators.so (`nm -C`) unless said otherwise. Keyed by
# DALI schema name.
GPU_KERNELS: Dict[str, GpuKernel] = {
    "decoders__Image": GpuKernel(frozenset({"uint8"}), "operator schema: the input is the encoded file's bytes"),
    "decoders__ImageRandomCrop": GpuKernel(frozenset({"uint8"}),
                                           "operator schema: the input is the encoded file's bytes"),
    "Resize": GpuKernel(frozenset({"uint8", "int16", "uint16", "float32"}),
                        "kernels::ResampleGPU<Out, In, spatial_ndim>", "ResampleGPU", 1),
    "CropMirrorNormalize": GpuKernel(frozenset({"uint8", "int16", "uint16", "int32", "float16", "float32"}),
                                     "kernels::SliceFlipNormalizePermutePadGpu<Out, In, Dims>",
                                     "SliceFlipNormalizePermutePadGpu", 1,
                                     output_dtypes=frozenset({"uint8", "int8", "float16", "float32"})),
    # No float16: the Cutout of the CIFAR recipe erases in float32 (dali.py).
    "Erase": GpuKernel(INTEGER_AND_FLOAT32, "kernels::erase_gpu_impl<channels, T, ndim>", "erase_gpu_impl", 1),
    "Flip": GpuKernel(frozenset({"bool", "uint8", "int16", "int32", "int64", "float32", "float64"}),
                      "kernels::FlipGPU<T>", "FlipGPU", 0),
    "Cat": GpuKernel(ALL_DTYPES, "kernels::TensorJoinGPU<T, new_axis>", "TensorJoinGPU", 0),
    "Slice": GpuKernel(ALL_DTYPES, "kernels::SliceGPU<Out, In, Dims>", "SliceGPU", 1),
    "Cast": GpuKernel(ALL_DTYPES, "kernels::CastGPU<Out, In>", "CastGPU", 1, output_dtypes=ALL_DTYPES),
    "TensorSubscript": GpuKernel(ALL_DTYPES, "TensorSubscript<GPUBackend>::RunTyped<ndim, element_size>: "
                                             "copies elements of 1, 2, 4 or 8 bytes, whatever their type"),
    "MakeContiguous": GpuKernel(ALL_DTYPES, "the CPU-to-GPU copy of .gpu(): a byte copy"),
}

# Operators whose output has the dtype of their first input.
_SAME_DTYPE = {"Erase", "Flip", "Cat", "TensorSubscript", "Reshape", "MakeContiguous"}
# Operators whose output dtype is their `dtype` argument (default when not given).
_DTYPE_ARGUMENT = {"Cast": None, "CropMirrorNormalize": "float32", "PeekImageShape": "int64",
                   "Shapes": "int64", "random__Uniform": "float32"}
_UINT8_OUTPUT = {"decoders__Image", "decoders__ImageRandomCrop"}   # 1.34's decoders emit uint8 only


def _numpy_name(dali_dtype) -> str:
    import numpy as np
    from nvidia.dali import types

    return np.dtype(types.to_numpy_type(dali_dtype)).name


def _schema(op) -> str:
    return getattr(type(op._op), "schema_name", type(op._op).__name__)


def _arguments(op) -> dict:
    return getattr(op._op, "_init_args", None) or {}


def _output_dtype(node, memo: Dict[str, Optional[str]]) -> Optional[str]:
    """The dtype of ``node``, or None when no rule covers its operator."""
    if node.name in memo:
        return memo[node.name]
    op = node.source
    schema, arguments = _schema(op), _arguments(op)
    dtype = None
    if schema == "ExternalSource":
        dtypes = op._op._dtype
        dtypes = dtypes if isinstance(dtypes, (list, tuple)) else [dtypes]
        index = getattr(op, "_output_index", None) or 0
        dtype = _numpy_name(dtypes[index]) if dtypes[index] is not None else None
    elif schema in _UINT8_OUTPUT:
        dtype = "uint8"
    elif schema in _DTYPE_ARGUMENT:
        given = arguments.get("dtype")
        dtype = _numpy_name(given) if given is not None else _DTYPE_ARGUMENT[schema]
    elif schema in _SAME_DTYPE or (schema in ("Resize", "Slice") and arguments.get("dtype") is None):
        dtype = _output_dtype(op.inputs[0], memo) if op.inputs else None
    elif schema in ("Resize", "Slice"):
        dtype = _numpy_name(arguments["dtype"])
    memo[node.name] = dtype
    return dtype


def _spec_input_devices(op) -> List[str]:
    """The device DALI will wire each input of ``op`` from, in the order of
    ``op.inputs`` (positional inputs, then named-argument inputs), read from
    the operator spec DALI builds the pipeline from: a named-argument input
    is always registered as a CPU input."""
    lines = repr(op.spec).splitlines()
    start = lines.index("  Inputs:") + 1 if "  Inputs:" in lines else len(lines)
    devices = []
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        devices.append(line.strip().rsplit("_", 1)[1])
    return devices


def pipeline_problems(pipe, name: str) -> List[str]:
    """Problems of one defined (not built) pipeline, one line each."""
    pipe._build_graph()   # the Python graph only: no CUDA
    problems = []
    memo: Dict[str, Optional[str]] = {}
    for op in pipe._ops:
        schema, device = _schema(op), op._op.device
        where = f"{name}: {schema} ({device})"
        try:
            op.check_args()
        except RuntimeError as err:
            text = next((line for line in str(err).splitlines() if line.strip()), "")
            problems.append(f"{where} fails DALI's argument check: {text[:200]}")
        wired = _spec_input_devices(op)
        if len(wired) != len(op.inputs):
            problems.append(f"{where}: cannot read its inputs from the operator spec")
        for node, wanted in zip(op.inputs, wired):
            if node.device != wanted:
                problems.append(f"{where} takes {node.device.upper()} node {node.name} as a named argument; "
                                "DALI takes named-argument inputs from CPU nodes only")
        if device not in ("gpu", "mixed"):
            continue
        kernel = GPU_KERNELS.get(schema)
        if kernel is None:
            problems.append(f"{where}: not in the table of GPU kernels (data/dali_contract.GPU_KERNELS)")
            continue
        data_inputs = op.inputs[:1] if device == "mixed" else [n for n in op.inputs if n.device == "gpu"]
        for node in data_inputs:
            dtype = _output_dtype(node, memo)
            if dtype is None:
                problems.append(f"{where}: the dtype of its input {node.name} cannot be traced")
            elif dtype not in kernel.input_dtypes:
                problems.append(f"{where} receives {dtype}; its GPU kernel takes {', '.join(sorted(kernel.input_dtypes))} "
                                f"({kernel.source})")
        if kernel.output_dtypes is not None and _arguments(op).get("dtype") is not None:
            out = _numpy_name(_arguments(op)["dtype"])
            if out not in kernel.output_dtypes:
                problems.append(f"{where} is asked for {out}; its GPU kernel writes "
                                f"{', '.join(sorted(kernel.output_dtypes))} ({kernel.source})")
    for output, what in zip(pipe._graph_outputs, ("images", "labels")):
        if output.device != "gpu":   # the MXNet plugin would put it on cpu(0), away from the model
            problems.append(f"{name}: the {what} leave the pipeline on the {output.device}, not the GPU")
    return problems


def gpu_loader_specs() -> Dict[str, object]:
    """Every loader configuration whose DALI pipeline runs on a GPU, by name:
    dali-gpu for ImageNet train, val and rect val and CIFAR train (with and
    without Cutout) and val, in float16 and float32, NCHW and NHWC; and
    dali-cpu feeding a GPU (CPU decoding, then a copy)."""
    import mxnet as mx

    from .spec import Augment, LoaderSpec

    base = LoaderSpec(prefix=None, train=True, batch_size=2, image_size=224, devices=[mx.gpu(0)],
                      backend="dali-gpu", threads=2)
    cases = {"imagenet train": (True, Augment()), "imagenet val": (False, Augment()),
             "imagenet rect val": (False, Augment(rect_val=True)),
             "cifar train": (True, Augment(recipe="cifar")),
             "cifar train without cutout": (True, Augment(recipe="cifar", cutout=0)),
             "cifar val": (False, Augment(recipe="cifar"))}
    specs = {}
    for case, (train, augment) in cases.items():
        size = 32 if augment.recipe == "cifar" else 224
        for dtype in ("float16", "float32"):
            for layout in ("NCHW", "NHWC"):
                specs[f"dali-gpu {case} {dtype} {layout}"] = replace(base, train=train, augment=augment,
                                                                    image_size=size, dtype=dtype, layout=layout)
    for train in (True, False):
        specs[f"dali-cpu on a GPU imagenet {'train' if train else 'val'} float16 NHWC"] = replace(
            base, backend="dali-cpu", train=train, dtype="float16", layout="NHWC")
    return specs


def gpu_pipeline_problems() -> List[str]:
    """Define every pipeline of gpu_loader_specs for GPU 0 (nothing is built or
    run) and check each; one line per problem."""
    from .dali import build_pipeline

    problems = []
    for name, spec in gpu_loader_specs().items():
        try:
            pipe = build_pipeline(spec, iter(()), spec.devices[0], seed=0)
        except Exception as err:  # noqa: BLE001 - DALI raises many kinds; the failure is the finding
            problems.append(f"{name}: the pipeline cannot be defined: {str(err).splitlines()[0][:200]}")
            continue
        problems += pipeline_problems(pipe, name)
    return problems
