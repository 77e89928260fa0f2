"""MongoDB output: idempotent bulk writes of rows, dead letters and status.

Delivery is at least once (a resumed dataflow replays its last epoch), so
every write can be repeated without harm:

- ``report_summary``: one upsert per row; counts, revision and ``updatedAt``
  go through ``$max``, so a replayed older result never lowers them;
- ``dead_letters``: unordered inserts keyed by ``topic:partition:offset``; a
  replayed one fails as a duplicate key, which is ignored;
- ``pipeline_status``: counters and offsets through ``$max``.

All writes of a batch go in one unordered ``bulk_write``. A connection
failure is retried with exponential backoff (a WARNING per retry) until the
server is back; nothing is dropped.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, TypeVar

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from pymongo import MongoClient, UpdateOne
from pymongo.database import Database
from pymongo.errors import AutoReconnect, BulkWriteError, ConnectionFailure, OperationFailure

from presence.partition import DeadLetter, PartitionMark
from presence.rows import Row, Totals
from presence.settings import Settings, redact_uri

log = logging.getLogger("presence.mongo")
row_log = logging.getLogger("presence.rows")

REPORTS = "report_summary"
DEAD_LETTERS = "dead_letters"
STATUS = "pipeline_status"

T = TypeVar("T")

RETRYABLE = (AutoReconnect, ConnectionFailure)


def utc(epoch_seconds: float) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, timezone.utc)


def connect(uri: str) -> MongoClient:
    return MongoClient(
        uri,
        serverSelectionTimeoutMS=5000,
        connectTimeoutMS=5000,
        socketTimeoutMS=60000,
        appname="presence",
        tz_aware=True,
    )


_PYMONGO_EXIT_HANDLERS = (
    ("pymongo.synchronous.monitor", "_shutdown_resources"),  # pymongo >= 4.9
    ("pymongo.monitor", "_shutdown_resources"),
    ("pymongo.periodic_executor", "_shutdown_executors"),  # older
)


def skip_pymongo_exit_join() -> None:
    """Drop pymongo's exit handler once our clients are closed (see :class:`SharedClients`)."""
    for module_name, name in _PYMONGO_EXIT_HANDLERS:
        module = sys.modules.get(module_name)
        handler = getattr(module, name, None)
        if handler is not None:
            atexit.unregister(handler)


class SharedClients:
    """One ``MongoClient`` per URI for all sinks of a process, counted by users.

    The three sinks (on every worker of the process) share one connection
    pool and one set of monitor threads, and each database gets its indexes
    once, before any sink writes to it. When the last user lets go, the
    client is closed, and pymongo's exit handler, which would join the
    stopped monitor threads (each sleeps in 0.5 s steps, so a bounded run
    would sit idle for up to 0.5 s before exiting), is no longer needed: the
    threads are daemons and already told to stop.
    """

    def __init__(self, connect: Callable[[str], MongoClient] = connect) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._clients: dict[str, _Shared] = {}

    def acquire(
        self, uri: str, db: str, prepare: Callable[[Database], None]
    ) -> MongoClient:
        """The client for ``uri``; ``prepare(database)`` runs once per database."""
        with self._lock:
            shared = self._clients.get(uri)
            if shared is None:
                shared = self._clients[uri] = _Shared(self._connect(uri))
            shared.users += 1
        try:
            with shared.prepare_lock:
                if db not in shared.prepared:
                    prepare(shared.client[db])
                    shared.prepared.add(db)
        except BaseException:
            self.release(uri)
            raise
        return shared.client

    def release(self, uri: str) -> None:
        with self._lock:
            shared = self._clients[uri]
            shared.users -= 1
            if shared.users:
                return
            del self._clients[uri]
            shared.client.close()
            if not self._clients:
                skip_pymongo_exit_join()

    def open_uris(self) -> list[str]:
        with self._lock:
            return list(self._clients)


@dataclass(eq=False)
class _Shared:
    client: MongoClient
    users: int = 0
    prepared: set[str] = field(default_factory=set)
    prepare_lock: threading.Lock = field(default_factory=threading.Lock)


CLIENTS = SharedClients()


