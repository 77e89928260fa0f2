"""Panes: the distinct drivers seen in each bucket, for one driver shard.

Each driver of the shard gets a small position number (:class:`DriverIndex`);
a pane is two bitmasks over those positions (Python ints): drivers online and
drivers available in the bucket. A row's counts are the popcount of the OR of
its panes, so unions are exact and cheap, and a snapshot costs about one bit
per (driver, bucket) of a busy shard instead of a pickled set entry.
"""

from __future__ import annotations

from typing import Iterable

from presence.core.windows import WindowSpec

COMPACT_FROM_DRIVERS = 1024
"""A shard's driver index is renumbered (dropping drivers no pane holds) only from this
many positions on, and only when fewer than half are still in use: below it, compacting
costs more than the bits it saves."""


class DriverIndex:
    """Position numbers for driver ids; positions are reused after compaction."""

    __slots__ = ("ids", "positions")

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self.ids: list[str] = list(ids)
        self.positions: dict[str, int] = {d: i for i, d in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def mask_of(self, drivers: Iterable[str]) -> int:
        """The bitmask of these drivers, adding the ones not seen before."""
        positions = self.positions
        ids = self.ids
        found = []
        for driver in drivers:
            pos = positions.get(driver)
            if pos is None:
                pos = positions[driver] = len(ids)
                ids.append(driver)
            found.append(pos)
        if not found:
            return 0
        bits = bytearray((max(found) >> 3) + 1)
        for pos in found:
            bits[pos >> 3] |= 1 << (pos & 7)
        return int.from_bytes(bits, "little")


def positions_of(mask: int) -> list[int]:
    """Set bit positions of ``mask``, lowest first."""
    out = []
    data = mask.to_bytes((mask.bit_length() + 7) // 8, "little")
    for byte_no, byte in enumerate(data):
        while byte:
            low = byte & -byte
            out.append((byte_no << 3) + low.bit_length() - 1)
            byte ^= low
    return out


class ShardPanes:
    """Pane bitmasks of one shard, keyed by bucket start."""

    __slots__ = ("spec", "index", "online", "available")

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.index = DriverIndex()
        self.online: dict[int, int] = {}
        self.available: dict[int, int] = {}

    def add(self, pane: int, online: Iterable[str], off_duty: Iterable[str]) -> bool:
        """Add drivers to a pane; true if the pane gained any.

        ``online`` are the drivers seen, ``off_duty`` those of them never on
        duty in these pings; the others are available.
        """
        index = self.index
        new_online = index.mask_of(online)
        new_available = new_online & ~index.mask_of(off_duty) if off_duty else new_online
        old_online = self.online.get(pane, 0)
        old_available = self.available.get(pane, 0)
        if new_online & ~old_online or new_available & ~old_available:
            self.online[pane] = old_online | new_online
            if new_available:
                self.available[pane] = old_available | new_available
            return True
        return False

    def row_counts(self, row: int) -> tuple[int, int]:
        """(online, available) distinct drivers of this shard in row ``row``."""
        online = available = 0
        for pane in self.spec.panes_of_row(row):
            online |= self.online.get(pane, 0)
            available |= self.available.get(pane, 0)
        return online.bit_count(), available.bit_count()

    def drop_before(self, oldest_pane: float) -> int:
        """Forget panes starting before ``oldest_pane``; returns how many."""
        old = [p for p in self.online if p < oldest_pane]
        for pane in old:
            del self.online[pane]
            self.available.pop(pane, None)
        if old:
            self._compact_index()
        return len(old)

    def _compact_index(self) -> None:
        """Renumber drivers when most positions belong to no pane any more."""
        live = 0
        for mask in self.online.values():
            live |= mask
        kept = live.bit_count()
        if len(self.index) < COMPACT_FROM_DRIVERS or kept * 2 > len(self.index):
            return
        old_positions = positions_of(live)
        renumber = {old: new for new, old in enumerate(old_positions)}
        ids = self.index.ids
        self.index = DriverIndex(ids[p] for p in old_positions)

        def remap(mask: int) -> int:
            bits = bytearray((kept >> 3) + 1)
            for pos in positions_of(mask):
                new = renumber[pos]
                bits[new >> 3] |= 1 << (new & 7)
            return int.from_bytes(bits, "little")

        self.online = {p: remap(m) for p, m in self.online.items()}
        self.available = {p: remap(m) for p, m in self.available.items()}

    def snapshot(self) -> dict:
        """An immutable copy (bytewax pickles it later): masks are ints."""
        return {
            "ids": tuple(self.index.ids),
            "online": dict(self.online),
            "available": dict(self.available),
        }

    @classmethod
    def restore(cls, spec: WindowSpec, snap: dict) -> "ShardPanes":
        panes = cls(spec)
        panes.index = DriverIndex(snap["ids"])
        panes.online = dict(snap["online"])
        panes.available = dict(snap["available"])
        return panes
