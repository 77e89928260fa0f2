"""The ping simulator: a pure, deterministic generator, and the thin Kafka part."""

from __future__ import annotations

import collections
import itertools
import math

import orjson

import pytest

from presence.core.pings import Ping, Rejection, parse_ping
from presence.tools.simulate import (
    BAD, CITIES, CITY_RADIUS_KM, FIELD_FAULTS, KM_PER_DEG_LAT, KM_PER_DEG_LNG_EQUATOR, LATE,
    LATE_DELAY, MALFORMED, OK, PING_INTERVAL, VEHICLE_TYPES, SimConfig, default_start, generate,
    partition_of, produce,
)
from tests.constants import T0

START = float(T0)
FAR_FUTURE = 4e9


def config(**kw) -> SimConfig:
    base = dict(drivers=300, minutes=20, start=START, late_fraction=0.03, bad_fraction=0.02,
                partitions=4, seed=11)
    base.update(kw)
    return SimConfig(**base)


@pytest.fixture(scope="module")
def pings():
    return list(generate(config()))


def test_same_seed_same_pings_other_seed_other_pings():
    a = list(generate(config(minutes=5)))
    b = list(generate(config(minutes=5)))
    c = list(generate(config(minutes=5, seed=12)))
    assert a == b
    assert [p.value for p in a] != [p.value for p in c]


def test_every_ping_parses_as_its_kind_says(pings):
    kinds = collections.Counter(p.kind for p in pings)
    assert kinds[OK] > 0 and kinds[LATE] > 0 and kinds[BAD] > 0
    for p in pings:
        parsed = parse_ping(p.value, FAR_FUTURE)
        if p.kind == BAD:
            assert isinstance(parsed, Rejection), p
            assert parsed.reason == p.reason, (p, parsed)
        else:
            assert type(parsed) is tuple, (p, parsed)
            parsed = Ping(*parsed)
            assert parsed.driver_id == str(p.driver)
            assert abs(parsed.time - p.event_time) < 1.0
            assert START <= parsed.time < START + 20 * 60 + 1


def test_fractions_are_about_as_asked(pings):
    kinds = collections.Counter(p.kind for p in pings)
    total = len(pings)
    assert 0.02 < kinds[LATE] / total < 0.04
    assert 0.01 < kinds[BAD] / total < 0.03
    clean = list(generate(config(minutes=5, late_fraction=0, bad_fraction=0)))
    assert {p.kind for p in clean} == {OK}


def test_malformed_pings_cover_the_spec_reasons():
    pings = generate(config(minutes=30, bad_fraction=0.3, late_fraction=0))
    reasons = {p.reason for p in pings if p.kind == BAD}
    assert reasons == {"invalid_json", "missing_field", "invalid_field", "too_large"}
    assert {reason for reason, _ in MALFORMED} == reasons


def test_formats_vary_as_the_spec_allows(pings):
    values = [p.value for p in pings if p.kind != BAD]
    assert any(b'"driver_id":"' in v for v in values)  # string ids
    assert any(b'"driver_id":1' in v or b'"driver_id":2' in v for v in values)  # integer ids
    assert any(b'"timestamp":"' in v and v.count(b"Z") for v in values)  # ISO with Z
    assert any(b'"on_duty":true' in v or b'"on_duty":false' in v for v in values)
    assert any(b'"on_duty":1' in v or b'"on_duty":0' in v for v in values)
    stamps = [Ping(*parse_ping(v, FAR_FUTURE)).time for v in values]
    assert any(s != int(s) for s in stamps)  # fractional seconds / milliseconds
    assert sum(b'"timestamp":15' in v and len(v.split(b'"timestamp":')[1].split(b",")[0]) == 13
               for v in values)  # epoch milliseconds


def test_sent_in_send_order_and_late_ones_are_minutes_behind(pings):
    assert all(a.send_time <= b.send_time for a, b in itertools.pairwise(pings))
    end = START + 20 * 60
    for p in pings:
        if p.kind == LATE:
            delay = p.send_time - p.event_time
            assert LATE_DELAY[0] <= delay <= LATE_DELAY[1] or p.send_time == end
        else:
            assert p.send_time == p.event_time
    # A late ping really arrives after pings with later event times.
    seen_max = float("-inf")
    behind = 0
    for p in pings:
        if p.kind == LATE and p.event_time < seen_max - 60:
            behind += 1
        seen_max = max(seen_max, p.event_time)
    assert behind > 0


