"""Failure paths a newcomer meets (issue 14): one line, a consistent exit code, clean Ctrl-C.

The exit-code table (README, "Exit codes") is held here for every command:
0 done, 1 a runtime failure (a server unreachable, a busy port), 2 a bad
argument or setting, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from presence.io.kafka import RateLimit
from tests.constants import T0
from tests.stack_helpers import REPO, closed_port, create_topic, delete_topic

BIN = Path(sys.executable).parent
PRESENCE = str(BIN / "presence")
DATAFLOW = [sys.executable, "-m", "presence.run", "dataflow"]
BYTEWAX = [sys.executable, "-m", "bytewax.run", "dataflow"]


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env.update(values)
    return env


def down(**values: str) -> dict[str, str]:
    """Both servers pointed at closed ports."""
    return clean_env(PRESENCE_KAFKA_BROKERS=f"127.0.0.1:{closed_port()}",
                     PRESENCE_MONGO_URI=f"mongodb://127.0.0.1:{closed_port()}", **values)


def run(args, env, cwd=REPO, timeout=120):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """stderr without the start-up INFO line (the settings in force)."""
    return [line for line in stderr.splitlines() if " INFO presence: starting: " not in line]


def default_sigint() -> None:
    """In the child: SIGINT as in a terminal, even when the test runner ignores it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# ------------------------------------------------------------------ start-up failures


@pytest.mark.parametrize("command", [DATAFLOW, BYTEWAX], ids=["presence.run", "bytewax.run"])
def test_kafka_unreachable_at_start_is_one_line_and_exit_1(command):
    began = time.monotonic()
    done = run(command, down())
    elapsed = time.monotonic() - began
    lines = error_lines(done.stderr)
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr  # no librdkafka %3|...|FAIL| lines
    assert lines[0].startswith("presence: cannot reach Kafka at 127.0.0.1:")
    assert "PRESENCE_KAFKA_BROKERS" in lines[0]
    assert elapsed < 60, elapsed  # 6 s of waiting plus start-up; generous for a busy machine


@pytest.mark.stack
def test_mongodb_unreachable_at_start_is_one_line_and_exit_1(kafka_brokers, unique_name):
    create_topic(kafka_brokers, unique_name, 2)
    try:
        began = time.monotonic()
        done = run(DATAFLOW, clean_env(PRESENCE_KAFKA_BROKERS=kafka_brokers,
                                       PRESENCE_TOPIC=unique_name,
                                       PRESENCE_MONGO_URI=f"mongodb://127.0.0.1:{closed_port()}"))
        elapsed = time.monotonic() - began
    finally:
        delete_topic(kafka_brokers, unique_name)
    lines = error_lines(done.stderr)
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("presence: MongoDB at mongodb://127.0.0.1:")
    assert "PRESENCE_MONGO_URI" in lines[0] and "start-up" in lines[0]
    assert elapsed < 90, elapsed  # 10 s server selection plus start-up


def test_librdkafka_lines_are_rate_limited():
    now = [0.0]
    limit = RateLimit(period=30, clock=lambda: now[0])
    record = lambda text: logging.LogRecord(  # noqa: E731
        "presence.librdkafka", logging.ERROR, __file__, 1, "%s [%s] %s",
        ("FAIL", "rdkafka#consumer-1", text), None)
    shown = []
    for step in range(200):  # ~20 lines/s for 10 s, from two consumers
        now[0] = step * 0.05
        rec = record(f"127.0.0.1:1/bootstrap: Connect failed (after {step}ms in state CONNECT)")
        if limit.filter(rec):
            shown.append(rec.getMessage())
    assert len(shown) == 1
    now[0] = 31.0
    rec = record("127.0.0.1:1/bootstrap: Connect failed (after 1ms in state CONNECT)")
    assert limit.filter(rec) and "(199 similar lines suppressed in the last 30 s)" in rec.getMessage()
    other = record("another message")
    assert limit.filter(other)


# ------------------------------------------------------------------ the exit-code table


def busy_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


SIM = ["simulate", "--drivers", "3", "--minutes", "1", "--fast", "--no-progress"]

