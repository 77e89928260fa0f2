"""MongoDB output: idempotent bulk writes of rows, dead letters and status.

Delivery is at least once (a resumed dataflow replays its last epoch), so
every write can be repeated without harm:

- ``report_summary``: one upsert per row; counts, revision and ``updatedAt``
  go through ``$max``, so a replayed older result never lowers them;
- ``segment_summary``: the same, one upsert per (segment, key, timeBucket),
  by a deterministic ``_id`` (:func:`presence.core.model.segment_doc_id`);
- ``dead_letters``: unordered inserts keyed by ``topic:partition:offset``; a
  replayed one fails as a duplicate key, which is ignored; kept
  ``PRESENCE_DEAD_LETTER_TTL_DAYS`` (a TTL index on ``receivedAt``, or, on a
  server without TTL indexes such as FerretDB 1.x, deletions by the sink);
- ``pipeline_status``: counters and offsets through ``$max``.

All writes of a batch go in one unordered ``bulk_write``. A connection
failure, or a write the server applied but could not confirm (a transient
write-concern error), is retried with exponential backoff (a WARNING per
retry) until the server is back; nothing is dropped, and nothing unconfirmed
is taken as written.
"""

from __future__ import annotations

import atexit
import calendar
import dataclasses
import functools
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, TypeVar

from bson import decode_all
from bson.raw_bson import DEFAULT_RAW_BSON_OPTIONS, RawBSONDocument
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from pymongo import MongoClient, UpdateOne
from pymongo.database import Database
from pymongo.errors import (
    AutoReconnect, BulkWriteError, ConnectionFailure, OperationFailure, PyMongoError,
    WriteConcernError,
)

from presence import metrics
from presence.core.model import (
    DeadLetter, PartitionMark, Row, SegmentRow, SegmentRows, Status, Totals, bucket_text,
)
from presence.core.pings import bucket_epoch
from presence.settings import Settings, mongo_hosts

log = logging.getLogger("presence.mongo")
row_log = logging.getLogger("presence.rows")

REPORTS = "report_summary"
SEGMENTS = "segment_summary"
SEGMENT_BUCKET_INDEX = "segment_bucket"
"""Serves ``/zones`` and the newest bucket of a definition (the unique index cannot)."""
SEGMENT_INDEX = "segment_key_bucket"
DEAD_LETTERS = "dead_letters"
STATUS = "pipeline_status"
FINGERPRINTS = "fingerprint"
"""The collection holding the database's fingerprint (one document, ``_id`` :data:`DOC_ID`)."""
DOC_ID = "fingerprint"

T = TypeVar("T")



class WriteNotConfirmed(PyMongoError):
    """The server applied a write but could not confirm its write concern (e.g. a
    ``wtimeout`` or a primary stepping down): retried like an outage, never taken
    as a success. Writes are idempotent, so running them again is safe."""


RETRYABLE = (AutoReconnect, ConnectionFailure, WriteNotConfirmed)

TRANSIENT_WRITE_CONCERN = frozenset({
    6, 7, 64, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
})
"""Write-concern error codes worth retrying (HostUnreachable, HostNotFound,
WriteConcernFailed i.e. wtimeout, NetworkTimeout, ShutdownInProgress,
PrimarySteppedDown, ExceededTimeLimit, SocketException, NotWritablePrimary,
InterruptedAtShutdown, InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk,
NotPrimaryOrSecondary). Any other (e.g. UnsatisfiableWriteConcern) is raised."""


def raise_for_write_concern(details: dict) -> None:
    """Raise if a bulk result carries ``writeConcernErrors``: :class:`WriteNotConfirmed`
    (retried) when transient, :class:`~pymongo.errors.WriteConcernError` otherwise."""
    errors = details.get("writeConcernErrors") or []
    if not errors:
        return
    first = errors[0]
    code = first.get("code")
    message = (f"write concern not satisfied ({len(errors)} error(s)): "
               f"{first.get('errmsg', 'no message')} (code {code})")
    labels = first.get("errorLabels") or details.get("errorLabels") or ()
    if code in TRANSIENT_WRITE_CONCERN or "RetryableWriteError" in labels:
        raise WriteNotConfirmed(message)
    raise WriteConcernError(message, code, first)


