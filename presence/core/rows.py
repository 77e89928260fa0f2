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

Segment rows (:class:`SegmentRow`, one per definition, value and row) follow
the same rules: summed over the shards' partials, written once every shard's
watermark passed them, rewritten with ``revision + 1`` when a late ping
changes them, forgotten with the global rows. With ``h3`` there are tens of
thousands of them per bucket, so their state is kept per row (so forgetting
a row is one dict deletion) and compact: per row and shard, the shard's latest
packed partial of each (definition, value) it reported (a shard's report is
added with one ``dict.update``, which reuses the keys' hashes: no Python
code runs per partial), and per (definition, value) one packed int of what
was written. A row's counts are summed over its shards when it is taken.

The recovery state is a :class:`BookSnapshot` (plain data, with a
``version``); the dict of earlier versions (version 0) still restores.
"""

from __future__ import annotations

import zlib
from itertools import repeat

import h3.api.basic_int as h3int
from dataclasses import dataclass
from typing import ClassVar

from presence.core.model import (  # noqa: F401
    NO_EVENT, PartitionMark, Row, SegmentRow, SegmentTotals, ShardReport, Totals, VersionedState,
)
from presence.core.segment_panes import (
    _AVAILABLE_SHIFT, _OVERFLOW_MASK, _PARTIAL_SHIFT, pack_partial,
)
from presence.core.windows import WindowSpec

BOOK_SNAPSHOT_VERSION = 1
"""Version of :class:`BookSnapshot`. 0 is the dict written before it existed
(same fields, no segments); raise it when a field changes meaning."""

_COUNT_BITS = 32
_COUNT_MASK = (1 << _COUNT_BITS) - 1


_SEGMENT_PARTS_LAYOUT = 2
"""``BookSnapshot.segment_parts_layout``: 2 is ``{row: {shard number: {key:
packed}}}``; 1 (earlier presence) ``{row: {key: (shard number, packed, ...)}}``,
converted when restored."""


def _pack_written(online: int, available: int, revision: int) -> int:
    return (revision << (2 * _COUNT_BITS)) | (online << _COUNT_BITS) | available


def _unpack_written(packed: int) -> tuple[int, int, int]:
    return (packed >> _COUNT_BITS) & _COUNT_MASK, packed & _COUNT_MASK, packed >> (2 * _COUNT_BITS)


@dataclass(frozen=True)
class BookSnapshot(VersionedState):
    """The row book's recovery state: plain values, bytewax pickles it."""

    version: int
    watermarks: dict
    oldest: dict
    not_counted: dict
    partials: dict
    """``{row: {shard: (online, available)}}``."""
    written: dict
    """``{row: (online, available, revision)}``."""
    pending: tuple
    marks: dict
    rows_written: int
    row_rewrites: int
    segment_parts: dict | None = None
    """``{row: {shard number: {(definition number, value): packed partial}}}``
    (``segment_parts_layout`` 2)."""
    segment_written: dict | None = None
    """``{row: {(definition number, value): packed (online, available, revision)}}``."""
    segment_pending: dict | None = None
    """``{row: tuple of (definition number, value)}``."""
    other_pings: dict | None = None
    """``{shard: (pings under other, per definition)}`` (cumulative, as reported)."""
    segment_rows_written: tuple = ()
    segment_overflow_rows: tuple = ()
    segment_parts_layout: int = 1
    """How ``segment_parts`` is laid out (:data:`_SEGMENT_PARTS_LAYOUT`); 1 when absent."""

    VERSION: ClassVar[int] = BOOK_SNAPSHOT_VERSION
    WHAT: ClassVar[str] = "row book state"
    NOUN: ClassVar[str] = "book snapshot"

    @classmethod
    def from_version_0(cls, resume: dict) -> "BookSnapshot":
        """The plain dict of presence before segments."""
        return cls(
            version=0,
            watermarks=resume.get("watermarks", {}),
            oldest=resume.get("oldest", {}),
            not_counted=resume.get("not_counted", {}),
            partials=resume.get("partials", {}),
            written=resume.get("written", {}),
            pending=tuple(resume.get("pending", ())),
            marks=resume.get("marks", {}),
            rows_written=resume.get("rows_written", 0),
            row_rewrites=resume.get("row_rewrites", 0),
        )


