"""Drive presence's pure core (no bytewax, no I/O) the way the dataflow does,
with a caller-chosen interleaving of partition reads, crashes and restarts."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import orjson

from presence.core.partition import PartitionReader, RawMessage, shard_key
from presence.core.rows import Row, RowBook
from presence.core.shard import ShardState
from presence.core.windows import WindowSpec
from presence.core.model import SegmentRow
from tests.oracle import P
from tests.segment_oracle import SP

TOPIC = "t"


def encode(msg: object) -> bytes | None:
    if isinstance(msg, P):
        return orjson.dumps(msg.value())
    if isinstance(msg, SP):
        return orjson.dumps(msg.obj())
    return msg  # already bytes (or None)


@dataclass
class Store:
    """What MongoDB would hold: rows merged with $max, dead letters by id."""

    rows: dict[int, dict] = field(default_factory=dict)
    history: list[Row] = field(default_factory=list)
    dead: dict[str, str] = field(default_factory=dict)
    segments: dict[str, dict] = field(default_factory=dict)
    """segment_summary by ``_id``."""
    segment_history: list[SegmentRow] = field(default_factory=list)

    def write_segment_rows(self, rows: list[SegmentRow]) -> None:
        for row in rows:
            self.segment_history.append(row)
            doc = self.segments.setdefault(
                row.doc_id, {"segment": row.segment, "key": tuple(row.key.values()),
                             "bucket": row.bucket, "online": 0, "available": 0, "revision": 0})
            doc["online"] = max(doc["online"], row.online)
            doc["available"] = max(doc["available"], row.available)
            doc["revision"] = max(doc["revision"], row.revision)

    def segment_counts(self) -> dict[tuple, tuple[int, int]]:
        """``{(segment, key values, bucket): (online, available)}``, as the segment oracle."""
        return {(d["segment"], d["key"], d["bucket"]): (d["online"], d["available"])
                for d in self.segments.values()}

    def write_rows(self, rows: list[Row]) -> None:
        for row in rows:
            self.history.append(row)
            doc = self.rows.setdefault(row.bucket, {"online": 0, "available": 0, "revision": 0})
            doc["online"] = max(doc["online"], row.online)
            doc["available"] = max(doc["available"], row.available)
            doc["revision"] = max(doc["revision"], row.revision)

    def counts(self) -> dict[int, tuple[int, int]]:
        return {b: (d["online"], d["available"]) for b, d in self.rows.items()}


class Core:
    """Readers, shards and the row book, wired as in presence.flow."""

    def __init__(self, spec: WindowSpec, partitions: list[list[object]], now: float) -> None:
        self.spec = spec
        self.values = [[encode(m) for m in msgs] for msgs in partitions]
        self.now = now
        self.readers = [
            PartitionReader(TOPIC, p, len(partitions), spec, now) for p in range(len(partitions))
        ]
        self.shards = {shard_key(s): ShardState(spec) for s in range(spec.shards)}
        self.book = RowBook(spec)
        self.store = Store()

    def read(self, partition: int, count: int, bounded: bool = True) -> None:
        reader = self.readers[partition]
        start = reader.next_offset or 0
        values = self.values[partition]
        messages = [RawMessage(o, values[o]) for o in range(start, min(start + count, len(values)))]
        ended = bounded and start + len(messages) >= len(values)
        batch = reader.read(messages, self.now, ended=ended)
        for letter in batch.dead_letters:
            self.store.dead.setdefault(letter.id, letter.reason)
        self.book.add_mark(batch.mark)
        for key, part in batch.shard_parts():
            shard = self.shards[key]
            shard.apply(part)
            report = shard.report(self.now)
            if report:
                self.book.add_report(key, report)
        self.store.write_rows(self.book.take_rows())
        self.store.write_segment_rows(self.book.take_segment_rows())

    def done(self, partition: int) -> bool:
        return (self.readers[partition].next_offset or 0) >= len(self.values[partition])

    def finish(self) -> None:
        """End of a bounded run: shards then the book flush everything."""
        for key, shard in self.shards.items():
            report = shard.report(self.now, final=True)
            if report:
                self.book.add_report(key, report)
        self.store.write_rows(self.book.take_rows(final=True))
        self.store.write_segment_rows(self.book.take_segment_rows(final=True))

    def snapshot(self) -> bytes:
        return pickle.dumps(
            (
                [r.snapshot() for r in self.readers],
                {k: s.snapshot() for k, s in self.shards.items()},
                self.book.snapshot(),
            )
        )

    def restore(self, blob: bytes) -> None:
        """A crash: every in-memory state goes back to the snapshot."""
        readers, shards, book = pickle.loads(blob)
        # Rows written after the snapshot are written again (at least once):
        # monotony holds from here on.
        self.store.history.clear()
        self.store.segment_history.clear()
        readers += [None] * (len(self.values) - len(readers))  # the topic may have grown
        self.readers = [
            PartitionReader(TOPIC, p, len(self.values), self.spec, self.now, snap)
            for p, snap in enumerate(readers)
        ]
        self.shards = {k: ShardState(self.spec, snap) for k, snap in shards.items()}
        self.book = RowBook(self.spec, book)
