"""The ping simulator: a pure, deterministic generator, and the thin Kafka part."""

from __future__ import annotations

import collections
import itertools

import pytest

from presence.core.pings import Ping, Rejection, parse_ping
from presence.tools.simulate import (
    BAD, LATE, LATE_DELAY, MALFORMED, OK, PING_INTERVAL, SimConfig, default_start, generate,
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


@pytest.mark.parametrize("bad", [
    dict(drivers=0), dict(minutes=0), dict(late_fraction=1.5), dict(partitions=0),
    dict(late_fraction=0.6, bad_fraction=0.6),
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
