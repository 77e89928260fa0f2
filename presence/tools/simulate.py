"""A driver-ping simulator: realistic pings in the SPEC's input format.

:func:`generate` is pure and deterministic for a seed (no I/O, no clock):
it yields :class:`SimPing` values in the order they are to be sent. Drivers
log on and off, switch on and off duty, and ping every 20 to 40 seconds while
online. A fraction of the pings is sent late (1 to 10 minutes after its event
time, well inside the correction horizon) and a fraction is malformed,
covering the SPEC's rejection reasons. The formats vary as the SPEC allows:
``driver_id`` mostly an integer, sometimes the same id as a string;
``timestamp`` mostly epoch seconds, some epoch milliseconds, fractional
seconds and ISO-8601 strings; ``on_duty`` mostly 0/1, some true/false.

Valid pings also carry the optional segment fields of the SPEC: each driver
works in one of :data:`CITIES` (real city centres, shares of the fleet
roughly by city size) with one of :data:`VEHICLE_TYPES`, and its ``lat`` /
``lng`` move plausibly (:class:`Motion`): spells of driving at a speed of its
vehicle (10 to 50 km/h) on a wandering heading alternate with spells parked,
every position with a few metres of GPS noise, always within
:data:`CITY_RADIUS_KM` of the centre. A fraction of those pings
(``field_fault_fraction``) misses one of these fields or carries a bad one
(:data:`FIELD_FAULTS`: out-of-range coordinates, wrong types, an empty or
too long string), which the SPEC counts as ``unknown`` / unlocated, never as
invalid. These fields come from a random generator of their own, so the
global pings (drivers, times, duty, late and malformed ones) of a seed are
the same with or without them.

:func:`produce` is the thin Kafka part: it sends the pings keyed by driver id,
each driver always to the same partition, either as fast as Kafka takes them
or paced in real time.
"""

from __future__ import annotations

import heapq
import math
import random
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator, NamedTuple

import orjson

from presence.io.kafka import KafkaError, send

PING_INTERVAL = (20.0, 40.0)
"""Seconds between two pings of an online driver (uniform)."""
MEAN_ONLINE_S = 60 * 60.0
MEAN_OFFLINE_S = 30 * 60.0
MEAN_ON_DUTY_S = 15 * 60.0
MEAN_OFF_DUTY_S = 4 * 60.0
START_ONLINE_P = 2 / 3
LATE_DELAY = (60.0, 600.0)
"""How far behind a late ping is sent (seconds after its event time)."""

OK, LATE, BAD = "ok", "late", "bad"

CITIES: tuple[tuple[str, float, float, float], ...] = (
    # name, centre latitude, centre longitude, share of the fleet
    ("Jakarta", -6.2088, 106.8456, 0.14),
    ("Tokyo", 35.6762, 139.6503, 0.13),
    ("Bangkok", 13.7563, 100.5018, 0.12),
    ("Manila", 14.5995, 120.9842, 0.11),
    ("Ho Chi Minh City", 10.8231, 106.6297, 0.11),
    ("Seoul", 37.5665, 126.9780, 0.10),
    ("Hong Kong", 22.3193, 114.1694, 0.09),
    ("Singapore", 1.3521, 103.8198, 0.08),
    ("Kuala Lumpur", 3.1390, 101.6869, 0.07),
    ("Taipei", 25.0330, 121.5654, 0.05),
)
"""The simulated markets: real city centres (WGS84) and the share of drivers in each."""
VEHICLE_TYPES: tuple[tuple[str, float, tuple[float, float]], ...] = (
    # name, share of the fleet, driving speed range (km/h)
    ("car", 0.55, (15.0, 50.0)),
    ("motorbike", 0.30, (15.0, 50.0)),
    ("van", 0.10, (10.0, 45.0)),
    ("bicycle", 0.05, (10.0, 20.0)),
)
CITY_RADIUS_KM = 15.0
"""No simulated position is farther than this from its city's centre."""
START_RADIUS_KM = 5.0
"""Drivers start at a distance from the centre drawn from |N(0, this)| (dense downtown)."""
MEAN_DRIVING_S = 12 * 60.0
MEAN_PARKED_S = 8 * 60.0
DRIVING_P = MEAN_DRIVING_S / (MEAN_DRIVING_S + MEAN_PARKED_S)
GPS_NOISE_M = 8.0
"""Standard deviation of the GPS noise on each axis, metres."""
KM_PER_DEG_LAT = 110.574
KM_PER_DEG_LNG_EQUATOR = 111.320


