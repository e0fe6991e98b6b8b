"""Scaling of the parameter-server path on one machine (loopback):

- ``1 worker x 1``: ``./runner --benchmark`` on one CPU context;
- ``2 workers x 1 (dist_sync)``: the same per-worker batch, two workers,
  scheduler and server on 127.0.0.1 (``--kv-store dist_sync --local-workers 2``);
- ``1 worker x 2 (local kvstore)``: two CPU contexts in one process, for
  reference: the same global batch without the parameter server.

Every run is a ``./runner`` subprocess (synthetic data, training img/s over
the epochs after the first, all workers' images), the three kinds in
rotation ``--repeats`` times; the report gives medians, min-max and the
scaling efficiency img/s(2 workers) / (2 x img/s(1 worker)).

    python -m visionbench.bench.dist_scaling --repeats 3
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from ..cli import ArgumentParser, UsageError, positive_int, run_main
from .compare import in_rotation, median_ratio, median_table
from .sweep import RUNNER, run_point

KINDS = {
    "1 worker x 1": ["-n", "1"],
    "2 workers x 1 (dist_sync)": ["-n", "1", "--kv-store", "dist_sync", "--local-workers", "2"],
    "1 worker x 2 (local kvstore)": ["-n", "2"],
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python -m visionbench.bench.dist_scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("-b", "--batch-size", type=positive_int, default=32, help="per worker device")
    parser.add_argument("--num-layers", type=int, default=18, choices=(18, 34, 50))
    parser.add_argument("--image-size", type=positive_int, default=32)
    parser.add_argument("-i", "--iterations", type=positive_int, default=20, help="steps per epoch")
    args = parser.parse_args(argv)
    common = ["--mode", "train", "--benchmark", "--device", "cpu", "--data-backend", "synthetic",
              "-b", str(args.batch_size), "--num-layers", str(args.num_layers), "--image-size", str(args.image_size),
              "--num-classes", "10", "-i", str(args.iterations), "-e", "3", "--benchmark-warmup-epochs", "1"]

    def point(flags: List[str], kind: str):
        def run() -> float:
            outcome = run_point([str(RUNNER), *common, *flags], timeout=600)
            if outcome["status"] != "ok":
                raise UsageError(f"{kind}: {outcome['error']}")
            return outcome["ips"]
        return run

    ips = in_rotation({kind: point(flags, kind) for kind, flags in KINDS.items()}, args.repeats)
    print(f"ResNet{args.num_layers} v1.5, {args.image_size} px, batch {args.batch_size} per device, float32, "
          f"synthetic data, {args.iterations} timed steps x 2 epochs, {args.repeats} runs each\n")
    print(median_table(ips, "run"))
    print(f"\nscaling efficiency, 2 workers (dist_sync) / (2 x 1 worker): "
          f"{median_ratio(ips, '2 workers x 1 (dist_sync)', '1 worker x 1') / 2:.2f}")
    print(f"for reference, 2 contexts in one worker / (2 x 1 worker): "
          f"{median_ratio(ips, '1 worker x 2 (local kvstore)', '1 worker x 1') / 2:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main, "dist_scaling"))
