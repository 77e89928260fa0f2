"""Kafka I/O: the feed of one partition, topic metadata, creating and deleting
topics, and producing (every use of a Kafka client is here).

No consumer group: offsets live in bytewax's recovery snapshots, each
partition is ``assign``-ed at the offset the snapshot says. ``auto.offset.reset``
is set explicitly to ``earliest`` so a purged offset resumes at the oldest
retained one (never silently at the end); the gap is detected and recorded
by :class:`presence.io.source.PingPartition`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Callable

from confluent_kafka import Consumer, KafkaException, Message, TopicCollection, TopicPartition
from confluent_kafka import KafkaError as ClientError
from confluent_kafka.admin import AdminClient, NewTopic

from presence.core.fingerprint import NO_TOPIC_ID
from presence.settings import Settings, scrub

log = logging.getLogger("presence.kafka")

METADATA_TIMEOUT_SECONDS = 15.0
START_TIMEOUT_SECONDS = 6.0
"""Seconds the start-up check waits for Kafka's metadata before giving up (one line, exit 1)."""
TOPIC_ID_TIMEOUT_SECONDS = 10.0
"""Seconds start-up waits for the topic's id before going on without it (with a warning)."""
CONNECT_TIMEOUT_MS = 5000
"""librdkafka's ``socket.connection.setup.timeout.ms`` for the short-lived admin clients."""

LIBRDKAFKA_LOG = logging.getLogger("presence.librdkafka")
"""librdkafka's own log lines (``%3|...|FAIL|...``): through Python logging, rate-limited."""
LOG_REPEAT_SECONDS = 30.0
"""At most one line of a kind per this many seconds; the next one says how many were dropped."""

SYSLOG_LEVEL = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3}
"""librdkafka's ``log_level`` (syslog levels) for a ``PRESENCE_LOG_LEVEL``."""


class RateLimit(logging.Filter):
    """Lets one record of a kind through per ``period`` seconds; counts the others.

    Records are of one kind when their messages are equal once digits are
    ignored (librdkafka repeats ``Connect to ... failed`` with changing
    timings, per consumer). The record let through after a quiet spell says
    how many of its kind were suppressed. Secrets are scrubbed on the way.
    """

    def __init__(self, period: float = LOG_REPEAT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.period = period
        self.clock = clock
        self.lock = threading.Lock()
        self.seen: dict[tuple[int, str], list[float | int]] = {}  # kind -> [last shown, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        message = scrub(record.getMessage())
        kind = (record.levelno, re.sub(r"\d+", "#", message))
        now = self.clock()
        with self.lock:
            entry = self.seen.get(kind)
            if entry is not None and now - entry[0] < self.period:
                entry[1] += 1
                return False
            suppressed = int(entry[1]) if entry is not None else 0
            if len(self.seen) > 1000:
                self.seen = {k: v for k, v in self.seen.items() if now - v[0] < self.period}
            self.seen[kind] = [now, 0]
        if suppressed:
            message += f" ({suppressed} similar lines suppressed in the last {self.period:g} s)"
        record.msg, record.args = message, None
        return True


LIBRDKAFKA_LOG.addFilter(RateLimit())


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """Client settings that route librdkafka's log lines through :data:`LIBRDKAFKA_LOG`."""
    return {"logger": LIBRDKAFKA_LOG, "log_level": SYSLOG_LEVEL.get(level, 6)}


class KafkaUnavailable(RuntimeError):
    """Kafka could not be reached or the topic does not exist."""


def consumer_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_brokers,
        "group.id": "presence-unused",  # required by librdkafka; we never join it
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 100,
        "queued.max.messages.kbytes": 32768,
        # Refill the local queue as soon as it drains below its mark: the
        # default 1 s back-off leaves a fast reader idle in a backlog.
        "fetch.queue.backoff.ms": 5,
        "max.partition.fetch.bytes": 4 * 1024 * 1024,
    }
    config.update(settings.kafka_extra)
    config.update(logging_config(settings.log_level))
    return config


