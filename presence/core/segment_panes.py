"""Segment panes: for one driver shard, the distinct drivers of each segment
value in each bucket (SPEC "Segments").

For every definition, every bucket (pane) and every value seen in it, the
shard keeps the set of its drivers online and the set available. Values are
of two kinds at once: a few *dense* ones (a city: thousands of drivers of the
shard) and many *sparse* ones (an H3 cell at resolution 8: one or two drivers
of the shard). One representation does not fit both, so each set is stored
as whichever of two is smaller (see docs/segments.md for the measurements):

- a **bitmap**: a Python ``int`` over the shard's driver positions (as
  :mod:`presence.core.panes` does for the global panes), about ``n / 8`` bytes
  for positions below ``n``, when the set holds more than 1/16 of them;
- otherwise **sorted positions**: ``bytes`` of little-endian ``uint16``
  (``uint32`` plus one padding byte, so an odd length, once a shard has
  more than 65,536 drivers): 2 bytes per driver.

A value's entry in a pane is its online set alone when every one of those
drivers is available (the common case), or the pair ``(online, available)``
(``available`` may be ``None``). Sets and entries are immutable: an update
builds new ones, so a snapshot can share them.

Values are numbered per definition (codes, reused once no pane holds them);
panes map codes to entries. A row's counts for a value are the sizes of the
unions of the value's sets over the row's panes; the union of bitmaps is an
OR, of sorted positions a set union.

``snapshot()`` pickles each (definition, pane) once into ``bytes`` and keeps
that until the pane changes: a snapshot every epoch re-encodes only the few
panes that received pings since the last one, and bytewax's own pickling of
the state is then little more than a copy of those blobs.
"""

from __future__ import annotations

import pickle
from array import array
from typing import Iterable, Mapping, Sequence

from presence.core.panes import DriverIndex, positions_of
from presence.core.segment_records import decode_records, dimension_kinds, partial_key
from presence.core.segments import OTHER, SegmentDefinition
from presence.core.windows import WindowSpec

SNAPSHOT_VERSION = 1
_PICKLE_PROTOCOL = 5
_NO_PANE = -(2**62)

Container = "int | bytes"
"""A set of driver positions: a bitmap ``int`` or sorted positions ``bytes``."""

Groups = Mapping[tuple, tuple]
"""``{value: (online driver ids, off-duty driver ids, pings)}`` of one
definition in one pane: as :class:`presence.core.partition.BucketSets` per value."""


# --- partial counts ----------------------------------------------------------

_COUNT_BITS = 32
_COUNT_MASK = (1 << _COUNT_BITS) - 1
_AVAILABLE_SHIFT = 8
_PARTIAL_SHIFT = _AVAILABLE_SHIFT + _COUNT_BITS
_OVERFLOW_MASK = (1 << _AVAILABLE_SHIFT) - 1


def pack_partial(online: int, available: int, overflow: bool) -> int:
    """One shard's partial of a segment row as one int (small ints are shared):
    ``online << 40 | available << 8 | overflow``. The sum of up to 255 of them
    is the packed sum (each field apart; the low byte counts overflowing shards),
    so the row book adds a row's partials with ``sum``."""
    return (online << _PARTIAL_SHIFT) | (available << _AVAILABLE_SHIFT) | bool(overflow)


def unpack_partial(packed: int) -> tuple[int, int, bool]:
    """``(online, available, overflow)`` of a :func:`pack_partial` int (or a sum of them)."""
    return (packed >> _PARTIAL_SHIFT, (packed >> _AVAILABLE_SHIFT) & _COUNT_MASK,
            bool(packed & _OVERFLOW_MASK))


# --- sets of positions --------------------------------------------------------


def mask_of_positions(positions: Iterable[int]) -> int:
    """The bitmap of these positions."""
    positions = list(positions)
    if not positions:
        return 0
    bits = bytearray((max(positions) >> 3) + 1)
    for pos in positions:
        bits[pos >> 3] |= 1 << (pos & 7)
    return int.from_bytes(bits, "little")


def decode(container: int | bytes) -> Sequence[int]:
    """The positions of a container (a bitmap or sorted positions)."""
    if type(container) is int:
        return positions_of(container)
    if len(container) & 1:
        return memoryview(container)[:-1].cast("I")
    return memoryview(container).cast("H")


