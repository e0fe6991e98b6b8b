"""The data path to the devices: where the mxnet backend converts a batch,
how dali batches are copied into MXNet, and which thread reads the records."""
import json
from collections import Counter

import mxnet as mx
import numpy as np
import pytest

from visionbench.data.loader import make_loader
from visionbench.data.spec import LoaderSpec
from visionbench.selftest import write_colour_set


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return write_colour_set(tmp_path_factory.mktemp("path") / "coloured", 24)


def _operators_by_device(trace_file) -> Counter:
    """(device, operator) -> how many times MXNet's profiler saw it run."""
    events = json.loads(trace_file.read_text())["traceEvents"]
    devices = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] == "process_name"}
    return Counter((devices[e["pid"]], e["name"]) for e in events
                   if e.get("ph") == "B" and devices.get(e["pid"], "").startswith("cpu/"))


def test_mxnet_backend_converts_each_slice_on_its_own_device(records, tmp_path):
    # Two CPU contexts stand in for two GPUs: MXNet's profiler names the
    # device every operator ran on. Each device must transpose and cast its
    # own slice, once per step, after the copy: none of it on the host's
    # cpu(0) for the whole batch.
    devices = [mx.cpu(0), mx.cpu(1)]
    loader = make_loader(LoaderSpec(prefix=records, train=False, batch_size=4, image_size=32, devices=devices,
                                    backend="mxnet", dtype="float16", layout="NHWC", threads=1))
    trace = tmp_path / "profile.json"
    mx.profiler.set_config(profile_imperative=True, aggregate_stats=False, filename=str(trace))
    mx.profiler.set_state("run")
    try:
        steps = list(loader.epoch(0))
        mx.nd.waitall()
    finally:
        mx.profiler.set_state("stop")
    mx.profiler.dump()
    ran = _operators_by_device(trace)
    assert len(steps) == 3
    for device in ("cpu/0", "cpu/1"):
        assert ran[(device, "transpose")] == ran[(device, "Cast")] == len(steps), ran
    for step in steps:
        for (data, label, _), context in zip(step, devices):
            assert data.context == context and data.dtype == np.float16 and data.shape == (4, 32, 32, 3)
