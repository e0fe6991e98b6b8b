"""Fuzzing with hypothesis: the RecordIO reader on random and truncated
bytes, the phase parser on random phase lists. The only failure either may
report is its documented one (BadRecordSet / UsageError: exit 2, one line)."""
import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from visionbench.cli import UsageError
from visionbench.data.recordio import BadRecordSet, RecordReader, RecordSetWriter, verify_record_set
from visionbench.phases import DataSettings, parse_phases

FUZZ = settings(max_examples=200, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_set(folder: Path, count: int) -> Path:
    with RecordSetWriter(folder / "p") as writer:
        for i in range(count):
            writer.write(i % 3, bytes([i]) * (10 + 7 * i), f"c/{i}.jpg")
        writer.finish(tool="folder_to_rec", source="fuzz", classes=list("abc"),
                      options={"resize": None, "quality": 90, "workers": 1, "shuffle": False,
                               "seed": 0, "strict": False}, seconds=0.01)
    return folder / "p"


def _read_everything(prefix: Path) -> None:
    """Open, read every record, verify; BadRecordSet is the documented answer to damage."""
    try:
        reader = RecordReader(prefix)
        for position in range(len(reader)):
            label, payload = reader.read(position)
            assert isinstance(label, float)
            payload.release()   # views into the map must go before close()
        reader.close()
    except BadRecordSet:
        pass
    try:
        verify_record_set(prefix)
    except BadRecordSet:
        pass


@FUZZ
@given(data=st.data())
def test_reader_on_truncated_and_overwritten_sets(tmp_path_factory, data):
    prefix = _valid_set(tmp_path_factory.mktemp("fz"), data.draw(st.integers(1, 6)))
    rec = Path(f"{prefix}.rec")
    blob = bytearray(rec.read_bytes())
    cut = data.draw(st.integers(0, len(blob)))
    noise = data.draw(st.binary(max_size=16))
    at = data.draw(st.integers(0, max(0, cut - 1)))
    blob = blob[:cut]
    blob[at:at + len(noise)] = noise
    rec.write_bytes(bytes(blob))
    _read_everything(prefix)


@FUZZ
@given(rec_bytes=st.binary(max_size=400), idx_lines=st.lists(st.tuples(st.integers(-3, 10**6), st.integers(-5, 500)),
                                                             max_size=6), junk=st.booleans())
def test_reader_on_random_bytes_and_random_index(tmp_path_factory, rec_bytes, idx_lines, junk):
    folder = tmp_path_factory.mktemp("rnd")
    (folder / "p.rec").write_bytes(rec_bytes)
    text = "".join(f"{k}\t{o}\n" for k, o in idx_lines) + ("not an index line\n" if junk else "")
    (folder / "p.idx").write_text(text)
    _read_everything(folder / "p")


def _value():
    number = st.one_of(st.integers(-3, 400), st.floats(-2, 5, allow_nan=False))
    return st.one_of(number, st.tuples(number, number), st.text(max_size=4), st.booleans(), st.none())


phase = st.dictionaries(st.sampled_from(["ep", "lr", "sz", "bs", "trndir", "min_scale", "rect_val", "keep_dali",
                                         "zz"]), _value(), min_size=1, max_size=4)
phase_lists = st.one_of(
    st.lists(phase, max_size=5).map(repr),
    # mostly well-formed lists: LR ramps over consecutive epochs with data phases between
    st.lists(st.tuples(st.integers(1, 4), st.floats(0, 2), st.floats(0, 2), st.sampled_from([None, 64, 128])),
             min_size=1, max_size=4).map(lambda parts: repr(_chain(parts))),
    st.text(max_size=30),
)


def _chain(parts):
    phases, start = [], 0
    for length, lr_start, lr_end, size in parts:
        if size:
            phases.append({"ep": start, "sz": size, "bs": 32})
        phases.append({"ep": (start, start + length), "lr": (lr_start, lr_end)})
        start += length
    return phases


@settings(max_examples=300, deadline=None)
@given(text=phase_lists, iterations=st.integers(1, 7))
def test_phase_parser_accepts_with_a_defined_lr_everywhere_or_refuses_with_a_message(text, iterations):
    try:
        phases = parse_phases(text)
    except UsageError as err:
        assert str(err) and "\n" not in str(err)
        return
    defaults = DataSettings(image_size=224, batch_size=64, trndir="", min_scale=0.08, rect_val=False)
    assert phases.epochs >= 1
    for epoch in range(phases.epochs):
        assert phases.settings(epoch, defaults).batch_size >= 1
        for iteration in range(iterations):
            lr, momentum = phases.at(epoch, iteration, iterations)
            assert math.isfinite(lr) and lr >= 0 and momentum == 0.9
