"""make_demo_data and prepare_imagenet.sh write the layout the trainer reads."""
import json

from conftest import one_line_error, run_tool, write_jpeg_tree
from visionbench.data.demo import CLASSES
from visionbench.data.recordio import iter_records, verify_record_set


def test_demo_dataset_is_deterministic_and_verifies(tmp_path):
    args = ["--train-per-class", "3", "--val-per-class", "2", "--size", "32", "--no-progress"]
    run_tool("make_demo_data.py", tmp_path / "a", *args, "--seed", "5")
    run_tool("make_demo_data.py", tmp_path / "b", *args, "--seed", "5")
    run_tool("make_demo_data.py", tmp_path / "c", *args, "--seed", "6")
    for split, per_class in (("train", 3), ("val", 2)):
        result = verify_record_set(tmp_path / "a" / split, decode=True)
        assert result.label_counts == {label: per_class for label in range(10)}
        assert result.classes == sorted(CLASSES)
        a = (tmp_path / "a" / f"{split}.rec").read_bytes()
        assert a == (tmp_path / "b" / f"{split}.rec").read_bytes()
        assert a != (tmp_path / "c" / f"{split}.rec").read_bytes()
    import io
    from PIL import Image
    sizes = [Image.open(io.BytesIO(p)).size for _, _, p in iter_records(tmp_path / "a" / "train")]
    assert all(min(s) == 32 and max(s) <= 43 for s in sizes)   # shorter side 32, aspect <= 4/3
    again = run_tool("make_demo_data.py", tmp_path / "a", *args, check_status=2)
    assert "--overwrite" in one_line_error(again)


def test_prepare_imagenet_writes_full_and_resized_sets(tmp_path):
    raw = tmp_path / "raw"
    write_jpeg_tree(raw / "train", {"n01": 3, "n02": 2, "n03": 2}, size=(120, 90))
    write_jpeg_tree(raw / "val", {"n03": 2, "n01": 1}, size=(100, 140), seed=1)
    out = tmp_path / "imagenet"
    run_tool("prepare_imagenet.sh", raw, out, "--sizes", "32,48", "--workers", "2", "--no-progress")
    for folder in (out, out / "sz" / "32", out / "sz" / "48"):
        assert verify_record_set(folder / "train", decode=True).label_counts == {0: 3, 1: 2, 2: 2}
        assert verify_record_set(folder / "val", decode=True).label_counts == {0: 1, 2: 2}
    val = json.loads((out / "sz" / "48" / "val.prep.json").read_text())
    assert val["options"]["resize"] == 48 and val["options"]["shuffle"] is False
    # val keeps train's labels: n03 is class 2 in both
    assert (out / "val.classes.txt").read_text() == (out / "train.classes.txt").read_text()


def test_prepare_imagenet_rejects_val_class_missing_from_train(tmp_path):
    raw = tmp_path / "raw"
    write_jpeg_tree(raw / "train", {"n01": 1})
    write_jpeg_tree(raw / "val", {"n01": 1, "n99": 1})
    result = run_tool("prepare_imagenet.sh", raw, tmp_path / "out", check_status=2)
    assert "n99" in one_line_error(result)
    assert not (tmp_path / "out" / "val.idx").exists()


def test_prepare_imagenet_bad_arguments(tmp_path):
    assert "train is not a folder" in one_line_error(
        run_tool("prepare_imagenet.sh", tmp_path / "none", tmp_path / "out", check_status=2))
    (tmp_path / "raw" / "train").mkdir(parents=True)
    (tmp_path / "raw" / "val").mkdir()
    assert "--sizes" in one_line_error(
        run_tool("prepare_imagenet.sh", tmp_path / "raw", tmp_path / "out", "--sizes", "12,x", check_status=2))
