"""The dataflow: the path of a ping from Kafka to MongoDB.

::

    pings (one PartitionBatch per Kafka read; parse, judge too-late, group)
      |-- dead_letters -------------------------------> dead_letters
      |-- split_by_shard -> panes (per driver shard) --\\
      |-- marks ---------------------------------------+-> rows (row book)
                                                            |-- report rows -> report_summary
                                                            |   (segment rows, one SegmentRows
                                                            |    item per take -> segment_summary)
                                                            \\-- status -----> pipeline_status

Step ids are part of the recovery state: renaming one silently drops its
state, so they are constants here and tested.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from presence import metrics
from presence.core.model import (
    BookItem, MarkSeen, PartitionBatch, Row, SegmentRows, ShardReport, ShardReported, Status,
)
from presence.core.rows import RowBook
from presence.core.shard import ShardState
from presence.core.windows import WindowSpec
from presence.progress import ProgressLog, due


ROW_FLUSH_SECONDS = 0.5
"""Rows ready within this long go to MongoDB in one bulk write."""

STATUS_SECONDS = 1.0
"""``pipeline_status`` is rewritten at most this often (more often only with faster progress lines)."""

BOOK_KEY = "rows"
"""The single key of the row book (rows are few; the panes carry the load)."""

STEP_IDS = (
    "pings",
    "dead_letters",
    "write_dead_letters",
    "split_by_shard",
    "panes",
    "reports",
    "marks",
    "to_book",
    "rows",
    "unkey",
    "split_output",
    "write_rows",
    "write_status",
)


@dataclass(frozen=True)
class Sinks:
    rows: Sink
    dead_letters: Sink
    status: Sink


class PaneLogic(StatefulBatchLogic):
    """The pane step for one driver shard: a thin shell over :class:`ShardState`."""

    def __init__(self, spec: WindowSpec, resume: dict | None, clock: Callable[[], float],
                 reader: str | None = None, snapshots: bool = True):
        self.state = ShardState(spec, resume, reader)
        self.snapshots = snapshots
        self.clock = clock

    def on_batch(self, parts: list) -> tuple[list[ShardReport], bool]:
        for part in parts:
            self.state.apply(part)
        report = self.state.report(self.clock())
        return ([report] if report else []), self.RETAIN

    def on_eof(self) -> tuple[list[ShardReport], bool]:
        # Keep the state: a later bounded run goes on from it.
        report = self.state.report(self.clock(), final=True)
        return ([report] if report else []), self.RETAIN

    def snapshot(self) -> dict | None:
        if not self.snapshots:
            return None  # no recovery directory: nothing would ever read it
        metrics.snapshot("panes")
        return self.state.snapshot()


class BookLogic(StatefulBatchLogic):
    """The row step: a thin shell over :class:`RowBook`, plus status and progress."""

    def __init__(
        self,
        spec: WindowSpec,
        resume: dict | None,
        clock: Callable[[], float],
        progress_seconds: float,
        reader: str | None = None,
        snapshots: bool = True,
    ):
        self.snapshots = snapshots
        self.book = RowBook(spec, resume, reader)
        self.clock = clock
        self.progress_seconds = progress_seconds
        self.status_seconds = min(STATUS_SECONDS, progress_seconds)
        now = clock()
        self._next_status = now
        self._next_rows = now
        self._next_progress = now + progress_seconds
        self.progress = ProgressLog(self.book.totals(), now)

    def on_batch(self, items: list[BookItem]) -> tuple[list, bool]:
        book = self.book
        for item in items:
            if type(item) is ShardReported:
                book.add_report(item.shard, item.report)
            else:
                book.add_mark(item.mark)
        return self._due(), self.RETAIN

    def on_notify(self) -> tuple[list, bool]:
        return self._due(), self.RETAIN

    def on_eof(self) -> tuple[list, bool]:
        out: list[Any] = self.book.take_rows(final=True)
        self._segment_rows(out, final=True)
        out.append(self._status())
        self.progress.log(self.book.totals(), self.clock(), final=True)
        return out, self.RETAIN

    def notify_at(self) -> datetime | None:
        at = self._next_status
        if self.book.pending or self.book.segment_pending:
            at = min(at, self._next_rows)
        # At most one status period ahead, even if the clock stepped back.
        wait = min(max(0.0, at - self.clock()), self.status_seconds)
        return datetime.now(timezone.utc) + timedelta(seconds=wait)

    def snapshot(self) -> dict | None:
        if not self.snapshots:
            return None  # no recovery directory: nothing would ever read it
        metrics.snapshot("rows")
        return self.book.snapshot()

    def _segment_rows(self, out: list, final: bool = False) -> None:
        """The segment rows due, as one :class:`SegmentRows` item (if any)."""
        if self.book.definitions:
            batch = self.book.take_segment_batch(final)
            if batch.taken:
                out.append(batch)

    def _status(self) -> Status:
        return Status(tuple(self.book.marks.values()), self.book.totals())

    def _due(self) -> list:
        """Rows (batched over ROW_FLUSH_SECONDS), status and progress when due.

        A time further ahead than its period means the clock stepped back:
        due now, so a clock step never holds writes back.
        """
        now = self.clock()
        out: list[Any] = []
        book = self.book
        if (book.pending or book.segment_pending) and due(now, self._next_rows, ROW_FLUSH_SECONDS):
            self._next_rows = now + ROW_FLUSH_SECONDS
            out += book.take_rows()
            self._segment_rows(out)
        if due(now, self._next_status, self.status_seconds):
            self._next_status = now + self.status_seconds
            out.append(self._status())
        if due(now, self._next_progress, self.progress_seconds):
            self._next_progress = now + self.progress_seconds
            self.progress.log(self.book.totals(), self.clock())
        return out


def _book_items_from_reports(item: tuple[str, ShardReport]) -> tuple[str, ShardReported]:
    shard, report = item
    return BOOK_KEY, ShardReported(shard, report)


def _book_items_from_batch(batch: PartitionBatch) -> tuple[str, MarkSeen]:
    return BOOK_KEY, MarkSeen(batch.mark)


def _dead_letters(batch: PartitionBatch) -> Iterable:
    return batch.dead_letters


def _shard_parts(batch: PartitionBatch) -> Iterable:
    return batch.shard_parts()


def _is_row(item: Any) -> bool:
    """Rows of both collections (report_summary and segment_summary) go to the rows sink."""
    return isinstance(item, (Row, SegmentRows))


def build_flow(
    spec: WindowSpec,
    source: Source,
    sinks: Sinks,
    clock: Callable[[], float] = time.time,
    progress_seconds: float = 10.0,
    name: str = "presence",
    reader: str | None = None,
    snapshots: bool = True,
) -> Dataflow:
    """The dataflow; ``reader`` (PRESENCE_READER) also picks the shards' segment store
    and the book's tally. ``snapshots=False`` (a run without a recovery directory)
    makes the pane and row steps answer Bytewax's per-epoch ``snapshot()`` with
    ``None`` instead of building state nothing will read (Bytewax asks every
    epoch, recovery or not)."""
    flow = Dataflow(name)
    batches = op.input("pings", flow, source)

    dead = op.flat_map("dead_letters", batches, _dead_letters)
    op.output("write_dead_letters", dead, sinks.dead_letters)

    parts = op.flat_map("split_by_shard", batches, _shard_parts)
    reports = op.stateful_batch(
        "panes", parts, lambda resume: PaneLogic(spec, resume, clock, reader, snapshots)
    )
    report_items = op.map("reports", reports, _book_items_from_reports)
    mark_items = op.map("marks", batches, _book_items_from_batch)
    book_items = op.merge("to_book", report_items, mark_items)
    book_out = op.stateful_batch(
        "rows", book_items, lambda resume: BookLogic(spec, resume, clock, progress_seconds, reader, snapshots)
    )
    split = op.branch("split_output", op.key_rm("unkey", book_out), _is_row)
    op.output("write_rows", split.trues, sinks.rows)
    op.output("write_status", split.falses, sinks.status)
    return flow
