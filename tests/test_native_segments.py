"""The compiled segment store (``NativeSegmentPanes``, ``native/src/segment_store.rs``)
is :class:`presence.core.segment_panes.SegmentPanes`.

Random sequences of the calls the shard makes (pings as tuples or as packed
records, reports at random watermarks, drops, snapshots restored into either
class) go to both, and every answer is compared after every step: partials,
dirty keys, the first dirty row, pings sent to ``other``, row counts. Skipped
only where ``presence._native`` lacks ``SegmentStore``;
:func:`test_built_when_cargo_is_there` fails if cargo is here but it is missing.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence.core.native_segments import NativeSegmentPanes, native_segments_built
from presence.core.segment_panes import SegmentPanes
from presence.core.segment_records import dimension_kinds, encode_records
from presence.core.segments import OTHER, parse_segments
from presence.core.windows import WindowSpec

built = pytest.mark.skipif(
    not native_segments_built(), reason="presence._native has no SegmentStore (compiled module not built)"
)
EXAMPLES = int(os.environ.get("PRESENCE_TEST_NATIVE_EXAMPLES", "200"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BASE = 1_799_990_040  # a whole minute
CELL = 613635013692358655
DEFINITIONS = ["city;city,vehicle_type;h3:8", "vehicle_type", "city,h3:9;h3:8", "city"]
DRIVERS = ["d1", "d2", "d3", "é4", "d5", "\ud800x", "7", "d8", "d9", "d10"]
CITIES = ["Hong Kong", "SG", "other", "Zürich", "\udcff"]
VEHICLES = ["van", "car", "other", ""]


def test_built_when_cargo_is_there() -> None:
    """`make install` builds it wherever cargo is on PATH (here and in CI)."""
    if shutil.which("cargo") is None and not (Path.home() / ".cargo/bin/cargo").exists():
        pytest.skip("no cargo on this machine: the pure-Python segment store only")
    assert native_segments_built(), "cargo is here but presence._native has no SegmentStore: run make install"


def _value(draw, definition, other=False):
    """One value of a definition, as ``ValueExtractor`` gives them (None: unlocated);
    with ``other``, sometimes :data:`OTHER` itself in any definition (tuples only:
    records hold it only as a one-string definition's real "other")."""
    pick = draw(st.integers(0, 19))
    if pick < 2:
        return None
    if other and pick == 2:
        return OTHER
    parts = []
    for dim in definition.dimensions:
        if dim == "city":
            parts.append(draw(st.sampled_from(CITIES)))
        elif dim == "vehicle_type":
            parts.append(draw(st.sampled_from(VEHICLES)))
        else:
            parts.append(CELL + draw(st.integers(0, 5)) * 2**45)
    value = tuple(parts)
    return OTHER if value == OTHER else value


@st.composite
def batches(draw, definitions, drivers=DRIVERS, other=False):
    out = []
    for _ in range(draw(st.integers(0, 12))):
        out.append((draw(st.sampled_from(drivers)), draw(st.booleans()),
                    tuple(_value(draw, d, other) for d in definitions)))
    return out


def _records_hold(pings, definitions) -> bool:
    """True unless a ping has OTHER in a definition other than one string."""
    return all(value != OTHER or (len(d.dimensions) == 1 and not d.located)
               for _, _, values in pings for value, d in zip(values, definitions))


def _compare(ref, native, data, spec, definitions) -> None:
    assert native.first_dirty_row() == ref.first_dirty_row()
    assert native.dirty == ref.dirty
    assert list(native.other_pings) == list(ref.other_pings)
    for _ in range(3):
        number = data.draw(st.integers(0, len(definitions) - 1))
        value = _value(data.draw, definitions[number]) or OTHER
        row = BASE + data.draw(st.integers(-2, 12)) * spec.bucket_s
        assert native.row_counts(number, value, row) == ref.row_counts(number, value, row)
        assert native.row_overflow(number, row) == ref.row_overflow(number, row)


def _restore(cls, spec, definitions, snap):
    return cls.restore(spec, definitions, pickle.loads(pickle.dumps(snap, 5)))


@built
@SETTINGS
@given(st.data())
def test_same_results_as_segment_panes(data) -> None:
    definitions = parse_segments(data.draw(st.sampled_from(DEFINITIONS)))
    kinds = dimension_kinds(definitions)
    bucket = data.draw(st.sampled_from([60, 30]))
    spec = WindowSpec(bucket_s=bucket, window_s=bucket * data.draw(st.integers(1, 4)))
    max_values = data.draw(st.sampled_from([1, 2, 3, 50_000]))
    ref = SegmentPanes(spec, definitions, max_values)
    native = NativeSegmentPanes(spec, definitions, max_values)
    for _ in range(data.draw(st.integers(1, 25))):
        action = data.draw(st.sampled_from(["pings"] * 6 + ["take", "drop", "snapshot", "freeze", "freeze"]))
        if action == "pings":
            pane = BASE + data.draw(st.integers(0, 9)) * bucket
            pings = data.draw(batches(definitions, other=True))
            expected = ref.add_pings(pane, pings)
            if _records_hold(pings, definitions) and data.draw(st.booleans()):
                assert native.add_records(pane, encode_records(pings, kinds)) == expected
            else:
                assert native.add_pings(pane, pings) == expected
        elif action == "take":
            watermark = data.draw(st.sampled_from([None, None]) | st.integers(0, 14).map(
                lambda k: BASE + k * bucket + data.draw(st.sampled_from([0, 0.5, -0.5]))))
            if data.draw(st.booleans()):
                assert native.take_row_partials(watermark) == ref.take_row_partials(watermark)
            else:
                assert native.take_partials(watermark) == ref.take_partials(watermark)
        elif action == "drop":
            oldest = BASE + data.draw(st.integers(0, 10)) * bucket + data.draw(st.sampled_from([0, 0.5]))
            assert native.drop_before(oldest) == ref.drop_before(oldest)
        elif action == "freeze":
            watermark = BASE + data.draw(st.integers(0, 14)) * bucket + data.draw(st.sampled_from([0, 0.5]))
            assert native.freeze_closed(watermark) == ref.freeze_closed(watermark)
        else:  # a restart: each restored from either store's snapshot
            ref_snap, native_snap = ref.snapshot(), native.snapshot()
            assert native_snap.keys() == ref_snap.keys()
            ref = _restore(SegmentPanes, spec, definitions,
                           data.draw(st.sampled_from([ref_snap, native_snap])))
            native = _restore(NativeSegmentPanes, spec, definitions,
                              data.draw(st.sampled_from([ref_snap, native_snap])))
        _compare(ref, native, data, spec, definitions)
    assert native.take_row_partials() == ref.take_row_partials()
    assert native.dirty == ref.dirty == set()


@built
@SETTINGS
@given(st.data())
def test_records_and_tuples_give_the_same_state(data) -> None:
    """``add_records(pane, encode_records(pings))`` == ``add_pings(pane, pings)``."""
    definitions = parse_segments(data.draw(st.sampled_from(DEFINITIONS)))
    kinds = dimension_kinds(definitions)
    spec = WindowSpec(bucket_s=60, window_s=180)
    max_values = data.draw(st.sampled_from([2, 50_000]))
    by_tuples = NativeSegmentPanes(spec, definitions, max_values)
    by_records = NativeSegmentPanes(spec, definitions, max_values)
    ref = SegmentPanes(spec, definitions, max_values)
    for _ in range(data.draw(st.integers(1, 6))):
        pane = BASE + data.draw(st.integers(0, 4)) * 60
        pings = data.draw(batches(definitions))
        expected = ref.add_pings(pane, pings)
        assert by_tuples.add_pings(pane, pings) == expected
        assert by_records.add_records(pane, encode_records(pings, kinds)) == expected
    assert by_records.snapshot() == by_tuples.snapshot()
    assert by_records.take_row_partials() == by_tuples.take_row_partials() == ref.take_row_partials()


@built
def test_driver_index_compaction_keeps_the_counts() -> None:
    """> 1024 drivers, most only in dropped panes: renumbered, same partials afterwards."""
    definitions = parse_segments("city;city,vehicle_type;h3:8")
    spec = WindowSpec(bucket_s=60, window_s=300)
    ref = SegmentPanes(spec, definitions, 3)
    native = NativeSegmentPanes(spec, definitions, 3)
    cities = ["Hong Kong", "SG", "other", "Paris", "Oslo"]

    def ping(i: int, k: int):
        return (f"driver-{i}", (i + k) % 3 != 0,
                ((cities[i % 5],), (cities[i % 5], "van" if i % 2 else "car"),
                 None if i % 7 == 0 else (CELL + (i % 40) * 2**45,)))

    for k in range(8):
        pane = BASE + k * 60
        # 1500 drivers in the first pane; later panes a few hundred, partly the same
        drivers = range(1500) if k == 0 else range(1400 + 20 * k, 1400 + 20 * k + 300)
        pings = [ping(i, k) for i in drivers]
        assert native.add_pings(pane, pings) == ref.add_pings(pane, pings)
        assert native.take_row_partials(pane + 60) == ref.take_row_partials(pane + 60)
        assert native.freeze_closed(pane + 60) == ref.freeze_closed(pane + 60)
    before = len(native.snapshot()["ids"])
    assert native.drop_before(BASE + 3 * 60) == ref.drop_before(BASE + 3 * 60)
    after = native.snapshot()["ids"]
    assert len(after) < before / 2 and after == ref.snapshot()["ids"]
    for k in range(3, 10):
        pane = BASE + k * 60
        pings = [ping(i, k) for i in range(1450, 1800, 3)]
        assert native.add_pings(pane, pings) == ref.add_pings(pane, pings)
    assert native.take_row_partials() == ref.take_row_partials()
    for number, value in [(0, ("Paris",)), (1, ("SG", "van")), (2, (CELL,)), (0, OTHER)]:
        for row in range(BASE, BASE + 600, 60):
            assert native.row_counts(number, value, row) == ref.row_counts(number, value, row)
    restored = NativeSegmentPanes.restore(spec, definitions, ref.snapshot())
    assert restored.snapshot()["ids"] == ref.snapshot()["ids"]
    for number, value in [(0, ("Paris",)), (2, (CELL,))]:
        assert restored.row_counts(number, value, BASE + 480) == ref.row_counts(number, value, BASE + 480)


@built
def test_malformed_records_raise_and_change_nothing() -> None:
    definitions = parse_segments("city;h3:8")
    kinds = dimension_kinds(definitions)
    spec = WindowSpec(bucket_s=60, window_s=300)
    native = NativeSegmentPanes(spec, definitions)
    good = encode_records([("a", True, (("SG",), (CELL,)))], kinds)
    native.add_records(BASE, good)
    before = native.snapshot()
    for bad in [good[:-1], good + b"\x01", good[:4] + b"\x07" + good[5:], good + good[:5]]:
        with pytest.raises(ValueError, match="segment records are malformed"):
            native.add_records(BASE + 60, bad)
        assert native.snapshot() == before


@built
def test_snapshot_reuses_unchanged_panes_and_value_tuples() -> None:
    """A snapshot re-encodes only the panes changed since the last; each value's
    tuple is made once."""
    definitions = parse_segments("city;h3:8")
    spec = WindowSpec(bucket_s=60, window_s=300)
    native = NativeSegmentPanes(spec, definitions)
    for k in range(3):
        native.add_pings(BASE + 60 * k, [("a", True, (("SG",), (CELL,))), ("b", False, (("SG",), None))])
    first = native.snapshot()
    native.add_pings(BASE + 120, [("c", True, (("SG",), (CELL,)))])
    second = native.snapshot()
    for number in range(2):
        assert second["panes"][number][BASE] is first["panes"][number][BASE]
        assert second["panes"][number][BASE + 120] is not first["panes"][number][BASE + 120]
    values = [key[1] for by_key in native.take_row_partials().values() for key in by_key]
    assert len({id(v) for v in values}) == 2 and set(values) == {("SG",), (CELL,)}


@built
def test_a_non_integer_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match="whole-second"):
        NativeSegmentPanes(WindowSpec(bucket_s=0.5, window_s=1.0), parse_segments("city"))