def encode(positions: set[int] | Sequence[int]) -> int | bytes:
    """The smaller container for these (distinct) positions."""
    count = len(positions)
    if count == 1:
        for only in positions:
            if only < 16:
                return 1 << only
            if only < 65536:
                return only.to_bytes(2, "little")
    top = max(positions)
    if top < 65536:
        if top < count << 4:
            return mask_of_positions(positions)
        return array("H", sorted(positions)).tobytes()
    if top < count << 5:
        return mask_of_positions(positions)
    return array("I", sorted(positions)).tobytes() + b"\0"


def encode_list(positions: Sequence[int]) -> int | bytes:
    """:func:`encode` for a non-empty list of positions that may repeat."""
    if len(positions) == 1:
        only = positions[0]
        if only < 16:
            return 1 << only
        if only < 65536:
            return only.to_bytes(2, "little")
    return encode(set(positions))


def size_of(container: int | bytes | None) -> int:
    """How many positions a container holds."""
    if container is None:
        return 0
    if type(container) is int:
        return container.bit_count()
    if type(container) is set:
        return len(container)
    return len(container) >> 2 if len(container) & 1 else len(container) >> 1


DENSE = 8
"""A batch bringing this many pings of one value to a pane makes the value's
entry there *open*: a mutable ``[online set, available set]`` of positions that
later batches update in place (a city gets dozens of pings per batch; rebuilding
its bitmap each time cost ~50 us). It is encoded (:func:`settle`) whenever the
pane is pickled: frozen, or snapshotted."""


def settle(entry):
    """The stored form of an entry: an open ``[online, available]`` pair is encoded."""
    if type(entry) is not list:
        return entry
    on, av = entry
    encoded = encode(on)
    if len(av) == len(on):
        return encoded  # available is a subset of online: equal
    return (encoded, encode(av) if av else None)


def settled(table: dict) -> dict:
    """A pane's table as stored (:func:`settle` of every entry)."""
    return {code: settle(entry) if type(entry) is list else entry for code, entry in table.items()}


def opened(entry) -> list:
    """An entry as an open ``[online set, available set]`` pair."""
    if type(entry) is list:
        return entry
    if type(entry) is tuple:
        on, av = entry
        on_set = set(decode(on))
        return [on_set, set() if av is None else set(decode(av))]
    on_set = set(decode(entry))
    return [on_set, set(on_set)]


def merge(container: int | bytes | None, positions: list[int]) -> int | bytes | None:
    """``container`` with ``positions`` added; the very same object if none is new."""
    if not positions:
        return container
    if container is None:
        return encode(set(positions))
    if type(container) is int:
        merged = container | mask_of_positions(positions)
        if merged == container:
            return container
        top = merged.bit_length()
        if merged.bit_count() << (4 if top <= 65536 else 5) <= top:
            return encode(positions_of(merged))  # a far new position made it sparse
        return merged
    old = {container[0] | container[1] << 8} if len(container) == 2 else set(decode(container))
    before = len(old)
    old.update(positions)
    if len(old) == before:
        return container
    return encode(old)


def union_size(containers: Sequence[int | bytes]) -> int:
    """How many distinct positions the containers hold together."""
    if len(containers) < 2:
        return size_of(containers[0]) if containers else 0
    mask = 0
    seen = None
    for c in containers:
        if type(c) is int:
            mask |= c
            continue
        if seen is None:
            seen = set()
        if type(c) is set:
            seen.update(c)
        elif len(c) == 2:  # one driver: the usual sparse set (an H3 cell)
            seen.add(c[0] | c[1] << 8)
        elif len(c) & 1:
            seen.update(memoryview(c)[:-1].cast("I"))
        else:
            seen.update(memoryview(c).cast("H"))
    if seen is None:
        return mask.bit_count()
    if not mask:
        return len(seen)
    if len(seen) > 8:
        return (mask | mask_of_positions(seen)).bit_count()
    for pos in seen:
        mask |= 1 << pos
    return mask.bit_count()


