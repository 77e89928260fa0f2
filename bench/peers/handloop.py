"""The whole job in plain Python, no framework: what a framework-free program reaches.

consume -> parse (orjson; driver id, timestamp, on_duty normalised as the
SPEC says for the formats of the workload: float seconds, and on the mixed
workload integer seconds, epoch ms and ISO-8601 text with ``datetime.fromisoformat``) -> per-partition too-late rule ->
per-bucket sets of online / available drivers -> at the end, for every row,
the union of its panes -> one upsert per row. No recovery, no scale-out, no
corrections of written rows, no dead letters: the floor under presence's
overhead. ``python -m bench.peers.handloop TOPIC DB``
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone

import orjson
from confluent_kafka import Consumer, TopicPartition

from bench.peers.common import BUCKET, WINDOW, collection, consumer_config, end_offsets, row_update

LATENESS = 30.0
HORIZON = 3600.0
EPOCH_MS = 1e11


def instant(stamp) -> float:
    """Epoch seconds of a timestamp of any shape the SPEC accepts (no validation)."""
    if type(stamp) is str:
        moment = datetime.fromisoformat(stamp)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    return stamp / 1000.0 if stamp >= EPOCH_MS else float(stamp)


def main(topic: str, db: str) -> None:
    c = Consumer(consumer_config())
    ends = end_offsets(c, topic)
    c.assign([TopicPartition(topic, p, 0) for p in ends])
    left = {p: e for p, e in ends.items() if e > 0}
    loads = orjson.loads
    online: dict[int, set] = {}
    available: dict[int, set] = {}
    greatest = {p: float("-inf") for p in ends}
    n = 0
    while left:
        for msg in c.consume(5000, timeout=0.02):
            if msg.error() is not None:
                continue
            p = msg.partition()
            if msg.offset() + 1 >= ends[p]:
                left.pop(p, None)
            obj = loads(msg.value())
            driver = str(obj["driver_id"])
            t = obj["timestamp"]
            if type(t) is not float or t >= EPOCH_MS:
                t = instant(t)
            if t > greatest[p]:
                greatest[p] = t
            elif t < greatest[p] - LATENESS - HORIZON:
                continue  # too late
            b = int(t // BUCKET) * BUCKET
            s = online.get(b)
            if s is None:
                s = online[b] = set()
                available[b] = set()
            s.add(driver)
            if obj["on_duty"] in (1, True):
                available[b].add(driver)
            n += 1
    c.close()
    rows = set()
    for b in online:
        rows.update(range(b, b + WINDOW, BUCKET))
    updates = []
    empty: set = set()
    for row in sorted(rows):
        panes = range(row + BUCKET - WINDOW, row + BUCKET, BUCKET)
        on = set().union(*(online.get(q, empty) for q in panes))
        av = set().union(*(available.get(q, empty) for q in panes))
        updates.append(row_update(row, len(on), len(av)))
    if updates:
        collection(db).bulk_write(updates, ordered=False)
    print(f"handloop: {n} pings, {len(updates)} rows")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
