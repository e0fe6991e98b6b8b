"""cifar10_to_rec on a tarball built in the release's exact format."""
import io
import pickle
import tarfile

import cv2
import numpy as np
import pytest

from conftest import one_line_error, run_tool
from visionbench.data.cifar10 import TRAIN_BATCHES
from visionbench.data.recordio import iter_records, verify_record_set

ROWS = 6   # per batch (the real release has 10000)


def _batch(rng, rows):
    # The release pickles with bytes keys, a uint8 (N, 3072) array, a list of ints.
    return {b"batch_label": b"x", b"labels": rng.integers(0, 10, rows).tolist(),
            b"data": rng.integers(0, 256, (rows, 3072), dtype=np.uint8),
            b"filenames": [b"f%d.png" % i for i in range(rows)]}


def make_tarball(path, rows=ROWS, seed=0, mutate=None):
    rng = np.random.default_rng(seed)
    members = {name: _batch(rng, rows) for name in TRAIN_BATCHES + ("test_batch",)}
    members["batches.meta"] = {b"label_names": [n.encode() for n in
                                                ["airplane", "automobile", "bird", "cat", "deer",
                                                 "dog", "frog", "horse", "ship", "truck"]],
                               b"num_cases_per_batch": rows, b"num_vis": 3072}
    if mutate:
        mutate(members)
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            blob = obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return members


def test_labels_and_pixels_round_trip_exactly(tmp_path):
    members = make_tarball(tmp_path / "cifar-10-python.tar.gz")
    run_tool("cifar10_to_rec.py", tmp_path / "cifar-10-python.tar.gz", tmp_path / "c10")
    for split, names in (("train", TRAIN_BATCHES), ("val", ("test_batch",))):
        want = [(row, label) for name in names
                for row, label in zip(members[name][b"data"], members[name][b"labels"])]
        got = list(iter_records(tmp_path / "c10" / split))
        assert len(got) == len(want) == ROWS * len(names)
        for (_, header, payload), (row, label) in zip(got, want):
            assert header.label == label
            assert payload[:8] == b"\x89PNG\r\n\x1a\n"
            rgb = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
            np.testing.assert_array_equal(rgb, row.reshape(3, 32, 32).transpose(1, 2, 0))
        assert verify_record_set(tmp_path / "c10" / split, decode=True).records == len(want)
    assert (tmp_path / "c10" / "train.classes.txt").read_text().split()[:2] == ["airplane", "automobile"]


def test_extracted_folder_is_accepted(tmp_path):
    make_tarball(tmp_path / "c.tgz")
    with tarfile.open(tmp_path / "c.tgz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    run_tool("cifar10_to_rec.py", tmp_path / "x", tmp_path / "out")
    assert verify_record_set(tmp_path / "out" / "val").records == ROWS


def _wrong_shape(members):
    members["data_batch_3"][b"data"] = members["data_batch_3"][b"data"][:, :1024]


def _bad_label(members):
    members["test_batch"][b"labels"][0] = 10


def _missing_batch(members):
    del members["data_batch_5"]


def _not_pickle(members):
    members["data_batch_1"] = b"this is not a pickle"


class _Evil:
    """Unpickling this runs a shell command that writes ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.parametrize("mutate, words", [
    (_wrong_shape, "shape (N, 3072)"), (_bad_label, "labels must be ints"),
    (_missing_batch, "data_batch_5 is missing"), (_not_pickle, "not a CIFAR-10 python batch"),
])
def test_archive_in_the_wrong_format_is_refused(tmp_path, mutate, words):
    make_tarball(tmp_path / "bad.tgz", mutate=mutate)
    result = run_tool("cifar10_to_rec.py", tmp_path / "bad.tgz", tmp_path / "out", check_status=2)
    assert words in one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker)})
    pickle.loads(payload)   # a plain unpickler runs it: the archive below is really hostile
    assert marker.read_text() == "pwned\n"
    marker.unlink()

    def code_in_pickle(members):
        members["data_batch_2"] = payload

    make_tarball(tmp_path / "bad.tgz", mutate=code_in_pickle)
    result = run_tool("cifar10_to_rec.py", tmp_path / "bad.tgz", tmp_path / "out", check_status=2)
    assert "refusing to load" in one_line_error(result)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_not_a_tarball(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b garbage")
    result = run_tool("cifar10_to_rec.py", tmp_path / "x.tar.gz", tmp_path / "out", check_status=2)
    assert "not a CIFAR-10 python tarball" in one_line_error(result)
