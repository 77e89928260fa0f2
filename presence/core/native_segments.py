"""The compiled segment store: :class:`NativeSegmentPanes`, with the interface
and the results of :class:`presence.core.segment_panes.SegmentPanes` (what
:mod:`presence.core.shard` uses of it), its state in ``presence._native``'s
``SegmentStore`` (``native/src/segment_store.rs``).

It takes pings either as ``(driver, on_duty, values)`` tuples
(:meth:`NativeSegmentPanes.add_pings`, encoded here into records) or as the
packed records of :mod:`presence.core.segment_records`
(:meth:`NativeSegmentPanes.add_records`, the compiled reader's form: no
Python object per ping). Its :meth:`~NativeSegmentPanes.snapshot` is
``SegmentPanes.snapshot()``'s plain data, and either class restores the
other's snapshot, so a shard's recovery state does not depend on which store
made it. ``tests/test_native_segments.py`` holds the two to the same results.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from presence.core.segment_panes import SNAPSHOT_VERSION, check_snapshot, unpack_partial
from presence.core.segment_records import dimension_kinds, encode_key
from presence.core.segments import SegmentDefinition
from presence.core.windows import WindowSpec

try:
    from presence._native import SegmentStore
except ImportError:  # not built, or built before the segment store
    SegmentStore = None


def native_segments_built() -> bool:
    """True when ``presence._native`` has the compiled segment store."""
    return SegmentStore is not None


class NativeSegmentPanes:
    """Segment pane state of one driver shard, for every definition (compiled)."""

    def __init__(
        self,
        spec: WindowSpec,
        definitions: Sequence[SegmentDefinition],
        max_values: int = 50_000,
    ) -> None:
        if SegmentStore is None:
            raise ImportError("presence._native has no SegmentStore: run make install")
        if type(spec.bucket_s) is not int or type(spec.window_s) is not int:
            raise ValueError("the compiled segment store needs whole-second bucket and window")
        self.spec = spec
        self.definitions = tuple(definitions)
        self.max_values = max_values
        self.kinds = dimension_kinds(self.definitions)
        self._store = SegmentStore(spec.bucket_s, spec.window_s, max_values,
                                   [list(k) for k in self.kinds])

    # -- input ---------------------------------------------------------------

    def add_records(self, pane: int, blob: bytes) -> bool:
        """Add one pane's pings as :mod:`presence.core.segment_records` records;
        true if any set grew. Malformed records raise ValueError and change nothing."""
        return self._store.add_records(pane, blob)

    def add_pings(self, pane: int, pings: Iterable[tuple[str, bool, tuple]]) -> bool:
        """Add the pings of one pane, as ``(driver, on_duty, values)``; true if any set grew."""
        return self._store.add_pings(pane, pings)

    # -- output --------------------------------------------------------------

    def take_row_partials(self, watermark: float | None = None) -> dict[int, dict[tuple, int]]:
        """``{row: {(definition number, value): packed}}`` of the changed rows that
        ended at or before ``watermark`` (all if None); those are no longer dirty."""
        return self._store.take_row_partials(watermark)

    def take_keyed_partials(self, watermark: float | None = None) -> bytes:
        """:meth:`SegmentPanes.take_keyed_partials` as packed bytes
        (:func:`presence.core.segment_tally.pack_partials`): no Python object
        per partial; the row book's tally reads them as they are."""
        return self._store.take_packed_partials(watermark)

    def take_partials(
        self, watermark: float | None = None
    ) -> dict[tuple[int, tuple, int], tuple[int, int, bool]]:
        return {
            (number, value, row): unpack_partial(packed)
            for row, by_key in self.take_row_partials(watermark).items()
            for (number, value), packed in by_key.items()
        }

    def row_counts(self, number: int, value: tuple, row: int) -> tuple[int, int]:
        """(online, available) of this shard's drivers for a value in row ``row``."""
        return self._store.row_counts(number, encode_key(value, self.kinds[number]), row)

    def row_overflow(self, number: int, row: int) -> bool:
        """True if some pane of the row sent values of this definition to ``other``."""
        return self._store.row_overflow_of(number, row)

    @property
    def dirty(self) -> set[tuple[int, tuple, int]]:
        """``(definition number, value, row)`` whose counts may have changed."""
        return set(self._store.dirty_keys())

    def first_dirty_row(self) -> int | None:
        return self._store.first_dirty_row()

    @property
    def other_pings(self) -> list[int]:
        """Per definition: pings counted under ``OTHER`` (cumulative)."""
        return self._store.other_pings()

    # -- clean-up ------------------------------------------------------------

    def drop_before(self, oldest_pane: float) -> int:
        """Forget panes starting before ``oldest_pane``; returns how many (over
        definitions). Frees their values' codes and renumbers the drivers when
        most of them are in no kept pane, as ``SegmentPanes`` does."""
        return self._store.drop_before(oldest_pane)

    def freeze_closed(self, watermark: float) -> int:
        """Keep panes that no open row holds, and not changed since the last
        call, as their snapshot bytes only; returns how many (as
        ``SegmentPanes.freeze_closed``: a late ping or a report of one of
        their rows thaws them). Thawed, a (driver, bucket, value) costs
        ~20 bytes here; frozen, the snapshot's ~5."""
        return self._store.freeze_closed(watermark)

    # -- recovery ------------------------------------------------------------

    def snapshot(self) -> dict:
        """``SegmentPanes.snapshot()``'s plain data (either class restores it)."""
        ids, last_pane, values, code_last, panes, overflow, other, dirty = self._store.snapshot_parts()
        return {
            "version": SNAPSHOT_VERSION,
            "definitions": tuple(d.name for d in self.definitions),
            "max_values": self.max_values,
            "ids": ids,
            "last_pane": last_pane,
            "values": tuple(values),
            "code_last": tuple(code_last),
            "panes": panes,
            "overflow": tuple(overflow),
            "other_pings": tuple(other),
            "dirty": (),
            "dirty_by_row": dirty,
        }

    @classmethod
    def restore(
        cls,
        spec: WindowSpec,
        definitions: Sequence[SegmentDefinition],
        snap: dict,
        max_values: int | None = None,
    ) -> "NativeSegmentPanes":
        check_snapshot(snap, definitions)
        panes = cls(spec, definitions, snap["max_values"] if max_values is None else max_values)
        kinds = panes.kinds
        ids = [(d.encode("utf-8", "surrogatepass"), d) for d in snap["ids"]]
        values = [
            [None if v is None else (encode_key(v, kinds[number]), v) for v in per_definition]
            for number, per_definition in enumerate(snap["values"])
        ]
        dirty = []
        for number, value, row in snap.get("dirty", ()):  # as written before dirty_by_row
            dirty.append((row, number, encode_key(value, kinds[number]), value))
        for row, keys in snap.get("dirty_by_row", {}).items():
            for number, value in keys:
                dirty.append((row, number, encode_key(value, kinds[number]), value))
        panes._store.restore_parts(
            ids,
            snap["last_pane"],
            values,
            [dict(c) for c in snap["code_last"]],
            [dict(p) for p in snap["panes"]],
            [list(o) for o in snap["overflow"]],
            list(snap["other_pings"]),
            dirty,
        )
        return panes
