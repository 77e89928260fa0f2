"""Start-up check: state and output stay bound to their input (SPEC "Bound to its input").

Before bytewax builds anything, :func:`bind_input` makes the dataflow's
:class:`~presence.core.fingerprint.Fingerprint` (topic and its id from Kafka,
partition count, bucket, window, segments, shards, state format) and
compares it with

- the recovery directory's (``-r``): the fingerprint in the latest snapshot
  of each source partition, read directly from bytewax's SQLite files
  (:mod:`presence.io.recovery`);
- the database's: the document ``{_id: "fingerprint"}`` of collection
  ``fingerprint``, written here when absent.

A mismatch raises :class:`InputMismatch`, one line naming what differs and
how to start afresh; a recovery directory bytewax could not use raises
:class:`~presence.io.recovery.RecoveryDirError`. State or a database written
before fingerprints existed is adopted, with one warning.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from presence.cluster import cluster_run
from presence.core.fingerprint import (
    NO_TOPIC_ID, Difference, Fingerprint, differences, how_to_keep, merge_recorded, refusal,
)
from presence.core.windows import SHARDS
from presence.io.kafka import fetch_topic_id
from presence.io.mongo import DOC_ID, FINGERPRINTS, REPORTS
from presence.io.recovery import RecoveryDir, RecoveryDirError, read_dir
from presence.settings import Settings

log = logging.getLogger("presence.binding")


MONGO_START_TIMEOUT_SECONDS = 10.0
"""Seconds MongoDB has to answer at start-up; later outages are retried (presence.io.mongo)."""


class InputMismatch(ValueError):
    """State or rows were made for another input or settings; one line."""


class StoreUnreachable(RuntimeError):
    """MongoDB did not answer at start-up; one line."""


def segments_setting(settings: Settings) -> str:
    """PRESENCE_SEGMENTS as text (``""`` until that setting exists)."""
    value: Any = getattr(settings, "segments", "")
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "" if value is None else str(value)


def current_fingerprint(settings: Settings, partitions: int, topic_id: str) -> Fingerprint:
    spec = settings.window_spec()
    return Fingerprint(
        topic=settings.topic,
        topic_id=topic_id,
        partitions=partitions,
        bucket_s=spec.bucket_s,
        window_s=spec.window_s,
        segments=segments_setting(settings),
        shards=getattr(spec, "shards", SHARDS),
    )


# -- the recovery directory --------------------------------------------------------


def recorded_in_recovery(state: RecoveryDir) -> tuple[list[Fingerprint], list[str], int]:
    """Fingerprints of the source snapshots, keys without one, and the partitions the keys imply."""
    fingerprints: list[Fingerprint] = []
    bare: list[str] = []
    implied = 0
    for key, snap in sorted(state.source_states().items()):
        if key.isdigit():
            implied = max(implied, int(key) + 1)
        if snap.state is None:
            continue
        try:
            fp = snap.state.recorded()
        except ValueError as exc:
            raise RecoveryDirError(
                f"recovery directory {state.path}: the snapshot of partition {key!r} holds a "
                f"damaged fingerprint ({exc}); `presence recovery reset {state.path}` starts "
                "afresh (from the beginning of the topic)"
            ) from None
        if fp is None:
            bare.append(key)
        else:
            fingerprints.append(fp)
    return fingerprints, bare, implied


def recovery_differences(state: RecoveryDir, current: Fingerprint) -> tuple[list[Difference], Fingerprint | None, list[str]]:
    """What differs between the directory's state and ``current`` (empty: go on)."""
    fingerprints, bare, implied = recorded_in_recovery(state)
    found: dict[str, Difference] = {}
    for fp in fingerprints:
        for d in differences(fp, current):
            found.setdefault(d.field, d)
    if implied > current.partitions and "partitions" not in found and "topic" not in found \
            and "topic_id" not in found:
        for d in differences(replace(current, partitions=implied), current):
            found.setdefault(d.field, d)
    return list(found.values()), merge_recorded(fingerprints), bare


# -- the database ----------------------------------------------------------------


def database_differences(db, current: Fingerprint) -> tuple[list[Difference], Fingerprint | None]:
    doc = db[FINGERPRINTS].find_one({"_id": DOC_ID})
    if doc is None:
        return [], None
    try:
        recorded = Fingerprint.from_doc(doc)
    except ValueError as exc:
        raise InputMismatch(
            f"database {db.name!r} holds a damaged fingerprint document ({exc}) in collection "
            f"{FINGERPRINTS!r}; start afresh with another database (PRESENCE_MONGO_DB)"
        ) from None
    return differences(recorded, current), recorded