TABLE = [
    # (command, situation, argv, env, code)
    ("presence --help", "ok", [PRESENCE, "--help"], clean_env(), 0),
    ("presence report", "bad setting", [PRESENCE, "report"], down(PRESENCE_WINDOW_MINUTES="x"), 2),
    ("presence report", "empty setting", [PRESENCE, "report"], down(PRESENCE_TOPIC=""), 2),
    ("presence report", "bad argument", [PRESENCE, "report", "--from", "noon"], down(), 2),
    ("presence report", "mongo down", [PRESENCE, "report"], down(), 1),
    ("presence plot", "bad setting", [PRESENCE, "plot", "-o", "x.png"],
     down(PRESENCE_IDLE_SECONDS="nan"), 2),
    ("presence plot", "bad argument", [PRESENCE, "plot", "-o", "x.gif"], down(), 2),
    ("presence plot", "mongo down", [PRESENCE, "plot", "-o", "x.png"], down(), 1),
    ("presence report --segment", "bad argument", [PRESENCE, "report", "--segment", "city"],
     down(PRESENCE_SEGMENTS="city"), 2),
    ("presence report --segment", "mongo down", [PRESENCE, "report", "--segment", "city=Paris"],
     down(), 1),
    ("presence plot --segment", "bad argument",
     [PRESENCE, "plot", "-o", "x.png", "--segment", "colour=red"], down(PRESENCE_SEGMENTS="city"), 2),
    ("presence zones", "bad setting", [PRESENCE, "zones"], down(PRESENCE_SEGMENTS="h3"), 2),
    ("presence zones", "bad argument", [PRESENCE, "zones", "--resolution", "16"], down(), 2),
    ("presence zones", "mongo down", [PRESENCE, "zones"], down(PRESENCE_SEGMENTS="h3:8"), 1),
    ("presence simulate", "bad setting", [PRESENCE, *SIM],
     down(PRESENCE_KAFKA_CONFIG='{"auto.offset.reset": "latest"}'), 2),
    ("presence simulate", "bad argument", [PRESENCE, "simulate", "--drivers", "0"], down(), 2),
    ("presence simulate", "kafka down", [PRESENCE, *SIM], down(), 1),
    ("presence simulate", "kafka setting refused by librdkafka", [PRESENCE, *SIM],
     down(PRESENCE_KAFKA_CONFIG='{"security.protocol": "SSL", "ssl.key.pem": "x"}'), 2),
    ("presence serve", "bad setting", [PRESENCE, "serve"], down(PRESENCE_CORS_ORIGINS="x"), 2),
    ("presence serve", "bad argument", [PRESENCE, "serve", "--port", "-1"], down(), 2),
    ("presence stack", "bad argument", [PRESENCE, "stack", "sideways"], down(), 2),
    ("dataflow", "bad setting", DATAFLOW, down(PRESENCE_MAX_FUTURE_SKEW_SECONDS="1e13"), 2),
    ("dataflow", "forbidden kafka key", DATAFLOW, down(PRESENCE_KAFKA_CONFIG='{"group.id": "g"}'), 2),
    ("dataflow", "kafka down", DATAFLOW, down(), 1),
    ("dataflow (bytewax.run)", "bad setting", BYTEWAX, down(PRESENCE_WINDOW_MINUTES="0"), 2),
]


@pytest.mark.parametrize("command, situation, argv, env, code", TABLE,
                         ids=[f"{t[0]}: {t[1]}" for t in TABLE])
def test_exit_code_table(command, situation, argv, env, code, tmp_path):
    done = run(argv, env, cwd=REPO if argv[0] == sys.executable else tmp_path)
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    if code:
        lines = error_lines(done.stderr)
        if code == 2 and "argument" in situation:
            assert lines[-1].startswith("Error: "), done.stderr  # click's usage error
        else:
            assert len(lines) == 1, done.stderr
        if "setting" in situation:
            assert "PRESENCE_" in lines[0]


def test_serve_on_a_busy_port_is_one_line_and_exit_1(tmp_path):
    sock = busy_port()
    try:
        port = sock.getsockname()[1]
        done = run([PRESENCE, "serve", "--port", str(port)], down(), cwd=tmp_path)
    finally:
        sock.close()
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f"Error: cannot listen on 127.0.0.1:{port}: address already in use "
                     "(another server uses it? pick another with --port)"]
    assert done.stdout == ""


