"""The row book's segment accounting: each shard's partials per row and value,
their sums, what was written, what is pending (SPEC "Segments").

Values are named by their *partial key*: :func:`partial_key` (the definition
number as two bytes, then the value's key bytes of
:mod:`presence.core.segment_records`). Bytes cache their hash and compare
with one ``memcmp``, so the book's lookups stay cheap with tens of thousands
of H3 cells per row.

Per row and partial key the tally keeps each shard's latest packed partial
(:func:`presence.core.segment_panes.pack_partial`: they add up field by field,
so a row's counts are one ``sum``), what was written ``(online, available,
revision)``, and whether it is *pending* (reported since it was last taken).
A shard reports its partials as packed bytes (:func:`pack_partials`: ``row:i64
key_len:u16 key packed:u64``, little-endian, one per partial; the compiled
store makes them with no Python object per partial) or as a dict ``{row:
{partial key: packed}}``.

:class:`SegmentTally` is the reference; ``native/src/segment_tally.rs`` is its
compiled twin (``presence._native.SegmentTally``), used when built
(:func:`tally_class`). Both snapshot to the same plain data, so either
restores the other's state.
"""

from __future__ import annotations

import struct
from itertools import repeat
from typing import Iterable, Mapping, Sequence

from presence.core.segment_panes import _AVAILABLE_SHIFT, _COUNT_MASK, _OVERFLOW_MASK, _PARTIAL_SHIFT
from presence.core.segment_records import (  # noqa: F401  (partial keys: re-exported)
    OTHER_KEY, decode_key, dimension_kinds, partial_key, split_partial_key,
)
from presence.core.segments import OTHER

_HEAD = struct.Struct("<qH")
_PACKED = struct.Struct("<Q")
_KEY_LEN = struct.Struct("<H")
_KEY_STATE = struct.Struct("<IIIBH")
_PART = struct.Struct("<IQ")

Entry = tuple
"""One value of a row in a snapshot: ``(key, written (online, available, revision)
or None, pending, ((slot, packed), ...))``."""


def encode_row(entries: Iterable[Entry]) -> bytes:
    """A row of a tally's snapshot as bytes (little-endian, keys in byte order;
    per key ``key_len:u16 key online:u32 available:u32 revision:u32 pending:u8
    parts:u16``, then per part ``slot:u32 packed:u64``; revision 0: never
    written). Bytes pickle as one copy, so the snapshot of a whole correction
    horizon costs little to write each epoch."""
    out = bytearray()
    for key, written, pending, parts in sorted(entries, key=lambda e: e[0]):
        online, available, revision = written or (0, 0, 0)
        out += _KEY_LEN.pack(len(key))
        out += key
        out += _KEY_STATE.pack(online, available, revision, bool(pending), len(parts))
        for slot, packed in sorted(parts):
            out += _PART.pack(slot, packed)
    return bytes(out)


def decode_row(blob: bytes) -> list[Entry]:
    """:func:`encode_row`'s inverse."""
    out = []
    at, end = 0, len(blob)
    while at < end:
        (size,) = _KEY_LEN.unpack_from(blob, at)
        key = bytes(blob[at + 2:at + 2 + size])
        at += 2 + size
        online, available, revision, pending, count = _KEY_STATE.unpack_from(blob, at)
        at += _KEY_STATE.size
        parts = tuple(_PART.unpack_from(blob, at + i * _PART.size) for i in range(count))
        at += count * _PART.size
        out.append((key, (online, available, revision) if revision else None, bool(pending),
                    parts))
    return out


def key_fields(definitions) -> list[list[tuple[str, int]]]:
    """Per definition, its key fields ``(name, kind)``: what a tally needs to
    make ``key`` documents (``SegmentDefinition.key``) from partial keys."""
    return [list(zip(d.fields, kinds)) for d, kinds in zip(definitions, dimension_kinds(definitions))]


def key_document(key: bytes, fields: Sequence[Sequence[tuple[str, int]]]) -> tuple[int, dict]:
    """``(definition number, key document)`` of a partial key (H3 cells in hex)."""
    number = key[0] | key[1] << 8
    dims = fields[number]
    if key[2:] == OTHER_KEY:
        return number, {name: OTHER[0] for name, _ in dims}
    value = decode_key(key[2:], tuple(kind for _, kind in dims))
    return number, {name: (format(part, "x") if kind else part)
                    for (name, kind), part in zip(dims, value)}


def pack_partials(partials: Mapping[int, Mapping[bytes, int]]) -> bytes:
    """``{row: {partial key: packed}}`` as packed bytes."""
    out = bytearray()
    for row, by_key in partials.items():
        for key, packed in by_key.items():
            out += _HEAD.pack(row, len(key))
            out += key
            out += _PACKED.pack(packed)
    return bytes(out)


def unpack_partials(blob: bytes) -> dict[int, dict[bytes, int]]:
    """:func:`pack_partials`' inverse."""
    out: dict[int, dict[bytes, int]] = {}
    at, end = 0, len(blob)
    while at < end:
        row, size = _HEAD.unpack_from(blob, at)
        at += _HEAD.size
        key = bytes(blob[at:at + size])
        at += size
        (packed,) = _PACKED.unpack_from(blob, at)
        at += _PACKED.size
        out.setdefault(row, {})[key] = packed
    return out


