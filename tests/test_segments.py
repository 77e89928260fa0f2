"""Unit tests: segment definitions, segment values, segment pane sets and state."""

from __future__ import annotations

import math
import pickle

import h3
import pytest

from presence.core.segment_panes import (
    SegmentPanes,
    decode,
    encode,
    group_pings,
    merge,
    size_of,
    union_size,
)
from presence.core.segments import (
    OTHER,
    UNKNOWN,
    SegmentDefinition,
    SegmentsError,
    ValueExtractor,
    format_segments,
    parse_segments,
    valid_location,
)
from presence.core.windows import WindowSpec
from tests.constants import T0

SPEC = WindowSpec(bucket_s=60, window_s=180, lateness_s=10, horizon_s=300)
HK = (22.3193, 114.1694)
T = T0

# --- definitions --------------------------------------------------------------


def test_parse_example_and_normalised_names() -> None:
    defs = parse_segments(" City ; city , VEHICLE_TYPE;h3:08 ")
    assert [d.name for d in defs] == ["city", "city,vehicle_type", "h3:8"]
    assert defs[2] == SegmentDefinition(("h3:8",), 8)
    assert defs[1].fields == ("city", "vehicle_type") and not defs[1].located
    assert format_segments(defs) == "city;city,vehicle_type;h3:8"
    assert parse_segments(format_segments(defs)) == defs
    assert parse_segments("vehicle_type,h3:0,city")[0].fields == ("vehicle_type", "h3", "city")


@pytest.mark.parametrize("text", ["", "   ", None])
def test_empty_means_no_segments(text) -> None:
    assert parse_segments(text) == ()


def test_every_resolution_and_several_h3_definitions() -> None:
    defs = parse_segments(";".join(f"h3:{r}" for r in range(16)))
    assert [d.resolution for d in defs] == list(range(16))


@pytest.mark.parametrize("text, words", [
    ("city;", "empty segment definition"),
    (";city", "empty segment definition"),
    ("city;;h3:8", "empty segment definition"),
    ("city,", "empty dimension"),
    ("h3", "h3 needs a resolution"),
    ("h3:", "h3 needs a resolution"),
    ("h3:16", "'16' is not a whole number from 0 to 15"),
    ("h3:-1", "'-1' is not a whole number"),
    ("h3:8.0", "'8.0' is not a whole number"),
    ("h3:x", "'x' is not a whole number"),
    ("h3:\u0663", "is not a whole number"),
    ("city,city", "dimension 'city' named twice"),
    ("vehicle_type, VEHICLE_TYPE", "dimension 'vehicle_type' named twice"),
    ("h3:7,h3:8", "at most one h3 dimension"),
    ("h3:7,h3:7", "at most one h3 dimension"),
    ("country", "unknown dimension 'country'"),
    ("city;city", "repeats segment 'city'"),
    ("city,vehicle_type;vehicle_type,city", "repeats segment 'city,vehicle_type'"),
    ("h3:8;h3:08", "repeats segment 'h3:8'"),
])
def test_bad_definitions_are_one_line_errors(text, words) -> None:
    with pytest.raises(SegmentsError) as err:
        parse_segments(text)
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_keys_for_documents_and_back() -> None:
    city_vt, cell8 = parse_segments("city,vehicle_type;h3:8")
    assert city_vt.key(("Hong Kong", "van")) == {"city": "Hong Kong", "vehicle_type": "van"}
    cell = h3.latlng_to_cell(*HK, 8)
    value = ValueExtractor([cell8]).values(lat=HK[0], lng=HK[1])[0]
    assert cell8.key(value) == {"h3": cell}
    assert cell8.value_of_key({"h3": cell}) == value
    assert city_vt.value_of_key({"city": "Hong Kong", "vehicle_type": "van"}) == ("Hong Kong", "van")
    assert city_vt.key(OTHER) == {"city": "other", "vehicle_type": "other"}
    assert cell8.key(OTHER) == {"h3": "other"}
    assert cell8.value_of_key({"h3": "other"}) == OTHER
    with pytest.raises(SegmentsError, match="missing vehicle_type"):
        city_vt.value_of_key({"city": "x"})
    with pytest.raises(SegmentsError, match="unknown h3"):
        city_vt.value_of_key({"city": "x", "vehicle_type": "y", "h3": "z"})
    with pytest.raises(SegmentsError, match="not an H3 cell of resolution 8"):
        cell8.value_of_key({"h3": h3.latlng_to_cell(*HK, 7)})
    with pytest.raises(SegmentsError, match="not an H3 cell"):
        cell8.value_of_key({"h3": "zz"})


