"""The row book: adds the shards' partial counts up into report rows.

A row is written once every shard's watermark has passed its interval's end
(so every shard has reported its part), and rewritten, with ``revision + 1``,
whenever a late ping changes its counts afterwards. At the end of a bounded
run every pending row is written whatever the watermark. The book also keeps
the partitions' latest marks, for ``pipeline_status`` and progress lines.

Every ping total (:class:`Totals`) comes from the partitions' own counters,
kept in their recovery state, so it is the same whatever the workers,
processes, batching or crashes; only the counts of writes (rows written,
rewrites) depend on how reads were batched.
"""

from __future__ import annotations

from presence.core.model import NO_EVENT, PartitionMark, Row, ShardReport, Totals  # noqa: F401
from presence.core.windows import WindowSpec


class RowBook:
    """Sums of shard partials per row, revisions, and what was written."""

    def __init__(self, spec: WindowSpec, resume: dict | None = None) -> None:
        self.spec = spec
        resume = resume or {}
        self.watermarks: dict[str, float] = dict(resume.get("watermarks", {}))
        self.oldest: dict[str, float] = dict(resume.get("oldest", {}))
        self.not_counted: dict[str, int] = dict(resume.get("not_counted", {}))
        self.partials: dict[int, dict[str, tuple[int, int]]] = {
            row: dict(parts) for row, parts in resume.get("partials", {}).items()
        }
        self.written: dict[int, tuple[int, int, int]] = dict(resume.get("written", {}))
        self.pending: set[int] = set(resume.get("pending", ()))
        self.marks: dict[str, PartitionMark] = dict(resume.get("marks", {}))
        self.rows_written: int = resume.get("rows_written", 0)
        self.row_rewrites: int = resume.get("row_rewrites", 0)
        # Shards' flush watermarks (may follow the wall clock): never stored.
        self.flush: dict[str, float] = {}

    def snapshot(self) -> dict:
        return {
            "watermarks": dict(self.watermarks),
            "oldest": dict(self.oldest),
            "not_counted": dict(self.not_counted),
            "partials": {row: dict(parts) for row, parts in self.partials.items()},
            "written": dict(self.written),
            "pending": tuple(self.pending),
            "marks": dict(self.marks),
            "rows_written": self.rows_written,
            "row_rewrites": self.row_rewrites,
        }

    def add_report(self, shard: str, report: ShardReport) -> None:
        self.watermarks[shard] = max(self.watermarks.get(shard, NO_EVENT), report.watermark)
        self.oldest[shard] = max(self.oldest.get(shard, NO_EVENT), report.oldest_countable)
        self.flush[shard] = report.flush
        self.not_counted[shard] = max(self.not_counted.get(shard, 0), report.not_counted)
        for row, counts in report.partials.items():
            self.partials.setdefault(row, {})[shard] = counts
            self.pending.add(row)

    def add_mark(self, mark: PartitionMark) -> None:
        self.marks[mark.key] = mark

    @property
    def watermark(self) -> float:
        """Least shard watermark: rows ending at or before it are complete."""
        if len(self.watermarks) < self.spec.shards:
            return NO_EVENT
        return min(self.watermarks.values())

    @property
    def flush_watermark(self) -> float:
        """Rows ending at or before it are written now (in a quiet live run it
        follows the wall clock; never stored)."""
        if len(self.watermarks) < self.spec.shards:
            return NO_EVENT
        flush = self.flush
        return min(max(w, flush.get(s, NO_EVENT)) for s, w in self.watermarks.items())

    def take_rows(self, final: bool = False) -> list[Row]:
        """Rows to (re)write now, oldest first; ``final`` takes every pending row."""
        spec = self.spec
        watermark = self.flush_watermark
        ready = sorted(r for r in self.pending if final or spec.row_end(r) <= watermark)
        rows = []
        for row in ready:
            parts = self.partials[row].values()
            online = sum(p[0] for p in parts)
            available = sum(p[1] for p in parts)
            before = self.written.get(row)
            if online == 0 or (before and before[:2] == (online, available)):
                continue
            revision = before[2] + 1 if before else 1
            self.written[row] = (online, available, revision)
            rows.append(
                Row(row, spec.row_start(row), spec.row_end(row), online, available, revision)
            )
        self.pending.difference_update(ready)
        self.rows_written += len(rows)
        self.row_rewrites += sum(1 for r in rows if r.revision > 1)
        self._forget_final_rows()
        return rows

    def _forget_final_rows(self) -> None:
        """Rows before the oldest countable bucket can never change again."""
        if len(self.oldest) < self.spec.shards:
            return
        oldest = min(self.oldest.values())
        if oldest == NO_EVENT:
            return
        cutoff = self.spec.bucket_of(oldest)
        for row in [r for r in self.written if r < cutoff and r not in self.pending]:
            del self.written[row]
            self.partials.pop(row, None)

    def totals(self) -> Totals:
        marks = self.marks.values()
        not_counted = sum(self.not_counted.values())
        by_reason: dict[str, int] = {}
        for mark in marks:
            for reason, count in mark.rejected:
                by_reason[reason] = by_reason.get(reason, 0) + count
        invalid = sum(m.invalid for m in marks)
        too_late = sum(m.too_late for m in marks)
        if too_late:
            by_reason["too_late"] = too_late
        return Totals(
            valid=sum(m.valid for m in marks) - not_counted,
            invalid=invalid,
            late=sum(m.late for m in marks),
            too_late=too_late + not_counted,
            watermark=self.watermark,
            not_counted=not_counted,
            rows_written=self.rows_written,
            row_rewrites=self.row_rewrites,
            dead_letters=invalid + too_late,
            dead_letters_by_reason=tuple(sorted(by_reason.items())),
        )
