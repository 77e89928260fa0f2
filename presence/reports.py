"""Reading ``report_summary``: time ranges and report rows, for the CLI and the API.

Shared by ``presence report``, ``presence plot`` and ``presence serve``:

- :func:`parse_time` reads a user's instant (ISO-8601, no offset = UTC, or
  epoch seconds) and :func:`parse_range` a ``from``/``to`` pair;
- :func:`fetch_rows` returns the stored rows of a range, sorted by time;
- :func:`pipeline_status` gathers ``pipeline_status``, dead letters by
  reason and, when Kafka answers, each partition's lag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError

from presence.mongo import DEAD_LETTERS, REPORTS, STATUS
from presence.pings import EPOCH_MS_THRESHOLD, TIME_BUCKET_FORMAT, format_instant
from presence.settings import Settings, mongo_hosts

MAX_ROWS = 100_000
"""Most rows one query returns (about ten weeks of one-minute buckets)."""



class TimeError(ValueError):
    """A bad time or range: the message is one line for the user."""


class StoreUnavailable(RuntimeError):
    """MongoDB could not be reached or answered with an error (one line)."""


def parse_time(text: str | None, name: str = "time") -> float | None:
    """Epoch seconds of ``text``: ISO-8601 (no offset = UTC) or epoch seconds.

    ``None`` or an empty string means "no bound". A number at or above 1e11
    is read as epoch milliseconds, as the pings' timestamps are.
    """
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number) or number < 0:
            raise TimeError(f"{name}: {text!r} is not a valid epoch time")
        return number / 1000.0 if number >= EPOCH_MS_THRESHOLD else number
    iso = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise TimeError(
            f"{name}: {text!r} is neither an ISO-8601 time (e.g. 2018-01-01T04:00:00Z) "
            "nor epoch seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@dataclass(frozen=True)
class TimeRange:
    """Bucket starts ``start <= T <= end``, either bound optional (epoch seconds)."""

    start: float | None = None
    end: float | None = None

    def query(self) -> dict[str, Any]:
        """A ``report_summary`` filter: ``timeBucket`` strings sort like times."""
        cond: dict[str, str] = {}
        if self.start is not None:
            cond["$gte"] = format_bucket(math.ceil(self.start))
        if self.end is not None:
            cond["$lte"] = format_bucket(math.floor(self.end))
        return {"timeBucket": cond} if cond else {}

    def describe(self) -> str:
        low = format_bucket(self.start) if self.start is not None else "the first row"
        high = format_bucket(self.end) if self.end is not None else "the last row"
        return f"from {low} to {high} (UTC)"


def parse_range(start: str | None, end: str | None) -> TimeRange:
    low = parse_time(start, "from")
    high = parse_time(end, "to")
    if low is not None and high is not None and low > high:
        raise TimeError(f"from ({start}) is after to ({end})")
    return TimeRange(low, high)


format_bucket = format_instant
"""A bucket's ``timeBucket`` text: the dataflow's own formatting, so reads match writes."""


def bucket_epoch(time_bucket: str) -> float:
    return (
        datetime.strptime(time_bucket, TIME_BUCKET_FORMAT).replace(tzinfo=timezone.utc).timestamp()
    )


@dataclass(frozen=True, slots=True)
class ReportRow:
    time: str
    online: int
    available: int
    revision: int

    @property
    def epoch(self) -> float:
        return bucket_epoch(self.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "online": self.online,
            "available": self.available,
            "revision": self.revision,
        }


def mongo_client(settings: Settings, timeout_ms: int = 3000) -> MongoClient:
    """A client for ``settings.mongo_uri``; a bad URI is :class:`StoreUnavailable`, secrets scrubbed."""
    try:
        return MongoClient(
            settings.mongo_uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=30000,
            appname="presence-reports",
            tz_aware=True,
        )
    except (PyMongoError, ValueError, TypeError) as exc:
        raise store_error(settings, exc) from None


def store_error(settings: Settings, exc: BaseException) -> StoreUnavailable:
    """A one-line message for a MongoDB failure: the host list only, no secret, no topology dump.

    pymongo's texts can hold the hosts, and for some errors parts of the URI:
    every secret of the settings is scrubbed from them.
    """
    text = str(exc)
    detail = text.splitlines()[0] if text.strip() else type(exc).__name__
    detail = detail.split(", Timeout:")[0].split(" (configured timeouts")[0]
    detail = settings.scrub(" ".join(detail.split()))
    if len(detail) > 160:
        detail = detail[:157] + "..."
    return StoreUnavailable(
        f"MongoDB at {mongo_hosts(settings.mongo_uri)} (PRESENCE_MONGO_URI) "
        f"failed: {type(exc).__name__}: {detail}"
    )


def fetch_rows(db: Database, time_range: TimeRange, limit: int = MAX_ROWS) -> list[ReportRow]:
    """Rows of the range sorted by time (at most ``limit``, the oldest first)."""
    cursor = (
        db[REPORTS]
        .find(
            time_range.query(),
            {"_id": 0, "timeBucket": 1, "driversOnlineCount": 1,
             "driversAvailableCount": 1, "revision": 1},
        )
        .sort("timeBucket", 1)
        .limit(limit)
    )
    return [
        ReportRow(
            time=doc["timeBucket"],
            online=int(doc.get("driversOnlineCount", 0)),
            available=int(doc.get("driversAvailableCount", 0)),
            revision=int(doc.get("revision", 1)),
        )
        for doc in cursor
    ]


def load_rows(settings: Settings, time_range: TimeRange) -> list[ReportRow]:
    """:func:`fetch_rows` with its own client; :class:`StoreUnavailable` on failure."""
    client = mongo_client(settings)
    try:
        return fetch_rows(client[settings.mongo_db], time_range)
    except PyMongoError as exc:
        raise store_error(settings, exc) from None
    finally:
        client.close()


# ------------------------------------------------------------------ status


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return None


def dead_letters_by_reason(db: Database) -> dict[str, int]:
    pipeline = [{"$group": {"_id": "$reason", "count": {"$sum": 1}}}]
    counts = {str(doc["_id"]): int(doc["count"]) for doc in db[DEAD_LETTERS].aggregate(pipeline)}
    return dict(sorted(counts.items()))


def report_extent(db: Database) -> dict[str, Any]:
    coll = db[REPORTS]
    first = coll.find_one({}, {"timeBucket": 1}, sort=[("timeBucket", 1)])
    last = coll.find_one({}, {"timeBucket": 1}, sort=[("timeBucket", -1)])
    return {
        "count": coll.count_documents({}),
        "first": first["timeBucket"] if first else None,
        "last": last["timeBucket"] if last else None,
    }


def store_status(db: Database) -> dict[str, Any]:
    """Everything the pipeline wrote about itself, as plain JSON values."""
    partitions = []
    totals: dict[str, Any] = {}
    for doc in db[STATUS].find({}):
        if doc.get("kind") == "totals" or doc.get("_id") == "totals":
            totals = doc
            continue
        gaps = [
            {"from": int(g.get("from", 0)), "to": int(g.get("to", 0)),
             "lost": int(g.get("lost", int(g.get("to", 0)) - int(g.get("from", 0))))}
            for g in doc.get("gaps") or []
        ]
        partitions.append(
            {
                "topic": doc.get("topic") or str(doc["_id"]).rsplit(":", 1)[0],
                "partition": int(doc.get("partition", str(doc["_id"]).rsplit(":", 1)[-1])),
                "nextOffset": int(doc.get("nextOffset", 0)),
                "state": doc.get("state"),
                "valid": int(doc.get("valid", 0)),
                "invalid": int(doc.get("invalid", 0)),
                "tooLate": int(doc.get("tooLate", 0)),
                "maxEventTime": _iso(doc.get("maxEventTime")),
                "gaps": gaps,
                "updatedAt": _iso(doc.get("updatedAt")),
            }
        )
    partitions.sort(key=lambda p: (p["topic"], p["partition"]))
    by_reason = dead_letters_by_reason(db)
    return {
        "watermark": _iso(totals.get("watermark")),
        "updatedAt": _iso(totals.get("updatedAt")),
        "totals": {
            key: int(totals.get(key, 0))
            for key in ("valid", "invalid", "correctedLate", "tooLate", "deadLetters", "rowsWritten")
        },
        "partitions": partitions,
        "gaps": {
            "count": sum(len(p["gaps"]) for p in partitions),
            "lostOffsets": sum(g["lost"] for p in partitions for g in p["gaps"]),
        },
        "deadLetters": {"total": sum(by_reason.values()), "byReason": by_reason},
        "reports": report_extent(db),
    }


def kafka_offsets(settings: Settings, topic: str, timeout: float = 3.0) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}`` watermarks of ``topic``; raises on failure."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    config = {
        "bootstrap.servers": settings.kafka_brokers,
        "group.id": "presence-status",
        "enable.auto.commit": False,
        "socket.connection.setup.timeout.ms": int(timeout * 1000),
        "log_level": 0,
        "error_cb": lambda err: None,
    }
    config.update(settings.kafka_extra)
    consumer = Consumer(config)
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            why = f": {info.error.str()}" if info is not None and info.error else ""
            raise LookupError(f"topic {topic!r} not found{why}")
        offsets = {}
        for number in sorted(info.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, number), timeout=timeout, cached=False
            )
            offsets[number] = (low, high)
        return offsets
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        text = err.str() if hasattr(err, "str") else str(err)
        raise ConnectionError(f"Kafka at {settings.kafka_brokers} unreachable: {text}") from None
    finally:
        consumer.close()


def pipeline_status(settings: Settings, db: Database, kafka_timeout: float = 3.0) -> dict[str, Any]:
    """:func:`store_status` plus each partition's Kafka high watermark and lag.

    Kafka being unreachable is reported in ``kafka`` (``reachable: false``),
    never raised; MongoDB failures raise :class:`PyMongoError`.
    """
    status = store_status(db)
    topic = settings.topic
    kafka: dict[str, Any] = {"brokers": settings.kafka_brokers, "topic": topic}
    try:
        offsets = kafka_offsets(settings, topic, kafka_timeout)
        kafka.update(reachable=True, error=None)
    except (ConnectionError, LookupError, OSError) as exc:
        offsets = None
        kafka.update(reachable=False, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a status page must not fail on Kafka
        offsets = None
        kafka.update(reachable=False, error=f"{type(exc).__name__}: {exc}")
    status["kafka"] = kafka
    known = {(p["topic"], p["partition"]): p for p in status["partitions"]}
    if offsets is not None:
        for number in offsets:
            if (topic, number) not in known:
                entry = {"topic": topic, "partition": number, "nextOffset": None,
                         "state": "unread", "valid": 0, "invalid": 0, "tooLate": 0,
                         "maxEventTime": None, "gaps": [], "updatedAt": None}
                status["partitions"].append(entry)
                known[(topic, number)] = entry
        status["partitions"].sort(key=lambda p: (p["topic"], p["partition"]))
    total_lag = 0
    for part in status["partitions"]:
        marks = offsets.get(part["partition"]) if offsets is not None and part["topic"] == topic else None
        if marks is None:
            part["lowWatermark"] = part["highWatermark"] = part["lag"] = None
            continue
        low, high = marks
        start = part["nextOffset"] if part["nextOffset"] is not None else low
        part["lowWatermark"], part["highWatermark"] = low, high
        part["lag"] = max(0, high - start)
        total_lag += part["lag"]
    kafka["lag"] = total_lag if offsets is not None else None
    return status