# --- values -------------------------------------------------------------------


def test_values_of_a_ping() -> None:
    extract = ValueExtractor(parse_segments("city;city,vehicle_type;h3:8;vehicle_type,h3:5"))
    got = extract.of_object(
        {"driver_id": 1, "city": "Hong Kong", "vehicle_type": "van", "lat": HK[0], "lng": HK[1]}
    )
    c8 = h3.str_to_int(h3.latlng_to_cell(*HK, 8))
    c5 = h3.str_to_int(h3.latlng_to_cell(*HK, 5))
    assert got == (("Hong Kong",), ("Hong Kong", "van"), (c8,), ("van", c5))
    assert extract.resolutions == (5, 8)


@pytest.mark.parametrize("fields", [
    {},
    {"city": None, "vehicle_type": None},
    {"city": "", "vehicle_type": ""},
    {"city": "x" * 65, "vehicle_type": "y" * 33},
    {"city": 7, "vehicle_type": True},
    {"city": ["Hong Kong"], "vehicle_type": {"a": 1}},
])
def test_missing_or_invalid_strings_are_unknown(fields) -> None:
    extract = ValueExtractor(parse_segments("city;city,vehicle_type"))
    assert extract.of_object(fields) == ((UNKNOWN,), (UNKNOWN, UNKNOWN))


def test_longest_valid_strings_are_kept() -> None:
    extract = ValueExtractor(parse_segments("city,vehicle_type"))
    assert extract.values("c" * 64, "v" * 32) == (("c" * 64, "v" * 32),)


@pytest.mark.parametrize("lat, lng", [
    (None, 114.0), (22.0, None), ("22.3", 114.0), (True, 114.0), (22.0, False),
    (math.nan, 114.0), (22.0, math.inf), (-math.inf, 0), (90.0001, 0), (-91, 0), (0, 180.5),
    (0, -181), ([22], 114), (2**70, 0),
])
def test_unlocated_pings_have_no_h3_value(lat, lng) -> None:
    extract = ValueExtractor(parse_segments("city;h3:8;city,h3:3"))
    fields = {"city": "Oslo"}
    if lat is not None:
        fields["lat"] = lat
    if lng is not None:
        fields["lng"] = lng
    assert extract.of_object(fields) == (("Oslo",), None, None)


@pytest.mark.parametrize("lat, lng", [(90, 180), (-90, -180), (0, 0), (90.0, -180.0), (45, 7)])
def test_edges_and_integers_are_valid_locations(lat, lng) -> None:
    assert valid_location(lat, lng) == (float(lat), float(lng))
    value = ValueExtractor(parse_segments("h3:15"), cache_size=4).values(lat=lat, lng=lng)[0]
    assert h3.int_to_str(value[0]) == h3.latlng_to_cell(float(lat), float(lng), 15)


def test_cache_gives_the_same_cells() -> None:
    defs = parse_segments("h3:8;h3:9")
    plain, cached = ValueExtractor(defs), ValueExtractor(defs, cache_size=2)
    points = [(22.3 + i / 1000, 114.1) for i in range(5)] * 3
    for lat, lng in points:
        assert cached.values(lat=lat, lng=lng) == plain.values(lat=lat, lng=lng)


# --- sets of positions ----------------------------------------------------------


