"""The ceiling: a plain confluent-kafka consume + JSON-parse loop over the whole topic.

The most any Python consumer of this topic can do here: no grouping, no
state, no output.

    python -m bench.peers.ceiling TOPIC                  # one process, every partition
    python -m bench.peers.ceiling TOPIC --processes 2    # two at once, partition p in p % 2

``--processes 2`` places the partitions as bytewax places them over 2
processes (partitions 0 and 2 in one, 1 in the other): what a second
process can add on this machine, with no framework in the way.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import orjson
from confluent_kafka import Consumer, TopicPartition

from bench.peers.common import consumer_config, end_offsets


def read(topic: str, only: set[int] | None = None) -> int:
    c = Consumer(consumer_config())
    ends = end_offsets(c, topic)
    if only is not None:
        ends = {p: e for p, e in ends.items() if p in only}
    c.assign([TopicPartition(topic, p, 0) for p in ends])
    left = {p: e for p, e in ends.items() if e > 0}
    loads = orjson.loads
    n = 0
    while left:
        for msg in c.consume(5000, timeout=0.02):
            if msg.error() is not None:
                continue
            loads(msg.value())
            n += 1
            p = msg.partition()
            if msg.offset() + 1 >= ends[p]:
                left.pop(p, None)
    c.close()
    return n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("topic")
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--partitions", help="comma-separated partitions to read (default all)")
    args = ap.parse_args(argv)
    if args.processes > 1:
        c = Consumer(consumer_config())
        parts = sorted(end_offsets(c, args.topic))
        c.close()
        children = [
            subprocess.Popen([sys.executable, "-m", "bench.peers.ceiling", args.topic,
                              "--partitions", ",".join(str(p) for p in mine)])
            for i in range(args.processes)
            if (mine := [p for p in parts if p % args.processes == i])
        ]
        codes = [child.wait() for child in children]
        if any(codes):
            raise SystemExit(f"ceiling: a reader exited with {codes}")
        return
    only = None if args.partitions is None else {int(p) for p in args.partitions.split(",")}
    n = read(args.topic, only)
    print(f"ceiling: {n} messages parsed")


if __name__ == "__main__":
    main()
