"""One Kafka partition as read so far: the first room a ping passes through.

:class:`PartitionReader` turns a batch of raw messages (anything with
``offset()`` and ``value()``, as confluent-kafka's ``Message``) into a
:class:`PartitionBatch`:

- each value is parsed (:func:`presence.core.pings.parse_ping`); a rejected one
  becomes a :class:`DeadLetter`. Whatever a value holds, it gives exactly
  one outcome (a valid ping or one dead letter), never an exception;
- ``future_timestamp`` is judged against each message's own Kafka timestamp
  (the wall clock at read only for a message without one), so a replay
  judges every message as the first read did;
- a valid ping older than this partition's own watermark minus the
  correction horizon is *too late*, and one older than the watermark alone
  is *late* (SPEC "Time, lateness and corrections"), judged here because
  only here is the partition's order known; so every ping total is the same
  whatever the workers, processes, batching or crashes;
- the other pings are grouped per driver shard and bucket into sets of
  driver ids, so the pane step receives a few sets per batch instead of
  thousands of pings;
- with segments (``spec.segments``), each counted ping's segment values are
  computed here too (:class:`presence.core.segments.ValueExtractor`, from the
  optional fields decoded on the fast path or read on the checked one) and
  sent per shard and bucket as ``(driver, on_duty, values)``; counted pings
  without a valid location are counted (:attr:`PartitionReader.unlocated`)
  when a definition needs one. Without segments none of this runs.

The per-ping loop has an optional compiled twin (``native/src/lib.rs``,
``presence._native``, built by ``make install`` when cargo is there; chosen by
PRESENCE_READER, :func:`reader_in_use`): :meth:`PartitionReader._read_native`
gives it a batch, and it hands back to this module's code, by index and in
offset order, every message it is not sure of and every too-late ping, so
the outcome is :meth:`PartitionReader._read_python`'s
(``tests/test_native_reader.py``). With segments it also reads the optional
fields it is sure of, values them by :class:`ValueExtractor`'s rules itself
(H3 through h3-py's own C function, :func:`native_cell_of`) and sends each
shard and bucket the same pings as packed records
(:mod:`presence.core.segment_records`); a ping it hands back is valued by
:class:`ValueExtractor`.

Pure logic, no I/O: the Kafka shell in :mod:`presence.io.source` feeds it.
Its :meth:`PartitionReader.snapshot` is the partition's recovery state.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from operator import itemgetter
from typing import Protocol, Sequence

from presence.core.fingerprint import STATE_FORMAT
from presence.core.model import (  # noqa: F401  (re-exported: the partition's types)
    ENDED, IDLE, LIVE, NO_EVENT, BucketSets, DeadLetter, PartitionBatch, PartitionMark,
    PartitionState, ShardPart, partition_key, shard_key, shard_of,
)
from presence.core.timestamps import usual_iso_instant
from presence.core.pings import (
    EPOCH_MS_THRESHOLD, MAX_VALUE_BYTES, MIN_EVENT_TIME, SHALLOW_BYTES, Rejection,
    decode_segment_shape, decode_shape, format_instant, parse_ping, parse_ping_checked,
    ping_object, raw_text, too_deep,
)
from presence.core.segment_records import dimension_kinds, record_values_of
from presence.core.segments import CITY, VEHICLE_TYPE, ValueExtractor
from presence.core.segments import _fast_latlng_to_cell as cell_of
from presence.core.windows import WindowSpec

try:  # the optional compiled reader (native/, built by `make install` when cargo is there)
    from presence import _native
except ImportError:  # not built: the pure-Python reader
    _native = None
else:
    if getattr(_native, "ABI", None) != 6:  # a stale build: not trusted
        _native = None

_RECORD_DIMENSION = {CITY: 0, VEHICLE_TYPE: 1}
"""The compiled reader's numbers of the string dimensions (``h3:R`` is 16 + R)."""

READERS = ("auto", "python", "native")
"""PRESENCE_READER: ``auto`` (the compiled reader when built), ``python``, ``native``."""
DEFAULT_READER = "auto"
"""What a :class:`PartitionReader` made without ``reader=`` uses (tests switch it)."""
_NATIVE_MAX_TIME = 1e15
"""The compiled reader takes a batch whose future bound is below this (its bucket
numbers stay exact integers); a batch beyond it (odd Kafka timestamps) is read in Python."""
_NATIVE_DRIVERS_MAX = 500_000
"""Driver ids the compiled reader keeps between batches (then emptied, as the shard cache)."""


