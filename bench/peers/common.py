"""Shared by the peers: Kafka end offsets, row formatting and the MongoDB upsert.

Every peer writes ``report_summary`` rows shaped like presence's (SPEC
"Output"), one upsert per window, so that the harness compares every system
the same way.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

BROKERS = os.environ.get("BENCH_BROKERS", "127.0.0.1:9092")
MONGO_URI = os.environ.get("BENCH_MONGO_URI", "mongodb://127.0.0.1:27017")
BUCKET = int(os.environ.get("BENCH_BUCKET_SECONDS", "60"))
WINDOW = int(os.environ.get("BENCH_WINDOW_SECONDS", "300"))


TUNED_FETCH = {"max.partition.fetch.bytes": 10 * 2**20, "fetch.queue.backoff.ms": 5}
"""Every peer's consumer, like presence's, fetches big and does not back off.

Bigger fetches than librdkafka's 1 MiB default: with the workload's 1 MB lz4
batches a consumer of the default size waits on fetch round trips, not CPU
(1,000,000 pings: 8 s wall for 1.3 s CPU; with this, 1.1 s). And librdkafka's
default ``fetch.queue.backoff.ms`` (1 s) stops fetching for a whole second
whenever the local queue is above its mark: with it, 2 of 8 ceiling runs
over the same topic took ~1.8 s instead of ~1.1 s (none of 8 with 5 ms).
presence sets 5 ms, and so do the peers."""


def consumer_config(group: str = "bench-unused", tuned: bool = True) -> dict:
    return {**(TUNED_FETCH if tuned else {}),
        "bootstrap.servers": BROKERS,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        "queued.max.messages.kbytes": 32768,
    }


def end_offsets(consumer, topic: str) -> dict[int, int]:
    from confluent_kafka import TopicPartition

    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in sorted(parts)
    }


def fmt(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def row_update(row: int, online: int, available: int):
    """The upsert of report row ``row`` (bucket start, epoch seconds)."""
    from pymongo import UpdateOne

    tb = fmt(row)
    return UpdateOne(
        {"_id": tb},
        {
            "$set": {
                "timeBucket": tb,
                "windowStart": datetime.fromtimestamp(row + BUCKET - WINDOW, timezone.utc),
                "windowEnd": datetime.fromtimestamp(row + BUCKET, timezone.utc),
            },
            "$max": {
                "driversOnlineCount": online,
                "driversAvailableCount": available,
                "revision": 1,
                "updatedAt": datetime.now(timezone.utc),
            },
        },
        upsert=True,
    )


def collection(db: str):
    from pymongo import MongoClient

    return MongoClient(MONGO_URI, tz_aware=True)[db]["report_summary"]
