"""The same job written the obvious way with stock Bytewax windows.

Kafka input (bytewax's connector, ``tail=False`` so a backlog run ends) ->
parse -> one key for all pings -> ``fold_window`` over a ``SlidingWindower``
(5-minute windows every minute, aligned to the epoch) collecting the set of
online and the set of available drivers -> one upsert per closed window.

Bytewax's ``EventClock`` keeps one watermark per key (here: for everything),
advanced by the greatest event time seen minus ``wait_for_system_duration``;
items behind it are *late* and dropped. In a backlog of unequal partitions
one partition is read ahead of another, so exactness needs a wait as long as
that skew (``BENCH_BYTEWAX_WAIT_SECONDS``) and ``ordered=False`` (with
``ordered=True`` bytewax buffers and sorts every value until the watermark
passes it). Set folds are order-independent, so ``ordered=False`` is safe.

``python -m bytewax.run bench.peers.bytewax_windows:flow`` with
``BENCH_TOPIC`` and ``BENCH_DB`` set.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import bytewax.operators.windowing as win
import orjson
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from bench.peers.common import BROKERS, BUCKET, TUNED_FETCH, WINDOW, collection, row_update

TOPIC = os.environ.get("BENCH_TOPIC", "bench")
DB = os.environ.get("BENCH_DB", "bench_bytewax")
WAIT = float(os.environ.get("BENCH_BYTEWAX_WAIT_SECONDS", "600"))
ORDERED = os.environ.get("BENCH_BYTEWAX_ORDERED", "0") == "1"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse(msg):
    obj = orjson.loads(msg.value)
    t = datetime.fromtimestamp(float(obj["timestamp"]), timezone.utc)
    return (str(obj["driver_id"]), t, obj["on_duty"] in (1, True))


def builder():
    return (set(), set())


def folder(acc, ping):
    acc[0].add(ping[0])
    if ping[2]:
        acc[1].add(ping[0])
    return acc


def merger(a, b):
    a[0].update(b[0])
    a[1].update(b[1])
    return a


def to_row(item):
    _key, (window_id, (online, available)) = item
    open_s = window_id * BUCKET  # align_to the epoch, offset one bucket
    row = open_s + WINDOW - BUCKET
    return (row, len(online), len(available))


class _RowsPartition(StatelessSinkPartition):
    def __init__(self) -> None:
        self.coll = collection(DB)

    def write_batch(self, items) -> None:
        if items:
            self.coll.bulk_write([row_update(*r) for r in items], ordered=False)


class RowsSink(DynamicSink):
    def build(self, step_id, worker_index, worker_count):
        return _RowsPartition()


flow = Dataflow("bytewax_windows")
kin = kop.input("kafka", flow, brokers=[BROKERS], topics=[TOPIC], tail=False,
                batch_size=5000, add_config={k: str(v) for k, v in TUNED_FETCH.items()})
pings = op.map("parse", kin.oks, parse)
keyed = op.key_on("all", pings, lambda _p: "all")
clock = win.EventClock(lambda p: p[1], wait_for_system_duration=timedelta(seconds=WAIT))
windower = win.SlidingWindower(length=timedelta(seconds=WINDOW),
                               offset=timedelta(seconds=BUCKET), align_to=EPOCH)
out = win.fold_window("windows", keyed, clock, windower, builder, folder, merger,
                      ordered=ORDERED)
rows = op.map("rows", out.down, to_row)
op.output("mongo", rows, RowsSink())
