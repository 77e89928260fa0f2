"""Faults on a private stack (its own Kafka and FerretDB on other ports): the
MongoDB-compatible server stops mid-run, Kafka restarts mid-run. Rows stay exact."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pymongo import MongoClient

from tests.constants import DEFAULT_RULES
from tests.oracle import oracle
from tests.stack_helpers import (
    REPO, create_topic, dataflow_env, finish, init_recovery, produce, start_dataflow,
    stored_rows, wait_for,
)
from tests.streams import stream

pytestmark = pytest.mark.stack

PORTS = {"STACK_KAFKA_PORT": "19092", "STACK_KAFKA_CONTROLLER_PORT": "19093",
         "STACK_MONGO_PORT": "27018"}


class PrivateStack:
    def __init__(self, state: Path) -> None:
        self.env = {**os.environ, **PORTS, "STACK_STATE": str(state)}
        self.state = state
        self.brokers = "127.0.0.1:19092"
        self.mongo_uri = "mongodb://127.0.0.1:27018"

    def run(self, command: str) -> None:
        done = subprocess.run(["bash", "stack/stack.sh", command], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr

    def kill(self, service: str, sig: int = signal.SIGKILL) -> None:
        pid = int((self.state / "run" / f"{service}.pid").read_text().strip())
        os.kill(pid, sig)
        wait_for(lambda: not _alive(pid), f"{service} (pid {pid}) to stop")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is not alive
        return stat.read().split()[2] != "Z"


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory, kafka_brokers, mongo_uri):
    """Needs the shared stack's caches (built by `make stack-up`), hence its fixtures."""
    stack = PrivateStack(tmp_path_factory.mktemp("stack"))
    stack.run("up")
    yield stack
    stack.run("down")


def expected(partitions):
    return oracle(partitions, *DEFAULT_RULES)[0]


def run_with_fault(stack: PrivateStack, tmp_path: Path, name: str, fault) -> None:
    partitions = stream(21, partitions=3, per_partition=20_000, drivers=2000, horizon=3600, pace=0.05)
    create_topic(stack.brokers, name, 3)
    produce(stack.brokers, name, partitions)
    # Small fetches: the consumer cannot have the whole topic buffered before the fault.
    env = dataflow_env(stack.brokers, stack.mongo_uri, name, name, PRESENCE_KAFKA_BATCH_SIZE="20",
                       PRESENCE_KAFKA_CONFIG='{"queued.max.messages.kbytes": 64, '
                       '"fetch.max.bytes": 1048576, "max.partition.fetch.bytes": 16384}')
    recovery = init_recovery(tmp_path / "recovery")
    log = tmp_path / "dataflow.log"
    proc = start_dataflow(env, "-w", "2", "-r", str(recovery), "-s", "1", "-b", "0", log=log)
    db = MongoClient(stack.mongo_uri, serverSelectionTimeoutMS=2000)[name]
    def progress() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        return bool((db.pipeline_status.find_one({"_id": "totals"}) or {}).get("valid"))

    wait_for(progress, "the dataflow to make progress")
    assert proc.poll() is None, "the run ended before the fault; make the input larger"
    fault(log)
    assert proc.poll() is None, "the run ended during the fault: it did not see it"
    out = finish(proc, timeout=300, log=log)
    db = MongoClient(stack.mongo_uri)[name]
    assert stored_rows(db) == expected(partitions)
    return out


def test_mongodb_outage_mid_run_retries_and_loses_nothing(private_stack, unique_name, tmp_path) -> None:
    def outage(log: Path) -> None:
        private_stack.kill("ferretdb")
        wait_for(lambda: "MongoDB unavailable" in log.read_text(), "a retry warning")
        time.sleep(3)  # the outage lasts a few seconds (not a synchronisation)
        private_stack.run("up")

    out = run_with_fault(private_stack, tmp_path, unique_name, outage)
    assert "WARNING presence.mongo: MongoDB unavailable" in out
    assert "retrying in" in out


def test_kafka_restart_mid_run_is_ridden_out(private_stack, unique_name, tmp_path) -> None:
    def restart(log: Path) -> None:
        private_stack.kill("kafka", signal.SIGTERM)
        size = len(log.read_text())
        # The dataflow notices (librdkafka reports the broker down) and waits.
        wait_for(lambda: len(log.read_text()) > size, "the dataflow to notice")
        private_stack.run("up")

    run_with_fault(private_stack, tmp_path, unique_name, restart)
