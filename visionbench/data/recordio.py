"""Pass-through RecordIO sets: ``PREFIX.lst``, ``PREFIX.rec``, ``PREFIX.idx``.

The record format is MXNet's own (``mx.recordio``): every record is an
``IRHeader(flag=0, label, id=index, id2=0)`` followed by the image file bytes.
It is read and written here in plain Python, byte for byte as MXNet does
(dmlc-core's framing, MXNet's image header), so neither the loaders of the
torch engine nor data_prep/ need MXNet installed.
The ``.lst`` file uses im2rec's format, ``index<TAB>label<TAB>relative/path``
with the label printed as ``%f``. Alongside live ``PREFIX.classes.txt`` (one
class name per line, the line number is the label), ``PREFIX.skipped.txt``
(``path<TAB>reason`` per input that was not written) and ``PREFIX.prep.json``
(the summary, validated against report_schema/).

All of these are written under temporary names and renamed into place by
``RecordSetWriter.commit``; the ``.idx`` is renamed last, so a set whose
``.idx`` exists is complete.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

from ..cli import UsageError
from ..files import fsync_dir, fsync_path, partial_path, remove_stale_partials
from ..report.schema import validate_report

# dmlc-core RecordIO: every record part starts with this magic word, then a
# uint32 whose top 3 bits are the continuation flag and low 29 bits the length
# in bytes; parts are padded to 4 bytes.
RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_PART_HEADER = struct.Struct("<II")
_LENGTH_MASK = (1 << 29) - 1
_FLAG_SHIFT = 29
# Part flags: a whole record, or the start, a middle and the end of one split
# where its bytes held the magic word at a 4-byte boundary (the word is dropped
# there and put back by the reader).
_WHOLE, _START, _MIDDLE, _END = 0, 1, 2, 3

# MXNet's image record header (mx.recordio.IRHeader, struct 'IfQQ', 24 bytes):
# flag 0: one float label in ``label``; flag n > 0: n float32 labels follow
# the header and ``label`` is unused (0).
_IMAGE_HEADER = struct.Struct("<IfQQ")


class IRHeader(NamedTuple):
    """An image record's header, as mx.recordio.IRHeader; with flag n > 0,
    unpack_image_record returns the n labels in ``label`` (float32 array)."""
    flag: int
    label: object   # float, or with flag > 0 a numpy float32 array
    id: int
    id2: int


class RecordFormatError(ValueError):
    """A record whose RecordIO framing or image header is truncated or corrupted."""

# Renamed in this order by commit(): the .idx last marks a complete set.
OUTPUT_SUFFIXES = (".lst", ".classes.txt", ".skipped.txt", ".prep.json", ".rec", ".idx")


def prefix_path(prefix: Path, suffix: str) -> Path:
    return prefix.with_name(prefix.name + suffix)


def format_list_line(index: int, label: float, rel_path: str) -> str:
    return f"{index}\t{float(label):f}\t{rel_path}\n"


def parse_list_line(line: str, where: str) -> tuple[int, float, str]:
    parts = line.rstrip("\n").split("\t")
    if len(parts) < 3:
        raise UsageError(f"{where}: expected 'index<TAB>label<TAB>path', got {line.strip()!r}")
    try:
        return int(parts[0]), float(parts[1]), parts[-1]
    except ValueError:
        raise UsageError(f"{where}: expected 'index<TAB>label<TAB>path', got {line.strip()!r}")


def existing_outputs(prefix: Path) -> List[Path]:
    return [p for p in (prefix_path(prefix, s) for s in OUTPUT_SUFFIXES) if p.exists()]


# --- MXNet's record format, without MXNet -------------------------------------

def pack_image_record(header: IRHeader, payload: bytes) -> bytes:
    """An image record as mx.recordio.pack makes it: a number label gives
    flag 0; a sequence of labels gives flag = their count, the labels as
    float32 after the header, and label 0."""
    import numbers

    import numpy as np

    if isinstance(header.label, numbers.Number):
        header = header._replace(flag=0)
    else:
        labels = np.asarray(header.label, dtype=np.float32)
        header = header._replace(flag=labels.size, label=0)
        payload = labels.tobytes() + bytes(payload)
    return _IMAGE_HEADER.pack(*header) + bytes(payload)


def unpack_image_record(record) -> tuple:
    """(IRHeader, payload) of an image record (bytes, memoryview or mmap
    slice; the payload is a slice of the same kind), as mx.recordio.unpack.
    A record too short for its header or its labels is a RecordFormatError."""
    if len(record) < _IMAGE_HEADER.size:
        raise RecordFormatError(f"{len(record)} bytes are too short for an image record header")
    header = IRHeader(*_IMAGE_HEADER.unpack_from(record, 0))
    payload = record[_IMAGE_HEADER.size:]
    if header.flag > 0:
        import numpy as np

        if len(payload) < 4 * header.flag:
            raise RecordFormatError(f"an image record header announces {header.flag} labels in "
                                    f"{len(payload)} bytes")
        # A copy: an array over a slice of a memory-mapped .rec would keep the map from closing.
        header = header._replace(label=np.frombuffer(payload, np.float32, header.flag).copy())
        payload = payload[4 * header.flag:]
    return header, payload


def frame_record(record: bytes) -> bytes:
    """A record's bytes in the .rec, as dmlc-core's RecordIOWriter::WriteRecord
    writes them: split at every 4-byte-aligned magic word (the word dropped),
    one part header per part, the last part zero-padded to 4 bytes."""
    record = bytes(record)
    if len(record) > _LENGTH_MASK:
        raise ValueError(f"a RecordIO record holds at most {_LENGTH_MASK} bytes, got {len(record)}")
    pieces, start, split = [], 0, False
    found = record.find(_MAGIC_BYTES)
    while found != -1:
        if found % 4:   # dmlc-core looks for the magic word at 4-byte boundaries only
            found = record.find(_MAGIC_BYTES, found + 1)
            continue
        pieces += [_PART_HEADER.pack(RECORDIO_MAGIC, ((_MIDDLE if split else _START) << _FLAG_SHIFT)
                                     | (found - start)), record[start:found]]
        start, split = found + 4, True
        found = record.find(_MAGIC_BYTES, start)
    tail = len(record) - start
    pieces += [_PART_HEADER.pack(RECORDIO_MAGIC, ((_END if split else _WHOLE) << _FLAG_SHIFT) | tail),
               record[start:], b"\0" * (-tail % 4)]
    return b"".join(pieces)


def _record_parts(buffer, offset: int) -> tuple[list, int]:
    """([(start, length)] of the parts of the record at ``offset`` in
    ``buffer`` (the .rec's bytes), the byte just past it). Parts must be a
    whole record or start, middles and an end, each inside the buffer; else
    RecordFormatError."""
    parts, position, expect = [], offset, (_WHOLE, _START)
    while True:
        if position < 0 or position + _PART_HEADER.size > len(buffer):
            raise RecordFormatError(f"no record part header at byte {position}")
        magic, length_word = _PART_HEADER.unpack_from(buffer, position)
        flag, length = length_word >> _FLAG_SHIFT, length_word & _LENGTH_MASK
        if magic != RECORDIO_MAGIC or flag not in expect:
            raise RecordFormatError(f"no valid record part at byte {position}")
        start = position + _PART_HEADER.size
        position = start + (length + 3) // 4 * 4
        if position > len(buffer):
            raise RecordFormatError(f"the record part at byte {start - _PART_HEADER.size} runs past the end")
        parts.append((start, length))
        if flag in (_WHOLE, _END):
            return parts, position
        expect = (_MIDDLE, _END)


def read_record(buffer, offset: int):
    """The record at ``offset`` of ``buffer`` (the .rec's bytes), as dmlc-core's
    RecordIOReader::NextRecord returns it: a one-part record is a slice of the
    buffer (a memoryview's slice is no copy), a split one is joined with the
    magic words put back. RecordFormatError when truncated or corrupted."""
    parts, _ = _record_parts(buffer, offset)
    if len(parts) == 1:
        start, length = parts[0]
        return buffer[start:start + length]
    return _MAGIC_BYTES.join(bytes(buffer[start:start + length]) for start, length in parts)


def _record_end(buffer, offset: int) -> Optional[int]:
    """Byte just past the record starting at ``offset``, or None when the part
    headers there are not a well-formed record inside the buffer."""
    try:
        return _record_parts(buffer, offset)[1]
    except RecordFormatError:
        return None


def _map_file(path: Path):
    """The file's bytes, memory-mapped read-only (an empty file: b"", which
    mmap refuses)."""
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return b""
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


class IndexedRecordWriter:
    """Writes a .rec and its .idx as mx.recordio.MXIndexedRecordIO(idx, rec, "w")
    does: ``key<TAB>byte offset`` per record, in the order written."""

    def __init__(self, idx_path: Path, rec_path: Path):
        self._rec = open(rec_path, "wb")
        try:
            self._idx = open(idx_path, "w", encoding="utf-8")
        except OSError:
            self._rec.close()
            raise

    def write_idx(self, key: int, record: bytes) -> None:
        position = self._rec.tell()
        self._rec.write(frame_record(record))
        self._idx.write(f"{key}\t{position}\n")

    def close(self) -> None:
        self._rec.close()
        self._idx.close()


class RecordSetWriter:
    """Write one RecordIO set; nothing appears under the final names before commit().

    Use as a context manager: leaving the block by an exception (or SIGTERM,
    see cli.run_main) removes every temporary file.
    """

    def __init__(self, prefix: Path, overwrite: bool = False):
        self.prefix = Path(prefix)
        self.overwrite = overwrite
        found = existing_outputs(self.prefix)
        if found and not overwrite:
            raise UsageError(f"{found[0]} already exists; pass --overwrite to replace it")
        finals = [prefix_path(self.prefix, s) for s in OUTPUT_SUFFIXES]
        remove_stale_partials(finals)
        self._tmp: Dict[str, Path] = {s: partial_path(prefix_path(self.prefix, s)) for s in OUTPUT_SUFFIXES}
        self._records = IndexedRecordWriter(self._tmp[".idx"], self._tmp[".rec"])
        self._list = open(self._tmp[".lst"], "w", encoding="utf-8")
        self.count = 0
        self.payload_bytes = 0
        self.label_counts: Counter = Counter()
        self._done = False

    def write(self, label: int, payload: bytes, rel_path: str) -> int:
        """Append one record; returns its index (consecutive from 0)."""
        index = self.count
        self._records.write_idx(index, pack_image_record(IRHeader(0, float(label), index, 0), payload))
        self._list.write(format_list_line(index, label, rel_path))
        self.count += 1
        self.payload_bytes += len(payload)
        self.label_counts[int(label)] += 1
        return index

    def commit(self, side_files: Dict[str, str]) -> None:
        """Write the side files (suffix -> text) and rename everything into place."""
        self._records.close()
        self._list.close()
        for suffix, text in side_files.items():
            if suffix not in self._tmp:
                raise ValueError(f"unknown side file suffix {suffix}")
            with open(self._tmp[suffix], "w", encoding="utf-8") as handle:
                handle.write(text)
        for suffix in OUTPUT_SUFFIXES:
            if not self._tmp[suffix].exists():
                # A side file the caller did not provide: write it empty so that
                # no stale file of an older set survives an --overwrite.
                self._tmp[suffix].touch()
            fsync_path(self._tmp[suffix])
        idx_final = prefix_path(self.prefix, ".idx")
        # Drop the old completion mark first: a kill during the renames below
        # must not leave an old .idx beside a new .rec.
        idx_final.unlink(missing_ok=True)
        fsync_dir(self.prefix.parent)
        for suffix in OUTPUT_SUFFIXES:
            os.replace(self._tmp[suffix], prefix_path(self.prefix, suffix))
        fsync_dir(self.prefix.parent)
        self._done = True

    def finish(self, *, tool: str, source: str, classes: Sequence[str], options: dict,
               seconds: float, skipped: Sequence[tuple[str, str]] = ()) -> dict:
        """Commit the set with its side files; returns the summary (PREFIX.prep.json)."""
        summary = {
            "schema_version": 1,
            "kind": "data_prep",
            "tool": tool,
            "source": source,
            "out_prefix": str(self.prefix),
            "images_written": self.count,
            "images_skipped": len(skipped),
            "classes": list(classes),
            "per_class": [self.label_counts.get(i, 0) for i in range(len(classes))],
            "payload_bytes": self.payload_bytes,
            "seconds": round(seconds, 3),
            "images_per_second": round(self.count / seconds, 1) if seconds > 0 else None,
            "options": options,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        validate_report(summary, "data_prep_report")
        self.commit({
            ".classes.txt": "".join(f"{name}\n" for name in classes),
            ".skipped.txt": "".join(f"{path}\t{reason}\n" for path, reason in skipped),
            ".prep.json": json.dumps(summary, indent=2) + "\n",
        })
        return summary

    def abort(self) -> None:
        if self._done:
            return
        try:
            self._records.close()
            self._list.close()
        finally:
            for tmp in self._tmp.values():
                tmp.unlink(missing_ok=True)
            self._done = True

    def __enter__(self) -> "RecordSetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()


def format_summary(summary: dict) -> str:
    per_class = summary["per_class"]
    lines = [
        f"{summary['out_prefix']}: {summary['images_written']} images written, "
        f"{summary['images_skipped']} skipped, {summary['payload_bytes'] / 1e6:.1f} MB of image data, "
        f"{summary['seconds']:.1f} s ({summary['images_per_second']} img/s)",
    ]
    names = summary["classes"]
    if len(names) <= 20:
        lines.append("per class: " + ", ".join(f"{n}={c}" for n, c in zip(names, per_class)))
    else:
        lines.append(f"per class ({len(names)} classes): min {min(per_class)}, max {max(per_class)}, "
                     f"mean {sum(per_class) / len(per_class):.1f}")
    empty = [n for n, c in zip(names, per_class) if c == 0]
    if empty:
        lines.append(f"warning: {len(empty)} classes have no images: {', '.join(empty[:10])}")
    if summary["images_skipped"]:
        lines.append(f"skipped files are listed in {summary['out_prefix']}.skipped.txt")
    return "\n".join(lines)


def read_classes(prefix: Path) -> Optional[List[str]]:
    path = prefix_path(prefix, ".classes.txt")
    if not path.exists():
        return None
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class BadRecordSet(UsageError):
    """A .rec/.idx pair that fails verification; ``index`` is the first bad key."""

    def __init__(self, message: str, index: Optional[int] = None):
        super().__init__(message)
        self.index = index


@dataclass
class VerifyResult:
    records: int
    rec_bytes: int
    label_counts: Dict[int, int]
    classes: Optional[List[str]]
    decoded: int = 0
    notes: List[str] = field(default_factory=list)


def read_index_file(idx_path: Path) -> List[tuple[int, int]]:
    """Parse ``key<TAB>offset`` lines, naming the first malformed line."""
    entries = []
    with open(idx_path, encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, 1):
            parts = line.split("\t")
            try:
                if len(parts) != 2:
                    raise ValueError
                key, offset = int(parts[0]), int(parts[1])
                if key < 0 or offset < 0:
                    raise ValueError
                entries.append((key, offset))
            except ValueError:
                raise BadRecordSet(f"{idx_path}:{line_no}: malformed index line {line.strip()[:60]!r}")
    return entries


def verify_record_set(prefix: Path, decode: bool = False,
                      num_classes: Optional[int] = None) -> VerifyResult:
    """Check a ``.rec/.idx`` pair record by record; raise BadRecordSet at the first fault.

    Checks: every offset in the .idx points at a record header inside the .rec;
    the records tile the .rec exactly (nothing unindexed, nothing overlapping);
    each header's id equals its key; labels are whole numbers in
    ``[0, num_classes)`` (class count from PREFIX.classes.txt unless given);
    the .lst, when present, agrees with the headers; with ``decode`` every
    payload decodes with OpenCV (the decoder ImageRecordIter uses).
    """
    prefix = Path(prefix)
    rec_path, idx_path = prefix_path(prefix, ".rec"), prefix_path(prefix, ".idx")
    for path in (rec_path, idx_path):
        if not path.is_file():
            raise BadRecordSet(f"{path} does not exist")
    classes = read_classes(prefix)
    if num_classes is None and classes is not None:
        num_classes = len(classes)
    entries = read_index_file(idx_path)
    if not entries:
        raise BadRecordSet(f"{idx_path} lists no records")
    rec_size = rec_path.stat().st_size
    keys_seen = set()
    for key, offset in entries:
        if key in keys_seen:
            raise BadRecordSet(f"{idx_path}: key {key} appears twice", key)
        keys_seen.add(key)
        if not 0 <= offset <= rec_size - _PART_HEADER.size:
            raise BadRecordSet(f"record {key}: offset {offset} lies outside {rec_path} ({rec_size} bytes)", key)

    expected_labels = _read_list_labels(prefix)
    rec = _map_file(rec_path)
    try:
        label_counts, decoded = _verify_records(rec, rec_path, entries, num_classes, expected_labels, decode)
    finally:
        if not isinstance(rec, bytes):
            rec.close()
    if expected_labels is not None and len(expected_labels) != len(entries):
        raise BadRecordSet(f"{prefix_path(prefix, '.lst')}: {len(expected_labels)} lines for {len(entries)} records")
    return VerifyResult(records=len(entries), rec_bytes=rec_size, label_counts=dict(label_counts),
                        classes=classes, decoded=decoded)


def _verify_records(rec, rec_path: Path, entries: List[tuple[int, int]], num_classes: Optional[int],
                    expected_labels: Optional[Dict[int, int]], decode: bool) -> tuple[Counter, int]:
    """verify_record_set's walk through the .rec's bytes ``rec`` in offset
    order: (records per label, records decoded)."""
    if decode:
        import cv2
        import numpy as np

    label_counts: Counter = Counter()
    decoded = 0
    expected_offset = 0
    for key, offset in sorted(entries, key=lambda e: e[1]):
        if offset != expected_offset:
            gap = "unindexed bytes" if offset > expected_offset else "overlapping records"
            raise BadRecordSet(f"record {key}: starts at byte {offset}, expected {expected_offset} ({gap} in {rec_path})", key)
        end = _record_end(rec, offset)
        if end is None:
            raise BadRecordSet(f"record {key}: no valid record at byte {offset} of {rec_path}", key)
        try:
            record = read_record(rec, offset)
        except RecordFormatError:
            raise BadRecordSet(f"record {key}: truncated or corrupted data at byte {offset} of {rec_path}", key)
        expected_offset = end
        try:
            header, payload = unpack_image_record(record)
        except RecordFormatError:
            raise BadRecordSet(f"record {key}: too short for an image record header", key)
        label = _check_label(key, header, num_classes)
        if header.id != key:
            raise BadRecordSet(f"record {key}: header id is {header.id}, expected {key}", key)
        if expected_labels is not None:
            listed = expected_labels.get(key)
            if listed is None or listed != label:
                raise BadRecordSet(f"record {key}: label {label} but the .lst says {listed}", key)
        if decode:
            image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise BadRecordSet(f"record {key}: payload of {len(payload)} bytes does not decode as an image", key)
            decoded += 1
        label_counts[label] += 1
    if expected_offset != len(rec):
        raise BadRecordSet(f"{rec_path}: {len(rec) - expected_offset} bytes after the last indexed record (the .idx does not cover the .rec)")
    return label_counts, decoded


def _check_label(key: int, header, num_classes: Optional[int]) -> int:
    label = header.label
    if header.flag != 0:
        raise BadRecordSet(f"record {key}: has {header.flag} labels, expected a single label", key)
    if not math.isfinite(label) or label != int(label) or label < 0:
        raise BadRecordSet(f"record {key}: label {label} is not a class index", key)
    if num_classes is not None and label >= num_classes:
        raise BadRecordSet(f"record {key}: label {int(label)} is outside the {num_classes} classes", key)
    return int(label)


def _read_list_labels(prefix: Path) -> Optional[Dict[int, int]]:
    lst_path = prefix_path(prefix, ".lst")
    if not lst_path.exists():
        return None
    labels = {}
    with open(lst_path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            index, label, _ = parse_list_line(line, f"{lst_path}:{line_no}")
            labels[index] = int(label)
    return labels


def iter_records(prefix: Path, keys: Optional[Sequence[int]] = None):
    """Yield ``(key, IRHeader, payload)`` in index order (or for ``keys``)."""
    prefix = Path(prefix)
    rec_path = prefix_path(prefix, ".rec")
    entries = read_index_file(prefix_path(prefix, ".idx"))
    offsets = dict(entries)   # a key listed twice: its last offset, as MXNet's reader
    rec = _map_file(rec_path)
    try:
        for key in ([key for key, _ in entries] if keys is None else keys):
            try:
                # Slices of the map are copies: the payloads outlive the map.
                header, payload = unpack_image_record(read_record(rec, offsets[key]))
            except RecordFormatError:
                raise BadRecordSet(f"record {key} of {rec_path} is truncated or corrupted", key)
            yield key, header, payload
    finally:
        if not isinstance(rec, bytes):
            rec.close()


class RecordReader:
    """Random access to the records of a set by position (0 .. len-1, in .idx
    order), for the loaders. Construction checks cheaply that the .idx fits
    its .rec (first and last record well-formed); verify_rec checks it all."""

    def __init__(self, prefix: Path):
        self.prefix = Path(prefix)
        self.rec_path, self.idx_path = prefix_path(self.prefix, ".rec"), prefix_path(self.prefix, ".idx")
        for path in (self.rec_path, self.idx_path):
            if not path.is_file():
                raise BadRecordSet(f"{path} does not exist")
        entries = read_index_file(self.idx_path)
        if not entries:
            raise BadRecordSet(f"{self.idx_path} lists no records")
        by_offset = sorted(entries, key=lambda e: e[1])
        self._map = _map_file(self.rec_path)
        self._view = memoryview(self._map)
        for key, offset in (by_offset[0], by_offset[-1]):
            if _record_end(self._view, offset) is None:
                self.close()
                raise BadRecordSet(f"{self.idx_path} does not match {self.rec_path}: "
                                   f"no valid record {key} at byte {offset} (run verify_rec.py)", key)
        self.keys = [key for key, _ in entries]
        self._offsets = [offset for _, offset in entries]

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, position: int) -> tuple[float, memoryview]:
        """(label, image bytes) of the record at ``position``; the bytes are a
        view into the memory-mapped .rec, valid while the reader is open."""
        offset = self._offsets[position]
        view = self._view
        if offset + _PART_HEADER.size <= len(view):
            magic, length_word = _PART_HEADER.unpack_from(view, offset)
            start, length = offset + _PART_HEADER.size, length_word & _LENGTH_MASK
            # The common case, one part: slice it out of the map (no copy).
            # Split records (joined: a copy) and damage take read_record.
            if magic == RECORDIO_MAGIC and length_word >> _FLAG_SHIFT == _WHOLE and start + length <= len(view):
                return self._unpack(view[start:start + length], position)
        key = self.keys[position]
        try:
            record = read_record(view, offset)
        except RecordFormatError:
            raise BadRecordSet(f"record {key} of {self.rec_path} is truncated or corrupted", key)
        label, payload = self._unpack(record, position)
        return label, memoryview(payload)

    def _unpack(self, record, position: int) -> tuple:
        """(label, payload) of one record; a damaged image header (a label
        count the record cannot hold, several labels) is a BadRecordSet."""
        key = self.keys[position]
        try:
            header, payload = unpack_image_record(record)
        except RecordFormatError:
            raise BadRecordSet(f"record {key} of {self.rec_path} has a damaged header", key)
        if header.flag != 0:
            raise BadRecordSet(f"record {key} of {self.rec_path} has {header.flag} labels, expected one", key)
        return float(header.label), payload

    def image_sizes(self, unreadable_ok: bool = False):
        """(width, height) per position, parsed from the image headers once and
        cached as PREFIX.sizes.npy (rebuilt when the .idx or .rec changes).
        A record that is not an image is a BadRecordSet, or with
        ``unreadable_ok`` (--bad-records skip) the size (0, 0)."""
        import io

        import numpy as np
        from PIL import Image, UnidentifiedImageError

        cache = prefix_path(self.prefix, ".sizes.npy")
        stamp = np.array([self.idx_path.stat().st_size, self.idx_path.stat().st_mtime_ns,
                          self.rec_path.stat().st_size, self.rec_path.stat().st_mtime_ns], dtype=np.int64)
        if cache.exists():
            try:
                stored = np.load(cache)
                if stored.shape == (len(self) + 2, 2) and np.array_equal(stored[:2].ravel(), stamp):
                    sizes = stored[2:].astype(np.int64)
                    unreadable = np.flatnonzero(sizes[:, 1] == 0)
                    if len(unreadable) and not unreadable_ok:
                        position = int(unreadable[0])
                        raise BadRecordSet(f"record {self.keys[position]} of {self.rec_path} is not an image",
                                           self.keys[position])
                    return sizes
            except (OSError, ValueError):
                pass   # unreadable cache: rebuilt below
        sizes = np.empty((len(self), 2), dtype=np.int64)
        for position in range(len(self)):
            _, payload = self.read(position)
            try:
                sizes[position] = Image.open(io.BytesIO(payload)).size
            except (UnidentifiedImageError, OSError) as err:
                if not unreadable_ok:
                    raise BadRecordSet(f"record {self.keys[position]} of {self.rec_path} is not an image ({err})",
                                       self.keys[position])
                sizes[position] = (0, 0)
        tmp = partial_path(cache)
        try:
            with open(tmp, "wb") as handle:
                np.save(handle, np.concatenate([stamp.reshape(2, 2), sizes]))
            os.replace(tmp, cache)
        except OSError:
            tmp.unlink(missing_ok=True)   # a read-only dataset folder: no cache, still correct
        return sizes

    def close(self) -> None:
        """Close the map; views returned by read() must be released first."""
        self._view.release()
        if not isinstance(self._map, bytes):
            self._map.close()