class SegmentTally:
    """Segment partials of every shard, per row (pure Python); ``fields`` as
    :func:`key_fields` gives them."""

    def __init__(self, fields: Sequence[Sequence[tuple[str, int]]]) -> None:
        self.fields = [list(dims) for dims in fields]
        self.parts: dict[int, dict[int, dict[bytes, int]]] = {}
        """``{row: {shard slot: {partial key: packed}}}``: each shard's latest partials."""
        self.written: dict[int, dict[bytes, tuple[int, int, int]]] = {}
        """``{row: {partial key: (online, available, revision)}}``."""
        self.pending: dict[int, set[bytes]] = {}
        self._blobs: dict[int, bytes] = {}
        """Each row's snapshot bytes, until the row changes."""

    def add_packed(self, slot: int, blob: bytes) -> None:
        self.add_dict(slot, unpack_partials(blob))

    def add_dict(self, slot: int, partials: Mapping[int, Mapping[bytes, int]]) -> None:
        parts_by_row = self.parts
        pending = self.pending
        blobs = self._blobs
        for row, packed_by_key in partials.items():
            blobs.pop(row, None)
            by_slot = parts_by_row.get(row)
            if by_slot is None:
                by_slot = parts_by_row[row] = {}
            parts = by_slot.get(slot)
            if parts is None:
                by_slot[slot] = dict(packed_by_key)
            else:
                parts.update(packed_by_key)  # a newer partial replaces the shard's older one
            keys = pending.get(row)
            if keys is None:
                pending[row] = set(packed_by_key)
            else:
                keys.update(packed_by_key)

    def pending_rows(self) -> list[int]:
        return list(self.pending)

    def has_pending(self) -> bool:
        return bool(self.pending)

    def take(self, rows: Iterable[int]) -> list[tuple[int, int, dict, int, int, int, bool]]:
        """Take the pending keys of ``rows`` (in that order; keys in byte order):
        ``(row, definition number, key document, online, available, revision,
        overflow)`` of each whose sum is not zero online and differs from what
        was written (then recorded as written, with the next revision)."""
        fields = self.fields
        shift, available_shift, mask = _PARTIAL_SHIFT, _AVAILABLE_SHIFT, _COUNT_MASK
        out = []
        for row in rows:
            keys = self.pending.pop(row, None)
            if not keys:
                continue
            self._blobs.pop(row, None)
            keys = sorted(keys)
            shards = list(self.parts.get(row, {}).values())
            # Each key's partials summed over the row's shards, in C: packed
            # partials add up field by field, a missing one is 0.
            if not shards:
                totals: Iterable[int] = repeat(0)
            elif len(shards) == 1:
                totals = map(shards[0].get, keys, repeat(0))
            else:
                totals = map(sum, zip(*[map(p.get, keys, repeat(0)) for p in shards]))
            written = self.written.get(row)
            if written is None:
                written = self.written[row] = {}
            for key, total in zip(keys, totals):
                online = total >> shift
                if online == 0:
                    continue
                available = (total >> available_shift) & mask
                before = written.get(key)
                if before is None:
                    revision = 1
                elif before[0] == online and before[1] == available:
                    continue
                else:
                    revision = before[2] + 1
                written[key] = (online, available, revision)
                number, document = key_document(key, fields)
                out.append((row, number, document, online, available, revision,
                            bool(total & _OVERFLOW_MASK)))
        return out

    def forget_before(self, cutoff: int) -> int:
        """Forget rows before ``cutoff`` that have nothing pending; how many."""
        pending = self.pending
        gone = {r for r in (*self.parts, *self.written) if r < cutoff and r not in pending}
        for row in gone:
            self.parts.pop(row, None)
            self.written.pop(row, None)
            self._blobs.pop(row, None)
        return len(gone)

    def __len__(self) -> int:
        return len(set(self.parts) | set(self.written) | set(self.pending))

    def _row_entries(self, row: int) -> list[Entry]:
        slots: dict[bytes, list] = {}
        for slot, by_key in self.parts.get(row, {}).items():
            for key, packed in by_key.items():
                slots.setdefault(key, []).append((slot, packed))
        written = self.written.get(row, {})
        pending = self.pending.get(row, set())
        keys = set(slots) | set(written) | pending
        return [(k, written.get(k), k in pending, tuple(slots.get(k, ()))) for k in keys]

    def snapshot(self) -> dict[int, bytes]:
        """``{row: bytes}`` (:func:`encode_row`); a row unchanged since the last
        snapshot keeps its bytes."""
        blobs = self._blobs
        out = {}
        for row in set(self.parts) | set(self.written) | set(self.pending):
            blob = blobs.get(row)
            if blob is None:
                entries = self._row_entries(row)
                if not entries:
                    continue
                blob = blobs[row] = encode_row(entries)
            out[row] = blob
        return out

    @staticmethod
    def restore(fields: Sequence, rows: Mapping[int, bytes]) -> "SegmentTally":
        tally = SegmentTally(fields)
        for row, blob in rows.items():
            for key, written, pending, parts in decode_row(blob):
                for slot, packed in parts:
                    tally.parts.setdefault(row, {}).setdefault(slot, {})[key] = packed
                if written is not None:
                    tally.written.setdefault(row, {})[key] = written
                if pending:
                    tally.pending.setdefault(row, set()).add(key)
        return tally


def tally_class(reader: str | None = None) -> type:
    """The compiled tally when the compiled reader runs (:func:`presence.core.
    partition.reader_in_use` of ``reader``, PRESENCE_READER; None: the default),
    else :class:`SegmentTally`."""
    from presence.core import partition

    if partition.reader_in_use(reader or partition.DEFAULT_READER) == "native":
        return partition._native.SegmentTally
    return SegmentTally