@built
def test_a_bad_ping_raises_and_changes_nothing() -> None:
    definitions = parse_segments("city;h3:8")
    spec = WindowSpec(bucket_s=60, window_s=300)
    native = NativeSegmentPanes(spec, definitions)
    native.add_pings(BASE, [("a", True, (("SG",), (CELL,)))])
    before = native.snapshot()
    for bad in [[("b", True, (("SG",), (CELL,))), (7, True, (("SG",), None))],
                [("b", True, (("SG",), ("not a cell",)))],
                [("b", True, (("SG",), (-1,)))],
                [("b", True, (("SG",),))],
                [("b", True)]]:
        with pytest.raises((TypeError, ValueError, OverflowError)):
            native.add_pings(BASE + 60, bad)
        assert native.snapshot() == before


@built
def test_restored_dirty_key_of_a_value_no_pane_holds() -> None:
    """A dirty key whose value has no code (``SegmentPanes`` reports it as 0, 0)."""
    definitions = parse_segments("city;h3:8")
    spec = WindowSpec(bucket_s=60, window_s=180)
    ref = SegmentPanes(spec, definitions, 1)
    ref.add_pings(BASE, [("a", True, (("SG",), (CELL,))), ("b", True, (("HK",), (CELL,)))])
    snap = ref.snapshot()
    snap["dirty_by_row"] = {row: keys + ((0, ("Nowhere",)),) for row, keys in snap["dirty_by_row"].items()}
    ref, native = (cls.restore(spec, definitions, snap) for cls in (SegmentPanes, NativeSegmentPanes))
    assert native.dirty == ref.dirty
    assert native.take_row_partials(BASE + 120) == ref.take_row_partials(BASE + 120)
    assert native.drop_before(BASE + 60) == ref.drop_before(BASE + 60)
    assert native.take_row_partials() == ref.take_row_partials()
    assert native.snapshot()["values"] == ref.snapshot()["values"]


