"""The input step: one bytewax source partition per Kafka partition.

The shell around :class:`presence.core.partition.PartitionReader`. A *feed* does
the I/O of one partition (:class:`KafkaFeed` for Kafka,
:class:`presence.io.memory.MemoryFeed` in tests); :class:`PingPartition` asks it
for batches, detects offsets lost to retention, stops at the end in bounded
mode, sends heartbeats while quiet, and keeps the reader's state (next offset,
partition watermark, counters, gaps, the fingerprint) in bytewax's recovery
snapshots as a :class:`~presence.core.source_state.SourceState`.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Callable, Protocol

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from presence import metrics
from presence.core.partition import Message, PartitionBatch, PartitionReader
from presence.core.source_state import SourceState
from presence.core.windows import WindowSpec

log = logging.getLogger("presence.source")


POLL_PAUSE_SECONDS = 0.05
"""Seconds to wait before polling again after an empty read."""


class Feed(Protocol):
    """The I/O of one partition."""

    def offsets(self) -> tuple[int, int]:
        """(oldest retained offset, next offset to be written)."""

    def seek(self, offset: int) -> None: ...

    def poll(self, max_messages: int) -> list[Message]:
        """Up to ``max_messages`` messages in offset order; may be empty."""

    def close(self) -> None: ...


class PingPartition(StatefulSourcePartition[PartitionBatch, SourceState]):
    """Reads one partition and emits one :class:`PartitionBatch` per read."""

    def __init__(
        self,
        feed: Feed,
        reader: PartitionReader,
        bounded: bool,
        batch_size: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.feed = feed
        self.reader = reader
        self.bounded = bounded
        self.batch_size = batch_size
        self.clock = clock
        self.heartbeat = min(1.0, reader.spec.idle_s / 2)
        self._awake: datetime | None = None
        self._last_emit = 0.0
        self._done = False

        low, high = feed.offsets()
        start = reader.next_offset
        if start is None:
            start = low
        elif start < low:
            self._lost(start, low)
            start = low
        elif start > high:
            log.warning(
                "%s:%d: resume offset %d is past the end %d (was the topic recreated?); "
                "reading from the oldest retained offset %d",
                reader.topic, reader.partition, start, high, low,
            )
            start = low
        reader.next_offset = start
        feed.seek(start)
        self.end = high if bounded else None

    def _lost(self, start: int, end: int) -> None:
        r = self.reader
        log.warning(
            "%s:%d: offsets %d to %d (%d messages) were deleted by retention before "
            "they were read; going on from offset %d",
            r.topic, r.partition, start, end - 1, end - start, end,
        )
        r.note_gap(start, end)

    def next_batch(self) -> list[PartitionBatch]:
        if self._done:
            raise StopIteration()
        self._awake = None
        reader = self.reader
        metrics.polled(reader.topic, reader.partition)
        now = self.clock()
        if self.end is not None and reader.next_offset >= self.end:
            self._done = True
            return [reader.read([], now, ended=True)]

        messages = self.feed.poll(self.batch_size)
        if messages:
            expected = reader.next_offset
            last = messages[-1].offset()
            if messages[0].offset() != expected or last - expected + 1 != len(messages):
                self._check_gaps(expected, messages)
            if self.end is not None and last >= self.end:
                messages = [m for m in messages if m.offset() < self.end]
                if not messages:
                    self._done = True
                    return [reader.read([], now, ended=True)]
            ended = self.end is not None and messages[-1].offset() + 1 >= self.end
            self._done = ended
            self._last_emit = now
            batch = reader.read(messages, now, ended=ended)
            metrics.batch_read(reader.topic, reader.partition, len(messages), batch, reader.spec.lateness_s)
            return [batch]

        self._awake = datetime.now(timezone.utc) + timedelta(seconds=POLL_PAUSE_SECONDS)
        # (``now`` before the last emit: the clock stepped back; beat anyway.)
        if now - self._last_emit >= self.heartbeat or now < self._last_emit:
            self._last_emit = now
            return [reader.read([], now)]
        return []

    def _check_gaps(self, expected: int, messages: list[Message]) -> None:
        """Offsets may skip for compaction or transaction markers; only retention is a loss."""
        low, _ = self.feed.offsets()
        for message in messages:
            offset = message.offset()
            if offset > expected and low > expected:
                self._lost(expected, min(low, offset))
            expected = offset + 1

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> SourceState:
        metrics.snapshot("pings")
        return SourceState.of_reader(self.reader.snapshot())

    def close(self) -> None:
        self.feed.close()


class PingSource(FixedPartitionedSource[PartitionBatch, SourceState]):
    """A topic's partitions as bytewax source partitions.

    ``open_feed(partition)`` gives the I/O of one partition, ``partitions``
    how many the topic has. ``fingerprint`` (what the state is bound to) goes
    into every partition's snapshot; the one a resumed snapshot carried is
    the reader's ``resumed_fingerprint``.
    """

    def __init__(
        self,
        topic: str,
        partitions: int,
        open_feed: Callable[[int], Feed],
        spec: WindowSpec,
        bounded: bool,
        batch_size: int = 5000,
        clock: Callable[[], float] = time.time,
        fingerprint: dict | None = None,
        reader: str | None = None,
    ) -> None:
        self.topic = topic
        self.partitions = partitions
        self.reader = reader
        """PRESENCE_READER (``auto``, ``python``, ``native``); None: the reader's default."""
        self.open_feed = open_feed
        self.spec = spec
        self.bounded = bounded
        self.batch_size = batch_size
        self.clock = clock
        self.fingerprint = fingerprint
        """What the state is bound to (:mod:`presence.core.fingerprint`), kept in every snapshot."""

    def list_parts(self) -> list[str]:
        return [str(p) for p in range(self.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: SourceState | dict | None
    ) -> PingPartition:
        """``resume_state``: a :class:`SourceState`, or the dict an older presence kept."""
        partition = int(for_part)
        state = SourceState.restore(resume_state)
        reader = PartitionReader(
            self.topic, partition, self.partitions, self.spec, self.clock(),
            state.reader_resume() if state else None, fingerprint=self.fingerprint,
            reader=self.reader,
        )
        return PingPartition(
            self.open_feed(partition), reader, self.bounded, self.batch_size, self.clock
        )
