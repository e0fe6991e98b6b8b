"""What oneDNN's INT8 path offers beyond the suite's default, measured side
by side in one process (docs/PERFORMANCE.md, path 3): each variant is the
same float32 model (same seed, same weights) quantized another way, timed as
``--mode inference`` times it, in rotation with the fused float32 graph.

Variants:
- ``naive, full``: the suite's ``--dtype int8`` (every operator oneDNN can
  quantize is quantized; ranges from the min/max seen in calibration);
- ``entropy, full``: ranges minimizing the KL divergence (``--calib-mode entropy``);
- ``naive, smart``: MXNet's "smart" mode, which leaves operators in float32
  where it expects quantizing them to cost more than it saves;
- ``naive, full, first conv and classifier in float32``: the layers most
  often kept in float32 for accuracy.

Calibration runs on random images: these figures are speeds, not accuracy
(tests/test_int8.py and ``--mode val --dtype int8`` measure that).

    python -m visionbench.bench.int8_variants --batch-size 16 --repeats 5
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import replace
from typing import Optional, Sequence

from ..cli import ArgumentParser, RunFailure, positive_int, run_main
from .compare import in_rotation, median_ratio, median_table

FUSED = "float32 fused (--dtype float32)"


# Names of the stem convolution and the classifier after MXNet's oneDNN fusion
# pass, which is where quantize_net_v2 applies exclusions (the Gluon layer
# names are gone by then); the pass numbers fused nodes in graph order.
OUTER_LAYERS = ["sg_mkldnn_conv_bn_act_0", "sg_mkldnn_fully_connected_0"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    import mxnet as mx

    from ..config import Config
    from ..engine.devices import cpu_isa, cpu_model
    from ..engine.precision import resolve_precision
    from ..engine.quantize import quantize
    from .inference import inference_net, measure_inference

    parser = ArgumentParser(prog="python -m visionbench.bench.int8_variants", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--num-layers", type=int, default=50, choices=(18, 34, 50, 101, 152))
    parser.add_argument("--image-size", type=positive_int, default=224, help="pixels")
    parser.add_argument("--calib-images", type=positive_int, default=32)
    parser.add_argument("--steps", type=positive_int, default=3, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per run")
    parser.add_argument("--repeats", type=positive_int, default=5, help="runs of each variant, in rotation")
    args = parser.parse_args(argv)

    config = Config(mode="inference", device="cpu", num_layers=args.num_layers, image_size=args.image_size)
    devices = [mx.cpu(0)]
    precision = resolve_precision("float32", "cpu", None)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    plain = replace(config, fuse_inference=False)
    images = mx.nd.random.uniform(-2, 2, shape=(args.calib_images,) + shape[1:])
    nets = {FUSED: inference_net(config, devices, precision, shape)}
    # MXNet ignores exclusions that name no node: check the names against the fused graph
    fused = inference_net(plain, devices, precision, shape)(mx.sym.var("data")).get_backend_symbol("MKLDNN_QUANTIZE")
    outputs = set(fused.get_internals().list_outputs())
    missing = [name for name in OUTER_LAYERS if f"{name}_output" not in outputs]
    if missing:
        raise RunFailure(f"the fused graph has no node {', '.join(missing)}: update OUTER_LAYERS")
    for name, mode, quantize_mode, exclude_outer in (
            ("INT8 naive, full (--dtype int8)", "naive", "full", False),
            ("INT8 entropy, full", "entropy", "full", False),
            ("INT8 naive, smart", "naive", "smart", False),
            ("INT8 naive, full, first conv and classifier in float32", "naive", "full", True)):
        nets[name] = quantize(inference_net(plain, devices, precision, shape), images, mode, args.batch_size,
                              devices, quantize_mode=quantize_mode, exclude_layers=OUTER_LAYERS if exclude_outer else None)
    batch = mx.nd.random.uniform(-2, 2, shape=shape)
    step = [(batch, None, 0)]

    def timed(net):
        return lambda: measure_inference(net, itertools.repeat(step), args.warmup, args.steps)["ips"]

    results = in_rotation({name: timed(net) for name, net in nets.items()}, args.repeats)
    print(f"CPU: {cpu_model()}; {cpu_isa()}\n\nResNet{args.num_layers} v1.5, {args.image_size} px, batch "
          f"{args.batch_size}, 1 CPU context; calibration on {args.calib_images} random images; {args.steps} timed "
          f"batches per run after {args.warmup}, {args.repeats} runs each in rotation\n")
    print(median_table(results, "variant"))
    print("\n| variant | / fused float32 (ratio of medians) |\n| --- | --- |")
    for name in list(results)[1:]:
        print(f"| {name} | {median_ratio(results, name, FUSED):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "int8_variants"))