DUPLICATE_KEY = 11000
"""MongoDB's error code for a duplicate key."""


def duplicate_key_errors(exc: BulkWriteError) -> list[dict]:
    """The write errors of ``exc`` when every one is a duplicate key (a replay, or
    a race with another writer of the same ``_id``); any other error raises ``exc``."""
    errors = exc.details.get("writeErrors") or []
    if any(e.get("code") != DUPLICATE_KEY for e in errors):
        raise exc
    return errors


def upsert_bulk(collection, updates: list[UpdateOne], what: str,
                sleep: Callable[[float], None] = time.sleep) -> None:
    """``bulk_write`` of upserts with :func:`with_retry`. An upsert racing another
    writer of the same ``_id`` fails with a duplicate key: the batch is run once
    more, which applies it as an update. Write-concern errors go to
    :func:`raise_for_write_concern` (a transient one is retried)."""

    def attempt(again: bool = True) -> None:
        try:
            collection.bulk_write(updates, ordered=False)
        except BulkWriteError as exc:
            errors = duplicate_key_errors(exc)
            if errors and again:
                attempt(again=False)
                return
            if errors:
                raise
            raise_for_write_concern(exc.details)  # not confirmed: not a success

    with_retry(what, attempt, sleep=sleep)


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
            metrics.mongo_retry()
            log.warning(
                "MongoDB unavailable while %s (attempt %d): %s; retrying in %.1f s",
                what, attempt, type(exc).__name__, wait,
            )
            sleep(wait)
            wait = min(max_wait, wait * 2)
            attempt += 1


DEAD_LETTER_TTL_INDEX = "receivedAt_ttl"
NOT_SUPPORTED = (115, 238)  # CommandNotSupported, NotImplemented (FerretDB 1.x: no TTL indexes)
INDEX_CONFLICT = (85, 86)  # IndexOptionsConflict, IndexKeySpecsConflict


def ensure_indexes(db: Database, dead_letter_ttl_days: float = 30.0) -> bool:
    """The unique ``timeBucket`` index, and on ``dead_letters`` a ``reason`` index and a
    TTL index on ``receivedAt``. True if the server expires dead letters itself; False
    when it has no TTL indexes (then a plain index is made and the dead-letter sink
    deletes expired ones, see :func:`prune_dead_letters`)."""
    db[REPORTS].create_index("timeBucket", unique=True, name="timeBucket_unique")
    db[SEGMENTS].create_index(
        [("segment", 1), ("key", 1), ("timeBucket", 1)], unique=True, name=SEGMENT_INDEX
    )
    # The zone map and the newest-bucket lookups ask by (segment, timeBucket).
    db[SEGMENTS].create_index([("segment", 1), ("timeBucket", 1)], name=SEGMENT_BUCKET_INDEX)
    db[DEAD_LETTERS].create_index("reason", name="reason")
    return ensure_ttl_index(db[DEAD_LETTERS], "receivedAt", round(dead_letter_ttl_days * 86400))


def ensure_ttl_index(coll, field: str, seconds: int, name: str = DEAD_LETTER_TTL_INDEX) -> bool:
    """A TTL index of ``seconds`` on ``field``; an index on it with another TTL (or none)
    is changed with ``collMod``, or dropped and made again. False if TTL indexes are
    not supported (a plain index on ``field`` is made instead, and an INFO line says so)."""
    try:
        coll.create_index(field, name=name, expireAfterSeconds=seconds)  # no-op if the same
        return True
    except OperationFailure as exc:
        if exc.code in NOT_SUPPORTED:
            log.info(  # nothing is wrong: the sink does the TTL's work (see README)
                "this MongoDB server has no TTL indexes (%s): presence deletes dead letters "
                "older than PRESENCE_DEAD_LETTER_TTL_DAYS itself", str(exc).split(",")[0][:120])
            coll.create_index(field, name=field)
            return False
        if exc.code not in INDEX_CONFLICT:
            raise
    existing = [(n, spec) for n, spec in coll.index_information().items()
                if list(spec.get("key", [])) == [(field, 1)]]
    for index_name, spec in existing:
        if "expireAfterSeconds" in spec:
            try:
                coll.database.command("collMod", coll.name,
                                      index={"name": index_name, "expireAfterSeconds": seconds})
                log.info("dead letters now expire after %d s (index %s changed)", seconds, index_name)
                return True
            except OperationFailure:
                pass  # dropped and made again below
    for index_name, _ in existing:
        coll.drop_index(index_name)
    coll.create_index(field, name=name, expireAfterSeconds=seconds)
    log.info("dead letters now expire after %d s (index %s made again)", seconds, name)
    return True