@pytest.mark.parametrize("positions", [
    {0}, {5}, {70000}, set(range(100)), {3, 60000}, {1, 2, 65535}, {65536},
    set(range(0, 200000, 7)), set(range(0, 200000, 40)),
])
def test_containers_round_trip(positions) -> None:
    c = encode(positions)
    assert sorted(decode(c)) == sorted(positions)
    assert size_of(c) == len(positions)


def test_dense_sets_are_bitmaps_sparse_ones_sorted_positions() -> None:
    assert type(encode(set(range(0, 6000, 3)))) is int           # 1 in 3 of the shard
    assert type(encode({17, 4000})) is bytes                      # 4 bytes, not 500
    assert len(encode({17, 4000})) == 4
    wide = encode({70000, 100})
    assert type(wide) is bytes and len(wide) == 9 and sorted(decode(wide)) == [100, 70000]


def test_merge_returns_the_same_object_when_nothing_is_new() -> None:
    for start in ({1, 2}, set(range(200))):
        c = encode(start)
        assert merge(c, [1, 2]) is c
        grown = merge(c, [5000])
        assert sorted(decode(grown)) == sorted(start | {5000})
    assert merge(None, []) is None


def test_union_size_mixes_both_kinds() -> None:
    dense = encode(set(range(0, 3000, 2)))
    sparse = encode({1, 2, 40000})
    sparse2 = encode({40000, 50000})
    assert union_size([dense, sparse, sparse2]) == 1500 + 1 + 2
    assert union_size([sparse, sparse2]) == 4
    assert union_size([]) == 0


# --- segment panes --------------------------------------------------------------


def panes_with(pings, segments="city;h3:8", max_values=50_000) -> tuple[SegmentPanes, ValueExtractor]:
    defs = parse_segments(segments)
    extract = ValueExtractor(defs)
    state = SegmentPanes(SPEC, defs, max_values)
    items = [(d, t, on, extract.of_object(f)) for d, t, on, f in pings]
    state.add_panes(group_pings(SPEC, items, len(defs)))
    return state, extract


def test_counts_dirty_rows_and_partials() -> None:
    pings = [
        ("a", T + 1, True, {"city": "HK", "lat": HK[0], "lng": HK[1]}),
        ("a", T + 61, False, {"city": "HK", "lat": HK[0], "lng": HK[1]}),
        ("b", T + 2, False, {"city": "HK"}),              # unlocated: city only
        ("c", T + 3, True, {"city": "Oslo"}),
    ]
    state, _ = panes_with(pings)
    # 'a' and 'b' (HK) in rows T..T+120 (window 3 buckets) and T+60..T+180.
    assert state.row_counts(0, ("HK",), T) == (2, 1)
    assert state.row_counts(0, ("HK",), T + 60) == (2, 1)
    assert state.row_counts(0, ("HK",), T + 180) == (1, 0)
    assert state.row_counts(0, ("Oslo",), T + 120) == (1, 1)
    assert state.row_counts(0, ("Nowhere",), T) == (0, 0)
    partials = state.take_partials(T + 60)  # only row T has ended
    assert set(partials) == {(0, ("HK",), T), (0, ("Oslo",), T), (1, state.values[1][0], T)}
    assert partials[(0, ("HK",), T)] == (2, 1, False)
    rest = state.take_partials()
    cell = state.values[1][0]
    assert set(rest) == (
        {(0, ("HK",), T + s) for s in (60, 120, 180)}
        | {(0, ("Oslo",), T + s) for s in (60, 120)}
        | {(1, cell, T + s) for s in (60, 120, 180)}
    )
    assert rest[(1, cell, T + 180)] == (1, 0, False)
    assert not state.dirty and state.take_partials() == {}


def test_nothing_new_marks_nothing_dirty() -> None:
    pings = [("a", T + 1, True, {"city": "HK"})]
    state, extract = panes_with(pings)
    state.take_partials()
    items = [("a", T + 30, True, extract.of_object({"city": "HK"}))]
    assert not state.add_panes(group_pings(SPEC, items, 2))
    assert not state.dirty
    # Becoming available is new, even for a driver already online.
    state2, _ = panes_with([("a", T + 1, False, {"city": "HK"})])
    state2.take_partials()
    assert state2.add_panes(group_pings(SPEC, [("a", T + 9, True, (("HK",), None))], 2))
    assert state2.row_counts(0, ("HK",), T) == (1, 1)


