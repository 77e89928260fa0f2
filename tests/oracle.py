"""A brute-force oracle of the SPEC, written independently of presence's code.

Given every partition's messages in offset order (as structured pings, or
bytes that are not valid pings), it says which pings count, which are too
late, and what every report row must be.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class P:
    """A valid ping as the test generated it."""

    driver: int | str
    time: float
    on_duty: bool

    def value(self) -> dict:
        return {"driver_id": self.driver, "timestamp": self.time, "on_duty": int(self.on_duty)}


def oracle(
    partitions: list[list[object]],
    bucket: int,
    window: int,
    lateness: float,
    horizon: float,
) -> tuple[dict[int, tuple[int, int]], set[tuple[int, int]], set[tuple[int, int]]]:
    """(rows {bucket start: (online, available)}, too-late (partition, offset)s,
    invalid (partition, offset)s)."""
    counted: list[P] = []
    too_late: set[tuple[int, int]] = set()
    invalid: set[tuple[int, int]] = set()
    for pid, messages in enumerate(partitions):
        greatest = None
        for offset, msg in enumerate(messages):
            if not isinstance(msg, P):
                invalid.add((pid, offset))
                continue
            if greatest is not None and msg.time < greatest - lateness - horizon:
                too_late.add((pid, offset))
                continue
            greatest = msg.time if greatest is None else max(greatest, msg.time)
            counted.append(msg)

    online: dict[int, set] = defaultdict(set)
    available: dict[int, set] = defaultdict(set)
    for ping in counted:
        # Every row T whose interval [T + bucket - window, T + bucket) holds the ping.
        first = int(ping.time // bucket) * bucket
        for row in range(first, first + window, bucket):
            assert row + bucket - window <= ping.time < row + bucket
            online[row].add(str(ping.driver))
            if ping.on_duty:
                available[row].add(str(ping.driver))
    rows = {row: (len(online[row]), len(available[row])) for row in online}
    return rows, too_late, invalid


def late_pings(partitions: list[list[object]], lateness: float, horizon: float) -> set[tuple[int, int]]:
    """(partition, offset)s of the late pings: valid, older than their own partition's
    watermark (greatest counted time so far minus ``lateness``) when read, not too late."""
    late: set[tuple[int, int]] = set()
    for pid, messages in enumerate(partitions):
        greatest = None
        for offset, msg in enumerate(messages):
            if not isinstance(msg, P):
                continue
            if greatest is not None and msg.time < greatest - lateness - horizon:
                continue  # too late
            if greatest is not None and msg.time < greatest - lateness:
                late.add((pid, offset))
            greatest = msg.time if greatest is None else max(greatest, msg.time)
    return late