class SimPing(NamedTuple):
    send_time: float
    """Simulated time at which the ping is sent (ordering key)."""
    event_time: float
    driver: int
    partition: int
    key: bytes
    value: bytes
    kind: str
    """``ok``, ``late`` (valid but sent minutes after its event time) or ``bad``."""
    reason: str | None = None
    """For ``bad`` pings: the SPEC reason the dataflow should give."""


@dataclass(frozen=True)
class SimConfig:
    drivers: int
    minutes: float
    start: float
    """Epoch seconds of the first simulated instant."""
    late_fraction: float = 0.0
    bad_fraction: float = 0.0
    partitions: int = 1
    seed: int = 0
    segment_fields: bool = True
    """Valid pings carry ``city``, ``vehicle_type``, ``lat`` and ``lng``."""
    field_fault_fraction: float = 0.03
    """Of those pings, the fraction missing one of these fields or carrying a bad one."""

    def __post_init__(self) -> None:
        if self.drivers < 1:
            raise ValueError("drivers must be at least 1")
        if not self.minutes > 0:
            raise ValueError("minutes must be positive")
        if not 0 <= self.late_fraction <= 1 or not 0 <= self.bad_fraction <= 1:
            raise ValueError("fractions must be between 0 and 1")
        if not 0 <= self.field_fault_fraction <= 1:
            raise ValueError("fractions must be between 0 and 1")
        if self.late_fraction + self.bad_fraction > 1:
            raise ValueError("late and bad fractions add up to more than 1")
        if self.partitions < 1:
            raise ValueError("partitions must be at least 1")

    @property
    def end(self) -> float:
        return self.start + self.minutes * 60.0


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of a driver's key: stable, so one driver stays on one partition."""
    return zlib.crc32(key) % partitions


def iso(epoch: float, offset: bool, millis: bool) -> str:
    moment = datetime.fromtimestamp(epoch, timezone.utc)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if millis:
        text += f".{int(moment.microsecond / 1000):03d}"
    return text + ("Z" if offset else "")


def encode_ping(rng: random.Random, driver: int, t: float, duty: bool) -> bytes:
    """One valid ping value, in one of the formats the SPEC accepts."""
    r = rng.random()
    if r < 0.86:
        stamp = str(int(t))
    elif r < 0.91:
        stamp = str(int(t * 1000))  # epoch milliseconds
    elif r < 0.95:
        stamp = f"{t:.3f}"
    elif r < 0.98:
        stamp = f'"{iso(t, True, False)}"'
    else:
        stamp = f'"{iso(t, False, True)}"'  # no offset = UTC
    ident = f'"{driver}"' if rng.random() < 0.1 else str(driver)
    if rng.random() < 0.1:
        on_duty = "true" if duty else "false"
    else:
        on_duty = "1" if duty else "0"
    return f'{{"driver_id":{ident},"timestamp":{stamp},"on_duty":{on_duty}}}'.encode()


def _fields(driver: int, t: float, duty: bool) -> dict:
    return {"driver_id": driver, "timestamp": int(t), "on_duty": int(duty)}


def _drop(name: str) -> Callable:
    def make(driver: int, t: float, duty: bool) -> bytes:
        obj = _fields(driver, t, duty)
        del obj[name]
        return orjson.dumps(obj)

    return make


def _with(name: str, value: object) -> Callable:
    def make(driver: int, t: float, duty: bool) -> bytes:
        obj = _fields(driver, t, duty)
        obj[name] = value
        return orjson.dumps(obj)

    return make