def test_one_driver_one_key_one_partition(pings):
    where = {}
    for p in pings:
        assert p.key == str(p.driver).encode()
        assert p.partition == partition_of(p.key, 4)
        assert where.setdefault(p.driver, p.partition) == p.partition
    assert len(set(where.values())) == 4


def test_drivers_ping_every_20_to_40_s_and_log_on_and_off():
    pings = list(generate(config(drivers=200, minutes=120, late_fraction=0, bad_fraction=0)))
    times = collections.defaultdict(list)
    duty = collections.defaultdict(set)
    for p in pings:
        times[p.driver].append(p.event_time)
        duty[p.driver].add(Ping(*parse_ping(p.value, FAR_FUTURE)).on_duty)
    gaps = [b - a for ts in times.values() for a, b in itertools.pairwise(ts)]
    low, high = PING_INTERVAL
    assert min(gaps) >= low
    regular = sum(low <= g <= high for g in gaps)
    assert regular / len(gaps) > 0.95
    assert any(g > 5 * 60 for g in gaps)  # someone logged off and on again
    assert sum(len(d) == 2 for d in duty.values()) > 20  # duty switches
    online_per_minute = collections.defaultdict(set)
    for p in pings:
        online_per_minute[int(p.event_time // 60)].add(p.driver)
    counts = [len(v) for v in online_per_minute.values()]
    assert 0.4 * 200 < sum(counts) / len(counts) < 0.9 * 200  # most, not all, online


# ------------------------------------------------------------------ segment fields

SEGMENT_FIELDS = ("city", "vehicle_type", "lat", "lng")
CENTRES = {name: (lat, lng) for name, lat, lng, _share in CITIES}


def _objects(pings):
    """(ping, decoded object) of the valid pings."""
    return [(p, orjson.loads(p.value)) for p in pings if p.kind != BAD]


def _clean(obj) -> bool:
    """All four segment fields present and valid (SPEC "Input")."""
    from presence.core.segments import UNKNOWN, valid_location, valid_string

    return (valid_string(obj.get("city"), 64) != UNKNOWN
            and valid_string(obj.get("vehicle_type"), 32) != UNKNOWN
            and valid_location(obj.get("lat"), obj.get("lng")) is not None)


def _km(a, b) -> float:
    """Distance between two (lat, lng) positions, equirectangular (fine below 50 km)."""
    cos = math.cos(math.radians((a[0] + b[0]) / 2))
    return math.hypot((a[0] - b[0]) * KM_PER_DEG_LAT,
                      (a[1] - b[1]) * KM_PER_DEG_LNG_EQUATOR * cos)


@pytest.fixture(scope="module")
def city_pings():
    """An hour of 400 drivers, no late or malformed pings (positions in event order)."""
    return _objects(generate(config(drivers=400, minutes=60, late_fraction=0, bad_fraction=0)))


def test_drivers_have_a_real_city_and_a_vehicle_type(city_pings):
    shares = [c[3] for c in CITIES] + [v[1] for v in VEHICLE_TYPES]
    assert len(CITIES) == 10 and all(0 < x < 1 for x in shares)
    assert abs(sum(c[3] for c in CITIES) - 1) < 1e-9
    assert abs(sum(v[1] for v in VEHICLE_TYPES) - 1) < 1e-9
    assert CENTRES["Hong Kong"] == (22.3193, 114.1694) and CENTRES["Singapore"][0] == 1.3521
    clean = [(p, o) for p, o in city_pings if _clean(o)]
    # one city and one vehicle type per driver
    driver_city, driver_vehicle = {}, {}
    for p, o in clean:
        assert driver_city.setdefault(p.driver, o["city"]) == o["city"]
        assert driver_vehicle.setdefault(p.driver, o["vehicle_type"]) == o["vehicle_type"]
    assert set(driver_city.values()) == set(CENTRES)  # 400 drivers: every city
    vehicles = collections.Counter(driver_vehicle.values())
    assert set(vehicles) == {"car", "van", "motorbike", "bicycle"}
    assert vehicles["car"] > vehicles["motorbike"] > vehicles["van"] > 0
    assert 0.4 < vehicles["car"] / len(driver_vehicle) < 0.7


def test_positions_stay_near_the_centre_and_move_plausibly(city_pings):
    track = collections.defaultdict(list)
    for p, o in city_pings:
        if _clean(o):
            centre = CENTRES[o["city"]]
            position = (o["lat"], o["lng"])
            assert _km(centre, position) <= CITY_RADIUS_KM + 0.1, o
            track[p.driver].append((p.event_time, position))
    moved, parked, fastest = 0, 0, 0.0
    for points in track.values():
        for (t1, a), (t2, b) in itertools.pairwise(points):
            # never faster than 50 km/h, beyond the GPS noise (8 m a side)
            fastest = max(fastest, (_km(a, b) - 0.06) / (t2 - t1) * 3600)
        steps = [_km(a, b) for (_, a), (_, b) in itertools.pairwise(points)]
        parked += sum(s < 0.05 for s in steps) > 10  # several pings in place
        span = max(_km(points[0][1], q) for _, q in points)
        moved += span > 3  # drove several kilometres in the hour
    assert fastest <= 50
    assert moved > 0.2 * len(track) and parked > 0.2 * len(track)
    # driving speeds of 10-50 km/h are seen
    speeds = [_km(a, b) / (t2 - t1) * 3600 for points in track.values()
              for (t1, a), (t2, b) in itertools.pairwise(points) if t2 - t1 <= 40]
    assert sum(10 <= v <= 50 for v in speeds) > 0.3 * len(speeds)


def test_a_few_pings_miss_a_segment_field_or_carry_a_bad_one(city_pings):
    from presence.core.segments import UNKNOWN, ValueExtractor, parse_segments

    faulty = [o for _, o in city_pings if not _clean(o)]
    assert 0.015 < len(faulty) / len(city_pings) < 0.05
    extract = ValueExtractor(parse_segments("city;city,vehicle_type;h3:8"))
    seen = set()
    for o in faulty:
        city, both, cell = extract.of_object(o)
        # never a valid value where the field is missing or bad
        missing = {f for f in SEGMENT_FIELDS if f not in o}
        seen.add(frozenset(missing))
        if "city" in missing or not isinstance(o.get("city"), str) or len(o["city"]) > 64:
            assert city == (UNKNOWN,)
        if "lat" in missing or "lng" in missing or not isinstance(o.get("lat"), float):
            assert cell is None
    assert {frozenset(), frozenset({"city"}), frozenset({"lat", "lng"})} <= seen
    # bad values are JSON (no NaN): out-of-range numbers and wrong types
    many = _objects(generate(config(minutes=60, late_fraction=0, bad_fraction=0,
                                    field_fault_fraction=0.5)))
    faults = [o for _, o in many if not _clean(o)]
    assert any(o.get("lat") == 200.0 for o in faults)
    assert any(isinstance(o.get("lat"), str) for o in faults)
    assert any(o.get("vehicle_type") == "" for o in faults)
    assert len(FIELD_FAULTS) >= 10
    assert all(p.kind == OK for p, _ in many)  # still valid pings (SPEC: never invalid)
    for p, _ in many[:2000]:
        assert type(parse_ping(p.value, FAR_FUTURE)) is tuple


def test_segment_fields_leave_the_global_pings_as_they_were():
    """The fields draw from their own generator: the same seed gives the same global
    pings (drivers, times, duty, late and malformed ones) with or without them."""
    with_fields = list(generate(config(minutes=15)))
    without = list(generate(config(minutes=15, segment_fields=False)))
    assert [p[:4] + p[6:] for p in with_fields] == [p[:4] + p[6:] for p in without]
    for a, b in zip(with_fields, without):
        if a.kind == BAD:
            assert a.value == b.value
        else:
            stripped = {k: v for k, v in orjson.loads(a.value).items() if k not in SEGMENT_FIELDS}
            assert stripped == orjson.loads(b.value)
            assert parse_ping(a.value, FAR_FUTURE) == parse_ping(b.value, FAR_FUTURE)
    assert not any(b'"city"' in p.value for p in without)


def test_zones_are_many_and_sparse():
    """The demo's zone map: a few drivers per H3 cell at resolution 8, spread out."""
    from presence.core.segments import ValueExtractor, parse_segments

    extract = ValueExtractor(parse_segments("h3:8"))
    pings = _objects(generate(config(drivers=2000, minutes=2, late_fraction=0, bad_fraction=0)))
    drivers = collections.defaultdict(set)
    for p, o in pings:
        drivers[extract.of_object(o)[0]].add(p.driver)
    drivers.pop(None, None)
    sizes = sorted(len(d) for d in drivers.values())
    assert len(sizes) > 500  # cells with a driver in two minutes
    assert sizes[len(sizes) // 2] <= 3 and sizes[-1] < 30  # a few drivers each, denser downtown


@pytest.mark.parametrize("bad", [
    dict(drivers=0), dict(minutes=0), dict(late_fraction=1.5), dict(partitions=0),
    dict(late_fraction=0.6, bad_fraction=0.6), dict(field_fault_fraction=-0.1),
])
def test_config_is_checked(bad):
    with pytest.raises(ValueError):
        config(**bad)


def test_default_start():
    assert default_start(True, 30, now=1_514_781_030.5) == 1_514_781_000 - 1800
    assert default_start(False, 30, now=1_514_781_030.5) == 1_514_781_030.5


class FakeProducer:
    def __init__(self, full_every: int = 0):
        self.sent = []
        self.polls = 0
        self.full_every = full_every
        self.calls = 0

    def produce(self, topic, value, key, partition, on_delivery=None):
        self.calls += 1
        if self.full_every and self.calls % self.full_every == 0:
            raise BufferError("queue full")
        self.sent.append((topic, key, value, partition))

    def poll(self, timeout):
        self.polls += 1
        return 0

    def flush(self, timeout):
        return 0


def test_produce_counts_and_retries_when_the_queue_is_full():
    pings = list(generate(config(minutes=5)))
    producer = FakeProducer(full_every=97)
    summary = produce(iter(pings), "t", producer, START, fast=True)
    assert summary.sent == len(pings) == len(producer.sent)
    assert [s[2] for s in producer.sent] == [p.value for p in pings]
    assert summary.late == sum(p.kind == LATE for p in pings)
    assert summary.malformed == sum(p.kind == BAD for p in pings)
    assert summary.per_partition == dict(collections.Counter(p.partition for p in pings))
    line = summary.line()
    assert f"sent {len(pings):,} pings to t" in line and "late" in line and "per partition 0:" in line


def test_real_time_pacing_and_rate_cap():
    now = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    pings = list(generate(config(drivers=20, minutes=2, late_fraction=0, bad_fraction=0)))
    produce(iter(pings), "t", FakeProducer(), START, fast=False,
            clock=lambda: now[0], sleep=sleep)
    assert 100 < now[0] <= 120  # as long as the simulated span
    now[0] = 0.0
    produce(iter(pings), "t", FakeProducer(), START, fast=False, rate=1.0,
            clock=lambda: now[0], sleep=sleep)
    assert now[0] >= len(pings) - 1.5  # one a second at most


@pytest.mark.stack
def test_simulate_to_kafka_and_read_back(kafka_brokers, unique_name, tmp_path):  # noqa: F811
    from click.testing import CliRunner
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    from presence.tools.cli import cli

    topic = unique_name
    env = {"PRESENCE_KAFKA_BROKERS": kafka_brokers}
    start = default_start(True, 5)
    args = ["simulate", "--drivers", "100", "--minutes", "5", "--fast", "--seed", "3",
            "--start", str(int(start)),
            "--partitions", "3", "--topic", topic, "--late-fraction", "0.05",
            "--bad-fraction", "0.05", "--no-progress"]
    try:
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 0, result.output + result.stderr
        expected = list(generate(SimConfig(drivers=100, minutes=5, start=start,
                                           late_fraction=0.05, bad_fraction=0.05,
                                           partitions=3, seed=3)))
        line = result.stdout.strip().splitlines()[-1]
        assert line.startswith(f"sent {len(expected):,} pings to {topic}")
        consumer = Consumer({"bootstrap.servers": kafka_brokers, "group.id": topic,
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        try:
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in range(3)}
            assert sum(ends.values()) == len(expected)
            counts = collections.Counter(p.partition for p in expected)
            assert ends == dict(counts)
            assert f"per partition 0: {counts[0]:,}, 1: {counts[1]:,}, 2: {counts[2]:,}" in line
            consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
            got = []
            while len(got) < len(expected):
                batch = consumer.consume(1000, timeout=5)
                assert batch, "timed out reading the pings back"
                got.extend(m for m in batch if m.error() is None)
            for msg in got:
                assert partition_of(msg.key(), 3) == msg.partition()
            assert sorted(m.value() for m in got) == sorted(p.value for p in expected)
        finally:
            consumer.close()
        # Again into the existing topic: appended, same partitions.
        again = CliRunner().invoke(cli, args, env=env)
        assert again.exit_code == 0, again.output
    finally:
        AdminClient({"bootstrap.servers": kafka_brokers}).delete_topics([topic])
