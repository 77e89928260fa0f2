"""Segments end to end on the real servers (Kafka, MongoDB-compatible):
``PRESENCE_SEGMENTS="city;city,vehicle_type;h3:8"``, segment_summary equals the oracle."""

from __future__ import annotations

import pytest

from presence.core.model import segment_doc_id
from presence.io.mongo import SEGMENT_INDEX
from tests.constants import BUCKET, LATENESS, WINDOW
from tests.segment_oracle import SP, expected
from tests.stack_helpers import (
    create_topic, dataflow_env, init_recovery, produce, run_dataflow, stored_rows,
    stored_segment_rows,
)
from tests.streams import segment_stream

pytestmark = pytest.mark.stack

HORIZON = 3600
SEGMENTS = "city;city,vehicle_type;h3:8"
NAMES = ["city", "city,vehicle_type", "h3:8"]


def test_segment_summary_equals_the_oracle(kafka_brokers, mongo_uri, topic_and_db, tmp_path) -> None:
    topic, db = topic_and_db
    partitions = segment_stream(31, partitions=3, per_partition=600, horizon=HORIZON)
    create_topic(kafka_brokers, topic, 3)
    produce(kafka_brokers, topic, partitions)
    env = dataflow_env(kafka_brokers, mongo_uri, topic, topic, PRESENCE_SEGMENTS=SEGMENTS)
    recovery = init_recovery(tmp_path / "recovery")
    args = ("-w", "2", "-r", str(recovery), "-s", "1", "-b", "0")
    run_dataflow(env, *args)
    rows, _, _, segment_rows, unlocated = expected(partitions, NAMES, BUCKET, WINDOW, LATENESS, HORIZON)
    assert stored_rows(db) == rows
    assert stored_segment_rows(db) == segment_rows
    first = {d["_id"]: d for d in db.segment_summary.find()}

    # Late pings of new drivers in Hong Kong, in rows already written, then a second run.
    hong_kong = sorted(m.time for m in partitions[0]
                       if isinstance(m, SP) and dict(m.extra).get("city") == "Hong Kong")
    start = hong_kong[len(hong_kong) // 2]
    late = [[SP(f"late-{p}-{i}", start + 60 * i, True,
                (("city", "Hong Kong"), ("vehicle_type", "van"), ("lat", 22.3), ("lng", 114.17)))
             for i in range(4)] for p in range(3)]
    produce(kafka_brokers, topic, late)
    run_dataflow(env, *args)
    grown = [partitions[p] + late[p] for p in range(3)]
    rows, _, _, segment_rows, unlocated = expected(grown, NAMES, BUCKET, WINDOW, LATENESS, HORIZON)
    assert stored_rows(db) == rows
    assert stored_segment_rows(db) == segment_rows
    corrected = [d for d in db.segment_summary.find() if d["revision"] > 1]
    assert any(d["key"] == {"city": "Hong Kong"} for d in corrected), \
        "late pings must correct segment rows"
    for doc in corrected:
        if doc["_id"] in first:  # a new value (Hong Kong vans) may be rewritten in one run
            assert doc["driversOnlineCount"] > first[doc["_id"]]["driversOnlineCount"]

    doc = db.segment_summary.find_one({"segment": "city,vehicle_type"})
    assert doc["_id"] == segment_doc_id(doc["segment"], doc["key"].values(), doc["timeBucket"])
    assert list(doc["key"]) == ["city", "vehicle_type"] and "overflow" not in doc
    assert (doc["windowEnd"] - doc["windowStart"]).total_seconds() == WINDOW
    cell = db.segment_summary.find_one({"segment": "h3:8"})
    assert len(cell["key"]["h3"]) == 15
    indexes = db.segment_summary.index_information()
    assert indexes[SEGMENT_INDEX]["unique"]
    totals = db.pipeline_status.find_one({"_id": "totals"})
    assert totals["unlocated"] == unlocated > 0
    assert set(totals["segments"]) == set(NAMES)
    for name in NAMES:
        seg = totals["segments"][name]
        assert seg["rowsWritten"] >= sum(1 for k in segment_rows if k[0] == name)
        assert seg["otherPings"] == 0 and seg["overflowRows"] == 0


def test_segment_writer_is_idempotent_and_keeps_the_max(mongo_uri, unique_name) -> None:
    """First writes inserted, rewrites upserted by _id, a replayed older row lowers nothing,
    rows of one _id in a batch merged, overflow kept."""
    from datetime import datetime, timezone

    from pymongo import MongoClient

    from presence.core.model import SegmentRow
    from presence.io.mongo import ensure_indexes, write_segment_rows
    from tests.constants import T0

    client = MongoClient(mongo_uri, tz_aware=True)
    db = client[unique_name]
    try:
        ensure_indexes(db)
        coll = db.segment_summary
        now = datetime.now(timezone.utc)

        def row(cell: int, online: int, revision: int, overflow: bool = False) -> SegmentRow:
            return SegmentRow("h3:8", {"h3": f"88{cell:013x}"}, T0, T0 - 240, T0 + 60,
                              online, online - 1, revision, overflow)

        write_segment_rows(coll, [row(i, 2, 1) for i in range(30)], now)
        # rewrites, a replay of first writes, an older replay, two rows of one _id
        again = ([row(i, 5, 2, overflow=i == 0) for i in range(10)] + [row(i, 2, 1) for i in range(30)]
                 + [row(20, 1, 1), row(21, 3, 2), row(21, 4, 3)] + [row(99, 1, 1)])
        write_segment_rows(coll, again, now)
        docs = {d["key"]["h3"]: d for d in coll.find()}
        assert len(docs) == 31
        assert all(docs[f"88{i:013x}"]["driversOnlineCount"] == 5 for i in range(10))
        assert docs[f"88{0:013x}"]["overflow"] is True and "overflow" not in docs[f"88{1:013x}"]
        assert docs[f"88{20:013x}"]["driversOnlineCount"] == 2
        assert (docs[f"88{21:013x}"]["driversOnlineCount"], docs[f"88{21:013x}"]["revision"]) == (4, 3)
        assert docs[f"88{99:013x}"]["revision"] == 1
    finally:
        client.drop_database(unique_name)
        client.close()


def test_compiled_segment_documents_store_as_the_dicts_do(mongo_uri, unique_name) -> None:
    """The sink's batches through the compiled encoder (raw BSON inserts, replays
    and rewrites upserted) leave the same documents as the dict path."""
    from datetime import datetime, timezone

    from pymongo import MongoClient

    from presence.core import partition
    from presence.core.model import SegmentRows
    from presence.io.mongo import ensure_indexes, write_segment_batch, write_segment_rows
    from tests.constants import T0

    if partition._native is None:
        pytest.skip("the compiled module is not built (make install with cargo on PATH)")
    client = MongoClient(mongo_uri, tz_aware=True)
    db = client[unique_name]
    try:
        ensure_indexes(db)
        now = datetime.now(timezone.utc)
        names = ("city", "city,vehicle_type", "h3:8")

        def batch(revision: int, online: int, cells: range) -> SegmentRows:
            taken = [(T0, 2, {"h3": f"88{c:013x}"}, online, online - 1, revision, c % 7 == 0)
                     for c in cells]
            taken.append((T0 - 60, 1, {"city": "Hong Kong", "vehicle_type": "v|an\\"}, online,
                          online, revision, False))
            return SegmentRows(names, 60, 300, taken)

        # first writes (more than one command's worth), their replay, rewrites, an older replay
        batches = [batch(1, 2, range(2500)), batch(1, 2, range(2500)), batch(2, 5, range(0, 2500, 3)),
                   batch(1, 2, range(10))]
        for b in batches:
            write_segment_batch(db.compiled, b, now, partition._native.encode_segment_docs)
            write_segment_rows(db.plain, list(b), now)
        compiled = {d["_id"]: d for d in db.compiled.find()}
        assert len(compiled) == 2501
        assert compiled == {d["_id"]: d for d in db.plain.find()}
        assert sum(d["driversOnlineCount"] == 5 for d in compiled.values()) == 835
    finally:
        client.drop_database(unique_name)
        client.close()
