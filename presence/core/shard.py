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
"""

from __future__ import annotations

from dataclasses import replace

from presence.core.model import LIVE, NO_EVENT, PartitionMark, ShardPart, ShardReport
from presence.core.panes import ShardPanes
from presence.core.watermark import dataflow_watermark, flush_watermark, oldest_countable
from presence.core.windows import WindowSpec


class ShardState:
    """State of one driver shard, updated by :class:`ShardPart` items."""

    def __init__(self, spec: WindowSpec, resume: dict | None = None) -> None:
        self.spec = spec
        if resume:
            self.panes = ShardPanes.restore(spec, resume["panes"])
            # A new run: no partition has gone idle or ended in it yet.
            self.marks: dict[str, PartitionMark] = {
                k: replace(m, state=LIVE) for k, m in resume["marks"].items()
            }
            self.watermark: float = resume["watermark"]
            self.oldest: float = resume["oldest"]
            self.dirty: set[int] = set(resume["dirty"])
            self.not_counted: int = resume.get("not_counted", 0)
        else:
            self.panes = ShardPanes(spec)
            self.marks = {}
            self.watermark = NO_EVENT
            self.oldest = NO_EVENT
            self.dirty = set()
            self.not_counted = 0
        self._last_sent: tuple | None = None

    def snapshot(self) -> dict:
        return {
            "panes": self.panes.snapshot(),
            "marks": dict(self.marks),
            "watermark": self.watermark,
            "oldest": self.oldest,
            "dirty": tuple(self.dirty),
            "not_counted": self.not_counted,
        }

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

        oldest = oldest_countable(marks, spec)
        if oldest > self.oldest:
            self.oldest = oldest
            keep_from = spec.oldest_kept_pane(oldest)
            if self.dirty:  # never the panes of a row still to be reported
                keep_from = min(keep_from, min(self.dirty) + spec.bucket_s - spec.window_s)
            self.panes.drop_before(keep_from)

        summary = (watermark, flush, self.oldest, self.not_counted)
        if not partials and not final and summary == self._last_sent:
            return None
        self._last_sent = summary
        return ShardReport(watermark, self.oldest, partials, self.not_counted, flush)