def with_retry(
    what: str,
    action: Callable[[], T],
    first_wait: float = 0.5,
    max_wait: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``action`` until it succeeds, backing off on connection failures."""
    wait = first_wait
    attempt = 1
    while True:
        try:
            return action()
        except RETRYABLE as exc:
            log.warning(
                "MongoDB unavailable while %s (attempt %d): %s; retrying in %.1f s",
                what, attempt, type(exc).__name__, wait,
            )
            sleep(wait)
            wait = min(max_wait, wait * 2)
            attempt += 1


def ensure_indexes(db: Database) -> None:
    db[REPORTS].create_index("timeBucket", unique=True, name="timeBucket_unique")
    db[DEAD_LETTERS].create_index("reason", name="reason")


def row_update(row: Row, now: datetime) -> UpdateOne:
    time_bucket = row.time_bucket
    return UpdateOne(
        {"_id": time_bucket},
        {
            "$set": {
                "timeBucket": time_bucket,
                "windowStart": utc(row.window_start),
                "windowEnd": utc(row.window_end),
            },
            "$max": {
                "driversOnlineCount": row.online,
                "driversAvailableCount": row.available,
                "revision": row.revision,
                "updatedAt": now,
            },
        },
        upsert=True,
    )


def dead_letter_doc(letter: DeadLetter) -> dict:
    return {
        "_id": letter.id,
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "reason": letter.reason,
        "detail": letter.detail,
        "raw": letter.raw,
        "receivedAt": utc(letter.received_at),
    }


def status_updates(
    marks: Iterable[PartitionMark], totals: Totals, now: datetime
) -> list[UpdateOne]:
    updates = []
    for mark in marks:
        updates.append(
            UpdateOne(
                {"_id": mark.key},
                {
                    "$set": {
                        "kind": "partition",
                        "topic": mark.topic,
                        "partition": mark.partition,
                        "state": mark.state,
                        "gaps": [
                            {"from": start, "to": end, "lost": end - start}
                            for start, end in mark.gaps
                        ],
                        "updatedAt": now,
                    },
                    "$max": {
                        "nextOffset": mark.next_offset,
                        "valid": mark.valid,
                        "invalid": mark.invalid,
                        "late": mark.late,
                        "tooLate": mark.too_late,
                        **_time_field("maxEventTime", mark.max_event),
                    },
                },
                upsert=True,
            )
        )
    updates.append(
        UpdateOne(
            {"_id": "totals"},
            {
                "$set": {"kind": "totals", "updatedAt": now},
                # Ping totals are deterministic (the partitions' own counters);
                # rowsWritten and rowRewrites count writes (they depend on batching).
                # correctedLate is late under its former name, kept for its readers.
                "$max": {
                    "valid": totals.valid,
                    "invalid": totals.invalid,
                    "late": totals.late,
                    "correctedLate": totals.late,
                    "tooLate": totals.too_late,
                    "deadLetters": totals.dead_letters,
                    **{f"deadLettersByReason.{reason}": count
                       for reason, count in totals.dead_letters_by_reason},
                    "rowsWritten": totals.rows_written,
                    "rowRewrites": totals.row_rewrites,
                    "notCounted": totals.not_counted,
                    **_time_field("watermark", totals.watermark),
                },
            },
            upsert=True,
        )
    )
    return updates


def _time_field(name: str, epoch_seconds: float) -> dict:
    if epoch_seconds in (float("inf"), float("-inf")):
        return {}
    return {name: utc(epoch_seconds)}


class _MongoPartition(StatelessSinkPartition):
    def __init__(self, settings: Settings, collection: str, write: Callable) -> None:
        self.settings = settings
        self.client = CLIENTS.acquire(
            settings.mongo_uri,
            settings.mongo_db,
            lambda db: with_retry(
                f"creating indexes at {redact_uri(settings.mongo_uri)}",
                lambda: ensure_indexes(db),
            ),
        )
        self.db = self.client[settings.mongo_db]
        self.collection = self.db[collection]
        self.write = write

    def write_batch(self, items: list) -> None:
        if items:
            self.write(self, items)

    def bulk(self, what: str, updates: list[UpdateOne]) -> None:
        if not updates:
            return

        def attempt() -> None:
            try:
                self.collection.bulk_write(updates, ordered=False)
            except OperationFailure as exc:
                # An upsert racing another writer of the same _id: retrying
                # applies it as an update.
                if getattr(exc, "code", None) == 11000 or "E11000" in str(exc):
                    self.collection.bulk_write(updates, ordered=False)
                else:
                    raise

        with_retry(what, attempt)

    def close(self) -> None:
        CLIENTS.release(self.settings.mongo_uri)


def _write_rows(part: _MongoPartition, rows: list[Row]) -> None:
    now = datetime.now(timezone.utc)
    part.bulk(f"writing {len(rows)} rows", [row_update(r, now) for r in rows])
    if part.settings.log_rows:
        for row in rows:
            row_log.info(row.log_line())


def _write_dead_letters(part: _MongoPartition, letters: list[DeadLetter]) -> None:
    """Plain inserts (cheaper than upserts); a replayed one is a duplicate key, ignored."""
    docs = [dead_letter_doc(d) for d in letters]

    def attempt() -> None:
        try:
            part.collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            others = [e for e in exc.details.get("writeErrors", []) if e.get("code") != 11000]
            if others:
                raise

    with_retry(f"writing {len(docs)} dead letters", attempt)


def _write_status(part: _MongoPartition, items: list) -> None:
    now = datetime.now(timezone.utc)
    marks, totals = items[-1]  # the latest status says it all
    part.bulk("writing pipeline status", status_updates(marks, totals, now))


class MongoSink(DynamicSink):
    """One of the three outputs, chosen by ``collection``."""

    WRITERS = {
        REPORTS: _write_rows,
        DEAD_LETTERS: _write_dead_letters,
        STATUS: _write_status,
    }

    def __init__(self, settings: Settings, collection: str) -> None:
        self.settings = settings
        self.collection = collection

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MongoPartition:
        return _MongoPartition(self.settings, self.collection, self.WRITERS[self.collection])
