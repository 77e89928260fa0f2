"""One driver shard: its panes, its view of the watermark, its partial rows.

Drivers are split over :data:`presence.core.windows.SHARDS` shards by a stable
hash, so a shard's drivers are disjoint from every other shard's and a row's
distinct counts are the *sum* of the shards' partial counts. Each shard
receives every partition's marks, keeps the dataflow watermark as it sees it
(event time only: nothing it stores depends on the wall clock), and reports
the partial counts of the rows that changed once they are closed (their
interval ended before the flush watermark, which in a quiet live run follows
the wall clock), or all of them at the end of a bounded run.
:mod:`presence.core.rows` adds the reports up.

A ping older than the state kept (only possible from a partition that had
no watermark yet when the state was dropped: SPEC "Time") is too late here:
not counted, and reported in :attr:`ShardReport.not_counted`.

With segments (``spec.segments``), a :class:`SegmentPanes` sits beside the
global panes: same pings, same closing, same clean-up; its partials travel in
:attr:`ShardReport.segment_partials`.

The recovery state is a :class:`ShardSnapshot` (plain data, with a
``version``); the dict of earlier versions (version 0) still restores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from presence.core.model import (
    LIVE, NO_EVENT, PartitionMark, ShardPart, ShardReport, VersionedState,
)
from presence.core.panes import ShardPanes
from presence.core import partition
from presence.core.segment_panes import SegmentPanes

try:  # the compiled twin of SegmentPanes (native/, built with the compiled reader)
    from presence.core.native_segments import NativeSegmentPanes
except ImportError:
    NativeSegmentPanes = None
from presence.core.watermark import dataflow_watermark, flush_watermark, oldest_countable
from presence.core.windows import WindowSpec

SHARD_SNAPSHOT_VERSION = 1
"""Version of :class:`ShardSnapshot`. 0 is the dict written before it existed
(same fields, no segments); raise it when a field changes meaning."""


@dataclass(frozen=True)
class ShardSnapshot(VersionedState):
    """One driver shard's recovery state: plain values, bytewax pickles it."""

    version: int
    panes: dict
    """:meth:`ShardPanes.snapshot`."""
    marks: dict
    """``{partition key: PartitionMark}``."""
    watermark: float
    oldest: float
    dirty: tuple
    not_counted: int
    segments: dict | None = None
    """:meth:`SegmentPanes.snapshot`, or ``None`` without segments."""

    VERSION: ClassVar[int] = SHARD_SNAPSHOT_VERSION
    WHAT: ClassVar[str] = "shard state"
    NOUN: ClassVar[str] = "shard snapshot"

    @classmethod
    def from_version_0(cls, resume: dict) -> "ShardSnapshot":
        """The plain dict of presence before segments."""
        return cls(
            version=0,
            panes=resume["panes"],
            marks=resume["marks"],
            watermark=resume["watermark"],
            oldest=resume["oldest"],
            dirty=tuple(resume["dirty"]),
            not_counted=resume.get("not_counted", 0),
        )


def segment_store_class(reader: str | None = None) -> type:
    """The segment pane store a shard keeps: the compiled one
    (:class:`presence.core.native_segments.NativeSegmentPanes`) when the compiled
    reader runs (:func:`presence.core.partition.reader_in_use` of ``reader``,
    PRESENCE_READER; None: the default), else :class:`SegmentPanes`. Both give
    the same counts and the same snapshot layout, so either restores the other's state."""
    if (NativeSegmentPanes is not None
            and partition.reader_in_use(reader or partition.DEFAULT_READER) == "native"):
        return NativeSegmentPanes
    return SegmentPanes