def interrupt_when(argv, env, ready: str, cwd=REPO, timeout=120):
    """Start ``argv``, wait for a line containing ``ready`` on stderr, send SIGINT."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if ready in line:
                break
        else:
            raise AssertionError("it ended before it was ready:\n" + "".join(seen))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, "".join(seen) + err


def test_serve_ctrl_c_is_exit_130(tmp_path):
    code, out, err = interrupt_when([PRESENCE, "serve", "--port", "0"], down(),
                                    "Application startup complete", cwd=tmp_path)
    assert code == 130, err
    assert "Traceback" not in err and "Aborted" not in err
    assert err.rstrip().splitlines()[-1] == "presence: interrupted"


@pytest.mark.stack
def test_simulate_ctrl_c_prints_what_was_sent_and_exits_130(kafka_brokers, unique_name):
    env = clean_env(PRESENCE_KAFKA_BROKERS=kafka_brokers, PRESENCE_TOPIC=unique_name)
    try:
        code, out, err = interrupt_when(
            [PRESENCE, "simulate", "--drivers", "2000", "--minutes", "30", "--no-progress",
             "--partitions", "1"], env, "simulating 2,000 drivers")
    finally:
        delete_topic(kafka_brokers, unique_name)
    assert code == 130, err
    assert "Traceback" not in err and "Aborted" not in err and "still in queue" not in err
    assert out.startswith("interrupted: sent "), out
    assert "not delivered" in out
    assert err.rstrip().splitlines()[-1].startswith("presence: interrupted: ")


@pytest.mark.stack
@pytest.mark.parametrize("workers", ["1", "2"])
def test_dataflow_ctrl_c_is_one_line_and_exit_130(kafka_brokers, mongo_uri, unique_name,
                                                   tmp_path, workers):
    from pymongo import MongoClient

    create_topic(kafka_brokers, unique_name, 2)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], check=True,
                   capture_output=True)
    env = clean_env(PRESENCE_KAFKA_BROKERS=kafka_brokers, PRESENCE_TOPIC=unique_name,
                    PRESENCE_MONGO_URI=mongo_uri, PRESENCE_MONGO_DB=unique_name,
                    PRESENCE_PROGRESS_SECONDS="0.5")
    try:
        code, out, err = interrupt_when(
            [*DATAFLOW, "-w", workers, "-r", str(recovery), "-s", "1", "-b", "0"], env,
            "presence.flow: progress")
    finally:
        delete_topic(kafka_brokers, unique_name)
        MongoClient(mongo_uri).drop_database(unique_name)
    assert code == 130, err
    assert "Traceback" not in err and "panicked" not in err and "KeyboardInterrupt" not in err
    assert err.rstrip().splitlines()[-1] == (
        "presence: interrupted; a restart with the same recovery directory goes on from its "
        "last snapshot")


class _FakeProducer:
    """Takes pings; delivers none until flushed; Ctrl-C arrives at the ``interrupt_at``-th ping."""

    def __init__(self, interrupt_at: int, deliverable: int) -> None:
        self.interrupt_at, self.deliverable = interrupt_at, deliverable
        self.queued: list = []
        self.produced = 0
        self.purged = False

    def produce(self, topic, value, key, partition, on_delivery):
        if self.produced == self.interrupt_at:
            raise KeyboardInterrupt
        self.produced += 1
        self.queued.append(on_delivery)

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        # Delivers what it can in time; the rest stays queued.
        while self.queued and self.deliverable:
            self.queued.pop(0)
            self.deliverable -= 1
        return len(self.queued)

    def purge(self):
        from confluent_kafka import KafkaError

        self.purged = True
        for report in self.queued:
            report(KafkaError(KafkaError._PURGE_QUEUE), None)
        self.queued.clear()

    def __len__(self):
        return len(self.queued)


def test_simulate_interrupted_counts_what_was_and_was_not_delivered():
    from presence.tools.simulate import SimConfig, generate, produce

    config = SimConfig(drivers=50, minutes=5, start=T0, seed=1)
    producer = _FakeProducer(interrupt_at=100, deliverable=70)
    summary = produce(generate(config), "t", producer, config.start, fast=True)
    assert summary.interrupted and producer.purged
    assert (summary.sent, summary.failed) == (70, 30)
    line = summary.line()
    assert line.startswith("interrupted: sent 70 pings to t") and "30 not delivered" in line


def test_librdkafka_lines_go_through_python_logging(caplog, capfd):
    """A consumer whose Kafka is down: its lines reach Python logging, rate-limited, not fd 2."""
    from presence.io.kafka import LIBRDKAFKA_LOG, new_consumer
    from presence.settings import load_settings

    for limit in LIBRDKAFKA_LOG.filters:  # start afresh: earlier tests' lines do not count
        limit.seen.clear()

    settings = load_settings({"PRESENCE_KAFKA_BROKERS": f"127.0.0.1:{closed_port()}",
                              "PRESENCE_KAFKA_CONFIG": '{"reconnect.backoff.ms": 10, '
                                                       '"reconnect.backoff.max.ms": 20}'})
    consumer = new_consumer(settings)
    with caplog.at_level(logging.DEBUG, logger="presence.librdkafka"):
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            consumer.consume(10, timeout=0.1)
        consumer.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "presence.librdkafka"]
    fails = [line for line in lines if "Connect to" in line]
    assert 1 <= len(fails) <= 2, lines  # librdkafka said it ~100 times meanwhile
    assert "%3|" not in capfd.readouterr().err