MALFORMED: tuple[tuple[str, Callable[[int, float, bool], bytes]], ...] = (
    ("invalid_json", lambda d, t, u: orjson.dumps(_fields(d, t, u))[:-7]),  # truncated
    ("invalid_json", lambda d, t, u: b"driver=%d ts=%d" % (d, int(t))),
    ("invalid_json", lambda d, t, u: orjson.dumps([d, int(t), int(u)])),
    ("invalid_json", lambda d, t, u: b"\xff\xfe\x00garbage"),
    ("missing_field", _drop("driver_id")),
    ("missing_field", _drop("timestamp")),
    ("missing_field", _drop("on_duty")),
    ("invalid_field", _with("on_duty", "yes")),
    ("invalid_field", _with("on_duty", 2)),
    ("invalid_field", _with("driver_id", -7)),
    ("invalid_field", _with("driver_id", True)),
    ("invalid_field", _with("timestamp", "yesterday")),
    ("invalid_field", _with("timestamp", 946_684_799)),  # before 2000
    ("too_large", _with("note", "x" * (65 * 1024))),
)
"""Malformed-ping makers and the reason the dataflow should give for each."""


def _without(*names: str) -> Callable[[dict], None]:
    def fault(fields: dict) -> None:
        for name in names:
            del fields[name]

    return fault


def _bad(name: str, value: object) -> Callable[[dict], None]:
    def fault(fields: dict) -> None:
        fields[name] = value

    return fault


FIELD_FAULTS: tuple[tuple[str, Callable[[dict], None]], ...] = (
    ("no city", _without("city")),
    ("no vehicle_type", _without("vehicle_type")),
    ("no location", _without("lat", "lng")),
    ("no lng", _without("lng")),
    ("lat out of range", _bad("lat", 200.0)),
    ("lng out of range", _bad("lng", -512.5)),
    ("lat as a string", _bad("lat", "22.3193")),
    ("lng null", _bad("lng", None)),
    ("lat a boolean", _bad("lat", True)),
    ("city a number", _bad("city", 42)),
    ("empty vehicle_type", _bad("vehicle_type", "")),
    ("city too long", _bad("city", "x" * 65)),
)
"""A missing or bad optional field (the ping stays valid: SPEC "Input"), by name."""


