"""An in-memory topic with the same feed interface as Kafka, for tests and benchmarks.

``MemoryTopic`` holds the values of each partition; ``append`` adds more
between runs (incremental bounded runs), ``purge`` deletes the oldest offsets
as retention would, and ``ABORT`` placed in a partition makes the reading
worker abort the execution once (like ``bytewax.testing.TestingSource.ABORT``),
to test crash and resume with recovery.
"""

from __future__ import annotations

from typing import Any

import orjson
from bytewax.inputs import AbortExecution

from presence.partition import RawMessage


class Abort:
    """Abort the execution the first time the reader gets here."""

    def __init__(self) -> None:
        self.triggered = False


ABORT = Abort


class MemoryTopic:
    def __init__(self, name: str = "driver-pings", partitions: int = 1) -> None:
        self.name = name
        self.partitions: list[list[Any]] = [[] for _ in range(partitions)]
        self.low = [0] * partitions

    def append(self, partition: int, *values: Any) -> None:
        """Append values: bytes as they are, ``None``, an ``Abort()``, or JSON-able objects."""
        for value in values:
            if value is not None and not isinstance(value, (bytes, Abort)):
                value = orjson.dumps(value)
            self.partitions[partition].append(value)

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
            out.append(RawMessage(self.position, value))
            self.position += 1
        return out

    def close(self) -> None:
        pass