def native_reader_built() -> bool:
    """True if the compiled reader (``presence._native``) is importable."""
    return _native is not None


@functools.cache
def native_cell_of():
    """What the compiled reader calls for H3 cells: the C function behind h3-py's
    ``latlng_to_cell`` (its Cython capsule: the same code, no Python call) when
    it is there and agrees with the Python call, else that Python function."""
    try:
        from h3._cy import latlng

        capsule = latlng.__pyx_capi__["latlng_to_cell"]
        if all(_native.h3_cell_py(capsule, lat, lng, r) == cell_of(lat, lng, r)
               for lat, lng, r in ((22.3, 114.17, 8), (-33.9, 151.2, 15), (0.0, 0.0, 0))):
            return capsule
    except Exception:  # noqa: BLE001 - another h3 layout: the Python function
        pass
    return cell_of


def reader_in_use(setting: str, spec: WindowSpec | None = None) -> str:
    """``native`` or ``python``: which reader ``PRESENCE_READER=setting`` runs.

    ``spec`` is accepted for the callers' sake: segments or not, both readers
    give the same outcome. ``native`` when it is not built raises ``ValueError``.
    """
    if setting not in READERS:
        raise ValueError("must be auto, python or native")
    if setting == "native" and _native is None:
        raise ValueError("native: the compiled reader is not built (run `make install` "
                         "with cargo on PATH), use auto or python")
    if setting == "python" or _native is None:
        return "python"
    return "native"


TIMESTAMP_NOT_AVAILABLE = 0
"""confluent-kafka's timestamp type of a message without a timestamp (then ``-1`` ms)."""
TIMESTAMP_CREATE_TIME = 1


class Message(Protocol):
    """What the reader needs of a Kafka message (confluent-kafka's ``Message`` has it)."""

    def offset(self) -> int: ...

    def value(self) -> bytes | None: ...

    def timestamp(self) -> tuple[int, int]:
        """``(type, epoch ms)``; type 0 (``TIMESTAMP_NOT_AVAILABLE``) means none."""


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A message held in memory (tests, :mod:`presence.io.memory`).

    ``stamp_ms`` is its Kafka timestamp (create time), ``None`` for none.
    """

    at: int
    data: bytes | None
    stamp_ms: int | None = None

    def offset(self) -> int:
        return self.at

    def value(self) -> bytes | None:
        return self.data

    def timestamp(self) -> tuple[int, int]:
        if self.stamp_ms is None:
            return (TIMESTAMP_NOT_AVAILABLE, -1)
        return (TIMESTAMP_CREATE_TIME, self.stamp_ms)


_millis = itemgetter(1)


def message_time(message: Message, now: float) -> float:
    """The message's Kafka timestamp in epoch seconds; ``now`` if it has none."""
    kind, millis = message.timestamp()
    return millis / 1000.0 if kind != TIMESTAMP_NOT_AVAILABLE else now


def earliest_message_time(messages: Sequence[Message], now: float) -> float:
    """The least :func:`message_time` of a non-empty batch (one pass in C).

    ``timestamp()`` costs more than the rest of a valid ping's checks in
    confluent-kafka (it builds a tuple each call); called through the class's
    method (not ``methodcaller``) it costs half as much.
    """
    try:
        least = min(map(_millis, map(type(messages[0]).timestamp, messages)))
    except TypeError:  # messages of several classes
        least = min(m.timestamp()[1] for m in messages)
    if least >= 0:
        return least / 1000.0
    # librdkafka gives -1 ms to a message without a timestamp: judge it by ``now``.
    return min(message_time(m, now) for m in messages)


