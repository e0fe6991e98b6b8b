"""The input pipelines feed PyTorch too, and RecordIO needs no MXNet.

(a) our RecordIO writer makes the bytes mx.recordio makes, and our reader
reads what MXNet wrote; (b) a torch loader yields, step by step, the values
of the MXNet loader of the same spec; (c) without MXNet installed, records
are written, read and loaded into torch; (d) the guards of the copy out of
DALI and of the torch engine's backends."""
import json
import struct
import subprocess
import sys

import cv2
import mxnet as mx
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings, strategies as st

from conftest import ROOT
from visionbench.cli import UsageError
from visionbench.data.loader import make_loader
from visionbench.data.recordio import (RECORDIO_MAGIC, IndexedRecordWriter, IRHeader, RecordReader, iter_records,
                                       pack_image_record, verify_record_set)
from visionbench.data.spec import LoaderSpec
from visionbench.selftest import write_colour_set

MAGIC = struct.pack("<I", RECORDIO_MAGIC)


# --- (a) RecordIO, byte for byte ---------------------------------------------

# (header, payload): one label and several; payload lengths of every residue
# mod 4; the magic word at 4-byte boundaries of the record (dmlc-core splits
# there: the 24-byte header keeps payload offsets 0, 4, ... aligned) and off them.
RECORDS = [
    (IRHeader(0, 3.0, 0, 0), b""),
    (IRHeader(0, 1.0, 1, 0), b"a"),
    (IRHeader(0, 7.0, 2, 9), b"abcde"),
    (IRHeader(0, [1.0, 2.5, -7.0], 3, 0), b"xyz"),
    (IRHeader(0, 2.0, 4, 0), MAGIC),
    (IRHeader(0, 2.0, 5, 0), b"abcd" + MAGIC + MAGIC + b"tail!"),
    (IRHeader(0, [4.0, 5.0], 2**40, 3), b"q" + MAGIC + b"qq" + MAGIC * 3),
    (IRHeader(0, 0.0, 7, 0), bytes(range(256)) * 3 + b"12"),
]


def _write_both(folder, records):
    """The same records through our writer (ours.*) and MXNet's (mx.*)."""
    ours = IndexedRecordWriter(folder / "ours.idx", folder / "ours.rec")
    theirs = mx.recordio.MXIndexedRecordIO(str(folder / "mx.idx"), str(folder / "mx.rec"), "w")
    for header, payload in records:
        ours.write_idx(header.id, pack_image_record(header, payload))
        theirs.write_idx(header.id, mx.recordio.pack(mx.recordio.IRHeader(*header), payload))
    ours.close()
    theirs.close()


def _same_files(folder):
    for suffix in (".rec", ".idx"):
        assert (folder / f"ours{suffix}").read_bytes() == (folder / f"mx{suffix}").read_bytes(), suffix


def test_our_writer_writes_the_bytes_mxnet_writes(tmp_path):
    _write_both(tmp_path, RECORDS)
    _same_files(tmp_path)
    # More magic words than records: dmlc-core split some records (part headers).
    assert (tmp_path / "ours.rec").read_bytes().count(MAGIC) > len(RECORDS)


@settings(max_examples=40, deadline=None)
@given(payloads=st.lists(st.builds(lambda head, magic, tail: head + magic + tail, st.binary(max_size=13),
                                   st.sampled_from([b"", MAGIC, MAGIC * 2]), st.binary(max_size=13)),
                         min_size=1, max_size=6),
       multi=st.booleans())
@example(payloads=[b"abcd" + MAGIC + b"e"], multi=False)
def test_our_writer_matches_mxnet_on_any_payload(tmp_path_factory, payloads, multi):
    folder = tmp_path_factory.mktemp("rec")
    label = [1.0, 2.0] if multi else 1.0
    _write_both(folder, [(IRHeader(0, label, i, 0), payload) for i, payload in enumerate(payloads)])
    _same_files(folder)


def test_our_reader_reads_what_mxnet_wrote(tmp_path):
    _write_both(tmp_path, RECORDS)
    got = list(iter_records(tmp_path / "mx"))
    assert [key for key, _, _ in got] == [header.id for header, _ in RECORDS]
    for (_, header, payload), (written, written_payload) in zip(got, RECORDS):
        assert payload == written_payload
        assert (header.id, header.id2) == (written.id, written.id2)
        if isinstance(written.label, list):
            assert header.flag == len(written.label) and header.label.tolist() == written.label
        else:
            assert header.flag == 0 and header.label == written.label
    # A set MXNet wrote, single labels as the loaders want them (multi-part
    # records included): RecordReader and verify_record_set read it.
    singles = [(IRHeader(0, float(i % 3), i, 0), payload) for i, (_, payload) in enumerate(RECORDS)]
    _write_both(tmp_path, singles)
    reader = RecordReader(tmp_path / "mx")
    for position, (header, payload) in enumerate(singles):
        label, view = reader.read(position)
        assert label == header.label and bytes(view) == payload
        view.release()
    reader.close()
    assert verify_record_set(tmp_path / "mx").records == len(singles)


