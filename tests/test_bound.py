"""State and rows stay bound to their input (SPEC "Guarantees: Bound to its input"), and
recovery-directory mistakes are one line, against the real servers.

The dataflow runs as users run it (``python -m bytewax.run dataflow -r DIR``); a refused
start must exit 2 with one line, before anything is read or written.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from confluent_kafka.admin import AdminClient, NewPartitions
from pymongo import MongoClient

from presence.io.mongo import DOC_ID, FINGERPRINTS
from presence.io.recovery import init_dir, read_dir
from tests.oracle import P
from tests.stack_helpers import (
    REPO, create_topic, dataflow_env, delete_topic, new_topic, produce, run_dataflow, stored_rows,
    wait_for,
)
from tests.streams import T0

pytestmark = pytest.mark.stack

ARGS = ("-s", "1", "-b", "0")


@pytest.fixture
def names(kafka_brokers, mongo_uri, unique_name):
    """Two topic names and two database names, all removed afterwards."""
    made = [f"{unique_name}a", f"{unique_name}b"]
    client = MongoClient(mongo_uri)
    yield made
    for name in made:
        client.drop_database(name)
        delete_topic(kafka_brokers, name)
    client.close()


def pings(prefix: str, partitions: int, per: int = 30, start: float = T0) -> list[list[P]]:
    return [[P(f"{prefix}-{p}-{i % 7}", start + 20 * i, i % 3 != 0) for i in range(per)]
            for p in range(partitions)]


def first_run(kafka_brokers, mongo_uri, topic: str, rec, partitions: int, per: int = 30,
              recovery_partitions: int | None = None) -> dict[str, str]:
    """A new topic of ``partitions`` partitions with pings, run once to its end with the new
    recovery directory ``rec`` and database ``topic``; the dataflow's environment."""
    init_dir(rec, recovery_partitions or partitions)
    new_topic(kafka_brokers, topic, pings(topic, partitions, per=per))
    env = dataflow_env(kafka_brokers, mongo_uri, topic, topic)
    run_dataflow(env, "-r", str(rec), *ARGS)
    return env


def recorded(rec, field: str) -> set:
    """``field`` of the fingerprint in every source snapshot of the recovery directory ``rec``."""
    return {getattr(s.state.recorded(), field) for s in read_dir(rec).source_states().values()}


def refused(env: dict[str, str], *args: str) -> str:
    """Run the dataflow; it must stop at start-up with exit 2 and one line of its own."""
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflow", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{out[-3000:]}"
    ours = [line for line in out.splitlines() if line.startswith("presence: ")]
    assert len(ours) == 1, out
    assert "Traceback" not in out and "panicked" not in out, out
    return ours[0]


def rows_in(mongo_uri: str, db: str) -> int:
    with MongoClient(mongo_uri) as client:
        return client[db].report_summary.count_documents({})


def test_another_topic_on_the_same_recovery_directory_is_refused(
        kafka_brokers, mongo_uri, names, tmp_path) -> None:
    a, b = names
    rec = tmp_path / "rec"
    init_dir(rec, 2)
    for topic in (a, b):
        new_topic(kafka_brokers, topic, pings(topic, 2))
    run_dataflow(dataflow_env(kafka_brokers, mongo_uri, a, a), "-r", str(rec), *ARGS)
    assert rows_in(mongo_uri, a) > 0
    assert recorded(rec, "topic") == {a}
    topic_ids = recorded(rec, "topic_id")
    assert len(topic_ids) == 1 and topic_ids != {""}

    # Topic b with a's state: before, it resumed b at a's offsets and mixed their rows.
    line = refused(dataflow_env(kafka_brokers, mongo_uri, b, b), "-r", str(rec), *ARGS)
    assert line == (
        f"presence: recovery directory {rec} was made for another input or settings: "
        f"topic '{a}' recorded, '{b}' now (PRESENCE_TOPIC). To start afresh: "
        f"`presence recovery reset {rec}` (or another -r directory); to go on with it: "
        f"set PRESENCE_TOPIC={a}."
    )
    assert rows_in(mongo_uri, b) == 0
    with MongoClient(mongo_uri) as client:
        assert client[b][FINGERPRINTS].count_documents({}) == 0  # nothing written