def _counts(tables: list[dict], code: int) -> tuple[int, int]:
    """(online, available): sizes of the unions of one value's sets over these panes."""
    first = None
    more = None
    for values in tables:
        entry = values.get(code)
        if entry is None:
            continue
        if first is None:
            first = entry
        elif more is None:
            more = [first, entry]
        else:
            more.append(entry)
    if more is None:  # in one pane only: the usual sparse value
        if first is None:
            return 0, 0
        if type(first) is tuple or type(first) is list:
            return size_of(first[0]), size_of(first[1])
        if type(first) is int:
            count = first.bit_count()
        else:
            count = len(first) >> 2 if len(first) & 1 else len(first) >> 1
        return count, count
    online: list = []
    available: list = []
    bare = True  # every entry its online set alone: available == online
    for entry in more:
        if type(entry) is tuple or type(entry) is list:
            bare = False
            online.append(entry[0])
            if entry[1] is not None:
                available.append(entry[1])
        else:
            online.append(entry)
            available.append(entry)
    count = union_size(online)
    if bare:
        return count, count
    return count, union_size(available)


def remap(container: int | bytes, renumber: Mapping[int, int]) -> int | bytes:
    return encode([renumber[p] for p in decode(container)])


# --- the panes of one shard ---------------------------------------------------


def check_snapshot(snap: dict, definitions: Sequence[SegmentDefinition]) -> tuple[str, ...]:
    """The definitions' names, if ``snap`` (either store's snapshot) was made
    with them and in this layout; else ``ValueError`` with one line."""
    names = tuple(d.name for d in definitions)
    if snap.get("version") != SNAPSHOT_VERSION or tuple(snap["definitions"]) != names:
        raise ValueError(
            f"segment state was made with segments {';'.join(snap.get('definitions', ()))!r}, "
            f"not {';'.join(names)!r}"
        )
    return names