def test_a_record_set_is_what_mxnet_would_have_written(tmp_path):
    # RecordSetWriter (folder_to_rec, cifar10_to_rec, the demo) through our writer.
    payloads = [bytes([i]) * (5 + 3 * i) + (MAGIC if i % 2 else b"") for i in range(6)]
    write_colour_set(tmp_path / "set", len(payloads), labels=[i % 4 for i in range(6)], payload_of=payloads.__getitem__)
    theirs = mx.recordio.MXIndexedRecordIO(str(tmp_path / "mx.idx"), str(tmp_path / "mx.rec"), "w")
    for i, payload in enumerate(payloads):
        theirs.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, float(i % 4), i, 0), payload))
    theirs.close()
    for suffix in (".rec", ".idx"):
        assert (tmp_path / f"set{suffix}").read_bytes() == (tmp_path / f"mx{suffix}").read_bytes(), suffix


# --- (b) the torch loader yields the MXNet loader's values -----------------------

@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    """20 demo-style images (a shape on a noisy background, 24..32 pixels, both
    orientations): crops, flips and resizes all change the values."""
    from visionbench.data.demo import image_rng, render_image

    def payload(i):
        rgb = render_image(i % 10, image_rng(0, "train", i % 10, i), 24)
        return cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()

    return write_colour_set(tmp_path_factory.mktemp("textured") / "set", 20, labels=[i % 10 for i in range(20)],
                            payload_of=payload)


def _spec(devices, framework, **kwargs):
    return LoaderSpec(batch_size=3, image_size=16, threads=1, devices=devices, framework=framework, **kwargs)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("backend,train", [("dali-cpu", True), ("dali-cpu", False), ("synthetic", True)])
def test_torch_loader_yields_the_mxnet_loaders_values(textured, backend, train, layout):
    prefix = None if backend == "synthetic" else textured
    common = dict(prefix=prefix, train=train, backend=backend, layout=layout, seed=5, synthetic_images=12)
    mxnet_steps = list(make_loader(_spec([mx.cpu(0), mx.cpu(1)], "mxnet", **common)).epoch(1))
    torch_steps = list(make_loader(_spec([torch.device("cpu")] * 2, "torch", **common)).epoch(1))
    assert len(torch_steps) == len(mxnet_steps) >= 2
    for mxnet_step, torch_step in zip(mxnet_steps, torch_steps):
        assert len(torch_step) == len(mxnet_step) == 2
        for (mx_data, mx_label, mx_pad), (data, label, pad) in zip(mxnet_step, torch_step):
            assert isinstance(data, torch.Tensor) and isinstance(label, torch.Tensor)
            assert data.device == label.device == torch.device("cpu")
            assert data.dtype == label.dtype == torch.float32 and label.shape == (3,)
            expected = mx_data.asnumpy()
            assert data.shape == (3, 3, 16, 16)   # NCHW-shaped for either layout
            if layout == "NHWC":
                assert data.is_contiguous(memory_format=torch.channels_last)
                expected = expected.transpose(0, 3, 1, 2)
            else:
                assert data.is_contiguous()
            assert np.array_equal(data.numpy(), expected)   # bit for bit
            assert np.array_equal(label.numpy(), mx_label.asnumpy()) and pad == mx_pad
    # The steps differ from each other: the comparison above saw real data.
    assert not np.array_equal(mxnet_steps[0][0][0].asnumpy(), mxnet_steps[0][1][0].asnumpy())


# --- (c) without MXNet --------------------------------------------------------

NO_MXNET = r"""
import json, sys
sys.modules["mxnet"] = None   # import mxnet fails from here on
try:
    import mxnet
    sys.exit("mxnet imported")
except ImportError:
    pass
from pathlib import Path
import torch
from visionbench.data.cli import folder_to_rec_main, verify_main
from visionbench.data.loader import make_loader
from visionbench.data.recordio import RecordReader
from visionbench.data.spec import LoaderSpec

src, prefix = Path(sys.argv[1]), Path(sys.argv[2])
statuses = [folder_to_rec_main([str(src), str(prefix), "--no-progress", "--no-shuffle"]),
            verify_main([str(prefix), "--decode"])]
reader = RecordReader(prefix)
records = []
for position in range(len(reader)):
    label, payload = reader.read(position)
    records.append([label, len(payload)])
    payload.release()
reader.close()
loader = make_loader(LoaderSpec(prefix=prefix, train=True, batch_size=2, image_size=16, threads=1,
                                devices=[torch.device("cpu")] * 2, framework="torch", backend="dali-cpu"))
steps = [[[list(data.shape), str(data.dtype), label.tolist(), pad] for data, label, pad in step]
         for step in loader.epoch(0)]
print(json.dumps({"statuses": statuses, "records": records, "steps": steps, "expected_steps": len(loader),
                  "mxnet": sys.modules["mxnet"] is None}))
"""


