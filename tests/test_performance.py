"""Performance guards (docs/PERFORMANCE.md): the training step's overhead over
a bare Gluon loop, and the fused inference graph computing what the
hybridized one computes."""
import json
from dataclasses import replace

import mxnet as mx
import numpy as np

from visionbench.bench import overhead
from visionbench.bench.inference import inference_net
from visionbench.config import Config
from visionbench.engine.precision import resolve_precision

# The benchmark's target is 0.98 (docs/PERFORMANCE.md); shared test machines
# are noisy, so the guard only catches a real regression such as a sync or
# an extra operator per step.
OVERHEAD_FLOOR = 0.9


def test_training_step_overhead_over_a_bare_gluon_loop_stays_small():
    # A busy machine can slow one candidate's runs: a ratio below the floor
    # is measured once more with twice the runs before it counts.
    measured = []
    for repeats in (6, 12):
        args = overhead.build_parser().parse_args(["--num-layers", "18", "--image-size", "32", "-b", "16",
                                                   "--num-classes", "10", "--steps", "6", "--repeats", str(repeats)])
        results = overhead.compare(overhead._config(args), args.steps, args.repeats)
        measured.append(overhead.overhead_ratio(results))
        if measured[-1] >= OVERHEAD_FLOOR:
            break
    assert max(measured) >= OVERHEAD_FLOOR, f"visionbench / bare = {measured}: {results}"


def test_the_training_step_reads_back_to_the_host_once_a_step(monkeypatch):
    # The clock-free half of the guard: host synchronisations during an
    # epoch, counted. One read a step (the previous step's loss sums, for the
    # NaN check), one for the epoch's loss, one final waitall: an extra sync
    # per step (a metric read back, an LR computed on the device) would show.
    steps = 6
    args = overhead.build_parser().parse_args(["--num-layers", "18", "--image-size", "16", "-b", "4",
                                               "--num-classes", "10", "--steps", str(steps)])
    config = overhead._config(args)
    run_once = overhead.visionbench_candidate(config)
    run_once(2)   # warm: the static graphs are built
    syncs = []
    for name in ("asnumpy", "wait_to_read"):
        real = getattr(mx.nd.NDArray, name)
        monkeypatch.setattr(mx.nd.NDArray, name, lambda self, *a, _real=real, _name=name, **k:
                            (syncs.append(_name), _real(self, *a, **k))[1])
    real_waitall = mx.nd.waitall
    monkeypatch.setattr(mx.nd, "waitall", lambda: (syncs.append("waitall"), real_waitall())[1])
    run_once(steps)
    assert syncs.count("asnumpy") == steps + 1, syncs   # steps - 1 in the loop, the last after it, the loss sum
    assert syncs.count("waitall") <= 2 and syncs.count("wait_to_read") == 0, syncs


def _graph_ops(net, tmp_path, name):
    net.export(str(tmp_path / name))
    nodes = json.loads((tmp_path / f"{name}-symbol.json").read_text())["nodes"]
    return [node["op"] for node in nodes if node["op"] != "null"]


def test_inference_on_cpu_runs_the_fused_graph_with_the_same_outputs(tmp_path):
    config = Config(mode="inference", device="cpu", num_layers=18, image_size=32, num_classes=10)
    precision = resolve_precision("float32", "cpu", None)
    devices = [mx.cpu(0), mx.cpu(1)]
    shape = (4, 3, 32, 32)
    plain = inference_net(replace(config, fuse_inference=False), devices, precision, shape)
    fused = inference_net(config, devices, precision, shape)
    batch = mx.nd.random.uniform(-2, 2, shape=shape)
    for device in devices:   # every context runs the partitioned graph
        expected = plain(batch.as_in_context(device)).asnumpy()
        got = fused(batch.as_in_context(device)).asnumpy()
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())
        assert (got.argmax(1) == expected.argmax(1)).all()
    plain_ops, fused_ops = _graph_ops(plain, tmp_path, "plain"), _graph_ops(fused, tmp_path, "fused")
    # BatchNorm and ReLU are folded into the oneDNN convolutions: far fewer operators.
    assert "BatchNorm" in plain_ops and "BatchNorm" not in fused_ops
    assert "_sg_mkldnn_conv" in fused_ops and len(fused_ops) < len(plain_ops) / 2


def test_gpu_settings_fill_only_unset_variables_and_only_for_gpu_runs():
    from visionbench.data.gpu_decoding import decoder_options
    from visionbench.engine.gpu_settings import apply_environment, mxnet_environment

    assert mxnet_environment("cpu", rect_val=False) == {} and decoder_options("cpu") == {}
    env = {"MXNET_OPTIMIZER_AGGREGATION_SIZE": "8"}   # the user's choice wins
    apply_environment("gpu", rect_val=False, environ=env)
    assert env == {"MXNET_OPTIMIZER_AGGREGATION_SIZE": "8", "MXNET_CUDNN_AUTOTUNE_DEFAULT": "1"}
    # Rectangular validation feeds a new shape every batch: no autotuning for each.
    assert mxnet_environment("gpu", rect_val=True)["MXNET_CUDNN_AUTOTUNE_DEFAULT"] == "0"
    assert set(decoder_options("mixed")) == {"device_memory_padding", "host_memory_padding", "hw_decoder_load"}


def test_nvjpeg_options_are_arguments_dali_knows():
    # The mixed decoder cannot run here; DALI's CPU decoder takes the same
    # arguments, so a misspelt one fails this pipeline.
    import cv2
    from nvidia.dali import fn, pipeline_def, types

    from visionbench.data.gpu_decoding import decoder_options

    jpeg = cv2.imencode(".jpg", np.full((24, 32, 3), 90, np.uint8))[1]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipeline():
        encoded = fn.external_source(source=lambda: [jpeg], batch=True, dtype=types.UINT8)
        return fn.decoders.image(encoded, device="cpu", **decoder_options("mixed"))

    pipe = pipeline()
    pipe.build()
    assert pipe.run()[0].at(0).shape == (24, 32, 3)


def test_the_torch_engine_step_costs_about_a_bare_pytorch_loop():
    """Path 7's guard: the torch engine's run loop against forward, loss,
    backward and torch.optim.SGD by hand (target 0.97; floor 0.9 as path 1's).
    Measured in a process of its own, as `python -m
    visionbench.bench.engines_compare` measures it, away from the state a
    long test session leaves (one full `make test` measured 0.896 and 0.898
    in-process, where the test alone passed)."""
    import subprocess
    import sys

    program = ("import json; from visionbench.bench.engines_compare import engine_over_bare; "
               f"print(json.dumps(engine_over_bare({OVERHEAD_FLOOR})))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert max(measured["ratios"]) >= OVERHEAD_FLOOR, f"torch engine / bare = {measured}"