class KafkaConfigError(ValueError):
    """librdkafka refused the settings (PRESENCE_KAFKA_CONFIG)."""


def new_consumer(settings: Settings, **overrides: Any) -> Consumer:
    try:
        return Consumer({**consumer_config(settings), **overrides})
    except (KafkaException, ValueError, TypeError) as exc:
        reason = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        raise KafkaConfigError(
            f"PRESENCE_KAFKA_CONFIG: librdkafka refused it: {settings.scrub(reason)}"
        ) from None


def partition_count(settings: Settings, timeout: float = START_TIMEOUT_SECONDS) -> int:
    """How many partitions the topic has; a clear error if it cannot be known.

    Used at start-up: a Kafka that does not answer within ``timeout`` is one
    :class:`KafkaUnavailable`, without librdkafka's connection noise (this
    short-lived consumer runs at ``log_level`` 0: it says nothing itself).
    """
    consumer = new_consumer(
        settings, log_level=0,
        **{"socket.connection.setup.timeout.ms": int(min(timeout * 1000, CONNECT_TIMEOUT_MS))},
    )
    try:
        meta = consumer.list_topics(settings.topic, timeout=timeout)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        text = err.str() if hasattr(err, "str") else str(err)
        raise KafkaUnavailable(
            f"cannot reach Kafka at {settings.kafka_brokers} (PRESENCE_KAFKA_BROKERS) within "
            f"{timeout:g} s: {settings.scrub(text)}"
        ) from None
    finally:
        consumer.close()
    topic = meta.topics.get(settings.topic)
    if topic is None or topic.error is not None or not topic.partitions:
        why = f" ({topic.error})" if topic is not None and topic.error else ""
        raise KafkaUnavailable(
            f"topic {settings.topic!r} does not exist at {settings.kafka_brokers}{why}; "
            "create it (`presence simulate` does) or set PRESENCE_TOPIC"
        )
    return len(topic.partitions)


class KafkaFeed:
    """One partition of the topic, read with an assigned consumer."""

    def __init__(self, settings: Settings, partition: int) -> None:
        self.topic = settings.topic
        self.partition = partition
        self.consumer = new_consumer(settings)

    def offsets(self) -> tuple[int, int]:
        tp = TopicPartition(self.topic, self.partition)
        try:
            return self.consumer.get_watermark_offsets(
                tp, timeout=METADATA_TIMEOUT_SECONDS, cached=False
            )
        except KafkaException as exc:
            raise KafkaUnavailable(
                f"cannot read offsets of {self.topic}:{self.partition}: {exc}"
            ) from None

    def seek(self, offset: int) -> None:
        self.consumer.assign([TopicPartition(self.topic, self.partition, offset)])

    def poll(self, max_messages: int) -> list[Message]:
        messages = self.consumer.consume(max_messages, timeout=0)
        out = [m for m in messages if m.error() is None]
        if len(out) != len(messages):
            for msg in messages:
                if msg.error() is not None:
                    self._on_error(msg.error())
        return out

    def _on_error(self, err: ClientError) -> None:
        if err.code() == ClientError._PARTITION_EOF:
            return
        if err.fatal():
            raise KafkaException(err)
        log.warning("%s:%d: %s", self.topic, self.partition, err.str())

    def close(self) -> None:
        self.consumer.close()


# -- topics and producing (the simulator, reports, tests, bench) -------------------

class KafkaError(RuntimeError):
    """Kafka could not be reached or refused a request (one-line message)."""


def quiet_admin(brokers: str, extra: dict | None = None, **overrides: Any) -> AdminClient:
    """An admin client that logs nothing itself: an unreachable broker is reported once,
    as our own error, not logged by librdkafka every few milliseconds."""
    return AdminClient({"bootstrap.servers": brokers, "log_level": 0, "error_cb": lambda err: None,
                        **overrides, **(extra or {})})


