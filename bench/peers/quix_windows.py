"""The same job written idiomatically with Quix Streams (pinned, own venv).

input topic (JSON, event time from the ``timestamp`` field) -> (driver,
on_duty) -> ``group_by`` one key (Quix windows are per message key; this
repartitions through an internal topic) -> ``hopping_window(5 min, step 1
min, grace)`` -> ``collect()`` -> ``final()`` -> distinct counts -> one upsert
per window.

Quix keeps one watermark (stream time) per partition of the grouped topic,
so the one key sees every input partition interleaved: a backlog read with
one partition ahead of another needs a grace as long as that skew
(``BENCH_QUIX_GRACE_SECONDS``). A finite run is stopped by ``app.run(timeout=
IDLE)`` once no message came for ``IDLE`` seconds; ``final()`` windows that
no later message closes are never emitted (Quix has no end-of-input flush),
so the last rows are missing: reported as inexact, not dropped.

Changelog topics are off (presence's throughput runs have no recovery
directory either). ``BENCH_QUIX_MODE=reduce`` uses ``reduce()`` over sets
(kept as sorted lists, JSON state) instead of ``collect()``.

``bench/.quix-venv/bin/python -m bench.peers.quix_windows TOPIC DB``
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from quixstreams import Application

from bench.peers.common import BROKERS, BUCKET, TUNED_FETCH, WINDOW, collection, row_update

GRACE = float(os.environ.get("BENCH_QUIX_GRACE_SECONDS", "3600"))
IDLE = float(os.environ.get("BENCH_QUIX_IDLE_SECONDS", "5"))
MODE = os.environ.get("BENCH_QUIX_MODE", "collect")


def main(topic_name: str, db: str) -> None:
    state_dir = tempfile.mkdtemp(prefix="bench-quix-")
    app = Application(
        broker_address=BROKERS,
        consumer_group=f"bench-quix-{topic_name}-{db}",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        use_changelog_topics=False,
        loglevel="WARNING",
        consumer_extra_config=dict(TUNED_FETCH),
    )
    topic = app.topic(
        topic_name,
        value_deserializer="json",
        timestamp_extractor=lambda value, headers, ts, tstype: int(float(value["timestamp"]) * 1000),
    )
    coll = collection(db)
    rows = [0]

    sdf = app.dataframe(topic)
    sdf = sdf.apply(lambda v: [str(v["driver_id"]), v["on_duty"] in (1, True)])
    sdf = sdf.group_by(lambda v: "all", name="all")
    windows = sdf.hopping_window(duration_ms=WINDOW * 1000, step_ms=BUCKET * 1000,
                                 grace_ms=int(GRACE * 1000))
    if MODE == "reduce":
        def reducer(acc, v):
            on, av = set(acc[0]), set(acc[1])
            on.add(v[0])
            if v[1]:
                av.add(v[0])
            return [sorted(on), sorted(av)]

        sdf = windows.reduce(reducer, lambda v: [[v[0]], [v[0]] if v[1] else []]).final()

        def counts(w):
            return len(w["value"][0]), len(w["value"][1])
    else:
        sdf = windows.collect().final()

        def counts(w):
            values = w["value"]
            return (len({v[0] for v in values}), len({v[0] for v in values if v[1]}))

    def write(w):
        online, available = counts(w)
        row = w["start"] // 1000 + WINDOW - BUCKET
        coll.bulk_write([row_update(row, online, available)], ordered=False)
        rows[0] += 1

    sdf = sdf.update(write)
    began = time.time()
    app.run(timeout=IDLE, collect=False)
    print(f"quix: {rows[0]} rows in {time.time() - began:.1f} s "
          f"(includes {IDLE:g} s idle stop)", flush=True)
    print(f"idle_stop_seconds={IDLE}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