class Motion:
    """Where one driver is: a city, a vehicle type, and a position that moves.

    Positions are kilometres east (``x``) and north (``y``) of the city's
    centre. A driver alternates spells of driving (exponential, mean
    :data:`MEAN_DRIVING_S`) at a speed drawn for the spell from its vehicle's
    range, on a heading that wanders, and spells parked (mean
    :data:`MEAN_PARKED_S`). Reaching :data:`CITY_RADIUS_KM`, it turns back
    towards the centre. :meth:`at` moves it to a time and returns the
    reported ``(lat, lng)``: its position plus GPS noise, 6 decimals.
    Deterministic for the generator it is given.
    """

    __slots__ = ("city", "vehicle_type", "lat0", "lng0", "km_per_deg_lng", "speeds", "x", "y",
                 "heading", "speed_kmh", "driving", "spell_until", "t")

    def __init__(self, rng: random.Random, t: float) -> None:
        self.city, self.lat0, self.lng0, _ = rng.choices(CITIES, _CITY_WEIGHTS)[0]
        self.vehicle_type, _, self.speeds = rng.choices(VEHICLE_TYPES, _VEHICLE_WEIGHTS)[0]
        self.km_per_deg_lng = KM_PER_DEG_LNG_EQUATOR * math.cos(math.radians(self.lat0))
        r = min(abs(rng.gauss(0.0, START_RADIUS_KM)), CITY_RADIUS_KM * 0.95)
        a = rng.uniform(0.0, 2 * math.pi)
        self.x, self.y = r * math.cos(a), r * math.sin(a)
        self.heading = rng.uniform(0.0, 2 * math.pi)
        self.driving = rng.random() < DRIVING_P
        self.speed_kmh = rng.uniform(*self.speeds)
        self.spell_until = t + rng.expovariate(
            1 / (MEAN_DRIVING_S if self.driving else MEAN_PARKED_S))
        self.t = t

    def at(self, rng: random.Random, t: float) -> tuple[float, float]:
        while True:
            until = min(t, self.spell_until)
            if self.driving and until > self.t:
                self._drive(rng, until - self.t)
            self.t = max(self.t, until)
            if t < self.spell_until:
                break
            self.driving = not self.driving
            if self.driving:
                self.speed_kmh = rng.uniform(*self.speeds)
                self.heading += rng.uniform(-math.pi, math.pi)
            self.spell_until += rng.expovariate(
                1 / (MEAN_DRIVING_S if self.driving else MEAN_PARKED_S))
        noise = GPS_NOISE_M / 1000.0
        x = self.x + rng.gauss(0.0, noise)
        y = self.y + rng.gauss(0.0, noise)
        return (round(self.lat0 + y / KM_PER_DEG_LAT, 6),
                round(self.lng0 + x / self.km_per_deg_lng, 6))

    def _drive(self, rng: random.Random, seconds: float) -> None:
        self.heading += rng.gauss(0.0, 0.3)
        km = self.speed_kmh * seconds / 3600.0
        x = self.x + km * math.cos(self.heading)
        y = self.y + km * math.sin(self.heading)
        r = math.hypot(x, y)
        if r > CITY_RADIUS_KM:  # at the edge: stop there and head back towards the centre
            x, y = x * CITY_RADIUS_KM / r, y * CITY_RADIUS_KM / r
            self.heading = math.atan2(-y, -x) + rng.uniform(-0.6, 0.6)
        self.x, self.y = x, y

    def distance_km(self, lat: float, lng: float) -> float:
        """Distance of a reported position from the city's centre (equirectangular)."""
        return math.hypot((lng - self.lng0) * self.km_per_deg_lng,
                          (lat - self.lat0) * KM_PER_DEG_LAT)


_CITY_WEIGHTS = [c[3] for c in CITIES]
_VEHICLE_WEIGHTS = [v[1] for v in VEHICLE_TYPES]


def segment_fields(rng: random.Random, motion: Motion, t: float, fault_p: float) -> bytes:
    """The ``city``/``vehicle_type``/``lat``/``lng`` members of one ping (JSON text,
    no braces), one fault of :data:`FIELD_FAULTS` with probability ``fault_p``."""
    lat, lng = motion.at(rng, t)
    fields = {"city": motion.city, "vehicle_type": motion.vehicle_type, "lat": lat, "lng": lng}
    if rng.random() < fault_p:
        FIELD_FAULTS[int(rng.random() * len(FIELD_FAULTS))][1](fields)
    return orjson.dumps(fields)[1:-1]


def _with_fields(value: bytes, members: bytes) -> bytes:
    return value[:-1] + b"," + members + b"}" if members else value


@dataclass
class _Driver:
    __slots__ = ("ident", "key", "partition", "online", "duty", "session_end", "duty_until",
                 "motion")
    ident: int
    key: bytes
    partition: int
    online: bool
    duty: bool
    session_end: float
    duty_until: float
    motion: Motion | None