@pytest.mark.skipif(not native_segments_built(), reason="compiled segment store not built")
@settings(max_examples=100, deadline=None)
@given(st.data())
def test_packed_partials_are_the_keyed_partials(data) -> None:
    """The compiled store's packed partials (what the shard reports) are
    SegmentPanes.take_keyed_partials, byte for byte once unpacked."""
    from presence.core.segment_tally import unpack_partials

    defs = parse_segments("city;city,vehicle_type;h3:8")
    spec = WindowSpec(bucket_s=60, window_s=180)
    python, native = SegmentPanes(spec, defs, 3), NativeSegmentPanes(spec, defs, 3)
    for pane in data.draw(st.lists(st.sampled_from([0, 60, 120, 180]), min_size=1, max_size=6)):
        pings = data.draw(st.lists(st.tuples(
            st.sampled_from(["a", "b", "c", "d"]), st.booleans(),
            st.tuples(st.sampled_from([("HK",), ("Jakarta",), ("other",), ("x",)]),
                      st.sampled_from([("HK", "van"), ("HK", "car"), ("y", "z")]),
                      st.sampled_from([None, (613635013692358655,), (613635013692358656,)]))),
            max_size=8))
        pings = [(d, o, (OTHER if v[0] == ("other",) else v[0], v[1], v[2])) for d, o, v in pings]
        assert python.add_pings(pane, pings) == native.add_pings(pane, pings)
        watermark = data.draw(st.sampled_from([None, 100.0, 400.0, 1000.0]))
        assert unpack_partials(native.take_keyed_partials(watermark)) == \
            python.take_keyed_partials(watermark)


