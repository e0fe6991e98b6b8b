"""Path 3 of docs/PERFORMANCE.md: what ``--mode inference`` runs on a CPU
(the graph fused for oneDNN by ``optimize_for(backend="MKLDNN")``) against
the plainly hybridized model (static_alloc + static_shape), per batch size,
in one process.

Both networks are built by the same code with the same seed, so they hold the
same weights; their outputs on one batch are compared first (a fused graph
that computed something else would be no speed-up). For each batch size the
two run in rotation ``--repeats`` times; a run is ``--warmup`` untimed then
``--steps`` timed forward passes of one fixed batch (synthetic data: the
input pipeline is not in these figures), timed as ``--mode inference`` times
them (bench/inference.py: measure_inference).

    python -m visionbench.bench.inference_compare --batch-sizes 1,16,64
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import replace
from typing import Dict, List, Optional, Sequence

from ..cli import ArgumentParser, RunFailure, positive_int, run_main
from .compare import in_rotation, median_ratio, median_table
from .sweep import int_list

CANDIDATES = ("hybridized", "fused (visionbench)")


def compare_batch(config, batch_size: int, steps: int, warmup: int, repeats: int) -> Dict[str, List[float]]:
    import mxnet as mx
    import numpy as np

    from ..engine.precision import resolve_precision
    from .inference import inference_net, measure_inference

    devices = [mx.cpu(0)]
    precision = resolve_precision("float32", "cpu", None)
    shape = (batch_size, 3, config.image_size, config.image_size)
    nets = {CANDIDATES[0]: inference_net(replace(config, fuse_inference=False), devices, precision, shape),
            CANDIDATES[1]: inference_net(config, devices, precision, shape)}
    batch = mx.nd.random.uniform(-2, 2, shape=shape, ctx=devices[0])
    plain, fused = (nets[name](batch).asnumpy() for name in CANDIDATES)
    scale = float(np.abs(plain).max())
    if not np.allclose(plain, fused, rtol=1e-3, atol=1e-4 * scale):
        raise RunFailure(f"batch {batch_size}: the fused graph's outputs differ from the hybridized one's "
                         f"(max difference {float(np.abs(plain - fused).max()):.3g} of {scale:.3g})")
    step = [(batch, None, 0)]

    def timed(net):
        return lambda: measure_inference(net, itertools.repeat(step), warmup, steps)["ips"]

    return in_rotation({name: timed(net) for name, net in nets.items()}, repeats)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..config import Config

    parser = ArgumentParser(prog="python -m visionbench.bench.inference_compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 16, 64])
    parser.add_argument("--num-layers", type=int, default=50, choices=(18, 34, 50, 101, 152))
    parser.add_argument("--image-size", type=positive_int, default=224, help="pixels")
    parser.add_argument("--steps", type=positive_int, default=3, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per run")
    parser.add_argument("--repeats", type=positive_int, default=5, help="runs of each graph, in rotation")
    args = parser.parse_args(argv)
    config = Config(mode="inference", device="cpu", num_layers=args.num_layers, image_size=args.image_size)
    print(f"ResNet{args.num_layers} v1.5, {args.image_size} px, float32, 1 CPU context, {args.steps} timed batches "
          f"per run after {args.warmup}, {args.repeats} runs each in rotation\n")
    ratios = {}
    for batch_size in args.batch_sizes:
        results = compare_batch(config, batch_size, args.steps, args.warmup, args.repeats)
        ratios[batch_size] = median_ratio(results, CANDIDATES[1], CANDIDATES[0])
        print(f"batch {batch_size}:\n\n{median_table(results, 'graph')}\n", flush=True)
    print("| batch | fused / hybridized (ratio of medians) |\n| --- | --- |")
    for batch_size, ratio in ratios.items():
        print(f"| {batch_size} | {ratio:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "inference_compare"))
