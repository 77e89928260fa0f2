"""A brute-force oracle of the SPEC's "Segments", written apart from presence's code.

Given the pings that count (valid and not too late, see tests/oracle.py),
each with its optional fields, it says what every segment row must be:
``{(segment, key, T): (online, available)}`` where ``key`` is the tuple of
the document's ``key`` values in the definition's order (the H3 cell as
its hex string).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import h3


@dataclass(frozen=True)
class SP:
    """A valid ping with optional fields (``extra``: city, vehicle_type, lat, lng...)."""

    driver: int | str
    time: float
    on_duty: bool
    extra: tuple = field(default=())
    """``(name, value)`` pairs, so that the ping stays hashable."""

    def obj(self) -> dict:
        out = {"driver_id": self.driver, "timestamp": self.time, "on_duty": int(self.on_duty)}
        out.update(self.extra)
        return out


def _text(obj: dict, name: str, most: int) -> str:
    value = obj.get(name)
    if isinstance(value, str) and 1 <= len(value) <= most:
        return value
    return "unknown"


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cell(obj: dict, resolution: int) -> str | None:
    lat, lng = obj.get("lat"), obj.get("lng")
    if not (_number(lat) and _number(lng)):
        return None
    if not (-90 <= lat <= 90 and -180 <= lng <= 180):
        return None
    return h3.latlng_to_cell(float(lat), float(lng), resolution)


def key_of(segment: str, obj: dict) -> tuple | None:
    """The ping's key for one segment (as written, e.g. ``"city,h3:8"``), None if unlocated."""
    out = []
    for dim in segment.split(","):
        if dim == "city":
            out.append(_text(obj, "city", 64))
        elif dim == "vehicle_type":
            out.append(_text(obj, "vehicle_type", 32))
        else:
            cell = _cell(obj, int(dim.split(":")[1]))
            if cell is None:
                return None
            out.append(cell)
    return tuple(out)


def segment_oracle(
    pings: list[SP], segments: list[str], bucket: int, window: int
) -> dict[tuple[str, tuple, int], tuple[int, int]]:
    online: dict[tuple, set] = defaultdict(set)
    available: dict[tuple, set] = defaultdict(set)
    for ping in pings:
        obj = ping.obj()
        driver = str(ping.driver)
        first = int(ping.time // bucket) * bucket
        for segment in segments:
            key = key_of(segment, obj)
            if key is None:
                continue
            for row in range(first, first + window, bucket):
                assert row + bucket - window <= ping.time < row + bucket
                online[(segment, key, row)].add(driver)
                if ping.on_duty:
                    available[(segment, key, row)].add(driver)
    return {k: (len(online[k]), len(available[k])) for k in online}


def expected(partitions: list[list[object]], segments: list[str], bucket: int, window: int,
             lateness: float, horizon: float):
    """For partitions of :class:`SP` and bad values: the global oracle's answer
    ``(rows, too_late, invalid)`` (tests/oracle.py), the segment rows of the
    counted pings, and how many counted pings are unlocated."""
    from tests.oracle import P, oracle

    plain = [[P(m.driver, m.time, m.on_duty) if isinstance(m, SP) else m for m in part]
             for part in partitions]
    rows, too_late, invalid = oracle(plain, bucket, window, lateness, horizon)
    counted = [m for pid, part in enumerate(partitions) for off, m in enumerate(part)
               if isinstance(m, SP) and (pid, off) not in too_late]
    located = [s for s in segments if "h3:" in s]
    unlocated = sum(1 for m in counted if located and key_of(located[0], m.obj()) is None)
    return rows, too_late, invalid, segment_oracle(counted, segments, bucket, window), unlocated
