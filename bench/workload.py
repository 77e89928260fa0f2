"""The benchmark workload: deterministic pings, a fast Kafka load, and the oracle.

:func:`generate` builds ``pings`` pings of ``drivers`` drivers (vectorised,
seeded, no clock): every driver pings every 20 to 40 s, ~80 % of pings are on
duty, a fraction (default 2 %) is sent 1 to 10 minutes after its event time.
Drivers are spread over the partitions with unequal weights (20/30/50 % by
default), so in a backlog the small partition is read "ahead" in event time
of the big one -- the case where a single event-time watermark loses data.

``cities=True`` adds the SPEC's optional segment fields to every valid
ping, with the simulator's model (``presence.tools.simulate``): each driver
works in one of its 10 cities (same shares) with one of its vehicle types,
about 60 % of drivers drive at their vehicle's speed (10-50 km/h) back and
forth along a 10 km stretch of a fixed heading, the others are parked, every
position with GPS noise and within 15 km of the centre; 3 % of pings miss a
field or carry a bad one (the simulator's ``FIELD_FAULTS``). Those fields
come from a generator of their own: drivers, times and duty are the same
with and without them. :func:`segment_oracle_rows` is the vectorised
``tests/segment_oracle.py`` for them.

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
import orjson

from presence.io.kafka import KafkaError, ensure_topic, send
from presence.io.kafka import delete_topic as simulate_delete_topic
from presence.tools import simulate as sim

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
    fields: list[dict[str, np.ndarray]] | None = None
    """``cities=True`` workloads: per partition, ``city`` and ``vehicle`` (indexes in
    :data:`CITY_NAMES` / :data:`VEHICLE_NAMES`), ``lat``, ``lng`` and ``fault``
    (-1, or the index in the simulator's ``FIELD_FAULTS``) of each ping, and ``send``,
    the time it is sent (its event time, or minutes later for a late one)."""

    @property
    def pings(self) -> int:
        return sum(len(d) for d in self.drivers)

    def values(self, p: int) -> list[bytes]:
        if self.fields is not None:
            return city_values(self.drivers[p], self.times[p], self.duty[p], self.fields[p])
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


def city_values(drivers: np.ndarray, times: np.ndarray, duty: np.ndarray,
                fields: dict[str, np.ndarray]) -> list[bytes]:
    """Float-timestamp pings with ``city``, ``vehicle_type``, ``lat``, ``lng`` (one
    of the simulator's field faults where ``fault`` >= 0)."""
    cities = [orjson.dumps(c) for c in CITY_NAMES]
    vehicles = [orjson.dumps(v) for v in VEHICLE_NAMES]
    out = []
    for d, t, u, c, v, lat, lng, fault in zip(
            drivers.tolist(), times.tolist(), duty.tolist(), fields["city"].tolist(),
            fields["vehicle"].tolist(), fields["lat"].tolist(), fields["lng"].tolist(),
            fields["fault"].tolist()):
        if fault < 0:
            out.append(b'{"driver_id":%d,"timestamp":%.3f,"on_duty":%d,"city":%s,'
                       b'"vehicle_type":%s,"lat":%.6f,"lng":%.6f}'
                       % (d, t, u, cities[c], vehicles[v], lat, lng))
        else:
            obj = {"driver_id": d, "timestamp": round(t, 3), "on_duty": u,
                   "city": CITY_NAMES[c], "vehicle_type": VEHICLE_NAMES[v],
                   "lat": round(lat, 6), "lng": round(lng, 6)}
            sim.FIELD_FAULTS[fault][1](obj)
            out.append(orjson.dumps(obj))
    return out


CITY_NAMES = tuple(c[0] for c in sim.CITIES)
VEHICLE_NAMES = tuple(v[0] for v in sim.VEHICLE_TYPES)
STRETCH_KM = 10.0
"""A driving driver goes back and forth along this many kilometres."""


def city_fields(ids: np.ndarray, times: np.ndarray, seed: int,
                fault_fraction: float = 0.03) -> dict[str, np.ndarray]:
    """Segment fields of each ping (``ids``: driver ids from 1000, ``times``: event times)."""
    rng = np.random.default_rng(seed + 2)  # its own: the global workload stays as it was
    n_drivers = int(ids.max()) - 999 if len(ids) else 0
    city = rng.choice(len(sim.CITIES), n_drivers, p=[c[3] for c in sim.CITIES])
    vehicle = rng.choice(len(sim.VEHICLE_TYPES), n_drivers, p=[v[1] for v in sim.VEHICLE_TYPES])
    low = np.array([v[2][0] for v in sim.VEHICLE_TYPES])[vehicle]
    high = np.array([v[2][1] for v in sim.VEHICLE_TYPES])[vehicle]
    driving = rng.random(n_drivers) < sim.DRIVING_P
    speed_km_s = np.where(driving, rng.uniform(low, high), 0.0) / 3600.0
    r0 = np.minimum(np.abs(rng.normal(0.0, sim.START_RADIUS_KM, n_drivers)),
                    sim.CITY_RADIUS_KM * 0.95)
    a0 = rng.uniform(0.0, 2 * np.pi, n_drivers)
    heading = rng.uniform(0.0, 2 * np.pi, n_drivers)
    phase = rng.uniform(0.0, 1.0, n_drivers)
    lat0 = np.array([c[1] for c in sim.CITIES])[city]
    lng0 = np.array([c[2] for c in sim.CITIES])[city]
    km_per_deg_lng = sim.KM_PER_DEG_LNG_EQUATOR * np.cos(np.radians(lat0))

    i = ids - 1000
    period = np.where(driving, 2 * STRETCH_KM / np.maximum(speed_km_s, 1e-9), 1.0)[i]
    u = (times / period + phase[i]) % 1.0
    along = np.where(u < 0.5, u, 1.0 - u) * 2 * STRETCH_KM * driving[i]  # a triangle wave
    x = r0[i] * np.cos(a0[i]) + along * np.cos(heading[i])
    y = r0[i] * np.sin(a0[i]) + along * np.sin(heading[i])
    r = np.hypot(x, y)
    scale = np.where(r > sim.CITY_RADIUS_KM, sim.CITY_RADIUS_KM / np.maximum(r, 1e-9), 1.0)
    noise = sim.GPS_NOISE_M / 1000.0
    x = x * scale + rng.normal(0.0, noise, len(ids))
    y = y * scale + rng.normal(0.0, noise, len(ids))
    fault = np.where(rng.random(len(ids)) < fault_fraction,
                     rng.integers(0, len(sim.FIELD_FAULTS), len(ids)), -1)
    return {"city": city[i], "vehicle": vehicle[i],
            "lat": np.round(lat0[i] + y / sim.KM_PER_DEG_LAT, 6),
            "lng": np.round(lng0[i] + x / km_per_deg_lng[i], 6), "fault": fault}


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
    cities: bool = False,
) -> Workload:
    if timestamps not in TIMESTAMPS:
        raise ValueError(f"timestamps must be one of {TIMESTAMPS}, not {timestamps!r}")
    if cities and timestamps != "float":
        raise ValueError("cities=True writes float timestamps only")
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
    fields = city_fields(ids, times, seed) if cities else None
    out_d, out_t, out_u, out_s, out_f = [], [], [], [], []
    for p in range(len(weights)):
        idx = np.nonzero(parts == p)[0]
        idx = idx[np.argsort(send[idx], kind="stable")]
        out_d.append(ids[idx])
        out_t.append(times[idx])
        out_u.append(duty[idx])
        if shape is not None:
            out_s.append(shape[idx])
        if fields is not None:
            out_f.append({**{k: v[idx] for k, v in fields.items()}, "send": send[idx]})
    return Workload(out_d, out_t, out_u, int(late.sum()), out_s if shape is not None else None,
                    out_f if fields is not None else None)


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


BENCH_SEGMENTS = ("city", "city,vehicle_type", "h3:8")
"""The segments of the bench's segment rows (``PRESENCE_SEGMENTS`` joined by ``;``)."""


def _fault_effects() -> np.ndarray:
    """Per field fault: (city unknown, vehicle_type unknown, unlocated), by the SPEC's
    rules applied here on their own (not presence's code)."""
    def text_ok(v, most):
        return type(v) is str and 1 <= len(v) <= most

    def number_ok(v):
        return type(v) in (int, float) and np.isfinite(v)

    out = []
    for _name, fault in sim.FIELD_FAULTS:
        obj = {"city": "Tokyo", "vehicle_type": "car", "lat": 35.0, "lng": 139.0}
        fault(obj)
        lat, lng = obj.get("lat"), obj.get("lng")
        located = (number_ok(lat) and number_ok(lng) and -90 <= lat <= 90
                   and -180 <= lng <= 180)
        out.append((not text_ok(obj.get("city"), 64), not text_ok(obj.get("vehicle_type"), 32),
                    not located))
    return np.array(out, dtype=bool)


def segment_oracle_rows(
    w: Workload, segments=BENCH_SEGMENTS, bucket: int = 60, window: int = 300,
    lateness: float = 30.0, horizon: float = 3600.0,
) -> dict[tuple[str, tuple, int], tuple[int, int]]:
    """``{(segment, key, row): (online, available)}`` as ``tests/segment_oracle.py``
    gives it (keys as the documents' values, the H3 cell as its hex string)."""
    import h3

    if w.fields is None:
        raise ValueError("not a cities=True workload")
    ds, ts, us, fs = [], [], [], []
    for p in range(len(w.drivers)):
        keep = counted_mask(w.times[p], lateness, horizon)
        ds.append(w.drivers[p][keep])
        ts.append(w.times[p][keep])
        us.append(w.duty[p][keep].astype(bool))
        fs.append({k: v[keep] for k, v in w.fields[p].items()})
    d, t, u = np.concatenate(ds), np.concatenate(ts), np.concatenate(us)
    f = {k: np.concatenate([x[k] for x in fs]) for k in fs[0] if k != "send"}
    effects = _fault_effects()
    faulty = f["fault"] >= 0
    fault = np.where(faulty, f["fault"], 0)
    unknown = len(CITY_NAMES)
    city = np.where(faulty & effects[fault, 0], unknown, f["city"])
    vehicle = np.where(faulty & effects[fault, 1], len(VEHICLE_NAMES), f["vehicle"])
    located = ~(faulty & effects[fault, 2])
    names = {"city": CITY_NAMES + ("unknown",), "vehicle_type": VEHICLE_NAMES + ("unknown",)}
    b = (np.floor(t / bucket) * bucket).astype(np.int64)
    base = int(b.min()) if len(b) else 0
    bi = (b - base) // bucket
    span = window // bucket
    out: dict = {}
    for segment in segments:
        dims = segment.split(",")
        columns, keep = [], np.ones(len(d), dtype=bool)
        cells = None
        for dim in dims:
            if dim == "city":
                columns.append(city)
            elif dim == "vehicle_type":
                columns.append(vehicle)
            else:
                res = int(dim.split(":")[1])
                cells = np.zeros(len(d), dtype=np.int64)
                for k in np.nonzero(located)[0].tolist():
                    cells[k] = h3.str_to_int(h3.latlng_to_cell(float(f["lat"][k]),
                                                               float(f["lng"][k]), res))
                columns.append(cells)
                keep &= located
        stacked = np.stack(columns, axis=1)[keep]
        uniq, code = np.unique(stacked, axis=0, return_inverse=True)
        code = code.reshape(-1).astype(np.int64)
        dd, bb, uu = d[keep], bi[keep], u[keep]

        def per_row(mask):
            keys = np.unique((code[mask] << 40) | (bb[mask] << 24) | dd[mask])
            rows = np.concatenate([(keys >> 24) + k for k in range(span)])  # code<<16 | row
            drv = np.tile(keys & ((1 << 24) - 1), span)
            pairs = np.unique((rows << 24) | drv) >> 24
            r, c = np.unique(pairs, return_counts=True)
            return dict(zip(r.tolist(), c.tolist()))

        online, available = per_row(np.ones(len(dd), dtype=bool)), per_row(uu)
        for key, n in online.items():
            value = uniq[key >> 16]
            label = tuple(names[dim][int(v)] if dim in names else h3.int_to_str(int(v))
                          for dim, v in zip(dims, value))
            row = base + (key & 0xFFFF) * bucket
            out[(segment, label, row)] = (n, available.get(key, 0))
    return out


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
