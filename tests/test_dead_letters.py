"""Dead letters within bounds and honestly (issue 9.7): a TTL on ``receivedAt`` and
write-concern errors treated as errors, not successes."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure, WriteConcernError

from presence.io import mongo
from presence.io.mongo import (
    WriteNotConfirmed, ensure_indexes, ensure_ttl_index, insert_dead_letters,
    prune_dead_letters, raise_for_write_concern,
)

WTIMEOUT = {"code": 64, "codeName": "WriteConcernFailed",
            "errmsg": "waiting for replication timed out", "errInfo": {"wtimeout": True}}
UNSATISFIABLE = {"code": 100, "codeName": "UnsatisfiableWriteConcern",
                 "errmsg": "Not enough data-bearing nodes"}


def bulk_error(write_errors=(), concern_errors=(), inserted=0):
    return BulkWriteError({"writeErrors": list(write_errors),
                           "writeConcernErrors": list(concern_errors),
                           "nInserted": inserted, "nUpserted": 0, "nMatched": 0,
                           "nModified": 0, "nRemoved": 0, "upserted": []})


class FakeCollection:
    """insert_many / bulk_write that fail with the given errors, then succeed."""

    def __init__(self, *failures):
        self.failures = list(failures)
        self.calls = 0

    def insert_many(self, docs, ordered=True):
        return self._call()

    def bulk_write(self, updates, ordered=True):
        return self._call()

    def _call(self):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)


DOCS = [{"_id": f"t:0:{n}", "reason": "invalid_json"} for n in range(3)]


def test_a_write_concern_timeout_on_dead_letters_is_retried_not_taken_as_written(caplog):
    coll = FakeCollection(bulk_error(concern_errors=[WTIMEOUT], inserted=3))
    waits = []
    with caplog.at_level(logging.WARNING, "presence.mongo"):
        insert_dead_letters(coll, DOCS, sleep=waits.append)
    assert coll.calls == 2 and len(waits) == 1  # written again once confirmed
    assert "WriteNotConfirmed" in caplog.text


def test_a_permanent_write_concern_error_on_dead_letters_is_raised():
    coll = FakeCollection(bulk_error(concern_errors=[UNSATISFIABLE]))
    with pytest.raises(WriteConcernError, match="Not enough data-bearing nodes"):
        insert_dead_letters(coll, DOCS, sleep=lambda s: None)
    assert coll.calls == 1


def test_duplicate_dead_letters_are_still_ignored_but_not_with_a_write_concern_error():
    dup = {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"}
    coll = FakeCollection(bulk_error(write_errors=[dup]))
    insert_dead_letters(coll, DOCS, sleep=lambda s: None)
    assert coll.calls == 1
    coll = FakeCollection(bulk_error(write_errors=[dup], concern_errors=[WTIMEOUT]),
                          bulk_error(write_errors=[dup, dup, dup]))  # the retry: all replayed
    insert_dead_letters(coll, DOCS, sleep=lambda s: None)
    assert coll.calls == 2


def test_other_write_errors_are_raised():
    coll = FakeCollection(bulk_error(write_errors=[{"index": 0, "code": 2, "errmsg": "bad"}]))
    with pytest.raises(BulkWriteError):
        insert_dead_letters(coll, DOCS, sleep=lambda s: None)


def test_raise_for_write_concern():
    raise_for_write_concern({"writeConcernErrors": []})
    with pytest.raises(WriteNotConfirmed, match="replication timed out"):
        raise_for_write_concern({"writeConcernErrors": [WTIMEOUT]})
    with pytest.raises(WriteNotConfirmed):
        raise_for_write_concern({"writeConcernErrors": [
            {"code": 1234, "errmsg": "x", "errorLabels": ["RetryableWriteError"]}]})
    with pytest.raises(WriteConcernError):
        raise_for_write_concern({"writeConcernErrors": [UNSATISFIABLE]})


def test_row_and_status_writes_retry_write_concern_errors(monkeypatch):
    monkeypatch.setattr(mongo.time, "sleep", lambda s: None)
    part = SimpleNamespace(collection=FakeCollection(bulk_error(concern_errors=[WTIMEOUT])))
    waits = []
    monkeypatch.setattr(mongo, "with_retry",
                        lambda what, action, **_: _retry(action, waits))
    mongo._MongoPartition.bulk(part, "writing 1 rows", [UpdateOne({"_id": 1}, {"$set": {}})])
    assert part.collection.calls == 2 and len(waits) == 1
    part = SimpleNamespace(collection=FakeCollection(bulk_error(concern_errors=[UNSATISFIABLE])))
    with pytest.raises(WriteConcernError):
        mongo._MongoPartition.bulk(part, "writing 1 rows", [UpdateOne({"_id": 1}, {"$set": {}})])


def _retry(action, waits):
    while True:
        try:
            return action()
        except mongo.RETRYABLE:
            waits.append(1)


# ------------------------------------------------------------------ TTL


class FakeIndexes:
    """A collection's index calls, as MongoDB answers them (or FerretDB 1.x)."""

    def __init__(self, indexes=None, ttl_supported=True, coll_mod=True):
        self.indexes = dict(indexes or {})
        self.ttl_supported = ttl_supported
        self.coll_mod = coll_mod
        self.log = []
        self.name = "dead_letters"
        self.database = SimpleNamespace(command=self._command)

    def create_index(self, field, name, **options):
        self.log.append(("create", name, options))
        if "expireAfterSeconds" in options and not self.ttl_supported:
            raise OperationFailure('Index option "expireAfterSeconds" is not implemented yet',
                                   code=238)
        ttl = options.get("expireAfterSeconds")
        for other, spec in self.indexes.items():
            if spec["key"] == [(field, 1)]:
                if other == name and spec["ttl"] == ttl:
                    return name  # the same index: nothing to do
                raise OperationFailure("An equivalent index already exists", code=85)
        self.indexes[name] = {"key": [(field, 1)], "ttl": options.get("expireAfterSeconds")}
        return name

    def index_information(self):
        out = {}
        for name, spec in self.indexes.items():
            out[name] = {"key": spec["key"]}
            if spec["ttl"] is not None:
                out[name]["expireAfterSeconds"] = spec["ttl"]
        return out

    def drop_index(self, name):
        self.log.append(("drop", name))
        del self.indexes[name]

    def _command(self, name, coll, index):
        self.log.append(("collMod", index["name"], index["expireAfterSeconds"]))
        if not self.coll_mod:
            raise OperationFailure("collMod is not implemented yet", code=238)
        self.indexes[index["name"]]["ttl"] = index["expireAfterSeconds"]
        return {"ok": 1}


