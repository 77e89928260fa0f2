"""The ceiling: a plain confluent-kafka consume + JSON-parse loop over the whole topic.

The most any Python consumer of this topic can do here: no grouping, no
state, no output. ``python -m bench.peers.ceiling TOPIC``
"""

from __future__ import annotations

import sys

import orjson
from confluent_kafka import Consumer, TopicPartition

from bench.peers.common import consumer_config, end_offsets


def main(topic: str) -> None:
    c = Consumer(consumer_config())
    ends = end_offsets(c, topic)
    c.assign([TopicPartition(topic, p, 0) for p in ends])
    left = {p: e for p, e in ends.items() if e > 0}
    loads = orjson.loads
    n = 0
    while left:
        for msg in c.consume(5000, timeout=0.5):
            if msg.error() is not None:
                continue
            loads(msg.value())
            n += 1
            p = msg.partition()
            if msg.offset() + 1 >= ends[p]:
                left.pop(p, None)
    c.close()
    print(f"ceiling: {n} messages parsed")


if __name__ == "__main__":
    main(sys.argv[1])
