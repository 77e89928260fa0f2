"""Property: segment panes give exactly the oracle's segment rows.

Random pings with random optional fields (missing, invalid, bad lat/lng,
many cities and cells), over a few driver shards, added in random order and
batches with duplicates, with partial reports along the way, snapshots
(pickled, as bytewax does) and crashes that replay from the last snapshot,
cold panes (``freeze_closed``) that later pings thaw, and clean-up
(``drop_before``) followed by pings only newer than the cut.
"""

from __future__ import annotations

import pickle

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence.core.model import shard_of
from presence.core.segment_panes import SegmentPanes, group_pings
from presence.core.segments import ValueExtractor, parse_segments
from presence.core.windows import WindowSpec
from tests.constants import T0
from tests.segment_oracle import SP, segment_oracle

BASE = float(T0)
SPEC = WindowSpec(bucket_s=60, window_s=180, lateness_s=10, horizon_s=300, idle_s=10, shards=3)

SEGMENTS = st.sampled_from([
    "city;city,vehicle_type;h3:8",
    "h3:9;vehicle_type",
    "vehicle_type,h3:7,city;h3:0;city",
])
CENTRES = [(22.30, 114.17), (51.50, -0.12), (-33.87, 151.21), (89.99, 179.99), (0.0, 0.0)]
CITY = st.sampled_from(
    ["Hong Kong", "London", "Sydney", "other", "unknown", "", "x" * 64, "y" * 65, 3, None, True]
)
VEHICLE = st.sampled_from(["van", "car", "bike", "", "z" * 32, "z" * 33, 1.5, ["van"]])
BAD_COORD = st.sampled_from(
    [None, "22.3", True, float("nan"), float("inf"), 91, -90.0001, 181, -180.5, [1], {}]
)


@st.composite
def extras(draw) -> tuple:
    out = []
    if draw(st.booleans()):
        out.append(("city", draw(CITY)))
    if draw(st.booleans()):
        out.append(("vehicle_type", draw(VEHICLE)))
    where = draw(st.sampled_from(["near", "near", "near", "bad_lat", "bad_lng", "missing_lng", "none"]))
    lat, lng = draw(st.sampled_from(CENTRES))
    lat = max(-90.0, min(90.0, lat + draw(st.floats(-0.05, 0.05))))
    lng = max(-180.0, min(180.0, lng + draw(st.floats(-0.05, 0.05))))
    if draw(st.booleans()):
        lat, lng = round(lat), round(lng)  # ints are numbers too
    if where == "near":
        out += [("lat", lat), ("lng", lng)]
    elif where == "bad_lat":
        out += [("lat", draw(BAD_COORD)), ("lng", lng)]
    elif where == "bad_lng":
        out += [("lat", lat), ("lng", draw(BAD_COORD))]
    elif where == "missing_lng":
        out += [("lat", lat)]
    return tuple(out)


@st.composite
def pings(draw, start: float = BASE, span: int = 900, most: int = 80) -> list[SP]:
    drivers = draw(st.integers(1, 12))
    out = []
    for _ in range(draw(st.integers(0, most))):
        out.append(SP(draw(st.sampled_from([1, 2, "3", "x-4", 5, 6, 7, 8, 9, 10, 11, 12][:drivers])),
                      start + draw(st.integers(0, span)) + draw(st.sampled_from([0, 0.5])),
                      draw(st.booleans()), draw(extras())))
    return out