def test_ttl_index_is_made():
    coll = FakeIndexes()
    assert ensure_ttl_index(coll, "receivedAt", 30 * 86400) is True
    assert coll.indexes["receivedAt_ttl"] == {"key": [("receivedAt", 1)], "ttl": 2592000}
    assert ensure_ttl_index(coll, "receivedAt", 30 * 86400) is True  # again: no change
    assert [e[0] for e in coll.log] == ["create", "create"]


def test_ttl_index_with_another_ttl_is_changed_with_collmod():
    coll = FakeIndexes({"receivedAt_ttl": {"key": [("receivedAt", 1)], "ttl": 86400}})
    assert ensure_ttl_index(coll, "receivedAt", 7 * 86400) is True
    assert coll.indexes["receivedAt_ttl"]["ttl"] == 7 * 86400
    assert ("collMod", "receivedAt_ttl", 604800) in coll.log


def test_ttl_index_is_made_again_when_collmod_fails_or_the_index_has_no_ttl():
    coll = FakeIndexes({"receivedAt_ttl": {"key": [("receivedAt", 1)], "ttl": 86400}},
                       coll_mod=False)
    assert ensure_ttl_index(coll, "receivedAt", 7 * 86400) is True
    assert coll.indexes == {"receivedAt_ttl": {"key": [("receivedAt", 1)], "ttl": 604800}}
    coll = FakeIndexes({"receivedAt": {"key": [("receivedAt", 1)], "ttl": None}})
    assert ensure_ttl_index(coll, "receivedAt", 86400) is True
    assert coll.indexes == {"receivedAt_ttl": {"key": [("receivedAt", 1)], "ttl": 86400}}