def fetch_topic_id(settings: Settings, timeout: float = TOPIC_ID_TIMEOUT_SECONDS) -> str:
    """The broker's id of the topic; ``""`` (with a warning) if it gives none."""
    try:
        admin = quiet_admin(settings.kafka_brokers, settings.kafka_extra)
        futures = admin.describe_topics(
            TopicCollection([settings.topic]), request_timeout=timeout)
        description = futures[settings.topic].result(timeout + 5)
        topic_id = str(description.topic_id or "")
    except (KafkaException, ValueError, TypeError, AttributeError, NotImplementedError) as exc:
        log.warning(
            "Kafka gave no id for topic %s (%s); a deleted and recreated topic is then "
            "noticed only if it has fewer partitions", settings.topic,
            " ".join(str(exc).split())[:200] or type(exc).__name__)
        return NO_TOPIC_ID
    if topic_id.strip("A") == "" or set(topic_id) <= {"0", "-"}:
        return NO_TOPIC_ID  # the zero UUID: no id
    return topic_id


def ensure_topic(
    brokers: str, topic: str, partitions: int, recreate: bool = False,
    extra: dict | None = None, timeout: float = 30.0,
) -> tuple[int, bool]:
    """Create ``topic`` if missing; returns (its partition count, whether created).

    With ``recreate`` an existing topic is deleted first (its pings are gone).
    """
    admin = quiet_admin(brokers, extra, **{"socket.connection.setup.timeout.ms": CONNECT_TIMEOUT_MS})

    def existing() -> int | None:
        try:
            meta = admin.list_topics(timeout=6)
        except KafkaException as exc:
            raise KafkaError(f"cannot reach Kafka at {brokers}: {_kafka_text(exc)}") from None
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            return None
        return len(info.partitions)

    count = existing()
    if count is not None and recreate:
        delete_topic(brokers, topic, extra, timeout)
        count = None
    if count is not None:
        return count, False
    deadline = time.monotonic() + timeout
    while True:
        future = admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=-1)],
            operation_timeout=timeout,
        )[topic]
        try:
            future.result(timeout)
            break
        except KafkaException as exc:
            text = _kafka_text(exc)
            name = exc.args[0].name() if exc.args and hasattr(exc.args[0], "name") else ""
            if name == "TOPIC_ALREADY_EXISTS" and not recreate:
                return existing() or partitions, False
            # A deleted topic takes a moment to go: retry while it is marked for deletion.
            if name == "TOPIC_ALREADY_EXISTS" or "marked for deletion" in text:
                if time.monotonic() < deadline:
                    time.sleep(0.5)
                    continue
            raise KafkaError(f"cannot create topic {topic!r}: {text}") from None
    # Wait until the metadata shows it, so producing does not race the creation.
    while time.monotonic() < deadline:
        if existing() == partitions:
            break
        time.sleep(0.2)
    return partitions, True


def delete_topic(
    brokers: str, topic: str, extra: dict | None = None, timeout: float = 30.0
) -> bool:
    """Delete ``topic``; False if there was none. Other failures raise :class:`KafkaError`."""
    admin = quiet_admin(brokers, extra)
    try:
        admin.delete_topics([topic], operation_timeout=timeout)[topic].result(timeout)
    except KafkaException as exc:
        if exc.args and getattr(exc.args[0], "name", lambda: "")() == "UNKNOWN_TOPIC_OR_PART":
            return False
        raise KafkaError(f"cannot delete topic {topic!r}: {_kafka_text(exc)}") from None
    return True


def _kafka_text(exc: Exception) -> str:
    err = exc.args[0] if exc.args else exc
    return err.str() if hasattr(err, "str") else str(err)


def send(producer, topic: str, value: bytes, key: bytes | None = None,
         partition: int = -1, on_delivery: Callable | None = None,
         wait: float = 0.05) -> None:
    """``producer.produce``, waiting ``wait`` seconds for deliveries while the
    producer's queue is full (confluent-kafka's ``BufferError``)."""
    while True:
        try:
            if on_delivery is None:
                producer.produce(topic, value, key, partition)
            else:
                producer.produce(topic, value, key, partition, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(wait)
