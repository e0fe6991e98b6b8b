"""Every data_prep CLI: bad input -> exit 2, one line on stderr, nothing lost."""
import os

import pytest

from conftest import one_line_error, run_tool


def _unwritable_folder(tmp_path):
    if os.geteuid() == 0:
        # root ignores permission bits; sysfs refuses new files even to root.
        return "/sys"
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder)


@pytest.mark.parametrize("case", ["missing_src", "src_is_file", "empty_src", "no_class_files",
                                  "out_parent_missing", "out_parent_unwritable", "bad_flag",
                                  "bad_quality", "bad_workers", "empty_class_list"])
def test_folder_to_rec_bad_input(case, jpeg_tree, tmp_path):
    src, _ = jpeg_tree
    out = tmp_path / "out"
    args, words = {
        "missing_src": ([tmp_path / "nope", out], "does not exist"),
        "src_is_file": ([src / "n01" / "n01_0000.JPEG", out], "is not a folder"),
        "empty_src": ([tmp_path / "empty", out], "no class sub-folders"),
        "no_class_files": ([tmp_path / "hollow", out], "holds no files"),
        "out_parent_missing": ([src, tmp_path / "no" / "such" / "out"], "does not exist"),
        "out_parent_unwritable": ([src, os.path.join(_unwritable_folder(tmp_path), "out")], "not writable"),
        "bad_flag": ([src, out, "--frobnicate"], "unrecognized arguments"),
        "bad_quality": ([src, out, "--resize", "64", "--quality", "101"], "1..100"),
        "bad_workers": ([src, out, "--workers", "0"], "positive integer"),
        "empty_class_list": ([src, out, "--classes", tmp_path / "empty.txt"], "is empty"),
    }[case]
    (tmp_path / "empty").mkdir()
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    (tmp_path / "empty.txt").write_text("\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_tool("folder_to_rec.py", *args, check_status=2)
    line = one_line_error(result)
    assert line.startswith("folder_to_rec.py: error: ") and words in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cifar_and_demo_and_verify_bad_paths(tmp_path):
    assert "does not exist" in one_line_error(
        run_tool("cifar10_to_rec.py", tmp_path / "missing.tar.gz", tmp_path / "out", check_status=2))
    assert "does not exist" in one_line_error(
        run_tool("make_demo_data.py", tmp_path / "no" / "demo", check_status=2))
    (tmp_path / "file").write_text("x")
    assert "is a file" in one_line_error(run_tool("make_demo_data.py", tmp_path / "file", check_status=2))
    assert "positive integer" in one_line_error(
        run_tool("verify_rec.py", tmp_path / "x", "--num-classes", "-3", check_status=2))
    assert (tmp_path / "file").read_text() == "x"


def test_overwrite_refusal_keeps_every_existing_output(jpeg_tree, tmp_path):
    src, _ = jpeg_tree
    run_tool("folder_to_rec.py", src, tmp_path / "set", "--no-progress")
    snapshot = {p.name: p.read_bytes() for p in tmp_path.glob("set.*")}
    assert len(snapshot) == 6
    run_tool("folder_to_rec.py", src, tmp_path / "set", "--seed", "3", check_status=2)
    assert {p.name: p.read_bytes() for p in tmp_path.glob("set.*")} == snapshot