class ShardState:
    """State of one driver shard, updated by :class:`ShardPart` items.

    ``reader`` (PRESENCE_READER) picks the segment store (:func:`segment_store_class`).
    """

    def __init__(self, spec: WindowSpec, resume: ShardSnapshot | dict | None = None,
                 reader: str | None = None) -> None:
        self.spec = spec
        self.segments: SegmentPanes | None = None
        store = segment_store_class(reader) if spec.segments else SegmentPanes
        if store is not SegmentPanes and not (type(spec.bucket_s) is type(spec.window_s) is int):
            store = SegmentPanes  # the compiled store takes whole seconds
        if resume:
            snap = ShardSnapshot.of(resume)
            self.panes = ShardPanes.restore(spec, snap.panes)
            # A new run: no partition has gone idle or ended in it yet.
            self.marks: dict[str, PartitionMark] = {
                k: replace(m, state=LIVE) for k, m in snap.marks.items()
            }
            self.watermark: float = snap.watermark
            self.oldest: float = snap.oldest
            self.dirty: set[int] = set(snap.dirty)
            self.not_counted: int = snap.not_counted
            if snap.segments is not None or spec.segments:
                if snap.segments is None:
                    raise ValueError(
                        "shard state was made without segments, not with "
                        f"{';'.join(d.name for d in spec.segments)!r}"
                    )
                self.segments = store.restore(
                    spec, spec.segments, snap.segments, spec.max_segment_values
                )
        else:
            self.panes = ShardPanes(spec)
            self.marks = {}
            self.watermark = NO_EVENT
            self.oldest = NO_EVENT
            self.dirty = set()
            self.not_counted = 0
            if spec.segments:
                self.segments = store(spec, spec.segments, spec.max_segment_values)
        self._last_sent: tuple | None = None

    def snapshot(self) -> ShardSnapshot:
        return ShardSnapshot(
            version=SHARD_SNAPSHOT_VERSION,
            panes=self.panes.snapshot(),
            marks=dict(self.marks),
            watermark=self.watermark,
            oldest=self.oldest,
            dirty=tuple(self.dirty),
            not_counted=self.not_counted,
            segments=None if self.segments is None else self.segments.snapshot(),
        )

    def apply(self, part: ShardPart) -> None:
        """Add one partition batch's share (its drivers and its mark)."""
        self.marks[part.mark.key] = part.mark
        spec = self.spec
        # Every countable ping is at or after ``self.oldest``; older panes
        # are kept only to recompute rows. An older ping can only come from a
        # partition that had no watermark when state was dropped: it is too
        # late (counting it would rewrite rows from incomplete panes).
        countable = NO_EVENT if self.oldest == NO_EVENT else spec.bucket_of(self.oldest)
        for pane, (online, off_duty, pings) in part.buckets.items():
            if pane < countable:
                self.not_counted += pings
                continue
            if self.panes.add(pane, online, off_duty):
                self.dirty.update(spec.rows_of_pane(pane))
        segments = self.segments
        if segments is not None and part.segments:
            for pane, pings in part.segments.items():
                if pane >= countable:  # older: counted in not_counted above
                    if type(pings) is bytes:  # packed records (the compiled reader)
                        segments.add_records(pane, pings)
                    else:
                        segments.add_pings(pane, pings)

    def report(self, now: float, final: bool = False) -> ShardReport | None:
        """Closed changed rows, or every changed row if ``final``; None if nothing new.

        ``now`` (the wall clock) only moves the flush watermark of a quiet
        live run; the watermark kept and the state dropped never see it.
        """
        spec = self.spec
        marks = self.marks.values()
        watermark = max(self.watermark, dataflow_watermark(marks, spec))
        self.watermark = watermark
        flush = max(watermark, flush_watermark(marks, now, spec))
        if final:
            closed = list(self.dirty)
        else:
            closed = [r for r in self.dirty if spec.row_end(r) <= flush]
        partials = {row: self.panes.row_counts(row) for row in closed}
        self.dirty.difference_update(closed)
        segments = self.segments
        segment_partials: dict = {}
        other: tuple[int, ...] = ()
        if segments is not None:
            # Before any pane is dropped: the rows reported are whole.
            segment_partials = segments.take_keyed_partials(None if final else flush)
            other = tuple(segments.other_pings)

        oldest = oldest_countable(marks, spec)
        if oldest > self.oldest:
            self.oldest = oldest
            keep_from = spec.oldest_kept_pane(oldest)
            if self.dirty:  # never the panes of a row still to be reported
                keep_from = min(keep_from, min(self.dirty) + spec.bucket_s - spec.window_s)
            first = None if segments is None else segments.first_dirty_row()
            if first is not None:
                keep_from = min(keep_from, first + spec.bucket_s - spec.window_s)
            self.panes.drop_before(keep_from)
            if segments is not None:
                segments.drop_before(keep_from)
        if segments is not None:
            segments.freeze_closed(watermark)

        summary = (watermark, flush, self.oldest, self.not_counted, other)
        if not partials and not segment_partials and not final and summary == self._last_sent:
            return None
        self._last_sent = summary
        return ShardReport(
            watermark, self.oldest, partials, self.not_counted, flush, segment_partials, other
        )