def generate(config: SimConfig) -> Iterator[SimPing]:
    """The pings of the simulation, in send order; deterministic for a seed."""
    rng = random.Random(config.seed)
    random_ = rng.random
    uniform = rng.uniform
    expo = rng.expovariate
    start, end = config.start, config.end
    late_p = config.late_fraction
    bad_p = late_p + config.bad_fraction
    low, high = PING_INTERVAL
    # The segment fields draw from a generator of their own: the global pings of a
    # seed stay what they are without them.
    geo = random.Random(f"{config.seed}/segments") if config.segment_fields else None
    fault_p = config.field_fault_fraction

    def encode(d: _Driver, t: float) -> bytes:
        value = encode_ping(rng, d.ident, t, d.duty)
        if d.motion is None:
            return value
        return _with_fields(value, segment_fields(geo, d.motion, t, fault_p))

    drivers: list[_Driver] = []
    due: list[tuple[float, int]] = []  # (next event time, driver index)
    for index in range(config.drivers):
        ident = index + 1
        key = str(ident).encode()
        d = _Driver(ident, key, partition_of(key, config.partitions), False, False, 0.0, 0.0,
                    Motion(geo, start) if geo is not None else None)
        drivers.append(d)
        if random_() < START_ONLINE_P:
            d.online = True
            d.session_end = start + expo(1 / MEAN_ONLINE_S)
            d.duty = random_() < MEAN_ON_DUTY_S / (MEAN_ON_DUTY_S + MEAN_OFF_DUTY_S)
            d.duty_until = start + expo(1 / (MEAN_ON_DUTY_S if d.duty else MEAN_OFF_DUTY_S))
            due.append((start + uniform(0, high), index))
        else:
            due.append((start + expo(1 / MEAN_OFFLINE_S), index))
    heapq.heapify(due)

    late: list[tuple[float, int, SimPing]] = []  # (send time, seq, ping)
    seq = 0
    heappop, heappush = heapq.heappop, heapq.heappush

    while due:
        t, index = due[0]
        if t >= end:
            break
        d = drivers[index]
        if not d.online:
            d.online = True
            d.session_end = t + expo(1 / MEAN_ONLINE_S)
            d.duty = random_() < 0.5
            d.duty_until = t + expo(1 / (MEAN_ON_DUTY_S if d.duty else MEAN_OFF_DUTY_S))
        elif t >= d.session_end:
            d.online = False
            heapq.heapreplace(due, (t + expo(1 / MEAN_OFFLINE_S), index))
            continue
        while t >= d.duty_until:
            d.duty = not d.duty
            d.duty_until += expo(1 / (MEAN_ON_DUTY_S if d.duty else MEAN_OFF_DUTY_S))
        heapq.heapreplace(due, (t + uniform(low, high), index))

        while late and late[0][0] <= t:
            yield heappop(late)[2]

        r = random_()
        if r >= bad_p:
            yield SimPing(t, t, d.ident, d.partition, d.key, encode(d, t), OK)
        elif r < late_p:
            ping = SimPing(t + uniform(*LATE_DELAY), t, d.ident, d.partition, d.key,
                           encode(d, t), LATE)
            seq += 1
            heappush(late, (ping.send_time, seq, ping))
        else:
            reason, make = MALFORMED[int(random_() * len(MALFORMED))]
            yield SimPing(t, t, d.ident, d.partition, d.key, make(d.ident, t, d.duty), BAD, reason)

    # Late pings due after the end go out at the end, oldest first.
    while late:
        _, _, ping = heappop(late)
        yield ping._replace(send_time=min(ping.send_time, end))


# ------------------------------------------------------------------ Kafka


@dataclass
class Summary:
    topic: str
    sent: int = 0
    late: int = 0
    malformed: int = 0
    failed: int = 0
    per_partition: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    first_event: float | None = None
    last_event: float | None = None
    interrupted: bool = False
    """Stopped by Ctrl-C: ``sent`` is what Kafka acknowledged, ``failed`` what it did not."""

    def line(self) -> str:
        rate = self.sent / self.seconds if self.seconds > 0 else 0.0
        parts = ", ".join(f"{p}: {n:,}" for p, n in sorted(self.per_partition.items()))
        span = ""
        if self.first_event is not None and self.last_event is not None:
            span = (f" | events {iso(self.first_event, True, False)}"
                    f" .. {iso(self.last_event, True, False)}")
        failed = f", {self.failed:,} FAILED" if self.failed else ""
        if self.interrupted:
            failed = f", {self.failed:,} not delivered"
        return (
            ("interrupted: " if self.interrupted else "")
            + f"sent {self.sent:,} pings to {self.topic} in {self.seconds:.1f} s "
            f"({rate:,.0f}/s): {self.late:,} late, {self.malformed:,} malformed{failed}"
            f" | per partition {parts or '-'}{span}"
        )