# Texts whose keys (a u16 length, then the utf-8 bytes) fall in each of the
# compiled key maps' classes: up to 7 bytes, exactly 8, 9 to 16 (its first and
# last 8 bytes overlap), longer (boxed); some alike but for their length, their
# zero bytes or one middle byte.
KEY_TEXTS = ["", "\x00", "\x00\x00", "a", "abcde", "abcdef", "abcdefg", "abcdefgh",
             "abcdefghi", "abcdefghijklmn", "abcdefgh12345678"[:15], "abcdefghX2345678"[:15],
             "abcdefgh1234567", "abcdefgh12345678X", "abcdefgh12345678Y", "é" * 9, "\ud800" * 7,
             "x" * 40, "x" * 39 + "y"]


@built
def test_keys_of_every_length_are_told_apart() -> None:
    """Driver ids and values of every key length (the compiled store holds short
    keys as words, long ones boxed) count as SegmentPanes counts them, also
    once their codes are freed and reused, and through snapshots both ways."""
    definitions = parse_segments("city;city,vehicle_type;h3:8")
    spec = WindowSpec(bucket_s=60, window_s=120)
    ref = SegmentPanes(spec, definitions)
    native = NativeSegmentPanes(spec, definitions)
    kinds = dimension_kinds(definitions)
    texts = KEY_TEXTS
    for k in range(6):
        pane = BASE + k * 60
        # each pane: every driver id, each in a value of a shifting set of texts,
        # so values leave (their codes freed by drop_before) and come back
        pings = [(driver, (i + k) % 4 != 0,
                  ((texts[(i + k) % len(texts)],),
                   (texts[(i * 3 + k) % len(texts)], texts[(i + 2 * k) % len(texts)]),
                   (CELL + ((i + k) % 7) * 2**45,)))
                 for i, driver in enumerate(texts + [t + "!" for t in texts])]
        pings = pings[k % 3:]  # not every driver every pane
        assert native.add_records(pane, encode_records(pings, kinds)) == ref.add_pings(pane, pings)
        assert native.take_row_partials(pane) == ref.take_row_partials(pane)
        _compare_keys(ref, native, definitions, texts, pane)
        if k % 2:
            assert native.drop_before(pane - 60) == ref.drop_before(pane - 60)
            snap = ref.snapshot() if k == 3 else native.snapshot()
            ref = SegmentPanes.restore(spec, definitions, pickle.loads(pickle.dumps(snap, 5)))
            native = NativeSegmentPanes.restore(spec, definitions, pickle.loads(pickle.dumps(snap, 5)))
    assert native.take_row_partials() == ref.take_row_partials()
    assert native.snapshot()["values"] == ref.snapshot()["values"]
    assert native.snapshot()["ids"] == ref.snapshot()["ids"]


