"""The benchmark workload: deterministic pings, a fast Kafka load, and the oracle.

:func:`generate` builds ``pings`` pings of ``drivers`` drivers (vectorised,
seeded, no clock): every driver pings every 20 to 40 s, ~80 % of pings are on
duty, a fraction (default 2 %) is sent 1 to 10 minutes after its event time.
Drivers are spread over the partitions with unequal weights (20/30/50 % by
default), so in a backlog the small partition is read "ahead" in event time
of the big one -- the case where a single event-time watermark loses data.

``timestamps="float"`` (the default) writes every ``timestamp`` as float
epoch seconds with three decimals. ``timestamps="mixed"`` mixes, in equal
shares chosen per ping, the shapes the SPEC accepts (:data:`SHAPES`): float
and integer epoch seconds, integer epoch milliseconds, and ISO-8601 strings
with ``Z``, with a ``+02:00`` offset and without offset (UTC). The event
times of integer-second pings are whole seconds, so every shape states its
instant exactly and the oracle counts the same instants.

:func:`oracle_rows` is an independent, vectorised version of
``tests/oracle.py``: it applies the SPEC's too-late rule per partition (in
each partition's send order) and counts distinct drivers per row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from presence.io.kafka import KafkaError, ensure_topic, send
from presence.io.kafka import delete_topic as simulate_delete_topic

START = 1_704_067_200.0
"""2024-01-01 00:00:00 UTC: event time of the first ping of a backlog workload."""
WEIGHTS = (0.2, 0.3, 0.5)
TIMESTAMPS = ("float", "mixed")
SHAPES = ("float_s", "int_s", "int_ms", "iso_z", "iso_offset", "iso_naive")
"""The timestamp shapes of a mixed workload, by their index in ``Workload.shapes``."""
_PLUS_2H_MS = 2 * 3600 * 1000


@dataclass
class Workload:
    """Per partition, in send (offset) order: driver ids, event times, duty, values.

    ``shapes`` (mixed workloads only): per partition, the index in
    :data:`SHAPES` of each ping's timestamp shape."""

    drivers: list[np.ndarray]
    times: list[np.ndarray]
    duty: list[np.ndarray]
    late: int
    shapes: list[np.ndarray] | None = None

    @property
    def pings(self) -> int:
        return sum(len(d) for d in self.drivers)

    def values(self, p: int) -> list[bytes]:
        if self.shapes is None:
            return [
                b'{"driver_id":%d,"timestamp":%.3f,"on_duty":%d}' % (d, t, u)
                for d, t, u in zip(self.drivers[p].tolist(), self.times[p].tolist(),
                                   self.duty[p].tolist())
            ]
        stamps = timestamp_texts(self.times[p], self.shapes[p])
        return [
            b'{"driver_id":%d,"timestamp":%s,"on_duty":%d}' % (d, s, u)
            for d, s, u in zip(self.drivers[p].tolist(), stamps, self.duty[p].tolist())
        ]