PRUNE_EVERY_SECONDS = 600.0
"""Seconds between two deletions of expired dead letters by one sink partition."""


def prune_dead_letters(collection, ttl_days: float, now: datetime) -> int:
    """Delete dead letters received more than ``ttl_days`` before ``now`` (what a TTL
    index does; for servers without one, and harmless with one)."""
    cutoff = now - timedelta(days=ttl_days)
    return collection.delete_many({"receivedAt": {"$lt": cutoff}}).deleted_count


def _row_max(row: Row | SegmentRow, now: datetime) -> dict[str, Any]:
    """What a row rewrite may only raise (an at-least-once replay lowers nothing)."""
    return {
        "driversOnlineCount": row.online,
        "driversAvailableCount": row.available,
        "revision": row.revision,
        "updatedAt": now,
    }


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
            "$max": _row_max(row, now),
        },
        upsert=True,
    )


def segment_row_update(row: SegmentRow, now: datetime) -> UpdateOne:
    """The upsert of one ``segment_summary`` document, by its deterministic ``_id``
    (FerretDB scans the collection for an upsert by any other filter)."""
    time_bucket = row.time_bucket
    fields: dict[str, Any] = {
        "segment": row.segment,
        "key": row.key,
        "timeBucket": time_bucket,
        "windowStart": _utc_shared(row.window_start),
        "windowEnd": _utc_shared(row.window_end),
    }
    if row.overflow:
        fields["overflow"] = True
    return UpdateOne(
        {"_id": row.doc_id},
        {
            "$set": fields,
            "$max": _row_max(row, now),
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
                    **_segment_totals(totals),
                },
            },
            upsert=True,
        )
    )
    return updates


def _segment_totals(totals: Totals) -> dict[str, int]:
    """``unlocated`` and ``segments.<definition>.*`` (only with segments configured)."""
    if not totals.segments:
        return {}
    out = {"unlocated": totals.unlocated}
    for seg in totals.segments:
        out[f"segments.{seg.segment}.otherPings"] = seg.other_pings
        out[f"segments.{seg.segment}.rowsWritten"] = seg.rows_written
        out[f"segments.{seg.segment}.overflowRows"] = seg.overflow_rows
    return out


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
                f"creating indexes at {mongo_hosts(settings.mongo_uri)}",
                lambda: ensure_indexes(db, settings.dead_letter_ttl_days),
            ),
        )
        self.db = self.client[settings.mongo_db]
        self.collection = self.db[collection]
        self.write = write
        self.next_prune = 0.0  # monotonic time of the next dead-letter clean-up
        self.segment_encoder = segment_encoder(settings.reader)

    def write_batch(self, items: list) -> None:
        if items:
            self.write(self, items)

    def bulk(self, what: str, updates: list[UpdateOne], collection: Any = None) -> None:
        if updates:
            upsert_bulk(self.collection if collection is None else collection, updates, what)

    def close(self) -> None:
        CLIENTS.release(self.settings.mongo_uri)


SEGMENT_BATCH = 1000
"""Segment documents per insert or upsert command: an h3 bucket has tens of thousands."""

@functools.lru_cache(maxsize=4096)
def _utc_shared(epoch_seconds: float) -> datetime:
    """:func:`utc`, the same (immutable) object for the same instant: tens of
    thousands of segment rows share a few window bounds."""
    return utc(epoch_seconds)


def segment_doc(row: SegmentRow, now: datetime) -> dict[str, Any]:
    """The whole ``segment_summary`` document of a row (what :func:`segment_row_update` makes)."""
    doc: dict[str, Any] = {
        "_id": row.doc_id,
        "segment": row.segment,
        "key": row.key,
        "timeBucket": row.time_bucket,
        "windowStart": _utc_shared(row.window_start),
        "windowEnd": _utc_shared(row.window_end),
        "driversOnlineCount": row.online,
        "driversAvailableCount": row.available,
        "revision": row.revision,
        "updatedAt": now,
    }
    if row.overflow:
        doc["overflow"] = True
    return doc