class RowBook:
    """Sums of shard partials per row, revisions, and what was written."""

    def __init__(self, spec: WindowSpec, resume: BookSnapshot | dict | None = None) -> None:
        self.spec = spec
        snap = BookSnapshot.of(resume) if resume else BookSnapshot.of({})
        self.watermarks: dict[str, float] = dict(snap.watermarks)
        self.oldest: dict[str, float] = dict(snap.oldest)
        self.not_counted: dict[str, int] = dict(snap.not_counted)
        self.partials: dict[int, dict[str, tuple[int, int]]] = {
            row: dict(parts) for row, parts in snap.partials.items()
        }
        self.written: dict[int, tuple[int, int, int]] = dict(snap.written)
        self.pending: set[int] = set(snap.pending)
        self.marks: dict[str, PartitionMark] = dict(snap.marks)
        self.rows_written: int = snap.rows_written
        self.row_rewrites: int = snap.row_rewrites
        # Shards' flush watermarks (may follow the wall clock): never stored.
        self.flush: dict[str, float] = {}
        # Segment rows, per row: see the module's docstring.
        self.definitions = tuple(spec.segments)
        count = len(self.definitions)
        self.segment_parts: dict[int, dict[int, dict[tuple, int]]] = {}
        if snap.segment_parts_layout == _SEGMENT_PARTS_LAYOUT:
            for row, by_shard in (snap.segment_parts or {}).items():
                self.segment_parts[row] = {n: dict(p) for n, p in by_shard.items()}
        else:  # (shard number, packed, ...) per key: earlier presence
            for row, parts in (snap.segment_parts or {}).items():
                by_shard = self.segment_parts[row] = {}
                for key, pairs in parts.items():
                    for at in range(0, len(pairs), 2):
                        p = pairs[at + 1]  # online << 33 | available << 1 | overflow
                        by_shard.setdefault(pairs[at], {})[key] = pack_partial(
                            p >> 33, (p >> 1) & _COUNT_MASK, bool(p & 1))
        self.segment_written: dict[int, dict[tuple, int]] = {
            row: dict(w) for row, w in (snap.segment_written or {}).items()
        }
        self.segment_pending: dict[int, set[tuple]] = {
            row: set(keys) for row, keys in (snap.segment_pending or {}).items()
        }
        self.other_pings: dict[str, tuple[int, ...]] = dict(snap.other_pings or {})
        self.segment_rows_written: list[int] = list(snap.segment_rows_written) or [0] * count
        self.segment_overflow_rows: list[int] = list(snap.segment_overflow_rows) or [0] * count
        if len(self.segment_rows_written) != count or len(self.segment_overflow_rows) != count:
            raise ValueError(
                f"row book state was made with {len(self.segment_rows_written)} segment "
                f"definitions, not {count}"
            )

    def snapshot(self) -> BookSnapshot:
        segments = bool(self.definitions)
        return BookSnapshot(
            version=BOOK_SNAPSHOT_VERSION,
            watermarks=dict(self.watermarks),
            oldest=dict(self.oldest),
            not_counted=dict(self.not_counted),
            partials={row: dict(parts) for row, parts in self.partials.items()},
            written=dict(self.written),
            pending=tuple(self.pending),
            marks=dict(self.marks),
            rows_written=self.rows_written,
            row_rewrites=self.row_rewrites,
            segment_parts={row: {n: dict(p) for n, p in by_shard.items()}
                           for row, by_shard in self.segment_parts.items()}
            if segments else None,
            segment_written={row: dict(w) for row, w in self.segment_written.items()}
            if segments else None,
            segment_pending={row: tuple(k) for row, k in self.segment_pending.items()}
            if segments else None,
            other_pings=dict(self.other_pings) if segments else None,
            segment_rows_written=tuple(self.segment_rows_written),
            segment_overflow_rows=tuple(self.segment_overflow_rows),
            segment_parts_layout=_SEGMENT_PARTS_LAYOUT,
        )

    def add_report(self, shard: str, report: ShardReport) -> None:
        self.watermarks[shard] = max(self.watermarks.get(shard, NO_EVENT), report.watermark)
        self.oldest[shard] = max(self.oldest.get(shard, NO_EVENT), report.oldest_countable)
        self.flush[shard] = report.flush
        self.not_counted[shard] = max(self.not_counted.get(shard, 0), report.not_counted)
        for row, counts in report.partials.items():
            self.partials.setdefault(row, {})[shard] = counts
            self.pending.add(row)
        if report.other_pings:
            before = self.other_pings.get(shard)
            self.other_pings[shard] = (
                report.other_pings if before is None
                else tuple(map(max, before, report.other_pings))
            )
        if report.segment_partials:
            self._add_segment_partials(_shard_number(shard), report.segment_partials)

    def _add_segment_partials(self, number: int, partials: dict) -> None:
        parts_by_row = self.segment_parts
        pending = self.segment_pending
        for row, packed_by_key in partials.items():
            by_shard = parts_by_row.get(row)
            if by_shard is None:
                by_shard = parts_by_row[row] = {}
            parts = by_shard.get(number)
            if parts is None:
                by_shard[number] = dict(packed_by_key)
            else:
                parts.update(packed_by_key)  # a newer partial replaces the shard's older one
            keys = pending.get(row)
            if keys is None:
                pending[row] = set(packed_by_key)
            else:
                keys.update(packed_by_key)

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

    def take_segment_rows(self, final: bool = False) -> list[SegmentRow]:
        """Segment rows to (re)write now, as :meth:`take_rows` (call it after it)."""
        if not self.segment_pending:
            return []
        spec = self.spec
        watermark = self.flush_watermark
        ready = sorted(r for r in self.segment_pending if final or spec.row_end(r) <= watermark)
        definitions = self.definitions
        names = [d.name for d in definitions]
        keys_of = [_key_builder(d) for d in definitions]
        rows_written = self.segment_rows_written
        overflow_rows = self.segment_overflow_rows
        shift, available_shift, mask = _PARTIAL_SHIFT, _AVAILABLE_SHIFT, _COUNT_MASK
        overflow_mask = _OVERFLOW_MASK
        out: list[SegmentRow] = []
        for row in ready:
            keys = _sorted_keys(self.segment_pending.pop(row))
            shards = list(self.segment_parts.get(row, {}).values())
            # Each key's partials summed over the row's shards, in C: packed
            # partials add up field by field (pack_partial), a missing one is 0.
            if not shards:
                totals = repeat(0)
            elif len(shards) == 1:
                totals = map(shards[0].get, keys, repeat(0))
            else:
                totals = map(sum, zip(*[map(p.get, keys, repeat(0)) for p in shards]))
            written = self.segment_written.get(row)
            if written is None:
                written = self.segment_written[row] = {}
            start, end = spec.row_start(row), spec.row_end(row)
            for key, total in zip(keys, totals):
                online = total >> shift
                available = (total >> available_shift) & mask
                overflow = total & overflow_mask
                if online == 0:
                    continue
                before = written.get(key)
                if before is not None:
                    b_online, b_available, b_revision = _unpack_written(before)
                    if b_online == online and b_available == available:
                        continue
                    revision = b_revision + 1
                else:
                    revision = 1
                written[key] = _pack_written(online, available, revision)
                number, value = key
                out.append(SegmentRow(
                    names[number], keys_of[number](value), row, start, end,
                    online, available, revision, bool(overflow),
                ))
                rows_written[number] += 1
                if overflow:
                    overflow_rows[number] += 1
        self._forget_final_rows()
        return out

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
        if self.segment_written or self.segment_parts:
            pending = self.segment_pending
            for row in [r for r in self.segment_parts if r < cutoff and r not in pending]:
                del self.segment_parts[row]
                self.segment_written.pop(row, None)
            for row in [r for r in self.segment_written if r < cutoff and r not in pending]:
                del self.segment_written[row]

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
            unlocated=sum(m.unlocated for m in marks),
            segments=self._segment_totals(),
        )

    def _segment_totals(self) -> tuple[SegmentTotals, ...]:
        out = []
        others = list(self.other_pings.values())
        for number, definition in enumerate(self.definitions):
            out.append(SegmentTotals(
                definition.name,
                sum(o[number] for o in others if number < len(o)),
                self.segment_rows_written[number],
                self.segment_overflow_rows[number],
            ))
        return tuple(out)


def _shard_number(shard: str) -> int:
    """``shard-03`` -> 3 (the book's compact key of a shard)."""
    try:
        return int(shard.rsplit("-", 1)[-1])
    except ValueError:  # not a shard key of presence.flow (tests): still stable and distinct
        return zlib.crc32(shard.encode()) + (1 << 32)


def _key_builder(definition):
    """``definition.key`` with its field names computed once."""
    fields = definition.fields
    if fields == ("h3",):
        int_to_str = h3int.int_to_str

        def h3_key(value: tuple) -> dict:
            cell = value[0]
            return {"h3": int_to_str(cell) if type(cell) is int else cell}

        return h3_key
    return definition.key


def _sorted_keys(keys) -> list:
    """Keys in a fixed order: definition number, then value (cells as numbers,
    cities as text); :func:`_sort_key`'s text order where values do not compare
    (a definition's ``other`` beside its H3 cells)."""
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=_sort_key)


def _sort_key(key: tuple) -> tuple:
    """Definition number, then the value as text (cells are ints, cities strings)."""
    number, value = key
    return number, tuple(map(str, value))
