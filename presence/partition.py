"""One Kafka partition as read so far: the first room a ping passes through.

:class:`PartitionReader` turns a batch of raw messages (anything with
``offset()`` and ``value()``, as confluent-kafka's ``Message``) into a
:class:`PartitionBatch`:

- each value is parsed (:func:`presence.pings.parse_ping`); a rejected one
  becomes a :class:`DeadLetter`;
- a valid ping older than this partition's own watermark minus the
  correction horizon is *too late* (SPEC "Time, lateness and corrections"),
  judged here because only here is the partition's order known;
- the other pings are grouped per driver shard and bucket into sets of
  driver ids, so the pane step receives a few sets per batch instead of
  thousands of pings.

Pure logic, no I/O: the Kafka shell in :mod:`presence.source` feeds it.
Its :meth:`PartitionReader.snapshot` is the partition's recovery state.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

from presence.fingerprint import STATE_FORMAT
from presence.pings import format_instant, parse_ping, raw_text
from presence.windows import WindowSpec

LIVE = "live"
IDLE = "idle"
ENDED = "ended"

NO_EVENT = float("-inf")


class Message(Protocol):
    """What the reader needs of a Kafka message (confluent-kafka's ``Message`` has it)."""

    def offset(self) -> int: ...

    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A message held in memory (tests, :mod:`presence.memory`)."""

    at: int
    data: bytes | None

    def offset(self) -> int:
        return self.at

    def value(self) -> bytes | None:
        return self.data


def partition_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def shard_key(shard: int) -> str:
    """The key of one driver shard in the pane step."""
    return f"shard-{shard:02d}"


def shard_of(driver_id: str, shards: int) -> int:
    """Stable across processes (unlike ``hash``, which is salted per process)."""
    return zlib.crc32(driver_id.encode()) % shards


@dataclass(frozen=True, slots=True)
class PartitionMark:
    """What one partition tells the rest of the flow after each read."""

    topic: str
    partition: int
    partitions: int
    """How many partitions the topic has: whom a watermark must wait for."""
    max_event: float
    """Greatest valid event time read so far (``-inf`` before the first)."""
    read_at: float
    """Wall clock of the last valid ping read (or of opening the partition)."""
    state: str
    """``live``, ``idle`` (no valid ping for ``idle`` seconds) or ``ended``."""
    next_offset: int
    valid: int = 0
    invalid: int = 0
    too_late: int = 0
    gaps: tuple[tuple[int, int], ...] = ()
    """Offset ranges ``[start, end)`` lost to retention before being read."""

    @property
    def key(self) -> str:
        return partition_key(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message, stored once per ``topic:partition:offset``."""

    topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    raw: str
    received_at: float

    @property
    def id(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


BucketSets = dict
"""``{bucket start: [online driver ids, off-duty driver ids, ping count]}``.

Off-duty drivers are those of the online ones with no on-duty ping in the
bucket (in this batch): usually far fewer than the available ones, so the
pane step maps fewer ids, and fewer cross between processes."""


@dataclass(slots=True)
class ShardPart:
    """The share of one partition batch for one driver shard."""

    mark: PartitionMark
    buckets: BucketSets


@dataclass(slots=True)
class PartitionBatch:
    """The outcome of one read of one partition."""

    mark: PartitionMark
    shards: list[BucketSets]
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def shard_parts(self) -> Iterator[tuple[str, ShardPart]]:
        """Every shard gets the mark (its watermark view moves on), with data or not."""
        mark = self.mark
        for shard, buckets in enumerate(self.shards):
            yield shard_key(shard), ShardPart(mark, buckets)


class PartitionReader:
    """Parse, judge and group the pings of one Kafka partition, in order."""

    def __init__(
        self,
        topic: str,
        partition: int,
        partitions: int,
        spec: WindowSpec,
        now: float,
        resume: dict | None = None,
        fingerprint: dict | None = None,
    ) -> None:
        self.topic = topic
        self.fingerprint = fingerprint
        """Kept in the snapshot; compared at start-up by :mod:`presence.binding`."""
        self.partition = partition
        self.partitions = partitions
        self.spec = spec
        resume = resume or {}
        self.next_offset: int | None = resume.get("next_offset")
        self.max_event: float = resume.get("max_event", NO_EVENT)
        self.valid: int = resume.get("valid", 0)
        self.invalid: int = resume.get("invalid", 0)
        self.too_late: int = resume.get("too_late", 0)
        self.gaps: list[tuple[int, int]] = [tuple(g) for g in resume.get("gaps", ())]
        self.read_at = now
        self._shard_cache: dict[str, int] = {}

    def snapshot(self) -> dict:
        return {
            "next_offset": self.next_offset,
            "max_event": self.max_event,
            "valid": self.valid,
            "invalid": self.invalid,
            "too_late": self.too_late,
            "gaps": list(self.gaps),
            "fingerprint": self.fingerprint,
            "format": STATE_FORMAT,
        }

    @property
    def watermark(self) -> float:
        return self.max_event - self.spec.lateness

    def note_gap(self, start: int, end: int) -> None:
        """Offsets ``[start, end)`` were purged by retention before being read."""
        if end > start and (start, end) not in self.gaps:
            self.gaps.append((start, end))

    def mark(self, now: float, ended: bool = False) -> PartitionMark:
        if ended:
            state = ENDED
        elif now - self.read_at >= self.spec.idle:
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
        )

    def read(
        self, messages: Sequence[Message], now: float, ended: bool = False
    ) -> PartitionBatch:
        """Ingest messages in offset order (may be empty: a heartbeat)."""
        spec = self.spec
        shards = spec.shards
        bucket = spec.bucket
        dead: list[DeadLetter] = []
        topic, partition = self.topic, self.partition
        latest_allowed = now + spec.max_future_skew
        max_event = self.max_event
        lateness, horizon = spec.lateness, spec.horizon
        too_late_before = max_event - lateness - horizon
        cache = self._shard_cache
        if len(cache) > 500_000:
            cache.clear()
        invalid = too_late = 0
        # Keyed by bucket number (a float, ``time // bucket``) in the loop;
        # turned into bucket starts once per batch below.
        by_number: list[dict] = [{} for _ in range(shards)]

        for message in messages:
            value = message.value()
            ping = parse_ping(value, latest_allowed)
            if type(ping) is not tuple:
                invalid += 1
                dead.append(
                    DeadLetter(
                        topic, partition, message.offset(), ping.reason, ping.detail,
                        raw_text(value), now,
                    )
                )
                continue
            driver, time, on_duty = ping
            if time > max_event:
                max_event = time
                too_late_before = time - lateness - horizon
            elif time < too_late_before:
                too_late += 1
                dead.append(
                    DeadLetter(
                        topic, partition, message.offset(), "too_late",
                        f"event time {format_instant(time)} is older than this "
                        f"partition's watermark {format_instant(max_event - spec.lateness)} "
                        "minus the correction horizon",
                        raw_text(value), now,
                    )
                )
                continue
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

        grouped: list[BucketSets] = [
            {int(number) * bucket: [online, online - on_duty, pings]
             for number, (online, on_duty, pings) in numbered.items()}
            for numbered in by_number
        ]
        if messages:
            self.next_offset = messages[-1].offset() + 1
        valid = len(messages) - invalid - too_late
        if valid:
            self.read_at = now
        self.max_event = max_event
        self.valid += valid
        self.invalid += invalid
        self.too_late += too_late
        return PartitionBatch(self.mark(now, ended), grouped, dead)