class Shards:
    """A few shards' segment panes and what they reported (latest partial per shard)."""

    def __init__(self, definitions, fast: bool = False) -> None:
        self.definitions = definitions
        self.fast = fast
        """Feed :meth:`SegmentPanes.add_pings` instead of ``group_pings`` + ``add_panes``."""
        self.extract = ValueExtractor(definitions)
        self.shards = [SegmentPanes(SPEC, definitions) for _ in range(SPEC.shards)]
        self.reported: dict[tuple, tuple[int, int, bool]] = {}

    def add(self, batch: list[SP]) -> None:
        per_shard: list[list] = [[] for _ in self.shards]
        for p in batch:
            driver = str(p.driver)
            per_shard[shard_of(driver, SPEC.shards)].append(
                (driver, p.time, p.on_duty, self.extract.of_object(p.obj())))
        for shard, items in zip(self.shards, per_shard):
            if self.fast:
                by_pane: dict[int, list] = {}
                for driver, time, on_duty, values in items:
                    by_pane.setdefault(SPEC.bucket_of(time), []).append((driver, on_duty, values))
                for pane, pings in by_pane.items():
                    shard.add_pings(pane, pings)
            else:
                shard.add_panes(group_pings(SPEC, items, len(self.definitions)))

    def report(self, watermark: float | None) -> None:
        for s, shard in enumerate(self.shards):
            for key, partial in shard.take_partials(watermark).items():
                self.reported[(s,) + key] = partial

    def snapshot(self) -> bytes:
        return pickle.dumps(([s.snapshot() for s in self.shards], dict(self.reported)))

    def restore(self, blob: bytes) -> None:
        snaps, _ = pickle.loads(blob)
        self.shards = [SegmentPanes.restore(SPEC, self.definitions, s) for s in snaps]

    def rows(self) -> dict[tuple[str, tuple, int], tuple[int, int]]:
        out: dict = {}
        for (s, number, value, row), (online, available, overflow) in self.reported.items():
            assert not overflow
            assert available <= online
            d = self.definitions[number]
            key = (d.name, tuple(d.key(value).values()), row)
            o, a = out.get(key, (0, 0))
            out[key] = (o + online, a + available)
        return {k: v for k, v in out.items() if v[0]}


def feed(shards: Shards, stream: list[SP], data) -> None:
    """Random batches, partial reports, snapshots and crashes (replay since the snapshot)."""
    blob, since = shards.snapshot(), 0
    i = 0
    while i < len(stream):
        size = data.draw(st.integers(1, 15))
        shards.add(stream[i:i + size])
        i += size
        action = data.draw(st.sampled_from(["go"] * 5 + ["report", "freeze", "snapshot", "crash"]))
        if action == "report":
            shards.report(data.draw(st.sampled_from([BASE + 300, BASE + 600, BASE + 2000, None])))
        elif action == "freeze":  # cold panes: later pings and recounts thaw them
            for shard in shards.shards:
                shard.freeze_closed(data.draw(st.sampled_from([BASE + 300, BASE + 900, BASE + 3000])))
        elif action == "snapshot":
            blob, since = shards.snapshot(), i
        elif action == "crash":
            shards.restore(blob)
            i = since  # at least once: everything after the snapshot comes again


def shuffled_with_duplicates(data, items: list[SP]) -> list[SP]:
    stream = items + data.draw(st.lists(st.sampled_from(items), max_size=10) if items else st.just([]))
    return data.draw(st.permutations(stream))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_segment_rows_equal_oracle(data) -> None:
    text = data.draw(SEGMENTS)
    definitions = parse_segments(text)
    items = data.draw(pings())
    shards = Shards(definitions, data.draw(st.booleans()))
    feed(shards, shuffled_with_duplicates(data, items), data)
    shards.report(None)
    expected = segment_oracle(items, [d.name for d in definitions], SPEC.bucket_s, SPEC.window_s)
    assert shards.rows() == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_drop_before_then_newer_pings_equal_oracle(data) -> None:
    """Clean-up forgets old panes and values; rows of newer pings stay exact."""
    definitions = parse_segments(data.draw(SEGMENTS))
    cut = BASE + 600
    old = data.draw(pings(BASE, 599))
    new = data.draw(pings(cut + SPEC.window_s, 600))
    shards = Shards(definitions, data.draw(st.booleans()))
    feed(shards, shuffled_with_duplicates(data, old), data)
    shards.report(None)
    for shard in shards.shards:
        shard.drop_before(cut)
        assert all(p >= cut for panes in shard.panes for p in panes)
        # Values only in dropped panes are forgotten.
        for number, panes in enumerate(shard.panes):
            live = {shard.values[number][c] for p in list(panes) for c in shard._table(number, p)}
            assert set(shard.codes[number]) == live
    if data.draw(st.booleans()):
        shards.restore(shards.snapshot())
    feed(shards, shuffled_with_duplicates(data, new), data)
    shards.report(None)
    expected = segment_oracle(old + new, [d.name for d in definitions], SPEC.bucket_s, SPEC.window_s)
    assert shards.rows() == expected