def test_overflow_valve_sends_new_values_to_other() -> None:
    pings = [(f"d{i}", T + i, True, {"city": f"c{i % 5}"}) for i in range(20)]
    pings += [("late", T + 70, True, {"city": "c9"})]   # next bucket: room again
    state, _ = panes_with(pings, "city", max_values=3)
    assert len(state.panes[0][T]) == 4                  # 3 values + other
    assert state.row_counts(0, OTHER, T) == (8, 8)      # c3 and c4 drivers
    assert state.other_pings == [8]
    assert state.overflow[0] == {T}
    partials = state.take_partials()
    assert partials[(0, ("c0",), T)] == (4, 4, True)
    assert partials[(0, ("c9",), T + 60)] == (1, 1, True)   # row T+60 still holds pane T
    assert partials[(0, ("c9",), T + 180)] == (1, 1, False)
    # A value already in the pane keeps its place.
    state.add_panes(group_pings(SPEC, [("x", T + 5, True, (("c0",),))], 1))
    assert state.row_counts(0, ("c0",), T) == (5, 5)


def test_snapshot_is_plain_immutable_and_restores() -> None:
    pings = [(f"d{i}", T + i * 7, i % 3 != 0, {"city": f"c{i % 4}", "lat": 22 + i / 100, "lng": 114})
             for i in range(60)]
    state, extract = panes_with(pings)
    snap = state.snapshot()
    blob = pickle.dumps(snap)
    copy = SegmentPanes.restore(SPEC, state.definitions, pickle.loads(blob))
    # Later changes do not touch the snapshot.
    state.add_panes(group_pings(SPEC, [("new", T + 3, True, extract.of_object({"city": "c0"}))], 2))
    assert pickle.dumps(snap) == blob
    assert copy.row_counts(0, ("c0",), T) == (state.row_counts(0, ("c0",), T)[0] - 1,
                                              state.row_counts(0, ("c0",), T)[1] - 1)
    assert copy.take_partials() == SegmentPanes.restore(
        SPEC, state.definitions, pickle.loads(blob)).take_partials()
    with pytest.raises(ValueError, match="made with segments 'city;h3:8', not 'city'"):
        SegmentPanes.restore(SPEC, parse_segments("city"), pickle.loads(blob))


def test_unchanged_panes_are_not_encoded_again() -> None:
    state, extract = panes_with([("a", T + 1, True, {"city": "HK"}), ("b", T + 61, True, {"city": "HK"})])
    first = state.snapshot()
    state.add_panes(group_pings(SPEC, [("c", T + 62, True, extract.of_object({"city": "HK"}))], 2))
    second = state.snapshot()
    assert second["panes"][0][T] is first["panes"][0][T]
    assert second["panes"][0][T + 60] is not first["panes"][0][T + 60]


def test_drop_before_frees_values_and_compacts_drivers() -> None:
    old = [(f"old{i}", T + i % 60, True, {"city": f"c{i % 7}", "lat": 10 + i / 1000, "lng": 20})
           for i in range(3000)]
    new = [(f"new{i}", T + 600 + i % 60, i % 2 == 0, {"city": "c0", "lat": 10, "lng": 20})
           for i in range(100)]
    state, extract = panes_with(old + new)
    state.take_partials()
    assert len(state.index) == 3100
    assert state.drop_before(T + 600) == 2
    assert len(state.index) == 100                      # renumbered: only the kept drivers
    assert set(state.codes[0]) == {("c0",)} and len(state.codes[1]) == 1
    assert state.row_counts(0, ("c0",), T + 600) == (100, 50)
    # Freed codes are reused, and counts stay right.
    state.add_panes(group_pings(SPEC, [("z", T + 601, True, extract.of_object({"city": "c5"}))], 2))
    assert state.codes[0][("c5",)] < 7
    assert state.row_counts(0, ("c5",), T + 600) == (1, 1)
    restored = SegmentPanes.restore(SPEC, state.definitions, pickle.loads(pickle.dumps(state.snapshot())))
    assert restored.row_counts(0, ("c0",), T + 660) == (100, 50)