def test_records_are_written_read_and_loaded_into_torch_without_mxnet(jpeg_tree, tmp_path):
    src, expected = jpeg_tree
    result = subprocess.run([sys.executable, "-c", NO_MXNET, str(src), str(tmp_path / "set")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["statuses"] == [0, 0] and got["mxnet"]
    assert len(got["records"]) == len(expected) == 15
    assert sorted(label for label, _ in got["records"]) == sorted(float(v) for v in expected.values())
    assert all(size > 100 for _, size in got["records"])   # JPEG bytes, not empty views
    assert len(got["steps"]) == got["expected_steps"] == 4   # 15 records, 2 devices x 2 a step
    for step in got["steps"]:
        assert [shape for shape, _, _, _ in step] == [[2, 3, 16, 16]] * 2
        assert all(dtype == "torch.float32" and len(labels) == 2 for _, dtype, labels, _ in step)


# --- (d) guards ------------------------------------------------------------------

class _ReportedOnCuda(torch.Tensor):
    """Host memory whose device reads cuda:0: what a tensor that _to_ndarray
    allocates on GPU 0 looks like to _copy_to_tensor (none can exist here)."""

    @property
    def device(self):
        return torch.device("cuda", 0)


class _GpuBatch:
    """Stands in for a TensorListGPU: records every copy it is asked for."""

    def __init__(self, values, copies):
        self.values, self.copies = values, copies

    def copy_to_external(self, *args, **kwargs):
        self.copies.append((args, kwargs))


def test_a_dali_batch_is_copied_only_into_tensor_memory_of_its_kind():
    from nvidia.dali import tensors

    from visionbench.data import dali

    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    on_cuda = torch.zeros(2, 3).as_subclass(_ReportedOnCuda)
    with pytest.raises(ValueError, match=r"^a DALI batch in host memory cannot be copied into a tensor on cuda:0$"):
        dali._copy_to_tensor(tensors.TensorListCPU(values), on_cuda)
    assert not on_cuda.as_subclass(torch.Tensor).any()   # nothing written
    copies, host = [], torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"^a DALI batch in GPU memory cannot be copied into a tensor on cpu$"):
        dali._copy_to_tensor(_GpuBatch(values, copies), host)
    assert copies == [] and not host.any()
    dali._copy_to_tensor(tensors.TensorListCPU(values), host)   # its own kind: copied
    assert np.array_equal(host.numpy(), values)


class _UnbuiltGpuPipeline:
    """A pipeline built for GPU ``device_id``; it must not even be built."""

    def __init__(self, device_id):
        self.device_id, self.built = device_id, False

    def build(self):
        self.built = True


@pytest.mark.parametrize("device", [torch.device("cuda", 0), mx.gpu(0)], ids=["torch", "mxnet"])
def test_a_gpu_pipelines_batches_go_to_that_gpu_only(device):
    from visionbench.data import dali

    pipe = _UnbuiltGpuPipeline(device_id=1)
    framework = "torch" if isinstance(device, torch.device) else "mxnet"
    with pytest.raises(ValueError, match=r"^a DALI batch on GPU 1 cannot be copied into memory of (cuda:0|gpu\(0\))$"):
        next(dali._device_batches([pipe], [device], steps=1, framework=framework))
    assert not pipe.built


def test_the_mxnet_backend_is_refused_for_torch(textured):
    spec = _spec([torch.device("cpu")], "torch", prefix=textured, train=True, backend="mxnet")
    with pytest.raises(UsageError, match=r"^--data-backend mxnet feeds the mxnet engine only; "
                                         r"with --engine torch use synthetic, dali-cpu, dali-gpu, nvjpeg$"):
        make_loader(spec)
    with pytest.raises(UsageError, match=r"^device cpu\(0\) is not a torch device$"):
        make_loader(_spec([mx.cpu(0)], "torch", prefix=textured, train=True))
    with pytest.raises(UsageError, match=r"^--data-backend dali-gpu needs GPU devices"):
        make_loader(_spec([torch.device("cpu")], "torch", prefix=textured, train=True, backend="dali-gpu"))


def test_loader_spec_feeds_the_configured_engine():
    from visionbench.config import resolve
    from visionbench.data.spec import loader_spec

    for argv, framework in ((["--engine", "torch"], "torch"), ([], "mxnet")):
        config = resolve(["--data-backend", "synthetic", *argv])
        assert loader_spec(config, "train", [torch.device("cpu")]).framework == framework