class PartitionReader:
    """Parse, judge and group the pings of one Kafka partition, in order.

    ``fingerprint`` (what the state was made from: topic, settings...) is
    kept in :meth:`snapshot`; the one a snapshot was made with is
    :attr:`resumed_fingerprint` (``None`` for a snapshot older than
    :data:`STATE_FORMAT` 2), for start-up to compare.
    """

    def __init__(
        self,
        topic: str,
        partition: int,
        partitions: int,
        spec: WindowSpec,
        now: float,
        resume: dict | None = None,
        fingerprint: dict | None = None,
        reader: str | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.partitions = partitions
        self.spec = spec
        self.fingerprint = fingerprint
        resume = resume or {}
        self.resumed_format: int | None = resume.get("format", 1) if resume else None
        self.resumed_fingerprint: dict | None = resume.get("fingerprint")
        self.next_offset: int | None = resume.get("next_offset")
        self.max_event: float = resume.get("max_event", NO_EVENT)
        self.valid: int = resume.get("valid", 0)
        self.invalid: int = resume.get("invalid", 0)
        self.too_late: int = resume.get("too_late", 0)
        self.late: int = resume.get("late", 0)
        self.rejected: dict[str, int] = dict(resume.get("rejected", {}))
        self.gaps: list[tuple[int, int]] = [tuple(g) for g in resume.get("gaps", ())]
        self.unlocated: int = resume.get("unlocated", 0)
        self.read_at = now
        self._shard_cache: dict[str, int] = {}
        self.extractor = ValueExtractor(spec.segments) if spec.segments else None
        self.reader = reader_in_use(reader or DEFAULT_READER, spec)
        """``native`` (the compiled loop, :meth:`_read_native`) or ``python``."""
        self._native_drivers = None
        """The compiled reader's driver texts and CRC-32s (``_native.Drivers``)."""
        self._record_kinds = None
        self._record_values = None
        if self.extractor is not None and self.reader == "native":
            # The compiled reader computes the segment values itself and sends
            # them as packed records (presence.core.segment_records).
            self._record_kinds = [
                [_RECORD_DIMENSION[d] if d in _RECORD_DIMENSION else 16 + int(d[3:])
                 for d in definition.dimensions]
                for definition in spec.segments
            ]
            self._record_values = record_values_of(
                self.extractor, dimension_kinds(spec.segments))

    def snapshot(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "fingerprint": self.fingerprint,
            "next_offset": self.next_offset,
            "max_event": self.max_event,
            "valid": self.valid,
            "invalid": self.invalid,
            "too_late": self.too_late,
            "late": self.late,
            "rejected": dict(self.rejected),
            "gaps": list(self.gaps),
            "unlocated": self.unlocated,
        }

    def _judge(self, message: Message, value: bytes | None, latest_allowed: float,
               now: float) -> tuple | Rejection:
        """The whole judgement of one value; never raises."""
        try:
            ping = parse_ping(value, latest_allowed)
            if type(ping) is not tuple and ping.reason == "future_timestamp":
                # Beyond the batch's bound: judged against its own Kafka timestamp.
                own = message_time(message, now) + self.spec.max_future_skew_s
                ping = parse_ping_checked(value, own)
        except Exception as exc:  # noqa: BLE001 - parse_ping does not raise; belt and braces
            ping = Rejection("invalid_json", f"could not be judged: {type(exc).__name__}")
        return ping

    @property
    def watermark(self) -> float:
        return self.max_event - self.spec.lateness_s

    def note_gap(self, start: int, end: int) -> None:
        """Offsets ``[start, end)`` were purged by retention before being read."""
        if end > start and (start, end) not in self.gaps:
            self.gaps.append((start, end))

    def mark(self, now: float, ended: bool = False) -> PartitionMark:
        if ended:
            state = ENDED
        elif now - self.read_at >= self.spec.idle_s:
            state = IDLE
        else:
            state = LIVE
        return PartitionMark(
            self.topic,
            self.partition,
            self.partitions,
            self.max_event,
            self.read_at,
            state,
            self.next_offset if self.next_offset is not None else 0,
            self.valid,
            self.invalid,
            self.too_late,
            tuple(self.gaps),
            self.late,
            tuple(sorted(self.rejected.items())),
            self.unlocated,
        )

    def _latest_allowed(self, messages: Sequence[Message], now: float) -> float:
        """A bound for the whole batch (its earliest Kafka timestamp): a ping
        within it is within its own; one beyond it is judged exactly, alone."""
        if not messages:
            return 0.0
        try:
            return earliest_message_time(messages, now) + self.spec.max_future_skew_s
        except Exception:  # noqa: BLE001 - odd timestamps: every ping judged on its own
            return NO_EVENT

    def _rejected(self, message: Message, value: bytes | None, rejection: Rejection,
                  now: float) -> DeadLetter:
        rejected = self.rejected
        rejected[rejection.reason] = rejected.get(rejection.reason, 0) + 1
        return DeadLetter(self.topic, self.partition, message.offset(), rejection.reason,
                          rejection.detail, raw_text(value), now)

    def _too_late(self, message: Message, value: bytes | None, time: float,
                  max_event: float, now: float) -> DeadLetter:
        return DeadLetter(
            self.topic, self.partition, message.offset(), "too_late",
            f"event time {format_instant(time)} is older than this "
            f"partition's watermark {format_instant(max_event - self.spec.lateness_s)} "
            "minus the correction horizon",
            raw_text(value), now,
        )

    def _count(self, messages: Sequence[Message], now: float, ended: bool, max_event: float,
               invalid: int, too_late: int, late: int) -> PartitionMark:
        """A batch's counts into the partition's; its mark."""
        if messages:
            self.next_offset = messages[-1].offset() + 1
        valid = len(messages) - invalid - too_late
        if valid:
            self.read_at = now
        self.max_event = max_event
        self.valid += valid
        self.invalid += invalid
        self.too_late += too_late
        self.late += late
        return self.mark(now, ended)

    def read(
        self, messages: Sequence[Message], now: float, ended: bool = False
    ) -> PartitionBatch:
        """Ingest messages in offset order (may be empty: a heartbeat).

        ``now`` (the wall clock) decides only what no replay depends on: the
        partition's idle state, a dead letter's ``receivedAt``, and the
        future check of a message that has no Kafka timestamp. With segments
        configured, each counted ping's segment values go with it.
        """
        if self.reader == "native":
            return self._read_native(messages, now, ended)
        return self._read_python(messages, now, ended)

    def _read_native(
        self, messages: Sequence[Message], now: float, ended: bool
    ) -> PartitionBatch:
        """:meth:`_read_python`'s outcome, the hot loop compiled (``native/src/lib.rs``).

        The compiled loop reads the values it is sure of; every other message
        comes back here, by index and in offset order, to :meth:`_judge` (a
        rejection's dead letter) and every too-late ping to :meth:`_too_late`,
        so dead letters keep their order and every outcome is the Python one.
        """
        spec = self.spec
        if type(messages) is not list:
            messages = list(messages)
        latest_allowed = self._latest_allowed(messages, now)
        if (not MIN_EVENT_TIME <= latest_allowed < _NATIVE_MAX_TIME
                or type(spec.bucket_s) is not int):
            # Every ping judged alone anyway, or times the compiled loop does not take.
            return self._read_python(messages, now, ended)
        dead: list[DeadLetter] = []
        invalid = 0
        extractor = self.extractor
        kinds = self._record_kinds

        def slow(index: int) -> tuple | None:
            nonlocal invalid
            message = messages[index]
            value = message.value()
            if extractor is not None:
                fast = self._fast_segment_ping(value, latest_allowed)
                if fast is not None:
                    return fast
            ping = self._judge(message, value, latest_allowed, now)
            if type(ping) is not tuple:
                invalid += 1
                dead.append(self._rejected(message, value, ping, now))
                return None
            if extractor is not None:
                get = ping_object(value).get
                return (*ping, (get("city"), get("vehicle_type"), get("lat"), get("lng")))
            return ping

        def too_late(index: int, time: float, max_event: float) -> None:
            message = messages[index]
            dead.append(self._too_late(message, message.value(), time, max_event, now))

        drivers = self._native_drivers
        if drivers is None:
            drivers = self._native_drivers = _native.Drivers()
        elif len(drivers) > _NATIVE_DRIVERS_MAX:
            drivers.clear()
        grouped, max_event, too_late_count, late, segments, unlocated = _native.read_batch(
            messages, latest_allowed, self.max_event, spec.lateness_s, spec.horizon_s,
            spec.shards, spec.bucket_s, slow, too_late, drivers,
            extractor is not None and extractor.located,
            kinds, self._record_values, None if kinds is None else native_cell_of(),
        )
        if extractor is not None:
            self.unlocated += unlocated
        mark = self._count(messages, now, ended, max_event, invalid, too_late_count, late)
        return PartitionBatch(mark, grouped, dead, segments)

    @staticmethod
    def _fast_segment_ping(value: bytes | None, latest_allowed: float) -> tuple | None:
        """With segments, the fast path of both readers for one value:
        ``(driver, time, on_duty, (city, vehicle_type, lat, lng))``, or None
        where the value is judged (then its optional fields come from
        :func:`ping_object`). Pings with the optional fields are often longer
        than SHALLOW_BYTES: such a value takes it once it is known to be shallow."""
        if (
            value is not None
            and (len(value) < SHALLOW_BYTES
                 or (len(value) <= MAX_VALUE_BYTES and not too_deep(value)))
            and value.isascii()
        ):
            try:
                shape = decode_segment_shape(value)
                driver = shape.driver_id
                if type(driver) is int:
                    driver = str(driver)
                time = shape.timestamp
                if type(time) is str:
                    time = usual_iso_instant(time)
                elif time >= EPOCH_MS_THRESHOLD:
                    time = time / 1000.0
                if MIN_EVENT_TIME <= time <= latest_allowed:
                    return (driver, time + 0.0, shape.on_duty == 1,
                            (shape.city, shape.vehicle_type, shape.lat, shape.lng))
            except Exception:  # noqa: BLE001 - anything unusual: judged
                pass
        return None

    def _read_python(
        self, messages: Sequence[Message], now: float, ended: bool
    ) -> PartitionBatch:
        """The pure-Python reader (the reference)."""
        spec = self.spec
        shards = spec.shards
        bucket = spec.bucket_s
        dead: list[DeadLetter] = []
        latest_allowed = self._latest_allowed(messages, now)
        max_event = self.max_event
        lateness, horizon = spec.lateness_s, spec.horizon_s
        late_before = max_event - lateness
        too_late_before = late_before - horizon
        cache = self._shard_cache
        if len(cache) > 500_000:
            cache.clear()
        invalid = too_late = late = unlocated = 0
        # Keyed by bucket number (a float, ``time // bucket``) in the loop;
        # turned into bucket starts once per batch below.
        by_number: list[dict] = [{} for _ in range(shards)]
        extractor = self.extractor
        if extractor is None:
            values_of = None
            located = False
        else:
            values_of = extractor.values
            located = extractor.located
            fast_segment_ping = self._fast_segment_ping
            seg_by_number: list[dict] = [{} for _ in range(shards)]

        for message in messages:
            value = message.value()
            # The fast path of presence.core.pings.parse_ping, inlined (the hot loop):
            # short ASCII values of the usual shape, within the batch's future bound.
            # With segments, the same path with the optional fields
            # (_fast_segment_ping, shared with the compiled reader's hand-backs).
            fast = False
            if values_of is not None:
                usual = fast_segment_ping(value, latest_allowed)
                if usual is not None:
                    driver, time, on_duty, fields = usual
                    fast = True
            elif value is not None and len(value) < SHALLOW_BYTES and value.isascii():
                try:
                    shape = decode_shape(value)
                    driver = shape.driver_id
                    if type(driver) is int:
                        driver = str(driver)
                    time = shape.timestamp
                    if type(time) is str:
                        time = usual_iso_instant(time)  # None: judged below
                    elif time >= EPOCH_MS_THRESHOLD:
                        time = time / 1000.0
                    if MIN_EVENT_TIME <= time <= latest_allowed:
                        time += 0.0
                        on_duty = shape.on_duty == 1
                        fast = True
                except Exception:  # noqa: BLE001 - anything unusual: judged below
                    pass
            if not fast:
                ping = self._judge(message, value, latest_allowed, now)
                if type(ping) is not tuple:
                    invalid += 1
                    dead.append(self._rejected(message, value, ping, now))
                    continue
                driver, time, on_duty = ping
            if time > max_event:
                max_event = time
                late_before = time - lateness
                too_late_before = late_before - horizon
            elif time < late_before:
                if time < too_late_before:
                    too_late += 1
                    dead.append(self._too_late(message, value, time, max_event, now))
                    continue
                late += 1
            shard = cache.get(driver)
            if shard is None:
                shard = cache[driver] = shard_of(driver, shards)
            number = time // bucket
            sets = by_number[shard].get(number)
            if sets is None:
                sets = by_number[shard][number] = [set(), set(), 0]
            sets[0].add(driver)
            if on_duty:
                sets[1].add(driver)
            sets[2] += 1
            if values_of is not None:
                if fast:
                    values = values_of(*fields)
                else:
                    get = ping_object(value).get
                    values = values_of(get("city"), get("vehicle_type"), get("lat"), get("lng"))
                if located and None in values:
                    unlocated += 1
                seg = seg_by_number[shard].get(number)
                if seg is None:
                    seg = seg_by_number[shard][number] = []
                seg.append((driver, on_duty, values))

        grouped: list[BucketSets] = [
            {int(number) * bucket: [online, online - on_duty, pings]
             for number, (online, on_duty, pings) in numbered.items()}
            for numbered in by_number
        ]
        segments = None
        if values_of is not None:
            segments = [
                {int(number) * bucket: pings for number, pings in numbered.items()}
                for numbered in seg_by_number
            ]
            self.unlocated += unlocated
        mark = self._count(messages, now, ended, max_event, invalid, too_late, late)
        return PartitionBatch(mark, grouped, dead, segments)