def test_add_pings_equals_grouped_add() -> None:
    defs = parse_segments("city;city,vehicle_type;h3:9")
    extract = ValueExtractor(defs)
    pings = [(f"d{i % 37}", T + (i * 13) % 240, i % 4 != 0,
              extract.of_object({"city": f"c{i % 3}", "vehicle_type": "van" if i % 5 else 7,
                                 "lat": 22 + (i % 11) / 300, "lng": 114 if i % 9 else None}))
             for i in range(500)]
    grouped = SegmentPanes(SPEC, defs, max_values=6)
    grouped.add_panes(group_pings(SPEC, pings, 3))
    fast = SegmentPanes(SPEC, defs, max_values=6)
    for i in range(0, 500, 70):  # a few batches
        by_pane: dict = {}
        for d, t, on, v in pings[i:i + 70]:
            by_pane.setdefault(SPEC.bucket_of(t), []).append((d, on, v))
        for pane, items in by_pane.items():
            fast.add_pings(pane, items)
    assert fast.other_pings == grouped.other_pings and fast.other_pings[2] > 0
    assert fast.overflow == grouped.overflow
    assert set(fast.dirty) == set(grouped.dirty)
    for key in grouped.dirty:
        assert fast.row_counts(*key) == grouped.row_counts(*key)


def test_cold_panes_keep_their_bytes_and_thaw_when_needed() -> None:
    pings = [(f"d{i}", T + (i % 5) * 60 + 1, True, {"city": "HK", "lat": 22 + i / 500, "lng": 114})
             for i in range(200)]
    state, extract = panes_with(pings)
    before = {k: state.row_counts(*k) for k in state.dirty}
    assert state.freeze_closed(T + 180) == 0   # just changed: waits one call
    assert state.freeze_closed(T + 180) == 2   # pane T (rows T..T+120) in both definitions
    assert type(state.panes[0][T]) is bytes and type(state.panes[0][T + 60]) is dict
    snap = state.snapshot()
    assert snap["panes"][0][T] is state.panes[0][T]
    # Recounts thaw; nothing changed, so the next call freezes them again.
    assert {k: state.row_counts(*k) for k in before} == before
    assert type(state.panes[0][T]) is dict
    assert state.freeze_closed(T + 180) == 2
    # A late ping thaws and changes it; it stays thawed once, then freezes.
    state.add_pings(T, [("late", True, extract.of_object({"city": "HK"}))])
    assert state.row_counts(0, ("HK",), T) == (before[(0, ("HK",), T)][0] + 1,) * 2
    assert type(state.panes[1][T]) is bytes       # unlocated: the h3 pane was not needed
    assert state.freeze_closed(T + 180) == 0      # the changed city pane waits one call
    assert state.freeze_closed(T + 180) == 1
    restored = SegmentPanes.restore(SPEC, state.definitions, pickle.loads(pickle.dumps(state.snapshot())))
    assert all(type(t) is bytes for p in restored.panes for t in p.values())
    assert restored.row_counts(0, ("HK",), T) == state.row_counts(0, ("HK",), T)


# --- the fast paths (docs/segments.md "Cost") ----------------------------------