def record_in_database(db, current: Fingerprint, now: datetime) -> bool:
    """Write the fingerprint if the database has none; True if written now.

    An existing one (already compared) gets the larger partition count and,
    if it had none, the topic id.
    """
    from pymongo.errors import DuplicateKeyError

    coll = db[FINGERPRINTS]
    try:
        coll.insert_one({"_id": DOC_ID, **current.to_doc(), "createdAt": now, "updatedAt": now})
        return True
    except DuplicateKeyError:
        pass
    update: dict[str, Any] = {"$max": {"partitions": current.partitions},
                              "$set": {"updatedAt": now}}
    coll.update_one({"_id": DOC_ID}, update)
    if current.topic_id:
        coll.update_one({"_id": DOC_ID, "topicId": NO_TOPIC_ID}, {"$set": {"topicId": current.topic_id}})
    return False


def _connect_db(settings: Settings):
    from pymongo import MongoClient

    timeout_ms = int(MONGO_START_TIMEOUT_SECONDS * 1000)
    client = MongoClient(settings.mongo_uri, serverSelectionTimeoutMS=timeout_ms,
                         connectTimeoutMS=timeout_ms, appname="presence", tz_aware=True)
    return client


# -- both ---------------------------------------------------------------------------


def read_recovery(recovery: Path | None, complete: bool | None = None) -> RecoveryDir | None:
    """The ``-r`` directory as bytewax will find it; :class:`RecoveryDirError` if unusable.

    One process of a cluster may hold only some partitions (``complete``
    defaults to "not a cluster run").
    """
    if recovery is None:
        return None
    return read_dir(recovery, complete=not cluster_run() if complete is None else complete)


def bind_input(
    settings: Settings, partitions: int, state: RecoveryDir | None, topic_id: str | None = None,
    now: datetime | None = None,
) -> Fingerprint:
    """Compare with the recovery directory and the database; record; the fingerprint.

    Raises :class:`RecoveryDirError` (the directory is unusable),
    :class:`InputMismatch` (made for another input) or
    :class:`StoreUnreachable`. Nothing is written unless both match.
    """
    from pymongo.errors import PyMongoError

    if topic_id is None:
        topic_id = fetch_topic_id(settings)
    current = current_fingerprint(settings, partitions, topic_id)

    problems: list[str] = []
    rec_found: list[Difference] = []
    rec_recorded = None
    bare: list[str] = []
    if state is not None:
        rec_found, rec_recorded, bare = recovery_differences(state, current)

    client = _connect_db(settings)
    try:
        db = client[settings.mongo_db]
        try:
            db_found, db_recorded = database_differences(db, current)
        except PyMongoError as exc:
            raise StoreUnreachable(_mongo_failure(exc)) from None

        if rec_found:
            keep = how_to_keep(rec_recorded, rec_found) if rec_recorded else ""
            afresh = f"`presence recovery reset {state.path}` (or another -r directory)"
            if db_found:
                afresh += f" and another database (PRESENCE_MONGO_DB, not {settings.mongo_db!r})"
            problems.append(refusal(f"recovery directory {state.path}", rec_found, afresh, keep))
        if db_found and not problems:
            keep = how_to_keep(db_recorded, db_found)
            problems.append(refusal(
                f"database {settings.mongo_db!r}", db_found,
                f"another database (PRESENCE_MONGO_DB) or drop database {settings.mongo_db!r}",
                keep))
        if problems:
            raise InputMismatch(problems[0])

        if state is not None and bare:
            log.warning(
                "recovery directory %s holds state without a fingerprint (written before "
                "presence recorded one; partitions %s): adopting it as made for %s. If it was "
                "made for another topic or window, stop and run `presence recovery reset %s`",
                state.path, ",".join(bare), current.describe(), state.path)
        now = now or datetime.now(timezone.utc)
        try:
            written = record_in_database(db, current, now)
            if written and db_recorded is None and db[REPORTS].find_one({}, {"_id": 1}):
                log.warning(
                    "database %r holds rows but had no fingerprint (written before presence "
                    "recorded one): adopting it as made for %s", settings.mongo_db,
                    current.describe())
        except PyMongoError as exc:
            raise StoreUnreachable(_mongo_failure(exc)) from None
    finally:
        client.close()
    log.info("input: %s", current.describe())
    return current


def _mongo_failure(exc: Exception) -> str:
    from pymongo.errors import ServerSelectionTimeoutError

    if isinstance(exc, ServerSelectionTimeoutError):
        return (f"MongoDB (PRESENCE_MONGO_URI) did not answer within {MONGO_START_TIMEOUT_SECONDS:g} s; "
                "is it running? (make stack-up)")
    return f"MongoDB failed at start-up: {type(exc).__name__}"
