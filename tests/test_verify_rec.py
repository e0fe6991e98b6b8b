"""verify_rec: good sets pass; each kind of damage is named with its record."""
import re

import pytest

from conftest import one_line_error, run_tool


@pytest.fixture
def packed(jpeg_tree, tmp_path):
    src, _ = jpeg_tree
    prefix = tmp_path / "set"
    run_tool("folder_to_rec.py", src, prefix, "--no-progress")
    return prefix


def _path(prefix, suffix):
    return prefix.parent / (prefix.name + suffix)


def _offsets(prefix):
    return [tuple(map(int, line.split("\t"))) for line in _path(prefix, ".idx").read_text().splitlines()]


def test_good_set_prints_per_class_counts(packed):
    result = run_tool("verify_rec.py", packed, "--decode")
    assert "OK, 15 records" in result.stdout and "15 decoded" in result.stdout
    counts = dict(re.findall(r"^\s+\d+ (\w+): (\d+)$", result.stdout, re.M))
    assert counts == {"n01": "4", "n02": "5", "n10": "6"}


def test_truncated_rec_names_first_bad_record(packed):
    rec = _path(packed, ".rec")
    offsets = _offsets(packed)
    key, offset = max(offsets, key=lambda kv: kv[1])   # the last record in the file
    rec.write_bytes(rec.read_bytes()[: offset + 20])
    message = one_line_error(run_tool("verify_rec.py", packed, check_status=2))
    assert f"record {key}:" in message


def test_corrupted_header_names_its_record(packed):
    rec = _path(packed, ".rec")
    key, offset = sorted(_offsets(packed), key=lambda kv: kv[1])[3]
    data = bytearray(rec.read_bytes())
    data[offset:offset + 4] = b"\0\0\0\0"
    rec.write_bytes(bytes(data))
    message = one_line_error(run_tool("verify_rec.py", packed, check_status=2))
    assert f"record {key}:" in message and "no valid record" in message


def test_corrupted_image_fails_only_with_decode(packed):
    rec = _path(packed, ".rec")
    key, offset = sorted(_offsets(packed), key=lambda kv: kv[1])[2]
    data = bytearray(rec.read_bytes())
    payload = offset + 8 + 24   # past the part header and the 24-byte IRHeader
    data[payload:payload + 64] = b"\0" * 64   # wipes the JPEG markers
    rec.write_bytes(bytes(data))
    run_tool("verify_rec.py", packed)
    message = one_line_error(run_tool("verify_rec.py", packed, "--decode", check_status=2))
    assert f"record {key}:" in message and "does not decode" in message


def test_garbled_idx_line(packed):
    idx = _path(packed, ".idx")
    lines = idx.read_text().splitlines()
    lines[4] = "4\tnot-a-number"
    idx.write_text("\n".join(lines) + "\n")
    message = one_line_error(run_tool("verify_rec.py", packed, check_status=2))
    assert "set.idx:5" in message and "malformed" in message


def test_idx_pointing_outside_the_rec(packed):
    idx = _path(packed, ".idx")
    idx.write_text(idx.read_text() + "99\t987654321\n")
    message = one_line_error(run_tool("verify_rec.py", packed, check_status=2))
    assert "record 99" in message and "outside" in message


def test_label_outside_class_count(packed):
    message = one_line_error(run_tool("verify_rec.py", packed, "--num-classes", "2", check_status=2))
    assert "outside the 2 classes" in message


def test_missing_files(tmp_path):
    message = one_line_error(run_tool("verify_rec.py", tmp_path / "nothing", check_status=2))
    assert "does not exist" in message