def producer_config(brokers: str, extra: dict | None = None) -> dict:
    config = {
        "bootstrap.servers": brokers,
        "linger.ms": 50,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "delivery.report.only.error": True,
        "message.timeout.ms": 60_000,
        "socket.connection.setup.timeout.ms": 5_000,
    }
    config.update(extra or {})
    return config


def produce(
    pings: Iterator[SimPing],
    topic: str,
    producer,
    start: float,
    fast: bool = True,
    rate: float | None = None,
    progress: Callable[[float, int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Summary:
    """Send ``pings`` with ``producer`` (a confluent-kafka Producer).

    ``fast``: as fast as Kafka takes them. Otherwise paced in real time: a
    ping is sent when the wall clock has advanced as far past the start of the
    run as its send time is past ``start`` (and, with ``rate``, no faster than
    ``rate`` pings per second). ``progress(simulated seconds done, sent)``
    is called every few thousand pings.

    Ctrl-C (KeyboardInterrupt) stops the sending: what is queued gets at most
    ``INTERRUPT_FLUSH_SECONDS`` seconds to be delivered, the rest is dropped and
    counted as not delivered, and the summary says so (``interrupted``).
    """
    summary = Summary(topic)
    failures: list[str] = []

    def on_error(err, msg) -> None:  # only errors are reported (delivery.report.only.error)
        if err is not None:
            summary.failed += 1
            if len(failures) < 3:
                failures.append(err.str())

    counts = summary.per_partition
    poll = producer.poll
    began = clock()
    first = last = None
    late = malformed = sent = 0
    min_gap = 1.0 / rate if rate else 0.0
    next_allowed = began
    mask = 0xFFF if fast else 0  # paced runs are slow: report every ping
    interrupted = False
    try:
        for ping in pings:
            if not fast:
                due = began + (ping.send_time - start)
                if rate:
                    due = max(due, next_allowed)
                    next_allowed = due + min_gap
                wait = due - clock()
                if wait > 0.002:
                    poll(0)
                    sleep(wait)
            send(producer, topic, ping.value, ping.key, ping.partition, on_delivery=on_error)
            sent += 1
            counts[ping.partition] = counts.get(ping.partition, 0) + 1
            kind = ping.kind
            if kind is LATE:
                late += 1
            elif kind is BAD:
                malformed += 1
            event = ping.event_time
            if first is None or event < first:
                first = event
            if last is None or event > last:
                last = event
            if not sent & mask:
                poll(0)
                if progress is not None:
                    progress(ping.send_time - start, sent)
        remaining = producer.flush(60)
    except KeyboardInterrupt:
        interrupted = True
        remaining = producer.flush(INTERRUPT_FLUSH_SECONDS)
        if remaining:
            producer.purge()  # the rest is dropped: reported as failed deliveries
            producer.flush(1)  # serves those reports
            remaining = len(producer)
    summary.failed += remaining
    summary.sent, summary.late, summary.malformed = sent - summary.failed, late, malformed
    summary.first_event, summary.last_event = first, last
    summary.seconds = clock() - began
    summary.interrupted = interrupted
    if summary.failed and not interrupted:
        why = "; ".join(dict.fromkeys(failures)) or "not delivered in time"
        raise KafkaError(f"{summary.failed:,} of {sent:,} pings were not delivered: {why}")
    return summary


INTERRUPT_FLUSH_SECONDS = 5.0
"""Seconds queued pings get to be delivered after Ctrl-C."""


def default_start(fast: bool, minutes: float, now: float | None = None) -> float:
    """Fast runs end at the current minute; real-time runs start now."""
    now = time.time() if now is None else now
    if fast:
        return math.floor(now / 60) * 60 - minutes * 60
    return now