class SegmentPanes:
    """Segment pane state of one driver shard, for every definition."""

    def __init__(
        self,
        spec: WindowSpec,
        definitions: Sequence[SegmentDefinition],
        max_values: int = 50_000,
    ) -> None:
        self.spec = spec
        self.definitions = tuple(definitions)
        self.max_values = max_values
        count = len(self.definitions)
        self.index = DriverIndex()
        self._last_pane = array("q")
        """Per driver position: the latest pane it is in (for compaction)."""
        self.panes: list[dict[int, dict | bytes]] = [{} for _ in range(count)]
        """Per definition: ``{pane: {value code: entry}}``; a *cold* pane (see
        :meth:`freeze_closed`) is its pickled table instead, until needed."""
        self._touched: set[tuple[int, int]] = set()
        """(definition number, pane) changed since the last :meth:`freeze_closed`."""
        self.codes: list[dict[tuple, int]] = [{} for _ in range(count)]
        self.values: list[list[tuple | None]] = [[] for _ in range(count)]
        self._free: list[list[int]] = [[] for _ in range(count)]
        self._code_last: list[dict[int, int]] = [{} for _ in range(count)]
        """Per definition: ``{code: latest pane holding it}``, to free codes."""
        self.overflow: list[set[int]] = [set() for _ in range(count)]
        """Per definition: panes where new values went to :data:`OTHER`."""
        self.other_pings: list[int] = [0] * count
        """Per definition: pings counted under :data:`OTHER` (cumulative)."""
        self._dirty: dict[int, set[tuple[int, tuple]]] = {}
        """``{row: {(definition number, value)}}`` whose counts may have changed:
        indexed by row, so a report touches only the rows it closes."""
        self._blobs: list[dict[int, bytes]] = [{} for _ in range(count)]
        self._kinds = dimension_kinds(self.definitions)
        self._partial_keys: dict[tuple, bytes] = {}

    # -- input ---------------------------------------------------------------

    def _positions(self, drivers: Iterable[str], pane: int) -> list[int]:
        positions = self.index.positions
        ids = self.index.ids
        last = self._last_pane
        out = []
        for driver in drivers:
            pos = positions.get(driver)
            if pos is None:
                pos = positions[driver] = len(ids)
                ids.append(driver)
                last.append(pane)
            elif last[pos] < pane:
                last[pos] = pane
            out.append(pos)
        return out

    def _code(self, number: int, value: tuple, pane: int, pane_values: dict) -> tuple[int, tuple, bool]:
        """``(code, value, redirected)``: the value's code in this pane, or
        :data:`OTHER`'s (``redirected``) when the pane already has
        ``max_values`` values of this definition."""
        codes = self.codes[number]
        code = codes.get(value)
        redirected = False
        if (code is None or code not in pane_values) and len(pane_values) >= self.max_values:
            if value != OTHER:
                self.overflow[number].add(pane)
                value, redirected = OTHER, True
                code = codes.get(value)
        if code is None:
            free = self._free[number]
            values = self.values[number]
            if free:
                code = free.pop()
                values[code] = value
            else:
                code = len(values)
                values.append(value)
            codes[value] = code
        last = self._code_last[number]
        if last.get(code, _NO_PANE) < pane:
            last[code] = pane
        return code, value, redirected

    def add(self, pane: int, number: int, groups: Groups) -> bool:
        """Add one definition's values of one pane; true if any set grew.

        ``groups`` maps each value to ``(online ids, off-duty ids, pings)``:
        the drivers seen with that value, those of them with no on-duty ping
        (with that value, in these pings), and how many pings that was.
        """
        if not groups:
            return False
        signed = {}
        pings_of = {}
        for value, (online, off_duty, pings) in groups.items():
            on = self._positions(online, pane)
            if off_duty:
                off = set(self._positions(off_duty, pane))
                signed[value] = [~p if p in off else p for p in on]
            else:
                signed[value] = on
            pings_of[value] = pings
        return self._merge_signed(pane, number, signed, pings_of)

    def add_panes(self, groups_by_pane: Mapping[int, Sequence[Groups]]) -> bool:
        """``{pane: [groups of definition 0, groups of definition 1, ...]}``."""
        changed = False
        for pane, per_definition in groups_by_pane.items():
            for number, groups in enumerate(per_definition):
                if groups and self.add(pane, number, groups):
                    changed = True
        return changed

    def add_pings(self, pane: int, pings: Iterable[tuple[str, bool, tuple]]) -> bool:
        """Add the pings of one pane, as ``(driver, on_duty, values)``; true if any set grew.

        ``values`` holds one value (or ``None``) per definition, as
        :class:`presence.core.segments.ValueExtractor` gives them. The fast path:
        each driver id is looked up once, whatever the number of definitions,
        and nothing is grouped into sets of ids first.
        """
        positions = self.index.positions
        ids = self.index.ids
        last = self._last_pane
        per_definition: list[dict] = [{} for _ in self.definitions]
        for driver, on_duty, values in pings:
            pos = positions.get(driver)
            if pos is None:
                pos = positions[driver] = len(ids)
                ids.append(driver)
                last.append(pane)
            elif last[pos] < pane:
                last[pos] = pane
            if not on_duty:
                pos = ~pos  # off duty: negative
            for groups, value in zip(per_definition, values):
                if value is not None:
                    signed = groups.get(value)
                    if signed is None:
                        groups[value] = [pos]
                    else:
                        signed.append(pos)
        changed = False
        for number, groups in enumerate(per_definition):
            if groups and self._merge_signed(pane, number, groups):
                changed = True
        return changed

    def add_records(self, pane: int, blob: bytes) -> bool:
        """:meth:`add_pings` of packed records (:mod:`presence.core.segment_records`,
        as the compiled reader sends them); true if any set grew."""
        return self.add_pings(pane, decode_records(blob, self._kinds))

    def _merge_signed(self, pane: int, number: int, groups: dict, pings_of: dict | None = None) -> bool:
        """``groups``: ``{value: [position of each ping, ~position when off duty]}``;
        ``pings_of``: ``{value: pings}`` when not one per position."""
        pane_values = self._table(number, pane)
        if pane_values is None:
            pane_values = self.panes[number][pane] = {}
        changed: list[tuple[int, tuple]] = []
        dirty = self._dirty
        codes = self.codes[number]
        code_last = self._code_last[number]
        max_values = self.max_values
        for value, signed in groups.items():
            code = codes.get(value)
            if code is not None and (code in pane_values or len(pane_values) < max_values):
                if code_last.get(code, _NO_PANE) < pane:
                    code_last[code] = pane
            else:
                asked = value
                code, value, redirected = self._code(number, value, pane, pane_values)
                if redirected:
                    self.other_pings[number] += (
                        len(signed) if pings_of is None else pings_of[asked]
                    )
            entry = pane_values.get(code)
            if len(signed) == 1:
                only = signed[0]
                if only >= 0:
                    on_new = av_new = signed
                else:
                    on_new, av_new = [~only], ()
            elif min(signed) >= 0:
                on_new = av_new = signed
            else:
                on_new = [p if p >= 0 else ~p for p in signed]
                av_new = [p for p in signed if p >= 0]
            if type(entry) is list:  # open: updated in place
                on_set, av_set = entry
                n_on, n_av = len(on_set), len(av_set)
                on_set.update(on_new)
                if av_new:
                    av_set.update(av_new)
                if len(on_set) == n_on and len(av_set) == n_av:
                    continue
            elif len(signed) >= DENSE:
                opened_entry = [set(), set()] if entry is None else opened(entry)
                on_set, av_set = opened_entry
                n_on, n_av = len(on_set), len(av_set)
                on_set.update(on_new)
                if av_new:
                    av_set.update(av_new)
                pane_values[code] = opened_entry
                if entry is not None and len(on_set) == n_on and len(av_set) == n_av:
                    continue
            elif entry is None:
                new_on = encode_list(on_new)
                new_av = new_on if av_new is on_new else (encode_list(av_new) if av_new else None)
                if new_av is new_on or new_av == new_on:
                    pane_values[code] = new_on
                else:
                    pane_values[code] = (new_on, new_av)
            else:
                if type(entry) is tuple:
                    old_on, old_av = entry
                else:
                    old_on = old_av = entry
                new_on = merge(old_on, on_new)
                if old_av is old_on and av_new is on_new:
                    new_av = new_on  # every one of these pings on duty
                else:
                    new_av = merge(old_av, av_new)
                if new_on is old_on and new_av is old_av:
                    continue
                if new_av is new_on or new_av == new_on:
                    pane_values[code] = new_on
                else:
                    pane_values[code] = (new_on, new_av)
            changed.append((number, value))
        if not changed:
            return False
        for row in self.spec.rows_of_pane(pane):
            keys = dirty.get(row)
            if keys is None:
                dirty[row] = set(changed)
            else:
                keys.update(changed)
        self._blobs[number].pop(pane, None)
        self._touched.add((number, pane))
        return True

    # -- output --------------------------------------------------------------

    def row_counts(self, number: int, value: tuple, row: int) -> tuple[int, int]:
        """(online, available) of this shard's drivers for a value in row ``row``."""
        code = self.codes[number].get(value)
        if code is None:
            return 0, 0
        return _counts(self._row_panes(number, row), code)

    def _table(self, number: int, pane: int) -> dict | None:
        """The value table of a pane (thawed if it was cold), or None."""
        panes = self.panes[number]
        table = panes.get(pane)
        if type(table) is bytes:
            table = panes[pane] = pickle.loads(table)  # its blob stays cached
        return table

    def _row_panes(self, number: int, row: int) -> list[dict]:
        """The value tables of the panes of row ``row`` that exist."""
        bucket = self.spec.bucket_s
        out = []
        for pane in range(row + bucket - self.spec.window_s, row + bucket, bucket):
            values = self._table(number, pane)
            if values:
                out.append(values)
        return out

    def freeze_closed(self, watermark: float) -> int:
        """Keep panes that no open row holds as their snapshot bytes; returns how many.

        A pane ``P`` is in rows ``P .. P + window - bucket``; once all of them
        ended before ``watermark`` it only matters to late pings and their
        corrections, which thaw it again (and it freezes at the next call if
        nothing changed it). Memory per (driver, bucket, value) drops to the
        snapshot's few bytes; a pane changed since the last call stays thawed.
        """
        frozen = 0
        window = self.spec.window_s
        touched = self._touched
        for number, panes in enumerate(self.panes):
            blobs = self._blobs[number]
            for pane, table in panes.items():
                if type(table) is bytes or pane + window > watermark or (number, pane) in touched:
                    continue
                blob = blobs.get(pane)
                if blob is None:
                    blob = blobs[pane] = pickle.dumps(settled(table), _PICKLE_PROTOCOL)
                panes[pane] = blob
                frozen += 1
        touched.clear()
        return frozen

    def row_overflow(self, number: int, row: int) -> bool:
        """True if some pane of the row sent values of this definition to ``other``."""
        overflow = self.overflow[number]
        return bool(overflow) and any(p in overflow for p in self.spec.panes_of_row(row))

    def take_partials(
        self, watermark: float | None = None
    ) -> dict[tuple[int, tuple, int], tuple[int, int, bool]]:
        """Partial counts of the changed (definition number, value, row)s.

        Only rows whose interval ended at or before ``watermark`` (all of
        them if it is None, as at the end of a bounded run); those are no
        longer dirty. Each maps to ``(online, available, overflow)``.
        """
        return {
            (number, value, row): unpack_partial(packed)
            for row, by_key in self.take_row_partials(watermark).items()
            for (number, value), packed in by_key.items()
        }

    def take_row_partials(self, watermark: float | None = None) -> dict[int, dict[tuple, int]]:
        """:meth:`take_partials` as the shard reports them: ``{row: {(definition
        number, value): packed}}``, each a :func:`pack_partial` int."""
        dirty = self._dirty
        if watermark is None:
            closed = list(dirty)
        else:
            last_row = watermark - self.spec.bucket_s
            closed = [r for r in dirty if r <= last_row]
        out: dict[int, dict[tuple, int]] = {}
        for row in closed:
            keys = dirty.pop(row)
            by_number: dict[int, list] = {}
            for key in keys:
                listed = by_number.get(key[0])
                if listed is None:
                    by_number[key[0]] = [key]
                else:
                    listed.append(key)
            packed_by_key = out[row] = {}
            for number, listed in by_number.items():
                tables = self._row_panes(number, row)
                overflow = 1 if self.row_overflow(number, row) else 0
                codes = self.codes[number]
                for key in listed:
                    code = codes.get(key[1])
                    if code is None:
                        packed_by_key[key] = overflow
                    else:
                        online, available = _counts(tables, code)
                        packed_by_key[key] = (
                            (online << _PARTIAL_SHIFT) | (available << _AVAILABLE_SHIFT) | overflow
                        )
        return out

    def take_keyed_partials(self, watermark: float | None = None) -> dict[int, dict[bytes, int]]:
        """:meth:`take_row_partials` with each value named by its partial key
        (:func:`presence.core.segment_records.partial_key`), as the row book takes them."""
        keys = self._partial_keys
        if len(keys) > 200_000:
            keys.clear()
        kinds = self._kinds
        out = {}
        for row, by_key in self.take_row_partials(watermark).items():
            keyed = out[row] = {}
            for key, packed in by_key.items():
                pkey = keys.get(key)
                if pkey is None:
                    pkey = keys[key] = partial_key(key[0], key[1], kinds)
                keyed[pkey] = packed
        return out

    @property
    def dirty(self) -> set[tuple[int, tuple, int]]:
        """``(definition number, value, row)`` whose counts may have changed."""
        return {(number, value, row) for row, keys in self._dirty.items() for number, value in keys}

    def first_dirty_row(self) -> int | None:
        """The earliest row with a changed count, or None."""
        rows = [row for row, keys in self._dirty.items() if keys]
        return min(rows) if rows else None

    # -- clean-up ------------------------------------------------------------

    def drop_before(self, oldest_pane: float) -> int:
        """Forget panes starting before ``oldest_pane``; returns how many (over definitions)."""
        dropped = 0
        for number, panes in enumerate(self.panes):
            old = [p for p in panes if p < oldest_pane]
            for pane in old:
                del panes[pane]
                self._blobs[number].pop(pane, None)
            self.overflow[number] = {p for p in self.overflow[number] if p >= oldest_pane}
            dropped += len(old)
            if old:
                self._free_codes(number, oldest_pane)
        if dropped:
            # A row with a dropped pane can no longer be recomputed; the
            # shard reports closed rows before it drops, so none is left.
            row_start = self.spec.row_start
            self._dirty = {r: k for r, k in self._dirty.items() if row_start(r) >= oldest_pane}
            self._compact_index(oldest_pane)
        return dropped

    def _free_codes(self, number: int, oldest_pane: float) -> None:
        last = self._code_last[number]
        gone = [code for code, pane in last.items() if pane < oldest_pane]
        codes, values, free = self.codes[number], self.values[number], self._free[number]
        for code in gone:
            del last[code]
            del codes[values[code]]
            values[code] = None
            free.append(code)
        if free and len(free) * 2 > len(values):
            # Shrink the table: keep codes as they are (panes refer to them),
            # just trim the unused tail.
            while values and values[-1] is None:
                values.pop()
            limit = len(values)
            self._free[number] = [c for c in free if c < limit]

    def _compact_index(self, oldest_pane: float) -> None:
        """Renumber drivers when most positions are in no kept pane."""
        size = len(self.index)
        if size < 1024:
            return
        kept = [p for p, last in enumerate(self._last_pane) if last >= oldest_pane]
        if len(kept) * 2 > size:
            return
        renumber = {old: new for new, old in enumerate(kept)}
        ids = self.index.ids
        self.index = DriverIndex(ids[p] for p in kept)
        self._last_pane = array("q", (self._last_pane[p] for p in kept))
        for number, panes in enumerate(self.panes):
            for pane in list(panes):
                values = self._table(number, pane)
                for code, entry in list(values.items()):
                    if type(entry) is list:
                        values[code] = [{renumber[p] for p in entry[0]},
                                        {renumber[p] for p in entry[1]}]
                    elif type(entry) is tuple:
                        on, av = entry
                        values[code] = (
                            remap(on, renumber), None if av is None else remap(av, renumber)
                        )
                    else:
                        values[code] = remap(entry, renumber)
            self._blobs[number].clear()

    # -- recovery ------------------------------------------------------------

    def snapshot(self) -> dict:
        """Plain data (bytes, tuples, dicts): an immutable copy for bytewax to pickle."""
        panes_out = []
        for number, panes in enumerate(self.panes):
            blobs = self._blobs[number]
            out = {}
            for pane, values in panes.items():
                if type(values) is bytes:
                    out[pane] = values
                    continue
                blob = blobs.get(pane)
                if blob is None:
                    blob = blobs[pane] = pickle.dumps(settled(values), _PICKLE_PROTOCOL)
                out[pane] = blob
            panes_out.append(out)
        return {
            "version": SNAPSHOT_VERSION,
            "definitions": tuple(d.name for d in self.definitions),
            "max_values": self.max_values,
            "ids": tuple(self.index.ids),
            "last_pane": self._last_pane.tobytes(),
            "values": tuple(tuple(v) for v in self.values),
            "code_last": tuple(dict(c) for c in self._code_last),
            "panes": panes_out,
            "overflow": tuple(tuple(o) for o in self.overflow),
            "other_pings": tuple(self.other_pings),
            "dirty": (),
            "dirty_by_row": {row: tuple(keys) for row, keys in self._dirty.items()},
        }

    @classmethod
    def restore(
        cls,
        spec: WindowSpec,
        definitions: Sequence[SegmentDefinition],
        snap: dict,
        max_values: int | None = None,
    ) -> "SegmentPanes":
        names = check_snapshot(snap, definitions)
        panes = cls(spec, definitions, snap["max_values"] if max_values is None else max_values)
        panes.index = DriverIndex(snap["ids"])
        panes._last_pane = array("q")
        panes._last_pane.frombytes(snap["last_pane"])
        for number in range(len(names)):
            values = list(snap["values"][number])
            panes.values[number] = values
            panes.codes[number] = {v: c for c, v in enumerate(values) if v is not None}
            panes._free[number] = [c for c, v in enumerate(values) if v is None]
            panes._code_last[number] = dict(snap["code_last"][number])
            blobs = dict(snap["panes"][number])
            panes._blobs[number] = blobs
            panes.panes[number] = dict(blobs)  # cold: each is thawed when first needed
            panes.overflow[number] = set(snap["overflow"][number])
        panes.other_pings = list(snap["other_pings"])
        for number, value, row in snap["dirty"]:  # as written before dirty_by_row
            panes._dirty.setdefault(row, set()).add((number, value))
        for row, keys in snap.get("dirty_by_row", {}).items():
            panes._dirty.setdefault(row, set()).update(keys)
        return panes