def timestamp_texts(times: np.ndarray, shapes: np.ndarray) -> list[bytes]:
    """The JSON text of each ``timestamp`` in its shape (vectorised where it counts)."""
    ms = np.round(times * 1000.0).astype(np.int64)
    iso_utc = np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms")
    iso_plus2 = np.datetime_as_string((ms + _PLUS_2H_MS).astype("datetime64[ms]"), unit="ms")
    out = []
    for t, m, shape, utc, plus2 in zip(times.tolist(), ms.tolist(), shapes.tolist(),
                                       iso_utc.tolist(), iso_plus2.tolist()):
        if shape == 0:
            out.append(b"%.3f" % t)
        elif shape == 1:
            out.append(b"%d" % (m // 1000))
        elif shape == 2:
            out.append(b"%d" % m)
        elif shape == 3:
            out.append(b'"%sZ"' % utc.encode())
        elif shape == 4:
            out.append(b'"%s+02:00"' % plus2.encode())
        else:
            out.append(b'"%s"' % utc.encode())
    return out


def partition_of(driver: np.ndarray, weights=WEIGHTS) -> np.ndarray:
    """Partition of each driver id: a stable hash cut by the weights."""
    h = (driver.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(1000)
    cuts = np.cumsum(np.array(weights) * 1000)
    return np.searchsorted(cuts, h.astype(np.float64), side="right").astype(np.int64)


def generate(
    pings: int,
    drivers: int,
    seed: int = 7,
    late_fraction: float = 0.02,
    start: float = START,
    weights=WEIGHTS,
    timestamps: str = "float",
) -> Workload:
    if timestamps not in TIMESTAMPS:
        raise ValueError(f"timestamps must be one of {TIMESTAMPS}, not {timestamps!r}")
    rng = np.random.default_rng(seed)
    rounds = -(-pings // drivers) + 2
    phase = rng.uniform(0.0, 30.0, drivers)
    gaps = rng.uniform(20.0, 40.0, (drivers, rounds))
    gaps[:, 0] = 0.0
    times = start + phase[:, None] + np.cumsum(gaps, axis=1)
    ids = np.repeat(np.arange(drivers, dtype=np.int64) + 1000, rounds)
    times = np.round(times.ravel(), 3)
    order = np.argsort(times, kind="stable")[:pings]
    ids, times = ids[order], times[order]
    shape = None
    if timestamps == "mixed":
        # Its own generator: the float workload stays what it always was.
        shape = np.random.default_rng(seed + 1).integers(0, len(SHAPES), pings)
        times = np.where(shape == 1, np.floor(times), times)  # integer seconds
    period = (times // 900).astype(np.int64)
    duty = ((ids * 7919 + period * 104729) % 10 < 8).astype(np.int64)
    late = rng.random(pings) < late_fraction
    send = times + np.where(late, rng.uniform(60.0, 600.0, pings), 0.0)
    parts = partition_of(ids, weights)
    out_d, out_t, out_u, out_s = [], [], [], []
    for p in range(len(weights)):
        idx = np.nonzero(parts == p)[0]
        idx = idx[np.argsort(send[idx], kind="stable")]
        out_d.append(ids[idx])
        out_t.append(times[idx])
        out_u.append(duty[idx])
        if shape is not None:
            out_s.append(shape[idx])
    return Workload(out_d, out_t, out_u, int(late.sum()), out_s if shape is not None else None)


def live_values(rng: np.random.Generator, n: int, drivers: int, now: float,
                late_fraction: float = 0.02) -> list[tuple[int, bytes]]:
    """``n`` pings stamped ``now`` (a few late by 1-5 min) as (partition, value)."""
    ids = rng.integers(1000, 1000 + drivers, n)
    late = rng.random(n) < late_fraction
    stamps = now - np.where(late, rng.uniform(60.0, 300.0, n), rng.uniform(0.0, 0.5, n))
    duty = rng.random(n) < 0.8
    parts = partition_of(ids)
    return [
        (p, b'{"driver_id":%d,"timestamp":%.3f,"on_duty":%d}' % (d, t, u))
        for p, d, t, u in zip(parts.tolist(), ids.tolist(), stamps.tolist(), duty.tolist())
    ]


def counted_mask(times: np.ndarray, lateness: float, horizon: float) -> np.ndarray:
    """SPEC too-late rule on one partition in offset order: True = counted."""
    if len(times) == 0:
        return np.zeros(0, dtype=bool)
    # greatest event time *before* each ping (too-late pings never raise it,
    # but a too-late ping is below the running max anyway, so the plain
    # running max is the same)
    before = np.maximum.accumulate(np.concatenate(([-np.inf], times[:-1])))
    return ~(times < before - lateness - horizon)


def oracle_rows(
    w: Workload, bucket: int = 60, window: int = 300, lateness: float = 30.0,
    horizon: float = 3600.0,
) -> tuple[dict[int, tuple[int, int]], int]:
    """({row bucket start: (online, available)}, too-late count)."""
    ds, ts, us = [], [], []
    too_late = 0
    for d, t, u in zip(w.drivers, w.times, w.duty):
        keep = counted_mask(t, lateness, horizon)
        too_late += int((~keep).sum())
        ds.append(d[keep])
        ts.append(t[keep])
        us.append(u[keep])
    d = np.concatenate(ds)
    t = np.concatenate(ts)
    u = np.concatenate(us).astype(bool)
    b = (np.floor(t / bucket) * bucket).astype(np.int64)
    pairs = np.unique(b * (1 << 24) + d)
    pairs_av = np.unique(b[u] * (1 << 24) + d[u])
    span = window // bucket

    def per_row(keys: np.ndarray) -> dict[int, int]:
        pb, pd = keys >> 24, keys & ((1 << 24) - 1)
        rows = np.concatenate([pb + k * bucket for k in range(span)])
        drv = np.tile(pd, span)
        uniq = np.unique(rows * (1 << 24) + drv) >> 24
        r, c = np.unique(uniq, return_counts=True)
        return dict(zip(r.tolist(), c.tolist()))

    online = per_row(pairs)
    available = per_row(pairs_av)
    return {r: (n, available.get(r, 0)) for r, n in online.items()}, too_late


def pair_count(w: Workload, bucket: int = 60) -> int:
    """Distinct (driver, bucket) pairs of the whole workload."""
    d = np.concatenate(w.drivers)
    t = np.concatenate(w.times)
    b = (np.floor(t / bucket) * bucket).astype(np.int64)
    return int(len(np.unique(b * (1 << 24) + d)))


# ---------------------------------------------------------------- Kafka

def producer_config(brokers: str) -> dict:
    return {
        "bootstrap.servers": brokers,
        "linger.ms": 50,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 2_000_000,
        "queue.buffering.max.kbytes": 2_000_000,
        "acks": "all",
        "enable.idempotence": True,
    }


def create_topic(brokers: str, name: str, partitions: int = 3) -> None:
    """A new topic, ready to load (the simulator's topic creation)."""
    count, created = ensure_topic(brokers, name, partitions)
    if not created or count != partitions:
        raise RuntimeError(f"topic {name} existed already")


def delete_topic(brokers: str, name: str) -> None:
    """Clean-up: a missing topic, or a failure to delete it, is not an error here."""
    try:
        simulate_delete_topic(brokers, name)
    except KafkaError:
        pass


def produce(brokers: str, topic: str, w: Workload) -> float:
    """Load the workload (keyed by driver id); returns seconds taken."""
    from confluent_kafka import Producer

    producer = Producer(producer_config(brokers))
    began = time.perf_counter()
    for p in range(len(w.drivers)):
        keys = [b"%d" % d for d in w.drivers[p].tolist()]
        for key, value in zip(keys, w.values(p)):
            send(producer, topic, value, key, partition=p, wait=0.2)
        producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} messages not delivered")
    return time.perf_counter() - began


def end_offsets(brokers: str, topic: str) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": brokers, "group.id": "bench-offsets"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in sorted(parts)]
    finally:
        c.close()
