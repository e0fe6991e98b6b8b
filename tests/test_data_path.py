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


# --- dali: the copy into MXNet ---------------------------------------------

class _GpuBatch:
    """Stands in for a TensorListGPU (none can exist without CUDA): a dense
    batch that copies its numpy values to the pointer it is given and records
    how it was asked to copy."""

    def __init__(self, values: np.ndarray, copies: list):
        from nvidia.dali import types

        self.values, self.copies = np.ascontiguousarray(values), copies
        self.dtype = {np.dtype(np.float32): types.FLOAT, np.dtype(np.float16): types.FLOAT16}[self.values.dtype]

    def is_dense_tensor(self):
        return True

    def shape(self):
        return [tuple(sample.shape) for sample in self.values]

    def copy_to_external(self, ptr, cuda_stream=None, non_blocking=False, use_copy_kernel=False):
        import ctypes

        self.copies.append({"cuda_stream": cuda_stream, "non_blocking": non_blocking})
        ctypes.memmove(ptr, self.values.ctypes.data, self.values.nbytes)


class _GpuPipeline:
    """A built dali-gpu pipeline as _device_batches drives it: images and
    labels left on GPU ``device_id`` (Pipeline.device_id), one batch per
    scheduled run."""

    def __init__(self, batches, copies, device_id: int):
        self.batches, self.copies, self.scheduled, self.shared = batches, copies, 0, 0
        self.device_id = device_id

    def build(self):
        pass

    def schedule_run(self):
        self.scheduled += 1 if self.scheduled else 2   # the first call fills DALI's prefetch queue

    def share_outputs(self):
        images, labels = self.batches[self.shared]
        self.shared += 1
        return _GpuBatch(images, self.copies), _GpuBatch(labels, self.copies)

    def release_outputs(self):
        pass


class _ReportedOnGpu(mx.nd.NDArray):
    """Host memory on cpu(k) whose context reads gpu(k): what an NDArray that
    _to_ndarray allocates on GPU k looks like to _copy_to_ndarray."""
    __slots__ = ()

    @property
    def context(self):
        return mx.gpu(mx.nd.NDArray.context.fget(self).device_id)


@pytest.fixture
def gpu_allocation(monkeypatch):
    """mx.nd.empty(ctx=gpu(k)) allocates on cpu(k) an NDArray reported on gpu(k)."""
    empty = mx.nd.empty

    def on_gpu(shape, ctx=None, dtype=None, **kwargs):
        if ctx is None or ctx.device_type != "gpu":
            return empty(shape, ctx=ctx, dtype=dtype, **kwargs)
        array = empty(shape, ctx=mx.cpu(ctx.device_id), dtype=dtype, **kwargs)
        array.__class__ = _ReportedOnGpu
        return array

    monkeypatch.setattr(mx.nd, "empty", on_gpu)


def test_dali_gpu_outputs_are_copied_into_mxnet_blocking(gpu_allocation):
    # DALI 1.34's MXNet plugin copies GPU outputs with non_blocking=True and
    # no stream: MXNet's next kernel could read a batch still being copied.
    # The path dali-gpu takes (_device_batches, the loop _run_pipelines
    # drives) must ask for a blocking copy of images and labels alike, into
    # NDArrays on the pipeline's GPU.
    from visionbench.data import dali

    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((2, 3, 4, 4)).astype(np.float16), np.array([[3.0], [7.0]], np.float32))
               for _ in range(3)]
    copies = []
    pipe = _GpuPipeline(batches, copies, device_id=1)
    got = list(dali._device_batches([pipe], [mx.gpu(1)], steps=3))
    assert len(copies) == 6 and all(c == {"cuda_stream": None, "non_blocking": False} for c in copies), copies
    for (images, labels), [(data, label)] in zip(batches, got):
        assert data.context == label.context == mx.gpu(1)
        assert data.dtype == np.float16 and np.array_equal(data.asnumpy(), images)
        assert label.shape == (2,) and np.array_equal(label.asnumpy(), labels[:, 0])
    assert pipe.scheduled == 3   # DALI never asked to run past the epoch's last batch