_MAX_FIELDS = ("driversOnlineCount", "driversAvailableCount", "revision", "updatedAt")


def merge_segment_docs(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` with the ``$max`` of each counter and ``overflow`` kept (the upsert's merge)."""
    out = dict(new)
    for name in _MAX_FIELDS:
        if name in old:
            try:
                out[name] = max(old[name], new[name]) if name in new else old[name]
            except TypeError:  # a date without a time zone (another client): the new one
                pass
    if old.get("overflow"):
        out["overflow"] = True
    return out


def write_segment_rows(coll, rows: list[SegmentRow], now: datetime,
                       sleep: Callable[[float], None] = time.sleep) -> None:
    """Write segment rows, idempotently, with the merge of :func:`segment_row_update`.

    Rows of one ``_id`` in the batch are merged first. A first write
    (``revision`` 1) is a plain insert (unordered, cheap everywhere); one that
    exists already (a replay) joins the rewrites. Rewrites are upserts by
    ``_id`` (``$set``/``$max``), which every server answers from its ``_id``
    index (the local stack's FerretDB too: stack/ferretdb/patches/0002; upstream
    FerretDB v1 scans the collection for each).
    """
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        doc = segment_doc(row, now)
        old = merged.get(doc["_id"])
        merged[doc["_id"]] = doc if old is None else merge_segment_docs(old, doc)
    docs = list(merged.values())
    for at in range(0, len(docs), SEGMENT_BATCH):
        chunk = docs[at:at + SEGMENT_BATCH]
        rewrites = [d for d in chunk if d["revision"] > 1]
        firsts = [d for d in chunk if d["revision"] == 1]
        if firsts:
            rewrites += [firsts[n] for n in _insert_new(coll, firsts, sleep)]
        if rewrites:
            _upsert(coll, rewrites, sleep)


SegmentEncoder = Callable[..., bytes]
"""``presence._native.encode_segment_docs``: :func:`segment_doc` s as BSON, from a
:class:`SegmentRows` batch's tuples."""


def segment_encoder(reader: str) -> SegmentEncoder | None:
    """The compiled document encoder when ``PRESENCE_READER=reader`` runs the
    compiled pieces (:func:`presence.core.partition.reader_in_use`), else None."""
    from presence.core import partition

    if partition.reader_in_use(reader) == "native":
        return partition._native.encode_segment_docs
    return None


def _millis(moment: datetime) -> int:
    """A datetime as BSON stores it (pymongo's rule: milliseconds, truncated)."""
    offset = moment.utcoffset()
    if offset is not None:
        moment = moment - offset
    return calendar.timegm(moment.timetuple()) * 1000 + moment.microsecond // 1000


def raw_segment_docs(batch: SegmentRows, taken: list, now: datetime,
                     encode: SegmentEncoder) -> list[RawBSONDocument]:
    """:func:`segment_doc` of each of ``taken`` (tuples of ``batch``), encoded by
    the compiled ``encode``: the same bytes as pymongo's encoding of the dicts
    (tests/test_segment_docs.py), with no dict per row. Raises where it does
    not apply (then the caller builds the dicts)."""
    bucket, window = batch.bucket_s, batch.window_s
    texts = {}
    for row in dict.fromkeys(t[0] for t in taken):
        # a bucket beyond datetime's range raises here, as segment_doc does
        _utc_shared(row + bucket - window), _utc_shared(row + bucket)
        texts[row] = bucket_text(row)
    blob = encode(taken, list(batch.names), texts, bucket, window, _millis(now))
    return decode_all(blob, DEFAULT_RAW_BSON_OPTIONS)


def write_segment_batch(coll, batch: SegmentRows, now: datetime,
                        encode: SegmentEncoder | None = None,
                        sleep: Callable[[float], None] = time.sleep) -> None:
    """Write one :class:`SegmentRows` batch, as :func:`write_segment_rows` writes its rows.

    Its rows have distinct ``_id`` s (one take of the row book), so there is
    nothing to merge. With ``encode`` (the compiled encoder), first writes go
    as raw BSON; rewrites, and first writes that exist already (a replay),
    are upserts built from their rows. Without it, or where it does not
    apply, :func:`write_segment_rows`.
    """
    if encode is None:
        write_segment_rows(coll, list(batch), now, sleep)
        return
    taken = batch.taken
    for at in range(0, len(taken), SEGMENT_BATCH):
        chunk = taken[at:at + SEGMENT_BATCH]
        firsts = [t for t in chunk if t[5] == 1]
        rewrites = [t for t in chunk if t[5] != 1]
        if firsts:
            try:
                raws = raw_segment_docs(batch, firsts, now, encode)
            except (ValueError, TypeError, OverflowError, UnicodeError):
                write_segment_rows(coll, list(dataclasses.replace(batch, taken=chunk)), now, sleep)
                continue
            rewrites += [firsts[n] for n in _insert_new(coll, raws, sleep)]
        if rewrites:
            rows = dataclasses.replace(batch, taken=rewrites)
            _upsert(coll, [segment_doc(row, now) for row in rows], sleep)


def _insert_new(coll, docs: list, sleep: Callable[[float], None]) -> list[int]:
    """Insert; the indexes of the documents that existed already (to merge)."""
    clashes: list[int] = []

    def attempt() -> None:
        clashes.clear()
        try:
            coll.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = duplicate_key_errors(exc)
            raise_for_write_concern(exc.details)
            clashes.extend(e["index"] for e in errors)

    with_retry(f"writing {len(docs)} segment rows", attempt, sleep=sleep)
    return clashes


def _upsert(coll, docs: list[dict], sleep: Callable[[float], None]) -> None:
    updates = []
    for doc in docs:
        fields = {k: v for k, v in doc.items() if k != "_id" and k not in _MAX_FIELDS}
        updates.append(UpdateOne(
            {"_id": doc["_id"]},
            {"$set": fields, "$max": {k: doc[k] for k in _MAX_FIELDS}},
            upsert=True,
        ))

    upsert_bulk(coll, updates, f"rewriting {len(docs)} segment rows", sleep)


def _write_rows(part: _MongoPartition, items: list) -> None:
    """Global rows to ``report_summary``, segment rows (if any) to ``segment_summary``:
    each :class:`SegmentRows` batch in turn (a later batch may rewrite a row of
    an earlier one)."""
    now = datetime.now(timezone.utc)
    rows = [r for r in items if type(r) is Row]
    if rows:
        part.bulk(f"writing {len(rows)} rows", [row_update(r, now) for r in rows])
        metrics.rows_written(len(rows))
    if len(rows) < len(items):
        segments = part.db[SEGMENTS]
        for batch in (b for b in items if type(b) is SegmentRows):
            write_segment_batch(segments, batch, now, part.segment_encoder)
    if part.settings.log_rows:
        for row in rows:
            row_log.info(row.log_line())


def _write_dead_letters(part: _MongoPartition, letters: list[DeadLetter]) -> None:
    """Plain inserts (cheaper than upserts); a replayed one is a duplicate key, ignored.

    Write-concern errors are not ignored: a transient one is retried, any other
    raised. Every :data:`PRUNE_EVERY_SECONDS` seconds, expired dead letters are deleted.
    """
    insert_dead_letters(part.collection, [dead_letter_doc(d) for d in letters])
    if time.monotonic() >= part.next_prune:
        ttl = part.settings.dead_letter_ttl_days
        with_retry("deleting expired dead letters",
                   lambda: prune_dead_letters(part.collection, ttl, datetime.now(timezone.utc)))
        part.next_prune = time.monotonic() + PRUNE_EVERY_SECONDS


def insert_dead_letters(collection, docs: list[dict],
                        sleep: Callable[[float], None] = time.sleep) -> None:
    def attempt() -> None:
        try:
            collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            duplicate_key_errors(exc)  # replayed dead letters: already stored
            raise_for_write_concern(exc.details)

    with_retry(f"writing {len(docs)} dead letters", attempt, sleep=sleep)


def _write_status(part: _MongoPartition, items: list) -> None:
    now = datetime.now(timezone.utc)
    status: Status = items[-1]  # the latest status says it all
    part.bulk("writing pipeline status", status_updates(status.marks, status.totals, now))


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


# -- reading the documents (the CLI, the API, tests and bench) ----------------------
# The shapes written above, read back: one place for both directions.


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


_ROW_FIELDS = {"_id": 0, "timeBucket": 1, "driversOnlineCount": 1,
               "driversAvailableCount": 1, "revision": 1}


def _row(doc: dict[str, Any]) -> ReportRow:
    return ReportRow(
        time=doc["timeBucket"],
        online=int(doc.get("driversOnlineCount", 0)),
        available=int(doc.get("driversAvailableCount", 0)),
        revision=int(doc.get("revision", 1)),
    )


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return None


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def row_count(coll) -> int:
    """The collection's document count from its metadata (``$collStats``, summed over
    shards), not by counting; ``estimatedDocumentCount`` where ``$collStats`` is missing.
    (FerretDB 1.x answers ``$collStats`` at once but counts for ``estimatedDocumentCount``.)"""
    try:
        return sum(int(doc.get("count", 0))
                   for doc in coll.aggregate([{"$collStats": {"count": {}}}]))
    except OperationFailure:
        return coll.estimated_document_count()


def report_extent(db: Database) -> dict[str, Any]:
    """Row count and first/last ``timeBucket``: the count from collection metadata and
    one indexed, limit-1 query at each end of the unique ``timeBucket`` index, so with
    MongoDB the cost does not grow with the number of rows. (FerretDB 1.x does not use
    indexes to sort: there the two queries scan the collection.)"""
    coll = db[REPORTS]
    first = coll.find_one({}, {"_id": 0, "timeBucket": 1}, sort=[("timeBucket", 1)])
    last = coll.find_one({}, {"_id": 0, "timeBucket": 1}, sort=[("timeBucket", -1)])
    return {
        "count": row_count(coll),
        "first": first["timeBucket"] if first else None,
        "last": last["timeBucket"] if last else None,
    }


TOTAL_FIELDS = ("valid", "invalid", "late", "correctedLate", "tooLate", "deadLetters",
                "rowsWritten", "rowRewrites")
"""The totals the dataflow keeps in ``pipeline_status`` (``_id: "totals"``), as served."""


def store_status(db: Database) -> dict[str, Any]:
    """Everything the pipeline wrote about itself, as plain JSON values.

    Reads only ``pipeline_status`` (one document per partition and the
    totals) and the ends of ``report_summary``: dead letters by reason come
    from the totals the dataflow keeps (``deadLettersByReason``), never from
    scanning ``dead_letters``. A database written by an older dataflow
    without them shows no reasons, and its dead-letter total from the
    ``deadLetters`` total.
    """
    partitions = []
    totals: dict[str, Any] = {}
    for doc in db[STATUS].find({}):
        if doc.get("_id") == "totals" or doc.get("kind") == "totals":
            totals = doc
            continue
        if doc.get("kind", "partition") != "partition":
            continue  # other bookkeeping (e.g. the input fingerprint)
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
                "valid": _int(doc.get("valid")),
                "invalid": _int(doc.get("invalid")),
                "tooLate": _int(doc.get("tooLate")),
                "maxEventTime": _iso(doc.get("maxEventTime")),
                "gaps": gaps,
                "updatedAt": _iso(doc.get("updatedAt")),
            }
        )
    partitions.sort(key=lambda p: (p["topic"], p["partition"]))
    reasons = totals.get("deadLettersByReason")
    by_reason = ({str(r): _int(n) for r, n in sorted(reasons.items())}
                 if isinstance(reasons, dict) else {})
    served_totals = {key: _int(totals.get(key)) for key in TOTAL_FIELDS}
    dead_total = (served_totals["deadLetters"] if "deadLetters" in totals
                  else sum(by_reason.values()))
    return {
        "watermark": _iso(totals.get("watermark")),
        "updatedAt": _iso(totals.get("updatedAt")),
        "totals": served_totals,
        "partitions": partitions,
        "gaps": {
            "count": sum(len(p["gaps"]) for p in partitions),
            "lostOffsets": sum(g["lost"] for p in partitions for g in p["gaps"]),
        },
        "deadLetters": {"total": dead_total, "byReason": by_reason},
        "reports": report_extent(db),
        "segmentTotals": segment_totals(totals),
    }


# -- reading segment_summary (SPEC "Segments"; the API, the CLI and tests) -----------
# Documents: one per (segment, key, timeBucket), unique index segment_key_bucket on
# those three fields, written by the dataflow beside report_summary. Every query
# below filters on those fields (``segment`` equality first, ``key`` as the whole
# embedded document in the definition's field order, ``timeBucket`` a range), so a
# MongoDB server walks that index; every query is bounded (a limit). FerretDB 1.x
# scans the collection for any filter but ``_id`` equality (stack/README.md): each
# call below is one query, one scan there.

SEGMENTS = "segment_summary"

SEGMENT_SCAN_ROWS = 200_000
"""Most rows :func:`segment_values` reads for one definition; beyond, ``truncated``."""

MAX_ZONE_CELLS = 200_000
"""Most cells :func:`segment_cells` returns for one bucket; beyond, ``truncated``."""


@dataclass(frozen=True, slots=True)
class SegmentValue:
    """A value of a definition and its latest row in a range."""

    key: dict[str, str]
    time: str
    online: int
    available: int

    def as_dict(self) -> dict[str, Any]:
        return {"key": dict(self.key), "timeBucket": bucket_iso_of(self.time),
                "online": self.online, "available": self.available}


def bucket_iso_of(time_bucket: str) -> str:
    """``2018-01-01 04:00:00`` as ``2018-01-01T04:00:00Z``."""
    from presence.core.pings import bucket_iso

    return bucket_iso(time_bucket)


def _segment_filter(segment: str, key: dict[str, str] | None,
                    bucket_query: dict[str, Any]) -> dict[str, Any]:
    query: dict[str, Any] = {"segment": segment}
    if key is not None:
        query["key"] = dict(key)  # the whole embedded document: the index's field
    query.update(bucket_query)
    return query


def segment_rows(db: Database, segment: str, key: dict[str, str],
                 bucket_query: dict[str, Any], limit: int, newest: bool = False
                 ) -> list[ReportRow]:
    """At most ``limit`` rows of one value of ``segment`` (``key`` as in its documents,
    fields in the definition's order), sorted by ``timeBucket`` (the oldest, or with
    ``newest`` the newest of the range, then reversed). ``bucket_query`` is the
    ``timeBucket`` filter (:meth:`presence.tools.reports.TimeRange.query`). The caller
    asks for one row more than a page to know where the next one starts."""
    cursor = (
        db[SEGMENTS]
        .find(_segment_filter(segment, key, bucket_query), _ROW_FIELDS)
        .sort("timeBucket", -1 if newest else 1)
        .limit(limit)
    )
    return [_row(doc) for doc in cursor]


def segment_values(db: Database, segment: str, bucket_query: dict[str, Any],
                   most_rows: int = SEGMENT_SCAN_ROWS) -> tuple[list[SegmentValue], bool]:
    """Each value of ``segment`` with a row in the range, with its latest row there,
    and whether the range held more than ``most_rows`` rows (then only that many were
    read, in no particular order: the values are those found). Unsorted."""
    latest: dict[tuple, SegmentValue] = {}
    seen = 0
    fields = {"_id": 0, "key": 1, "timeBucket": 1, "driversOnlineCount": 1,
              "driversAvailableCount": 1}
    cursor = db[SEGMENTS].find(_segment_filter(segment, None, bucket_query), fields,
                               limit=most_rows + 1)
    for doc in cursor:
        seen += 1
        if seen > most_rows:
            break
        key = doc.get("key")
        if not isinstance(key, dict):
            continue
        ident = tuple(sorted((str(k), str(v)) for k, v in key.items()))
        time_bucket = doc.get("timeBucket")
        known = latest.get(ident)
        if known is None or time_bucket > known.time:
            latest[ident] = SegmentValue(
                key={str(k): str(v) for k, v in key.items()}, time=time_bucket,
                online=_int(doc.get("driversOnlineCount")),
                available=_int(doc.get("driversAvailableCount")),
            )
    return list(latest.values()), seen > most_rows


def segment_cells(db: Database, segment: str, time_bucket: str,
                  most: int = MAX_ZONE_CELLS) -> tuple[list[SegmentValue], bool]:
    """The rows of ``segment`` at one bucket (for an ``h3:R`` definition: its cells),
    at most ``most`` of them, and whether there were more."""
    fields = {"_id": 0, "key": 1, "timeBucket": 1, "driversOnlineCount": 1,
              "driversAvailableCount": 1}
    cursor = db[SEGMENTS].find({"segment": segment, "timeBucket": time_bucket}, fields,
                               limit=most + 1)
    out = [_segment_value(doc) for doc in cursor if isinstance(doc.get("key"), dict)]
    return out[:most], len(out) > most


def newest_segment_cells(db: Database, segment: str, most: int = MAX_ZONE_CELLS
                         ) -> tuple[str | None, list[SegmentValue], bool]:
    """The newest bucket with rows of ``segment`` and those rows (at most ``most``, and
    whether there were more), usually in one query: the rows at or after the newest
    ``report_summary`` bucket (segment rows are written with the global rows of their
    bucket), the newest bucket among them kept. Only when there are none (or too many
    to tell) does it look for the newest bucket first, then read its rows: the same
    answer, one query more. (On FerretDB 1.x every query here reads the collection.)"""
    newest_report = db[REPORTS].find_one({}, {"_id": 0, "timeBucket": 1},
                                         sort=[("timeBucket", -1)])
    if newest_report is not None:
        fields = {"_id": 0, "key": 1, "timeBucket": 1, "driversOnlineCount": 1,
                  "driversAvailableCount": 1}
        docs = list(db[SEGMENTS].find(
            {"segment": segment, "timeBucket": {"$gte": newest_report["timeBucket"]}},
            fields, limit=2 * most + 1))
        if docs and len(docs) <= 2 * most:
            newest = max(d["timeBucket"] for d in docs)
            cells = [_segment_value(d) for d in docs
                     if d["timeBucket"] == newest and isinstance(d.get("key"), dict)]
            return newest, cells[:most], len(cells) > most
    newest = latest_segment_bucket(db, segment)
    if newest is None:
        return None, [], False
    cells, cut = segment_cells(db, segment, newest, most)
    return newest, cells, cut


def _segment_value(doc: dict[str, Any]) -> SegmentValue:
    return SegmentValue(
        key={str(k): str(v) for k, v in doc["key"].items()}, time=doc.get("timeBucket"),
        online=_int(doc.get("driversOnlineCount")),
        available=_int(doc.get("driversAvailableCount")),
    )


def latest_segment_bucket(db: Database, segment: str | None = None,
                          at_most: str | None = None) -> str | None:
    """The newest ``timeBucket`` with a row of ``segment`` (of any segment when
    ``None``), at or before ``at_most`` if given; ``None`` when there is none."""
    query: dict[str, Any] = {} if segment is None else {"segment": segment}
    if at_most is not None:
        query["timeBucket"] = {"$lte": at_most}
    doc = db[SEGMENTS].find_one(query, {"_id": 0, "timeBucket": 1},
                                sort=[("timeBucket", -1)])
    return doc["timeBucket"] if doc else None


def recorded_segments(db: Database) -> tuple[str, int] | None:
    """``(segments, bucket seconds)`` of the database's fingerprint document (what the
    dataflow that writes it was started with), or ``None`` if it has none. One ``_id``
    lookup."""
    doc = db[FINGERPRINTS].find_one({"_id": DOC_ID}, {"segments": 1, "bucketSeconds": 1})
    if not doc or not isinstance(doc.get("segments"), str):
        return None
    bucket = doc.get("bucketSeconds")
    return doc["segments"], bucket if type(bucket) is int and bucket > 0 else 0


SEGMENT_TOTAL_FIELDS = ("otherPings", "rowsWritten", "overflowRows")
"""Per definition, in ``pipeline_status`` totals ``segments.<definition>``."""


def segment_totals(totals: dict[str, Any]) -> dict[str, Any]:
    """The segment counters of a ``pipeline_status`` totals document, as served:
    ``{"unlocated": n, "segments": {definition: {otherPings, rowsWritten, overflowRows}}}``."""
    by_definition = totals.get("segments")
    segments = {}
    if isinstance(by_definition, dict):
        for name, counters in sorted(by_definition.items()):
            if isinstance(counters, dict):
                segments[str(name)] = {f: _int(counters.get(f)) for f in SEGMENT_TOTAL_FIELDS}
    return {"unlocated": _int(totals.get("unlocated")), "segments": segments}
