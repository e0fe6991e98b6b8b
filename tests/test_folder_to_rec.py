"""folder_to_rec: pass-through bytes, three readers agree, resize, skipping, order."""
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import one_line_error, run_tool, write_jpeg_tree
from visionbench.data.folder import _check_chunk, _payload, ordered_map
from visionbench.data.recordio import iter_records, parse_list_line, verify_record_set
from visionbench.report.schema import validate_report


def _list_lines(prefix):
    text = (prefix.parent / (prefix.name + ".lst")).read_text()
    return [parse_list_line(line, "lst") for line in text.splitlines()]


def test_records_hold_original_bytes_and_lst_matches_headers(jpeg_tree, tmp_path):
    src, expected = jpeg_tree
    prefix = tmp_path / "out" / "train"
    prefix.parent.mkdir()
    result = run_tool("folder_to_rec.py", src, prefix, "--no-progress")
    assert "15 images written, 0 skipped" in result.stdout
    lines = _list_lines(prefix)
    assert sorted(path for _, _, path in lines) == sorted(expected)
    assert [index for index, _, _ in lines] == list(range(15))
    records = list(iter_records(prefix))
    assert len(records) == len(lines)
    for (key, header, payload), (index, label, path) in zip(records, lines):
        assert key == index == header.id
        assert header.label == label == expected[path]
        assert payload == (src / path).read_bytes()
    assert (tmp_path / "out" / "train.classes.txt").read_text().split() == ["n01", "n02", "n10"]
    summary = json.loads((tmp_path / "out" / "train.prep.json").read_text())
    validate_report(summary, "data_prep_report")
    assert summary["per_class"] == [4, 5, 6]
    assert verify_record_set(prefix, decode=True).records == 15


def test_imagerecorditer_and_dali_read_the_same_images_and_labels(jpeg_tree, tmp_path):
    import mxnet as mx
    from nvidia.dali import fn, pipeline_def, types

    src, expected = jpeg_tree
    prefix = tmp_path / "set"
    run_tool("folder_to_rec.py", src, prefix, "--no-progress")
    lines = _list_lines(prefix)
    n = len(lines)
    rec, idx = f"{prefix}.rec", f"{prefix}.idx"
    originals = [(src / path).read_bytes() for _, _, path in lines]
    reference = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1] for b in originals]
    labels = [label for _, label, _ in lines]

    records = mx.io.ImageRecordIter(path_imgrec=rec, path_imgidx=idx, data_shape=(3, 40, 48),
                                    batch_size=n, shuffle=False, preprocess_threads=1)
    batch = records.next()
    assert batch.pad == 0
    assert batch.label[0].asnumpy().tolist() == labels
    pixels = batch.data[0].asnumpy().transpose(0, 2, 3, 1)
    for got, want in zip(pixels, reference):
        np.testing.assert_array_equal(got, want)

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def reader():
        encoded, label = fn.readers.mxnet(path=[rec], index_path=[idx], random_shuffle=False, name="r")
        return encoded, fn.decoders.image(encoded, device="cpu", output_type=types.RGB), label

    pipe = reader()
    pipe.build()
    assert pipe.epoch_size("r") == n
    encoded, decoded, dali_labels = pipe.run()
    for i in range(n):
        assert np.array(encoded[i]).tobytes() == originals[i]
        assert float(np.array(dali_labels[i])[0]) == labels[i]
        # Both decode with libjpeg-turbo's default (islow) IDCT.
        assert np.abs(np.array(decoded[i]).astype(int) - reference[i].astype(int)).max() <= 1


def test_resize_stores_shorter_side(tmp_path):
    src = tmp_path / "src"
    write_jpeg_tree(src, {"a": 2}, size=(150, 100))      # portrait: 100 wide
    write_jpeg_tree(src, {"b": 2}, size=(90, 200), seed=1)  # landscape: 90 high
    prefix = tmp_path / "small"
    run_tool("folder_to_rec.py", src, prefix, "--resize", "64", "--quality", "85", "--no-progress")
    shapes = {}
    for _, header, payload in iter_records(prefix):
        image = Image.open(__import__("io").BytesIO(payload))
        assert image.format == "JPEG"
        shapes.setdefault(int(header.label), set()).add(image.size)
    assert shapes == {0: {(64, 96)}, 1: {(142, 64)}}   # 150*64/100 = 96, 200*64/90 = 142.2