def test_another_window_on_the_same_recovery_directory_is_refused(
        kafka_brokers, mongo_uri, names, tmp_path) -> None:
    a, _ = names
    rec = tmp_path / "rec"
    env = first_run(kafka_brokers, mongo_uri, a, rec, 1)
    before = stored_rows(MongoClient(mongo_uri)[a])
    line = refused({**env, "PRESENCE_WINDOW_MINUTES": "1"}, "-r", str(rec), *ARGS)
    assert "window 5 min recorded, 1 min now (PRESENCE_WINDOW_MINUTES)" in line
    assert "set PRESENCE_WINDOW_MINUTES=5" in line
    assert f"and another database (PRESENCE_MONGO_DB, not '{a}')" in line
    assert stored_rows(MongoClient(mongo_uri)[a]) == before


def test_a_recreated_topic_is_refused(kafka_brokers, mongo_uri, names, tmp_path) -> None:
    a, _ = names
    rec = tmp_path / "rec"
    env = first_run(kafka_brokers, mongo_uri, a, rec, 2)

    delete_topic(kafka_brokers, a)
    admin = AdminClient({"bootstrap.servers": kafka_brokers})
    wait_for(lambda: a not in admin.list_topics(timeout=10).topics, "the topic to be deleted")

    def recreated() -> bool:
        try:
            create_topic(kafka_brokers, a, 2)
            return True
        except Exception:  # noqa: BLE001 - still being deleted: try again
            return False

    wait_for(recreated, "the topic to be created again")
    produce(kafka_brokers, a, pings("again", 2, per=5))
    line = refused(env, "-r", str(rec), *ARGS)
    assert f"topic '{a}' was deleted and created again (topic id " in line
    assert "to go on with it" not in line
    # The database knows it too, with a fresh recovery directory.
    fresh = tmp_path / "fresh"
    init_dir(fresh, 1)
    line = refused(env, "-r", str(fresh), *ARGS)
    assert line.startswith(f"presence: database '{a}' was made for another input or settings: "
                           f"topic '{a}' was deleted and created again")


def test_more_partitions_are_fine_and_counted(kafka_brokers, mongo_uri, names, tmp_path) -> None:
    a, _ = names
    rec = tmp_path / "rec"
    env = first_run(kafka_brokers, mongo_uri, a, rec, 2, per=60)
    db = MongoClient(mongo_uri)[a]
    before = stored_rows(db)
    assert db[FINGERPRINTS].find_one({"_id": DOC_ID})["partitions"] == 2

    admin = AdminClient({"bootstrap.servers": kafka_brokers})
    admin.create_partitions([NewPartitions(a, 3)])[a].result(30)
    wait_for(lambda: len(admin.list_topics(a, timeout=10).topics[a].partitions) == 3,
             "the third partition")
    new = [P(f"new-{i}", T0 + 300 + 20 * i, True) for i in range(20)]
    produce(kafka_brokers, a, [[], [], new])
    run_dataflow(env, "-r", str(rec), *ARGS)
    status = db.pipeline_status.find_one({"_id": f"{a}:2"})
    assert status is not None and status["valid"] == 20
    after = stored_rows(db)
    assert any(after[t][0] > before.get(t, (0, 0))[0] for t in after)
    assert db[FINGERPRINTS].find_one({"_id": DOC_ID})["partitions"] == 3
    assert recorded(rec, "partitions") == {3}
    # Fewer partitions than recorded: 3 recorded, "2 now" as if the topic were recreated smaller.
    db[FINGERPRINTS].update_one({"_id": DOC_ID}, {"$set": {"partitions": 4}})
    line = refused(env, *ARGS)
    assert f"topic '{a}' has 3 partitions, 4 recorded" in line


