"""Known documents (as the dataflow writes them) for the CLI, API and dashboard tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

# ------------------------------------------------------------------ known documents


BASE = datetime(2018, 1, 1, 4, 0, tzinfo=timezone.utc)


def known_rows(count: int = 10, base: datetime = BASE) -> list[dict]:
    """``report_summary`` documents, one per minute from ``base``; every 4th revised."""
    docs = []
    for i in range(count):
        start = base + timedelta(minutes=i)
        bucket = start.strftime("%Y-%m-%d %H:%M:%S")
        docs.append({
            "_id": bucket,
            "timeBucket": bucket,
            "windowStart": start - timedelta(minutes=4),
            "windowEnd": start + timedelta(minutes=1),
            "driversOnlineCount": 500 + i,
            "driversAvailableCount": 400 + i,
            "revision": 2 if i % 4 == 3 else 1,
            "updatedAt": datetime.now(timezone.utc),
        })
    return docs


def seed_database(db, topic: str = "driver-pings", rows: int = 10) -> list[dict]:
    """Known rows, dead letters and pipeline status in ``db``; returns the rows."""
    docs = known_rows(rows)
    # Inserted out of order: the readers must sort.
    db.report_summary.insert_many(list(reversed(docs)))
    reasons = ["invalid_json"] * 3 + ["missing_field"] * 2 + ["too_late"]
    db.dead_letters.insert_many([
        {"_id": f"{topic}:0:{n}", "topic": topic, "partition": 0, "offset": n,
         "reason": reason, "detail": "test", "raw": "{", "receivedAt": datetime.now(timezone.utc)}
        for n, reason in enumerate(reasons)
    ])
    db.pipeline_status.insert_many([
        {"_id": f"{topic}:0", "kind": "partition", "topic": topic, "partition": 0,
         "nextOffset": 7, "gaps": [{"from": 0, "to": 2, "lost": 2}], "valid": 4, "invalid": 1,
         "tooLate": 0, "maxEventTime": BASE + timedelta(minutes=rows), "state": "live"},
        {"_id": f"{topic}:1", "kind": "partition", "topic": topic, "partition": 1,
         "nextOffset": 3, "gaps": [], "valid": 3, "invalid": 0, "tooLate": 1,
         "maxEventTime": BASE + timedelta(minutes=rows), "state": "idle"},
        {"_id": "totals", "kind": "totals", "valid": 7, "invalid": 5, "correctedLate": 2,
         "tooLate": 1, "deadLetters": 6, "rowsWritten": rows + 3,
         "watermark": BASE + timedelta(minutes=rows - 1)},
    ])
    return docs
