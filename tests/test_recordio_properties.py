"""Property tests of the pure parts: record round trips, list lines, resize sizes."""
import struct

from hypothesis import example, given, settings, strategies as st

from visionbench.data.images import shorter_side_size
from visionbench.data.recordio import (RECORDIO_MAGIC, RecordSetWriter, format_list_line,
                                       iter_records, parse_list_line, verify_record_set)

MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)

# Payloads that contain RecordIO's magic word force dmlc-core to split the
# record into parts: the reader and verify_rec must reassemble/walk them.
payloads = st.lists(
    st.builds(lambda head, magic, tail: head + magic + tail,
              st.binary(max_size=40), st.sampled_from([b"", MAGIC_BYTES, MAGIC_BYTES * 2]),
              st.binary(max_size=40)),
    min_size=1, max_size=12)


@settings(max_examples=25, deadline=None)
@given(payloads=payloads)
# The 24-byte image header keeps a magic word at payload offset 0 or 4 aligned
# to 4 bytes, where dmlc-core splits: this example is a multi-part record.
@example(payloads=[MAGIC_BYTES + b"x", b"abcd" + MAGIC_BYTES * 2 + b"yz", b""])
def test_written_records_read_back_and_verify(tmp_path_factory, payloads):
    folder = tmp_path_factory.mktemp("rt")
    labels = [len(payload) % 5 for payload in payloads]
    with RecordSetWriter(folder / "p") as writer:
        for i, (label, payload) in enumerate(zip(labels, payloads)):
            assert writer.write(label, payload, f"c/{i}.jpg") == i
        writer.finish(tool="folder_to_rec", source="test", classes=list("abcde"),
                      options={"resize": None, "quality": 90, "workers": 1, "shuffle": False,
                               "seed": 0, "strict": False}, seconds=0.01)
    got = list(iter_records(folder / "p"))
    assert [p for _, _, p in got] == payloads
    assert [int(h.label) for _, h, _ in got] == labels
    result = verify_record_set(folder / "p")
    assert result.records == len(payloads)
    assert sum(result.label_counts.values()) == len(payloads)


@given(index=st.integers(0, 2**40), label=st.integers(0, 100000),
       path=st.text(st.characters(blacklist_characters="\t\n\r", blacklist_categories=("Cs",)), min_size=1))
def test_list_line_round_trip(index, label, path):
    line = format_list_line(index, label, path)
    assert line.endswith("\n") and line.count("\t") == 2
    assert parse_list_line(line, "x") == (index, float(label), path)


@given(width=st.integers(1, 5000), height=st.integers(1, 5000), shorter=st.integers(1, 1000))
def test_shorter_side_is_exact_and_aspect_kept(width, height, shorter):
    new_w, new_h = shorter_side_size(width, height, shorter)
    assert min(new_w, new_h) == shorter
    if width != height:
        assert (new_w > new_h) == (width > height) or new_w == new_h
    long_new, long_old = max(new_w, new_h), max(width, height)
    assert abs(long_new - long_old * shorter / min(width, height)) <= 0.5 or long_new == 1