def group_pings(
    spec: WindowSpec,
    pings: Iterable[tuple[str, float, bool, tuple]],
    definitions: int,
) -> dict[int, list[dict[tuple, list]]]:
    """Group ``(driver, time, on_duty, values)`` pings for :meth:`SegmentPanes.add_panes`.

    ``values`` holds one value (or ``None``: not in that definition) per
    definition, as :class:`presence.core.segments.ValueExtractor` gives them.
    Returns ``{pane: [{value: [online ids, off-duty ids, pings]}, ...]}``.
    """
    out: dict[int, list[dict[tuple, list]]] = {}
    bucket = spec.bucket_s
    for driver, time, on_duty, values in pings:
        pane = int(time // bucket) * bucket
        per_definition = out.get(pane)
        if per_definition is None:
            per_definition = out[pane] = [{} for _ in range(definitions)]
        for groups, value in zip(per_definition, values):
            if value is None:
                continue
            sets = groups.get(value)
            if sets is None:
                sets = groups[value] = [set(), set(), 0]
            sets[0].add(driver)
            if on_duty:
                sets[1].add(driver)
            sets[2] += 1
    for per_definition in out.values():
        for groups in per_definition:
            for sets in groups.values():
                sets[1] = sets[0] - sets[1]  # on-duty ids -> off-duty ids
    return out