def test_dense_values_stay_open_in_their_pane_and_are_stored_encoded() -> None:
    """A value with many pings in one batch is kept as mutable sets while its pane
    is open; what is pickled (snapshot, frozen pane) is the encoded form, and the
    counts are those of the plain path (``group_pings`` + ``add_panes``)."""
    from presence.core.segment_panes import DENSE, settled

    defs = parse_segments("city")
    extract = ValueExtractor(defs)
    pings = [(f"d{i}", T + 1 + (i % 3) * 60, i % 5 != 0, extract.of_object({"city": "HK"}))
             for i in range(6 * DENSE)]
    fast = SegmentPanes(SPEC, defs)
    for at in range(0, len(pings), 3 * DENSE):  # two batches: the second updates in place
        by_pane: dict = {}
        for d, t, on, v in pings[at:at + 3 * DENSE]:
            by_pane.setdefault(SPEC.bucket_of(t), []).append((d, on, v))
        for pane, items in by_pane.items():
            fast.add_pings(pane, items)
    assert type(fast.panes[0][T][0]) is list  # open: [online set, available set]
    plain = SegmentPanes(SPEC, defs)
    plain.add_panes(group_pings(SPEC, pings, 1))
    assert fast.dirty == plain.dirty
    for key in plain.dirty:
        assert fast.row_counts(*key) == plain.row_counts(*key)
    # the same drivers again: nothing changes, nothing is dirty
    fast.take_partials()
    fast.add_pings(T, [(d, on, v) for d, t, on, v in pings if t < T + 60])
    assert not fast.dirty
    # stored encoded: no list or set reaches a pickle
    snap = fast.snapshot()
    table = pickle.loads(snap["panes"][0][T])
    assert table == settled(fast.panes[0][T]) and type(table[0]) in (int, bytes, tuple)
    restored = SegmentPanes.restore(SPEC, defs, pickle.loads(pickle.dumps(snap)))
    for key in plain.dirty:
        assert restored.row_counts(*key) == plain.row_counts(*key)
    fast.freeze_closed(T + 10_000)
    fast.freeze_closed(T + 10_000)
    assert all(type(t) is bytes for t in fast.panes[0].values())
    for key in plain.dirty:
        assert fast.row_counts(*key) == plain.row_counts(*key)


def test_dirty_rows_are_indexed_by_row_and_snapshots_of_either_layout_restore() -> None:
    defs = parse_segments("city;h3:8")
    extract = ValueExtractor(defs)
    state = SegmentPanes(SPEC, defs)
    for k, pane in enumerate((T, T + 60, T + 120)):
        state.add_pings(pane, [(f"d{k}", True, extract.of_object({"city": "HK", "lat": HK[0],
                                                                  "lng": HK[1]}))])
    assert state.first_dirty_row() == T
    partials = state.take_partials(T + 120)  # rows T and T + 60 ended
    assert {row for _, _, row in partials} == {T, T + 60}
    assert state.first_dirty_row() == T + 120
    assert all(row >= T + 120 for _, _, row in state.dirty)
    snap = state.snapshot()
    old_layout = {**snap, "dirty": tuple(state.dirty)}
    del old_layout["dirty_by_row"]  # as snapshots were written before the index
    for s in (snap, old_layout):
        again = SegmentPanes.restore(SPEC, defs, pickle.loads(pickle.dumps(s)))
        assert again.dirty == state.dirty
        assert again.take_partials() == SegmentPanes.restore(SPEC, defs, snap).take_partials()


@pytest.mark.parametrize("segments", [
    "city;city,vehicle_type;h3:8",
    "vehicle_type,h3:7,city;h3:9;city",
    "vehicle_type",
    "h3:0,vehicle_type;h3:15",
])
def test_generated_values_function_equals_the_reference(segments: str) -> None:
    extract = ValueExtractor(parse_segments(segments))
    cases = [
        ("Hong Kong", "van", *HK), (None, None, None, None), (7, "", True, 1),
        ("x" * 65, "v" * 33, math.nan, 3), ("a", "b", 91, 0), ("a", "b", 1e400, 0),
        ("a", "b", -90, 180), ("a", "b", 5, -180.0), ("a", "b", 5, 2**70), ("a", "b", "1", 2),
        ("a" * 64, "b" * 32, -33.9, 18.4), ("é", "b", 0, 0), ("a", None, False, 0.0),
    ]
    for case in cases:
        assert extract.values(*case) == extract._values(*case), case