def test_a_database_fingerprinted_for_another_topic_is_refused(
        kafka_brokers, mongo_uri, names, tmp_path) -> None:
    a, b = names
    for topic in (a, b):
        new_topic(kafka_brokers, topic, pings(topic, 1))
    rec_a, rec_b = tmp_path / "a", tmp_path / "b"
    init_dir(rec_a, 1)
    init_dir(rec_b, 1)
    run_dataflow(dataflow_env(kafka_brokers, mongo_uri, a, a), "-r", str(rec_a), *ARGS)
    rows = rows_in(mongo_uri, a)
    doc = MongoClient(mongo_uri)[a][FINGERPRINTS].find_one({"_id": DOC_ID})
    assert doc["topic"] == a and doc["windowSeconds"] == 300 and doc["bucketSeconds"] == 60
    assert doc["shards"] == 16 and doc["segments"] == "" and doc["topicId"]

    # A second dataflow, on topic b, pointed at a's database.
    env_b = dataflow_env(kafka_brokers, mongo_uri, b, a)
    expected = (f"presence: database '{a}' was made for another input or settings: topic "
                f"'{a}' recorded, '{b}' now (PRESENCE_TOPIC). To start afresh: another "
                f"database (PRESENCE_MONGO_DB) or drop database '{a}'; to go on with it: "
                f"set PRESENCE_TOPIC={a}.")
    assert refused(env_b, "-r", str(rec_b), *ARGS) == expected
    assert refused(env_b, *ARGS) == expected
    assert rows_in(mongo_uri, a) == rows
    assert read_dir(rec_b).empty


def test_recovery_directory_mistakes_are_one_line(kafka_brokers, mongo_uri, names, tmp_path) -> None:
    a, _ = names
    new_topic(kafka_brokers, a, pings(a, 1, per=5))
    env = dataflow_env(kafka_brokers, mongo_uri, a, a)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert refused(env, "-r", str(empty), *ARGS) == (
        f"presence: recovery directory {empty} has no recovery partitions; make them with "
        f"`presence recovery init {empty}`")
    missing = tmp_path / "missing"
    assert f"`presence recovery init {missing}`" in refused(env, "-r", str(missing), *ARGS)

    corrupt = tmp_path / "corrupt"
    init_dir(corrupt, 2)
    (corrupt / "part-0.sqlite3").write_bytes(b"garbage, not SQLite " * 400)
    line = refused({**env, "BYTEWAX_RECOVERY_DIRECTORY": str(corrupt)}, *ARGS)
    assert line.startswith(f"presence: recovery file {corrupt / 'part-0.sqlite3'} is not a "
                           "Bytewax recovery partition")
    assert line.endswith(f"`presence recovery reset {corrupt}` starts afresh "
                         "(from the beginning of the topic)")
    assert rows_in(mongo_uri, a) == 0

    # What the refusal says to run makes the directory usable.
    reset = subprocess.run([sys.executable, "-m", "presence.tools.cli", "recovery", "reset", str(corrupt)],
                           cwd=REPO, capture_output=True, text=True)
    assert reset.returncode == 0, reset.stderr
    run_dataflow(env, "-r", str(corrupt), *ARGS)
    assert rows_in(mongo_uri, a) > 0


def test_state_and_rows_from_before_fingerprints_are_adopted_with_one_warning(
        kafka_brokers, mongo_uri, names, tmp_path) -> None:
    import pickle
    import sqlite3

    a, _ = names
    rec = tmp_path / "rec"
    env = first_run(kafka_brokers, mongo_uri, a, rec, 2, recovery_partitions=1)
    # Make it look as an older presence left it (a dict, format 1): no fingerprint anywhere.
    con = sqlite3.connect(rec / "part-0.sqlite3")
    for key, epoch, blob in con.execute(
            "SELECT state_key, snap_epoch, ser_change FROM snaps WHERE step_id = 'presence.pings'"
    ).fetchall():
        state = pickle.loads(blob).reader_resume()
        del state["fingerprint"], state["format"]
        con.execute("UPDATE snaps SET ser_change = ? WHERE step_id = 'presence.pings' AND "
                    "state_key = ? AND snap_epoch = ?", (pickle.dumps(state), key, epoch))
    con.commit()
    con.close()
    MongoClient(mongo_uri)[a][FINGERPRINTS].delete_many({})
    before = stored_rows(MongoClient(mongo_uri)[a])

    produce(kafka_brokers, a, pings("more", 2, per=5, start=T0 + 600))
    out = run_dataflow(env, "-r", str(rec), *ARGS)
    assert out.count("holds state without a fingerprint") == 1, out
    assert out.count("holds rows but had no fingerprint") == 1, out
    assert recorded(rec, "topic") == {a}
    assert MongoClient(mongo_uri)[a][FINGERPRINTS].find_one({"_id": DOC_ID})["topic"] == a
    after = stored_rows(MongoClient(mongo_uri)[a])
    assert set(before) <= set(after)
