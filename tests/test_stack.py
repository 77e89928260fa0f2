"""End to end against the real servers: Apache Kafka (KRaft) and a MongoDB-compatible server.

Each test has its own topic and database. The dataflow runs as users run it,
``python -m bytewax.run dataflow`` in a subprocess, in bounded mode.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from pymongo import MongoClient

from tests.constants import DEFAULT_RULES, HORIZON, LATENESS, T0
from tests.oracle import P, oracle
from tests.stack_helpers import (
    create_topic, dataflow_env, finish, init_recovery, kill_hard, new_topic, produce,
    run_dataflow, start_dataflow, stored_rows, wait_for,
)
from tests.streams import stream

pytestmark = pytest.mark.stack



def expected(partitions):
    return oracle(partitions, *DEFAULT_RULES)


def assert_exact(db, topic: str, partitions) -> None:
    rows, too_late, invalid = expected(partitions)
    assert stored_rows(db) == rows
    letters = {d["_id"]: d["reason"] for d in db.dead_letters.find()}
    assert {k for k, r in letters.items() if r == "too_late"} == {f"{topic}:{p}:{o}" for p, o in too_late}
    assert {k for k, r in letters.items() if r != "too_late"} == {f"{topic}:{p}:{o}" for p, o in invalid}
    assert db.dead_letters.count_documents({}) == len(too_late) + len(invalid)


def test_end_to_end_two_workers(kafka_brokers, mongo_uri, topic_and_db, tmp_path) -> None:
    topic, db = topic_and_db
    partitions = stream(11, partitions=3, per_partition=800, horizon=HORIZON)
    new_topic(kafka_brokers, topic, partitions)
    env = dataflow_env(kafka_brokers, mongo_uri, topic, topic)
    recovery = init_recovery(tmp_path / "recovery")
    args = ("-w", "2", "-r", str(recovery), "-s", "1", "-b", "0")
    run_dataflow(env, *args)
    assert_exact(db, topic, partitions)
    first = {d["_id"]: d for d in db.report_summary.find()}
    assert {d["revision"] for d in first.values()} == {1}

    # Late pings of new drivers, for rows already written, then a second bounded run.
    late = [[P(f"late-{p}-{i}", partitions[p][0].time + 60 * i, True) for i in range(5)]
            for p in range(3)]
    produce(kafka_brokers, topic, late)
    run_dataflow(env, *args)
    grown = [partitions[p] + late[p] for p in range(3)]
    assert_exact(db, topic, grown)
    corrected = [d for d in db.report_summary.find() if d["revision"] > 1]
    assert corrected, "late pings must correct rows"
    for doc in corrected:
        assert doc["driversOnlineCount"] > first[doc["_id"]]["driversOnlineCount"]
        assert doc["updatedAt"] >= first[doc["_id"]]["updatedAt"]

    reasons = {d["reason"] for d in db.dead_letters.find()}
    assert {"invalid_json", "missing_field", "invalid_field", "future_timestamp", "too_large", "too_late"} <= reasons
    doc = db.report_summary.find_one(sort=[("timeBucket", 1)])
    assert doc["_id"] == doc["timeBucket"]
    assert (doc["windowEnd"] - doc["windowStart"]).total_seconds() == 300
    totals = db.pipeline_status.find_one({"_id": "totals"})
    _, too_late, invalid = expected(grown)
    assert (totals["tooLate"], totals["invalid"]) == (len(too_late), len(invalid))
    assert totals["correctedLate"] >= 15
    for p, messages in enumerate(grown):
        status = db.pipeline_status.find_one({"_id": f"{topic}:{p}"})
        assert status["nextOffset"] == len(messages) and status["gaps"] == []
    assert "timeBucket_unique" in db.report_summary.index_information()


def test_kill_9_mid_run_then_restart_is_exact(kafka_brokers, mongo_uri, topic_and_db, tmp_path) -> None:
    topic, db = topic_and_db
    partitions = stream(12, partitions=3, per_partition=40_000, drivers=3000, horizon=HORIZON, pace=0.03)
    new_topic(kafka_brokers, topic, partitions)
    total = sum(len(p) for p in partitions)
    # Small batches and frequent snapshots: the run lasts long enough to be killed in the middle.
    env = dataflow_env(kafka_brokers, mongo_uri, topic, topic, PRESENCE_KAFKA_BATCH_SIZE="20")
    recovery = init_recovery(tmp_path / "recovery")
    args = ("-w", "2", "-r", str(recovery), "-s", "1", "-b", "0")

    proc = start_dataflow(env, *args)
    wait_for(lambda: (db.pipeline_status.find_one({"_id": "totals"}) or {}).get("valid", 0) > 0,
             "the first status write")
    assert proc.poll() is None, "the run ended before it could be killed; make the input larger"
    kill_hard(proc)
    done = (db.pipeline_status.find_one({"_id": "totals"}) or {}).get("valid", 0)
    assert done < total

    run_dataflow(env, *args)
    assert_exact(db, topic, partitions)


def test_two_processes_give_the_same_rows(kafka_brokers, mongo_uri, topic_and_db, tmp_path) -> None:
    topic, db = topic_and_db
    partitions = stream(13, partitions=3, per_partition=800, horizon=HORIZON)
    new_topic(kafka_brokers, topic, partitions)
    env = dataflow_env(kafka_brokers, mongo_uri, topic, topic)
    run_dataflow(env, "-p", "2", "-w", "1", runner="bytewax.testing")
    assert_exact(db, topic, partitions)


def test_retention_gap_is_detected_recorded_and_skipped(kafka_brokers, mongo_uri, topic_and_db, tmp_path) -> None:
    topic, db = topic_and_db
    pings = [P(d % 40, T0 + 3 * d, d % 3 == 0) for d in range(300)]
    new_topic(kafka_brokers, topic, [pings[:100]])
    env = dataflow_env(kafka_brokers, mongo_uri, topic, topic)
    recovery = init_recovery(tmp_path / "recovery")
    args = ("-r", str(recovery), "-s", "1", "-b", "0")
    run_dataflow(env, *args)

    produce(kafka_brokers, topic, [pings[100:]])
    admin = AdminClient({"bootstrap.servers": kafka_brokers})
    for future in admin.delete_records([TopicPartition(topic, 0, 150)]).values():
        future.result(timeout=60)
    out = run_dataflow(env, *args)

    assert "offsets 100 to 149 (50 messages) were deleted by retention" in out
    assert "WARNING" in out
    status = db.pipeline_status.find_one({"_id": f"{topic}:0"})
    assert status["gaps"] == [{"from": 100, "to": 150, "lost": 50}]
    assert status["nextOffset"] == 300
    rows, _, _ = expected([pings[:100] + pings[150:]])
    assert stored_rows(db) == rows


def test_live_run_writes_closed_rows_when_pings_stop(kafka_brokers, mongo_uri, topic_and_db, tmp_path) -> None:
    """Live mode, no new pings after a burst: the idle rule still closes and writes the rows
    (no end of input here to flush them), with an empty partition that never speaks."""
    topic, db = topic_and_db
    create_topic(kafka_brokers, topic, 2)
    now = time.time()
    burst = [P(d, now - 20 + d / 10, d % 2 == 0) for d in range(20)]
    env = dataflow_env(kafka_brokers, mongo_uri, topic, topic, PRESENCE_STOP_AT_END="0",
                       PRESENCE_ALLOWED_LATENESS_SECONDS="2", PRESENCE_IDLE_SECONDS="2",
                       PRESENCE_BUCKET_SECONDS="5", PRESENCE_WINDOW_MINUTES="1")
    proc = start_dataflow(env)
    try:
        produce(kafka_brokers, topic, [burst, []])
        first = 5 * int((now - 20) // 5)  # the bucket of the first ping: its row closed already
        wait_for(lambda: proc.poll() is None and db.report_summary.find_one({"windowEnd": {"$lte": datetime.fromtimestamp(now, timezone.utc)}}),
                 "a closed row to be written", timeout=90)
        assert proc.poll() is None, "a live run must keep running"
        rows = stored_rows(db)
        assert rows[first][0] >= 1
        expected_rows, _, _ = oracle([burst], 5, 60, 2, HORIZON)
        for bucket, counts in rows.items():
            if bucket + 5 <= now - 2:
                assert counts == expected_rows[bucket]
    finally:
        kill_hard(proc)


def test_totals_are_the_same_with_one_worker_two_workers_and_two_processes(
        kafka_brokers, mongo_uri, topic_and_db, tmp_path) -> None:
    """Issue 14.5: one topic, three bounded runs into three databases; every ping total
    in pipeline_status is the same (writes may differ)."""
    import socket

    from tests.oracle import late_pings
    from tests.stack_helpers import start_dataflow

    topic, db = topic_and_db
    partitions = stream(17, partitions=3, per_partition=600, horizon=HORIZON)
    new_topic(kafka_brokers, topic, partitions)
    client = MongoClient(mongo_uri)
    names = [topic, topic + "w2", topic + "p2"]
    try:
        run_dataflow(dataflow_env(kafka_brokers, mongo_uri, topic, names[0]), "-w", "1")
        run_dataflow(dataflow_env(kafka_brokers, mongo_uri, topic, names[1]), "-w", "2")
        sockets = [socket.socket() for _ in range(2)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        addresses = ";".join(f"127.0.0.1:{s.getsockname()[1]}" for s in sockets)
        for s in sockets:
            s.close()
        env = dataflow_env(kafka_brokers, mongo_uri, topic, names[2])
        procs = [start_dataflow(env, "-i", str(i), "-a", addresses) for i in range(2)]
        for proc in procs:
            finish(proc)

        keys = ("valid", "invalid", "late", "correctedLate", "tooLate", "deadLetters",
                "deadLettersByReason")
        docs = [client[name].pipeline_status.find_one({"_id": "totals"}) for name in names]
        found = [{k: doc.get(k) for k in keys} for doc in docs]
        assert found[1] == found[0] and found[2] == found[0]
        rows, too_late, invalid = expected(partitions)
        late = late_pings(partitions, LATENESS, HORIZON)
        assert found[0]["late"] == found[0]["correctedLate"] == len(late) > 0
        assert found[0]["tooLate"] == len(too_late) and found[0]["invalid"] == len(invalid)
        assert sum(found[0]["deadLettersByReason"].values()) == found[0]["deadLetters"]
        for name in names:
            assert stored_rows(client[name]) == rows
            assert client[name].dead_letters.count_documents({}) == len(too_late) + len(invalid)
    finally:
        for name in names[1:]:
            client.drop_database(name)
        client.close()