def test_without_ttl_indexes_a_plain_index_and_a_log_line(caplog):
    coll = FakeIndexes(ttl_supported=False)
    with caplog.at_level(logging.INFO, "presence.mongo"):
        assert ensure_ttl_index(coll, "receivedAt", 86400) is False
    assert coll.indexes == {"receivedAt": {"key": [("receivedAt", 1)], "ttl": None}}
    assert "no TTL indexes" in caplog.text and "PRESENCE_DEAD_LETTER_TTL_DAYS" in caplog.text


@pytest.mark.stack
def test_dead_letters_expire_on_the_local_server(mongo_uri, unique_name):
    """FerretDB 1.x refuses TTL indexes (NotImplemented): presence makes a plain index and
    deletes expired dead letters itself; with MongoDB the TTL index is made."""
    from pymongo import MongoClient

    client = MongoClient(mongo_uri, tz_aware=True)
    db = client[unique_name]
    try:
        server_ttl = ensure_indexes(db, dead_letter_ttl_days=2)
        info = db.dead_letters.index_information()
        receivedAt = [spec for spec in info.values() if spec["key"] == [("receivedAt", 1)]]
        assert len(receivedAt) == 1
        assert ("expireAfterSeconds" in receivedAt[0]) is server_ttl
        if server_ttl:
            assert receivedAt[0]["expireAfterSeconds"] == 2 * 86400
        assert ensure_indexes(db, dead_letter_ttl_days=2) is server_ttl  # idempotent
        now = datetime.now(timezone.utc)
        db.dead_letters.insert_many([
            {"_id": f"t:0:{n}", "reason": "invalid_json", "receivedAt": now - timedelta(days=age)}
            for n, age in enumerate([0, 1, 1.9, 2.1, 30])])
        assert prune_dead_letters(db.dead_letters, 2, now) == 2
        assert sorted(d["_id"] for d in db.dead_letters.find()) == ["t:0:0", "t:0:1", "t:0:2"]
    finally:
        client.drop_database(unique_name)
        client.close()


def test_the_dead_letter_sink_deletes_expired_letters_at_most_every_ten_minutes(monkeypatch):
    from presence.core.model import DeadLetter

    deleted = []

    class Coll(FakeCollection):
        def delete_many(self, query):
            deleted.append(query)
            return SimpleNamespace(deleted_count=0)

    clock = [1000.0]
    monkeypatch.setattr(mongo.time, "monotonic", lambda: clock[0])
    part = SimpleNamespace(collection=Coll(), next_prune=0.0,
                           settings=SimpleNamespace(dead_letter_ttl_days=2.0))
    letter = DeadLetter("t", 0, 1, "invalid_json", "x", "{", 1514779200.0)
    mongo._write_dead_letters(part, [letter])
    mongo._write_dead_letters(part, [letter])
    assert part.collection.calls == 2 and len(deleted) == 1
    cutoff = deleted[0]["receivedAt"]["$lt"]
    assert timedelta(days=2) - timedelta(seconds=60) < datetime.now(timezone.utc) - cutoff \
        < timedelta(days=2) + timedelta(seconds=60)
    clock[0] += mongo.PRUNE_EVERY_SECONDS
    mongo._write_dead_letters(part, [letter])
    assert len(deleted) == 2


def test_upserts_racing_another_writer_are_run_once_more_as_updates():
    """One helper writes rows, status and segment rewrites: a duplicate key (an
    upsert racing another writer of the _id) is run once more; twice is an error."""
    dup = {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"}
    updates = [UpdateOne({"_id": 1}, {"$set": {}}, upsert=True)]
    coll = FakeCollection(bulk_error(write_errors=[dup]))
    mongo.upsert_bulk(coll, updates, "writing 1 rows", sleep=lambda s: None)
    assert coll.calls == 2
    coll = FakeCollection(bulk_error(write_errors=[dup]), bulk_error(write_errors=[dup]))
    with pytest.raises(BulkWriteError):
        mongo.upsert_bulk(coll, updates, "writing 1 rows", sleep=lambda s: None)
    other = {"index": 0, "code": 121, "errmsg": "document failed validation"}
    coll = FakeCollection(bulk_error(write_errors=[other]))
    with pytest.raises(BulkWriteError):
        mongo.upsert_bulk(coll, updates, "writing 1 rows", sleep=lambda s: None)
    assert coll.calls == 1
