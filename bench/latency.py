"""Live latency: presence running unbounded while pings arrive at a steady rate;
when each row is written against when it was due."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import datetime, timezone

import numpy as np

from bench import workload as wl
from bench.env import BROKERS, PY, REPO, log, mongo, presence_env
from bench.measure import run_measured
from presence.io.kafka import send


def latency_test(args, run_id: str) -> dict:
    """presence live: steady ``rate`` pings/s for ``seconds``; when each row is written."""
    topic = f"bench-{run_id}-live"
    db = f"bench_{run_id}_live"
    wl.create_topic(BROKERS, topic, 3)
    client = mongo()
    client.drop_database(db)
    bucket, window, lateness, idle = args.latency_bucket, args.latency_window, 30.0, 10.0
    env = presence_env(topic, db, bounded=False,
                       PRESENCE_BUCKET_SECONDS=str(bucket),
                       PRESENCE_WINDOW_MINUTES=str(window // 60))
    seen: dict[str, tuple[datetime, datetime, int]] = {}
    stop_poll = threading.Event()
    coll = client[db].report_summary

    def poll() -> None:
        while not stop_poll.is_set():
            now = datetime.now(timezone.utc)
            for doc in coll.find({}, {"windowEnd": 1, "updatedAt": 1, "revision": 1}):
                if doc["_id"] not in seen:
                    written = doc["updatedAt"] if doc.get("revision") == 1 else now
                    seen[doc["_id"]] = (doc["windowEnd"], written, doc.get("revision"))
            stop_poll.wait(0.1)

    state: dict = {}

    def drive(proc) -> None:
        # Wait until the dataflow is up: pipeline_status is written once running.
        deadline = time.monotonic() + 90
        while client[db].pipeline_status.count_documents({}) == 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("presence did not start")
            time.sleep(0.2)
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        from confluent_kafka import Producer

        producer = Producer({**wl.producer_config(BROKERS), "linger.ms": 5})
        rng = np.random.default_rng(11)
        tick = 0.01
        per_tick = int(args.latency_rate * tick)
        began = time.time()
        state["start"] = began
        sent = 0
        next_at = began
        while True:
            now = time.time()
            if now - began >= args.latency_seconds:
                break
            if now < next_at:
                time.sleep(next_at - now)
                continue
            for p, value in wl.live_values(rng, per_tick, args.drivers, time.time(),
                                           late_fraction=args.latency_late):
                send(producer, topic, value, partition=p)
            sent += per_tick
            producer.poll(0)
            next_at += tick
        producer.flush(30)
        state["end"] = time.time()
        state["sent"] = sent
        state["rate"] = sent / (state["end"] - began)
        time.sleep(lateness + idle + 5)
        stop_poll.set()
        poller.join()
        os.killpg(proc.pid, signal.SIGINT)

    holder: dict = {}

    def on_start(proc) -> None:
        t = threading.Thread(target=lambda: holder.setdefault("err", _guard(drive, proc)),
                             daemon=True)
        t.start()
        holder["thread"] = t

    log(f"latency: presence live, {args.latency_rate:,} pings/s for {args.latency_seconds} s, "
        f"bucket {bucket} s, window {window} s")
    m = run_measured([PY, "-m", "bytewax.run", "dataflow"], env, str(REPO),
                     timeout=args.latency_seconds + 180, on_start=on_start)
    holder["thread"].join()
    if holder.get("err"):
        raise RuntimeError(f"latency driver failed: {holder['err']}\n{m.output[-3000:]}")
    start, end = state["start"], state["end"]
    during, tail, before = [], [], []
    raw = []
    for _id, (window_end, written, _rev) in sorted(seen.items()):
        due = window_end.timestamp() + lateness
        lat = written.timestamp() - due
        raw.append((round(due - start, 2), round(lat, 3)))
        if window_end.timestamp() <= start:
            before.append(lat)  # no on-time ping in it (only possible with late pings)
        elif due <= end:
            during.append(lat)
        else:
            tail.append(lat)
    wl.delete_topic(BROKERS, topic)
    if not args.keep_dbs:
        client.drop_database(db)

    def pct(xs, q):
        return float(np.percentile(xs, q)) if xs else float("nan")

    res = {
        "rate": state["rate"], "sent": state["sent"], "bucket": bucket, "window": window,
        "rows_during": len(during), "p50": pct(during, 50), "p99": pct(during, 99),
        "max": max(during) if during else float("nan"),
        "rows_tail": len(tail), "tail_max": max(tail) if tail else float("nan"),
        "rows_before": len(before), "raw": raw,
        "cpu_s": m.cpu, "peak_rss_mb": m.peak_rss / 2**20,
    }
    log(f"latency: { {k: v for k, v in res.items() if k != 'raw'} }")
    return res


def _guard(fn, *a):
    try:
        fn(*a)
        return None
    except Exception as exc:  # noqa: BLE001 - reported by the caller
        return repr(exc)
