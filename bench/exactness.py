"""A system's rows against the oracle's: read back from MongoDB and compared."""

from __future__ import annotations

from datetime import datetime, timezone

from bench.env import mongo


def stored_rows(db: str) -> dict[int, tuple[int, int]]:
    out = {}
    for doc in mongo()[db].report_summary.find():
        start = datetime.strptime(doc["timeBucket"], "%Y-%m-%d %H:%M:%S").replace(
            tzinfo=timezone.utc)
        out[int(start.timestamp())] = (doc["driversOnlineCount"], doc["driversAvailableCount"])
    return out


def stored_segment_rows(db: str) -> dict[tuple[str, tuple, int], tuple[int, int]]:
    """``segment_summary`` keyed as ``tests/segment_oracle.py`` keys its rows:
    (segment, key values in the definition's field order, bucket start)."""
    out = {}
    for doc in mongo()[db].segment_summary.find():
        start = datetime.strptime(doc["timeBucket"], "%Y-%m-%d %H:%M:%S").replace(
            tzinfo=timezone.utc)
        fields = [dim.split(":")[0] for dim in doc["segment"].split(",")]
        key = tuple(doc["key"][f] for f in fields)
        out[(doc["segment"], key, int(start.timestamp()))] = (
            doc["driversOnlineCount"], doc["driversAvailableCount"])
    return out


def compare(rows: dict, oracle: dict) -> tuple[bool, str]:
    if rows == oracle:
        return True, f"{len(rows)} rows equal"
    missing = [r for r in oracle if r not in rows]
    extra = [r for r in rows if r not in oracle]
    wrong = [r for r in oracle if r in rows and rows[r] != oracle[r]]
    lost = sum(oracle[r][0] - rows[r][0] for r in wrong)
    return False, (f"{len(missing)} of {len(oracle)} rows missing, {len(wrong)} wrong "
                   f"(online short by {lost} in all), {len(extra)} extra")
