"""``python -m visionbench.gpucheck OUT_DIR``: one command that tells whether
a GPU machine trains with the torch engine, and how fast (issue 23).

It prints the GPU, driver, CUDA, cuDNN and torch versions first, then runs
these parts, in this order, each point through the suite's own pieces (the
torch engine's session and models, the run loop's ``run_epoch`` over its
loaders, bench/timing.py's latency percentiles):

1. readiness: float16 and bfloat16 training steps of ResNet50 v1.5 (the
   loss falls or the loss scale moves; every weight changes), and the
   ``nvjpeg`` pipeline's labels against the images of a generated set;
2. ResNet50 v1.5 training on synthetic data: {bfloat16, float16} x
   {channels_last, contiguous} x batch {128, 256}, eager; --compile at
   batch 256, bfloat16, channels_last only (a cold compile per point:
   eight would not fit the 8 minutes; the others are skipped records);
3. the same at batch 256, bfloat16, channels_last from generated
   ImageNet-sized JPEGs through ``nvjpeg`` and through CPU decoding, with
   the ratio to synthetic;
4. the nvjpeg backend's train crops of a batch of 256 ImageNet-shaped
   images on the device, batched (as the backend makes them) and by a loop
   of F.interpolate calls: img/s of the augmentation alone, operators per
   batch, peak memory (augmentation.py; bench/augment_ops.py);
5. inference (bfloat16, channels_last): img/s and latency percentiles at
   batch 1, 64 and 256;
6. ResNet9 with the DAWNBench recipe's settings on 50,000 synthetic 32 px
   images: seconds per epoch and the projected 24 epochs;
7. model FLOP utilisation of every ResNet50 figure against the device's
   dense bfloat16 peak (machine.py's table; unknown devices: n/a).

OUT_DIR receives ``gpucheck.json`` (a benchmark report under
report_schema/benchmark_report.schema.json, validated where jsonschema is
importable) and ``gpucheck.md`` (the table, printed too).

A point that fails is a record with its error, and the check goes on; a
point that cannot run here (no DALI for the CPU-decoding comparison, say)
is one whose error starts with ``skipped:`` and the reason; points not
started within ``--budget-s`` are ``timeout`` records. Exit status: 0 when
no point failed, 1 when one did (after writing both files), 2 with one line
when there is no GPU (and no ``--device cpu --tiny``).

Nothing here needs MXNet, DALI or jsonschema (the target machine has none
of them); torch is imported inside functions only (the package rule).
``--device cpu --tiny`` runs every part at toy sizes on CPUs: the test.
"""
