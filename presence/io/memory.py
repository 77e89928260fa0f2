"""An in-memory topic with the same feed interface as Kafka, for tests and benchmarks.

``MemoryTopic`` holds the values of each partition; ``append`` adds more
between runs (incremental bounded runs), ``purge`` deletes the oldest offsets
as retention would, and ``ABORT`` placed in a partition makes the reading
worker abort the execution once (like ``bytewax.testing.TestingSource.ABORT``),
to test crash and resume with recovery.

Every appended message has a Kafka timestamp (create time): the one given
to ``append``, or the wall clock when it was appended. A bare value put in a
partition's list directly has none (the reader then uses its read time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from bytewax.inputs import AbortExecution
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from presence.core.partition import RawMessage


class Abort:
    """Abort the execution the first time the reader gets here."""

    def __init__(self) -> None:
        self.triggered = False


ABORT = Abort


@dataclass(frozen=True, slots=True)
class Stamped:
    """A value with its Kafka timestamp (epoch milliseconds)."""

    value: bytes | None
    timestamp_ms: int


class MemoryTopic:
    def __init__(self, name: str = "driver-pings", partitions: int = 1) -> None:
        self.name = name
        self.partitions: list[list[Any]] = [[] for _ in range(partitions)]
        self.low = [0] * partitions

    def append(self, partition: int, *values: Any, timestamp_ms: int | None = None) -> None:
        """Append values: bytes as they are, ``None``, an ``Abort()``, or JSON-able objects.

        Each gets the Kafka timestamp ``timestamp_ms`` (default: now).
        """
        stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        for value in values:
            if isinstance(value, Abort):
                self.partitions[partition].append(value)
                continue
            if value is not None and not isinstance(value, bytes):
                value = orjson.dumps(value)
            self.partitions[partition].append(Stamped(value, stamp))

    def purge(self, partition: int, before: int) -> None:
        """Delete offsets below ``before``, as Kafka retention does."""
        self.low[partition] = max(self.low[partition], before)

    def feed(self, partition: int) -> "MemoryFeed":
        return MemoryFeed(self, partition)


class MemoryFeed:
    def __init__(self, topic: MemoryTopic, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.position = 0

    def offsets(self) -> tuple[int, int]:
        return self.topic.low[self.partition], len(self.topic.partitions[self.partition])

    def seek(self, offset: int) -> None:
        self.position = offset

    def poll(self, max_messages: int) -> list[RawMessage]:
        values = self.topic.partitions[self.partition]
        self.position = max(self.position, self.topic.low[self.partition])
        out = []
        while self.position < len(values) and len(out) < max_messages:
            value = values[self.position]
            if isinstance(value, Abort):
                if not value.triggered:
                    if out:
                        return out  # abort on the next poll, after this batch
                    value.triggered = True
                    raise AbortExecution()
                # A triggered abort still takes its offset (like a record
                # no consumer sees, e.g. a transaction marker).
                self.position += 1
                continue
            if isinstance(value, Stamped):
                out.append(RawMessage(self.position, value.value, value.timestamp_ms))
            else:
                out.append(RawMessage(self.position, value))
            self.position += 1
        return out

    def close(self) -> None:
        pass


class MemoryStore:
    """What MongoDB would hold after the rows sink's upserts (``$set``/``$max``),
    by the same ``_id`` s: ``report_summary`` and ``segment_summary`` as dicts of
    documents (counts and revisions only; times as epoch seconds). For tests and
    benchmarks that run the flow without a database."""

    def __init__(self) -> None:
        self.reports: dict[str, dict] = {}
        self.segments: dict[str, dict] = {}

    def write(self, items: list) -> None:
        from presence.core.model import Row, SegmentRow, SegmentRows

        for item in _flat(items, SegmentRows):
            if type(item) is Row:
                doc = self.reports.setdefault(item.time_bucket, {"timeBucket": item.time_bucket})
            elif type(item) is SegmentRow:
                doc = self.segments.setdefault(item.doc_id, {})
                doc.update(segment=item.segment, key=dict(item.key), timeBucket=item.time_bucket)
                if item.overflow:
                    doc["overflow"] = True
            else:
                continue
            doc["windowStart"], doc["windowEnd"] = item.window_start, item.window_end
            for name, value in (("driversOnlineCount", item.online),
                                ("driversAvailableCount", item.available),
                                ("revision", item.revision)):
                doc[name] = max(doc.get(name, value), value)


def _flat(items: list, batch: type) -> list:
    """``items`` with each ``batch`` item (:class:`SegmentRows`) replaced by its rows."""
    out: list = []
    for item in items:
        if type(item) is batch:
            out.extend(item)
        else:
            out.append(item)
    return out


class _StorePartition(StatelessSinkPartition):
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def write_batch(self, items: list) -> None:
        self.store.write(items)


class MemorySink(DynamicSink):
    """The rows sink into a :class:`MemoryStore` (one process: workers share it)."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StorePartition:
        return _StorePartition(self.store)