def test_non_images_are_skipped_and_listed_or_fatal_with_strict(jpeg_tree, tmp_path):
    src, _ = jpeg_tree
    (src / "n01" / "notes.txt").write_text("not an image")
    good = (src / "n02" / "n02_0000.JPEG").read_bytes()
    (src / "n02" / "truncated.JPEG").write_bytes(good[: len(good) // 2])
    (src / "stray.jpg").write_bytes(good)   # outside any class folder
    (src / "n01" / ".DS_Store").write_bytes(b"\0\0")   # hidden: ignored
    prefix = tmp_path / "lenient"
    result = run_tool("folder_to_rec.py", src, prefix, "--no-progress")
    assert "15 images written, 3 skipped" in result.stdout
    skipped = dict(line.split("\t") for line in (tmp_path / "lenient.skipped.txt").read_text().splitlines())
    assert set(skipped) == {"n01/notes.txt", "n02/truncated.JPEG", "stray.jpg"}
    assert skipped["n01/notes.txt"] == "not an image"
    assert "does not decode" in skipped["n02/truncated.JPEG"]

    strict = run_tool("folder_to_rec.py", src, tmp_path / "strict", "--strict", "--no-progress", check_status=2)
    message = one_line_error(strict)
    assert "stray.jpg" in message and "--strict" in message
    assert list(tmp_path.glob("strict*")) == [] and list(tmp_path.glob(".strict*")) == []


def test_other_formats_are_reencoded_losslessly(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    pixels = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(src / "a" / "x.tiff")
    Image.fromarray(pixels).save(src / "a" / "y.png")
    prefix = tmp_path / "fmt"
    run_tool("folder_to_rec.py", src, prefix, "--no-shuffle", "--no-progress")
    (_, _, tiff), (_, _, png) = list(iter_records(prefix))
    assert png == (src / "a" / "y.png").read_bytes()      # PNG passes through
    assert tiff[:8] == b"\x89PNG\r\n\x1a\n"                 # TIFF becomes PNG...
    np.testing.assert_array_equal(np.asarray(Image.open(__import__("io").BytesIO(tiff))), pixels)  # ...losslessly


def test_workers_shuffle_and_seed_give_identical_files(jpeg_tree, tmp_path):
    src, _ = jpeg_tree
    run_tool("folder_to_rec.py", src, tmp_path / "w1", "--seed", "7", "--no-progress")
    run_tool("folder_to_rec.py", src, tmp_path / "w2", "--seed", "7", "--workers", "2", "--no-progress")
    run_tool("folder_to_rec.py", src, tmp_path / "s8", "--seed", "8", "--no-progress")
    run_tool("folder_to_rec.py", src, tmp_path / "ordered", "--no-shuffle", "--no-progress")
    for suffix in (".rec", ".idx", ".lst"):
        assert (tmp_path / f"w1{suffix}").read_bytes() == (tmp_path / f"w2{suffix}").read_bytes()
    assert (tmp_path / "w1.lst").read_text() != (tmp_path / "s8.lst").read_text()
    ordered = [path for _, _, path in _list_lines(tmp_path / "ordered")]
    assert ordered == sorted(ordered)


def test_class_list_labels_val_in_train_order(tmp_path):
    train, val = tmp_path / "train", tmp_path / "val"
    write_jpeg_tree(train, {"cat": 1, "dog": 1, "emu": 1})
    write_jpeg_tree(val, {"emu": 2}, seed=1)            # a subset, in train's order
    run_tool("folder_to_rec.py", train, tmp_path / "t", "--no-progress")
    run_tool("folder_to_rec.py", val, tmp_path / "v", "--classes", tmp_path / "t.classes.txt", "--no-progress")
    assert {int(h.label) for _, h, _ in iter_records(tmp_path / "v")} == {2}
    assert (tmp_path / "v.classes.txt").read_text() == "cat\ndog\nemu\n"
    write_jpeg_tree(val, {"fox": 1}, seed=2)
    bad = run_tool("folder_to_rec.py", val, tmp_path / "v2", "--classes", tmp_path / "t.classes.txt", check_status=2)
    assert "fox" in one_line_error(bad)


@pytest.mark.parametrize("overwrite", [False, True])
def test_existing_outputs_are_kept_unless_overwrite(jpeg_tree, tmp_path, overwrite):
    src, _ = jpeg_tree
    prefix = tmp_path / "set"
    (tmp_path / "set.rec").write_bytes(b"precious")
    args = ["--overwrite"] if overwrite else []
    result = run_tool("folder_to_rec.py", src, prefix, "--no-progress", *args, check_status=0 if overwrite else 2)
    if overwrite:
        assert verify_record_set(prefix).records == 15
    else:
        assert "already exists" in one_line_error(result) and "--overwrite" in result.stderr
        assert (tmp_path / "set.rec").read_bytes() == b"precious"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["set.rec", "src"]


def _slow_square(x, delay):
    import time
    time.sleep(delay)
    return x * x


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_ordered_map_keeps_task_order_whoever_runs_the_task(workers):
    # Uneven delays: helpers and this process finish out of order.
    tasks = [(i, 0.002 * (i % 3)) for i in range(40)]
    assert list(ordered_map(_slow_square, tasks, workers)) == [i * i for i in range(40)]


def test_a_file_changed_after_its_check_is_rejected_not_packed(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(cv2.imencode(".jpg", np.full((20, 20, 3), 50, np.uint8))[1].tobytes())
    checked = _check_chunk(str(tmp_path), [("a.jpg", 0)], None, 90)[0]
    assert checked.payload is None and checked.unchanged   # the bytes stay in the helper
    assert _payload(tmp_path, "a.jpg", checked).payload == path.read_bytes()
    path.write_bytes(path.read_bytes() + b"\0")
    assert _payload(tmp_path, "a.jpg", checked).reason == "changed while being packed"


def test_several_chunks_over_helpers_and_the_writer_give_the_same_set(tmp_path):
    # 300 images are 5 chunks: some checked by helpers, some by the writer itself.
    src = tmp_path / "src"
    write_jpeg_tree(src, {"a": 150, "b": 150}, size=(16, 20))
    (src / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    for workers in (1, 2, 3):
        run_tool("folder_to_rec.py", src, tmp_path / f"w{workers}", "--workers", workers, "--no-progress")
    for suffix in (".rec", ".idx", ".lst", ".skipped.txt"):
        first = (tmp_path / f"w1{suffix}").read_bytes()
        assert first == (tmp_path / f"w2{suffix}").read_bytes() == (tmp_path / f"w3{suffix}").read_bytes(), suffix
    assert json.loads((tmp_path / "w2.prep.json").read_text())["images_written"] == 300
    assert "b/broken.jpg" in (tmp_path / "w3.skipped.txt").read_text()
