"""Helpers for tests against the real Kafka and MongoDB-compatible servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import orjson
from confluent_kafka import Producer

from presence.io.kafka import delete_topic, ensure_topic, send  # noqa: F401 - delete_topic for tests

from tests.oracle import P
from tests.segment_oracle import SP

REPO = Path(__file__).resolve().parent.parent


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def create_topic(brokers: str, name: str, partitions: int) -> None:
    """A new topic, ready to produce to (the simulator's topic creation)."""
    count, created = ensure_topic(brokers, name, partitions)
    assert created and count == partitions, f"topic {name} existed already"


def produce(brokers: str, topic: str, partitions: list[list[object]]) -> None:
    """Each partition's messages, in order, to that partition."""
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "acks": "all",
                         "enable.idempotence": True, "compression.type": "lz4",
                         "message.max.bytes": 2_000_000})
    for p, messages in enumerate(partitions):
        for m in messages:
            value = (orjson.dumps(m.value()) if isinstance(m, P)
                     else orjson.dumps(m.obj()) if isinstance(m, SP) else m)
            send(producer, topic, value, partition=p, wait=0.5)
            producer.poll(0)
    assert producer.flush(60) == 0


def new_topic(brokers: str, name: str, partitions: list[list[object]]) -> None:
    """A new topic of ``len(partitions)`` partitions holding ``partitions``' messages."""
    create_topic(brokers, name, len(partitions))
    produce(brokers, name, partitions)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 120.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def dataflow_env(brokers: str, mongo_uri: str, topic: str, db: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env.update({
        "PRESENCE_KAFKA_BROKERS": brokers,
        "PRESENCE_TOPIC": topic,
        "PRESENCE_MONGO_URI": mongo_uri,
        "PRESENCE_MONGO_DB": db,
        "PRESENCE_STOP_AT_END": "1",
        "PRESENCE_LOG_ROWS": "0",
    })
    env.update(extra)
    return env


def init_recovery(path: Path, partitions: int = 4) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(path), str(partitions)],
                   check=True, cwd=REPO, capture_output=True)
    return path


def start_dataflow(env: dict[str, str], *args: str, runner: str = "bytewax.run",
                   log: Path | None = None) -> subprocess.Popen:
    """The dataflow as a user starts it; output piped, or written to ``log`` to watch it live."""
    out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 - owned by the process
    return subprocess.Popen(
        [sys.executable, "-m", runner, "dataflow", *args],
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300, log: Path | None = None) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out = log.read_text() if log else out
        raise AssertionError(f"dataflow did not finish in {timeout} s:\n{out[-4000:]}")
    out = log.read_text() if log else out
    assert proc.returncode == 0, f"dataflow exited {proc.returncode}:\n{out[-4000:]}"
    return out


def run_dataflow(env: dict[str, str], *args: str, runner: str = "bytewax.run", timeout: float = 300) -> str:
    return finish(start_dataflow(env, *args, runner=runner), timeout)


def kill_hard(proc: subprocess.Popen) -> None:
    """kill -9 the dataflow and every process it started."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def stored_rows(db) -> dict[int, tuple[int, int]]:
    """report_summary as {bucket start: (online, available)}."""
    out = {}
    for doc in db.report_summary.find():
        start = datetime.strptime(doc["timeBucket"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        out[int(start.timestamp())] = (doc["driversOnlineCount"], doc["driversAvailableCount"])
    return out


def stored_segment_rows(db) -> dict[tuple, tuple[int, int]]:
    """segment_summary as {(segment, key values, bucket start): (online, available)}."""
    out = {}
    for doc in db.segment_summary.find():
        start = datetime.strptime(doc["timeBucket"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        key = (doc["segment"], tuple(doc["key"].values()), int(start.timestamp()))
        assert key not in out, f"two documents for {key}"
        out[key] = (doc["driversOnlineCount"], doc["driversAvailableCount"])
    return out


def follow(client, url: str) -> list[list[dict]]:
    """The JSON pages of an API listing, following its ``Link: rel="next"`` headers."""
    pages = []
    while url:
        res = client.get(url)
        assert res.status_code == 200, res.text
        pages.append(res.json())
        link = res.links.get("next")
        url = link["url"] if link else None
        assert len(pages) < 20
    return pages
