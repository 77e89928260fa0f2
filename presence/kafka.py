"""Kafka I/O: the feed of one partition, and topic metadata.

No consumer group: offsets live in bytewax's recovery snapshots, each
partition is ``assign``-ed at the offset the snapshot says. ``auto.offset.reset``
is set explicitly to ``earliest`` so a purged offset resumes at the oldest
retained one (never silently at the end); the gap is detected and recorded
by :class:`presence.source.PingPartition`.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from presence.settings import Settings

log = logging.getLogger("presence.kafka")

METADATA_TIMEOUT = 15.0


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
    return config


class KafkaConfigError(ValueError):
    """librdkafka refused the settings (PRESENCE_KAFKA_CONFIG)."""


def new_consumer(settings: Settings) -> Consumer:
    try:
        return Consumer(consumer_config(settings))
    except (KafkaException, ValueError, TypeError) as exc:
        reason = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        raise KafkaConfigError(f"PRESENCE_KAFKA_CONFIG: librdkafka refused it: {reason}") from None


def partition_count(settings: Settings) -> int:
    """How many partitions the topic has; a clear error if it cannot be known."""
    consumer = new_consumer(settings)
    try:
        meta = consumer.list_topics(settings.topic, timeout=METADATA_TIMEOUT)
    except KafkaException as exc:
        raise KafkaUnavailable(
            f"cannot reach Kafka at {settings.kafka_brokers} (PRESENCE_KAFKA_BROKERS): {exc}"
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
                tp, timeout=METADATA_TIMEOUT, cached=False
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

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise KafkaException(err)
        log.warning("%s:%d: %s", self.topic, self.partition, err.str())

    def close(self) -> None:
        self.consumer.close()
