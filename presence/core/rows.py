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
thousands of them per bucket: their accounting is a
:class:`presence.core.segment_tally.SegmentTally` (each shard's latest
partial per row and value, what was written, what is pending; compiled in
``native/`` when built), values named by their partial keys (bytes).

The recovery state is a :class:`BookSnapshot` (plain data, with a
``version``); the dict of earlier versions (version 0) still restores.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from presence.core.model import (  # noqa: F401
    NO_EVENT, PartitionMark, Row, SegmentRow, SegmentRows, SegmentTotals, ShardReport, Totals,
    VersionedState,
)
from presence.core.segment_panes import pack_partial
from presence.core.segment_records import dimension_kinds
from presence.core.segment_tally import encode_row, key_fields, partial_key, tally_class
from presence.core.windows import WindowSpec

BOOK_SNAPSHOT_VERSION = 1
"""Version of :class:`BookSnapshot`. 0 is the dict written before it existed
(same fields, no segments); raise it when a field changes meaning."""

_COUNT_BITS = 32
_COUNT_MASK = (1 << _COUNT_BITS) - 1


_SEGMENT_PARTS_LAYOUT = 3
"""``BookSnapshot.segment_parts_layout``: 3 is the tally's snapshot,
``{row: bytes}`` (:func:`presence.core.segment_tally.encode_row`: partial keys,
each shard's partial, what was written, pending); 1 (earlier presence: dicts
keyed by ``(definition number, value)`` of ``(shard number, packed, ...)``
tuples, with ``segment_written`` and ``segment_pending``) is converted when
restored. (2 never left development.)"""


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
    """``{row: bytes}``: the segment tally's snapshot (``segment_parts_layout`` 3)."""
    segment_written: dict | None = None
    """Layout 1 only: ``{row: {(definition number, value): packed written}}``."""
    segment_pending: dict | None = None
    """Layout 1 only: ``{row: tuple of (definition number, value)}``."""
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

    def __init__(self, spec: WindowSpec, resume: BookSnapshot | dict | None = None,
                 reader: str | None = None) -> None:
        """``reader`` (PRESENCE_READER) picks the segment tally (:func:`tally_class`)."""
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
        self.segment_names = tuple(d.name for d in self.definitions)
        count = len(self.definitions)
        self._kinds = dimension_kinds(self.definitions)
        tally = tally_class(reader)
        fields = key_fields(self.definitions)
        if snap.segment_parts_layout == _SEGMENT_PARTS_LAYOUT:
            self.tally = tally.restore(fields, snap.segment_parts or {})
        elif snap.segment_parts_layout == 1:
            self.tally = tally.restore(fields, self._converted(snap))
        else:
            raise ValueError(
                f"row book segment layout {snap.segment_parts_layout} is not known to this "
                f"presence (it reads {_SEGMENT_PARTS_LAYOUT} and 1)"
            )
        self.other_pings: dict[str, tuple[int, ...]] = dict(snap.other_pings or {})
        self.segment_rows_written: list[int] = list(snap.segment_rows_written) or [0] * count
        self.segment_overflow_rows: list[int] = list(snap.segment_overflow_rows) or [0] * count
        if len(self.segment_rows_written) != count or len(self.segment_overflow_rows) != count:
            raise ValueError(
                f"row book state was made with {len(self.segment_rows_written)} segment "
                f"definitions, not {count}"
            )

    def _converted(self, snap: BookSnapshot) -> dict[int, bytes]:
        """The tally's snapshot of a book snapshot of layout 1 (keys
        ``(definition number, value)``, packed written ints)."""
        kinds = self._kinds
        keys: dict[tuple, bytes] = {}

        def key_of(key: tuple) -> bytes:
            out = keys.get(key)
            if out is None:
                out = keys[key] = partial_key(key[0], key[1], kinds)
            return out

        rows: dict[int, dict[bytes, list]] = {}  # {row: {key: [written, pending, parts]}}

        def entry(row: int, key: tuple) -> list:
            return rows.setdefault(row, {}).setdefault(key_of(key), [None, False, []])

        for row, by in (snap.segment_parts or {}).items():
            for key, pairs in by.items():  # {key: (shard number, old packed, ...)}
                for at in range(0, len(pairs), 2):
                    old = pairs[at + 1]  # online << 33 | available << 1 | overflow
                    entry(row, key)[2].append((_slot_of(pairs[at]), pack_partial(
                        old >> 33, (old >> 1) & _COUNT_MASK, bool(old & 1))))
        for row, by in (snap.segment_written or {}).items():
            for key, packed in by.items():
                entry(row, key)[0] = _unpack_written(packed)
        for row, ks in (snap.segment_pending or {}).items():
            for key in ks:
                entry(row, key)[1] = True
        return {row: encode_row((k, w, p, tuple(parts)) for k, (w, p, parts) in by.items())
                for row, by in rows.items()}

    @property
    def segment_pending(self) -> bool:
        """True if some segment row has changes not taken yet."""
        return self.tally.has_pending()

    def snapshot(self) -> BookSnapshot:
        segments = bool(self.definitions)
        tally = self.tally.snapshot() if segments else {}
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
            segment_parts=tally if segments else None,
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
        partials = report.segment_partials
        if partials:
            slot = _shard_slot(shard)
            if type(partials) is bytes:  # packed (presence.core.segment_tally.pack_partials)
                self.tally.add_packed(slot, partials)
            else:
                self.tally.add_dict(slot, partials)

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
        return list(self.take_segment_batch(final))

    def take_segment_batch(self, final: bool = False) -> SegmentRows:
        """:meth:`take_segment_rows` as one :class:`SegmentRows` (what the flow sends
        on: no Python object per row beyond the tally's tuple)."""
        tally = self.tally
        spec = self.spec
        batch = SegmentRows(self.segment_names, spec.bucket_s, spec.window_s, [])
        if not tally.has_pending():
            return batch
        watermark = self.flush_watermark
        ready = sorted(r for r in tally.pending_rows() if final or spec.row_end(r) <= watermark)
        taken = batch.taken = tally.take(ready)
        rows_written = self.segment_rows_written
        for number, count in Counter(t[1] for t in taken).items():
            rows_written[number] += count
        overflow_rows = self.segment_overflow_rows
        for number, count in Counter(t[1] for t in taken if t[6]).items():
            overflow_rows[number] += count
        self._forget_final_rows()
        return batch

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
        if self.definitions:
            self.tally.forget_before(cutoff)

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


def _shard_slot(shard: str) -> int:
    """The tally's slot of a shard: its number for ``shard-NN``, else a stable
    number from 2**31 up (tests' shard keys), distinct from those."""
    return _slot_of(_shard_number(shard))


def _slot_of(number: int) -> int:
    """A shard number of :func:`_shard_number` as a tally slot (below 2**32)."""
    return number if 0 <= number < 2**31 else (number & 0x7FFFFFFF) | 0x80000000


def _shard_number(shard: str) -> int:
    """``shard-03`` -> 3 (the book's compact key of a shard)."""
    try:
        return int(shard.rsplit("-", 1)[-1])
    except ValueError:  # not a shard key of presence.flow (tests): still stable and distinct
        return zlib.crc32(shard.encode()) + (1 << 32)