def _compare_keys(ref, native, definitions, texts, pane) -> None:
    for row in (pane, pane + 60):
        for t in texts:
            for number, value in ((0, (t,)), (1, (t, t)), (1, (t, texts[3]))):
                assert native.row_counts(number, value, row) == ref.row_counts(number, value, row)


@built
@pytest.mark.parametrize("window", [60, 180])
def test_sets_growing_and_shrinking_through_every_form(window) -> None:
    """One value's drivers from 1 to 70 and back (a set of one, a few held in
    the entry, a sorted vector, a bitset), some off duty: the same counts, of
    one pane (a window of one bucket: the set's own size) and over three."""
    definitions = parse_segments("city")
    spec = WindowSpec(bucket_s=60, window_s=window)
    ref = SegmentPanes(spec, definitions)
    native = NativeSegmentPanes(spec, definitions)
    sizes = [1, 2, 3, 5, 6, 7, 12, 31, 32, 33, 70, 4, 1]
    for k, size in enumerate(sizes):
        pane = BASE + k * 60
        # drivers added a few at a time (small merges, each with one driver
        # already there) and all at once (large)
        for at in range(0, size, 1 + k % 4):
            pings = [(f"d{j * 7 % 71}", j % 5 != k % 5, (("SG",),))
                     for j in range(max(0, at - 1), min(size, at + 1 + k % 4))]
            assert native.add_pings(pane, pings) == ref.add_pings(pane, pings)
        assert native.take_row_partials(pane) == ref.take_row_partials(pane)
        for row in (pane - 60, pane):
            assert native.row_counts(0, ("SG",), row) == ref.row_counts(0, ("SG",), row)
        if k % 4 == 3:
            native = NativeSegmentPanes.restore(spec, definitions, pickle.loads(pickle.dumps(native.snapshot(), 5)))
            ref = SegmentPanes.restore(spec, definitions, pickle.loads(pickle.dumps(ref.snapshot(), 5)))
    assert native.take_row_partials() == ref.take_row_partials()