def test_a_dali_batch_is_copied_only_into_memory_of_its_kind(gpu_allocation):
    # DALI writes a GPU batch to the pointer as device memory and a host
    # batch as host memory: either into the other kind's NDArray would write
    # through an address of the wrong kind. A clear error, before any copy.
    from nvidia.dali import tensors

    from visionbench.data import dali

    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    copies = []
    host_array = mx.nd.zeros((2, 3), ctx=mx.cpu(0))
    with pytest.raises(ValueError, match=r"^a DALI batch in GPU memory cannot be copied into an NDArray on cpu\(0\)$"):
        dali._copy_to_ndarray(_GpuBatch(values, copies), host_array)
    assert copies == [] and not host_array.asnumpy().any()
    gpu_array = mx.nd.empty((2, 3), ctx=mx.gpu(0))
    gpu_array[:] = 0
    with pytest.raises(ValueError, match=r"^a DALI batch in host memory cannot be copied into an NDArray on gpu\(0\)$"):
        dali._copy_to_ndarray(tensors.TensorListCPU(values), gpu_array)
    assert not gpu_array.asnumpy().any()
    dali._copy_to_ndarray(tensors.TensorListCPU(values), host_array)   # each into its own kind: copied
    dali._copy_to_ndarray(_GpuBatch(values + 1, copies), gpu_array)
    assert np.array_equal(host_array.asnumpy(), values) and np.array_equal(gpu_array.asnumpy(), values + 1)


# --- dali: who reads the records ---------------------------------------------

def _reader_threads():
    import threading

    return [t for t in threading.enumerate() if t.name == "visionbench-record-reader"]


def _record_reads(loader):
    """Make the loader's RecordReader note (thread, position) of every read."""
    import threading

    reads, read = [], loader._reader.read

    def noting(position):
        reads.append((threading.current_thread(), position))
        return read(position)

    loader._reader.read = noting
    return reads


@pytest.mark.parametrize("devices", [1, 2])
def test_dali_records_are_read_off_the_main_thread(records, devices):
    # The main thread queues the devices' work each step; reading records
    # there (DALI runs the external source's callback on the thread that
    # schedules the run) would keep the GPUs waiting. Every planned record
    # must be read, none of them by the main thread.
    import threading

    loader = make_loader(LoaderSpec(prefix=records, train=True, batch_size=4, image_size=32, threads=1,
                                    devices=[mx.cpu(i) for i in range(devices)], backend="dali-cpu"))
    reads = _record_reads(loader)
    steps = list(loader.epoch(0))
    assert len(steps) == len(loader)
    readers = {thread for thread, _ in reads}
    assert threading.main_thread() not in readers, "records read on the main thread"
    planned = sorted(int(p) for plan in loader.plans(0) for p in plan.positions.flat)
    assert sorted(position for _, position in reads) == planned
    assert not _reader_threads()   # the epoch is over: its reader threads are gone


def test_an_abandoned_epoch_stops_its_reader_threads(records):
    # 12 batches a device; after one step DALI has taken 3 and each reader
    # thread, 3 batches ahead, waits for DALI to take more.
    loader = make_loader(LoaderSpec(prefix=records, train=True, batch_size=1, image_size=32, threads=1,
                                    devices=[mx.cpu(0), mx.cpu(1)], backend="dali-cpu"))
    epoch = loader.epoch(0)
    next(epoch)
    assert len(_reader_threads()) == 2
    epoch.close()   # what a training loop that stops early does (SIGTERM, target reached)
    assert not _reader_threads()


def test_a_record_that_cannot_be_read_is_named_on_the_main_thread(tmp_path):
    # Record 5's image header claims 3 labels: RecordReader refuses it. The
    # reader thread's error reaches the caller, naming the record.
    import struct

    from visionbench.data.recordio import BadRecordSet, read_index_file

    prefix = write_colour_set(tmp_path / "damaged", 12)
    offset = dict(read_index_file(f"{prefix}.idx"))[5]
    with open(f"{prefix}.rec", "r+b") as rec:
        rec.seek(offset + 8)              # past the part header: the image header's flag
        rec.write(struct.pack("<I", 3))
    loader = make_loader(LoaderSpec(prefix=prefix, train=False, batch_size=4, image_size=32, threads=1,
                                    devices=[mx.cpu(0)], backend="dali-cpu"))
    with pytest.raises(BadRecordSet, match="record 5 of .*damaged.rec has 3 labels"):
        list(loader.epoch(0))
    assert not _reader_threads()
