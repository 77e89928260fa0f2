"""Segment rows: the MongoDB write path, measured on the local stack (FerretDB over SQLite).

``python -m bench.mongo_writes [--cells 50000] [--buckets 3] [--batches 500,2000]``

With ``h3:8`` and a 100,000-driver fleet, every one-minute bucket closes about
50,000 ``segment_summary`` rows (one per H3 cell with a ping), and late pings
rewrite some of them. This writes such rows, bucket after bucket (the
collection grows), in the shape of docs/spec.md's ``segment_summary`` with
the ``$set`` / ``$max`` merge of the global rows (``upsert=True``, in
``bulk_write(ordered=False)`` batches), in three ways:

- ``by_id``: the upsert filter is the deterministic ``_id``
  (``"<segment>|<key values>|<timeBucket>"``, SEGMENTS-INTERFACES);
- ``by_filter``: the filter is ``{segment, key, timeBucket}`` (the unique index
  ``segment_key_bucket`` exists), the ``_id`` left to the server;
- ``insert``: a bucket's first writes as ``insert_many(ordered=False)`` of whole
  documents (``_id`` as ``by_id``), the rewrites as ``by_id`` upserts.

Each bucket: ``--cells`` new rows, then ``--rewrite-fraction`` of the previous
bucket's rows rewritten (revision 2, larger counts: existing documents).
Upserts are slow on FerretDB, so they are timed on a sample per bucket
(``--sample``; ``--filter-sample`` for ``by_filter``, which scans the
collection for every upsert) and the bucket's time extrapolated from the
rate; the rest of a bucket's new rows is inserted untimed, so the collection
grows at full scale. The patched FerretDB runs update commands one at a time
for the whole server: on a shared stack, others' writes wait for these and
these for theirs. Prints one JSON document (and writes it with ``--json``); the
database is dropped at the end (``--keep``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone

import h3
from pymongo import InsertOne, MongoClient, UpdateOne
from pymongo.errors import BulkWriteError

from presence.tools.simulate import CITIES

MONGO_URI = os.environ.get("BENCH_MONGO_URI", "mongodb://127.0.0.1:27017")
SEGMENT = "h3:8"
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)
WAYS = ("by_id", "by_filter", "insert")


def log(msg: str) -> None:
    print(f"[mongo-writes {datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr,
          flush=True)


def cells(n: int) -> list[str]:
    """``n`` resolution-8 cells around the simulator's city centres (rings of cells
    around each centre, the same number per city), as H3 hex strings."""
    per_city = -(-n // len(CITIES))
    k = 0
    while 3 * k * (k + 1) + 1 < per_city:
        k += 1
    out = []
    for _name, lat, lng, _share in CITIES:
        centre = h3.latlng_to_cell(lat, lng, 8)
        out += sorted(h3.grid_disk(centre, k))[:per_city]
    return out[:n]


def bucket_text(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")


def row_fields(cell: str, start: datetime, online: int, revision: int, now: datetime):
    """(_id, $set, $max) of one segment row (a 5-minute window ending with its bucket)."""
    tb = bucket_text(start)
    set_ = {"segment": SEGMENT, "key": {"h3": cell}, "timeBucket": tb,
            "windowStart": start - timedelta(minutes=4), "windowEnd": start + timedelta(minutes=1)}
    max_ = {"driversOnlineCount": online, "driversAvailableCount": online - online // 5,
            "revision": revision, "updatedAt": now}
    return f"{SEGMENT}|{cell}|{tb}", set_, max_


def op(way: str, cell: str, start: datetime, online: int, revision: int, now: datetime):
    _id, set_, max_ = row_fields(cell, start, online, revision, now)
    if way == "by_filter":
        flt = {"segment": SEGMENT, "key": {"h3": cell}, "timeBucket": set_["timeBucket"]}
        return UpdateOne(flt, {"$set": set_, "$max": max_}, upsert=True)
    if way == "insert" and revision == 1:
        return InsertOne({"_id": _id, **set_, **max_})
    return UpdateOne({"_id": _id}, {"$set": set_, "$max": max_}, upsert=True)


def write(coll, ops: list, batch: int) -> float:
    """Seconds to write ``ops`` in unordered bulk writes of ``batch``."""
    began = time.perf_counter()
    for i in range(0, len(ops), batch):
        try:
            coll.bulk_write(ops[i:i + batch], ordered=False)
        except BulkWriteError as exc:  # an insert of a row already there: rewrite it by _id
            dup = [e for e in exc.details.get("writeErrors", []) if e.get("code") == 11000]
            if len(dup) != len(exc.details.get("writeErrors", [])):
                raise
            coll.bulk_write([_as_update(ops[i + e["index"]]) for e in dup], ordered=False)
    return time.perf_counter() - began


def _as_update(insert: InsertOne) -> UpdateOne:
    doc = dict(insert._doc)
    _id = doc.pop("_id")
    max_keys = ("driversOnlineCount", "driversAvailableCount", "revision", "updatedAt")
    return UpdateOne({"_id": _id}, {"$set": {k: v for k, v in doc.items() if k not in max_keys},
                                    "$max": {k: doc[k] for k in max_keys}}, upsert=True)


def timed(coll, ops: list, batch: int, n: int, filler=None) -> tuple[float, int]:
    """(rows per second, rows timed): the first ``n`` of ``ops`` are written and timed;
    ``filler(n)`` writes the others untimed (or they are left out)."""
    n = min(n, len(ops))
    seconds = write(coll, ops[:n], batch)
    if filler is not None and n < len(ops):
        filler(n)
    return (n / seconds if seconds else float("inf")), n


def run_way(db, way: str, batch: int, args, all_cells: list[str]) -> dict:
    coll = db[f"segment_summary_{way}_{batch}"]
    coll.drop()
    coll.create_index([("segment", 1), ("key", 1), ("timeBucket", 1)], unique=True,
                      name="segment_key_bucket")
    rewrite_n = int(len(all_cells) * args.rewrite_fraction)
    sample = {"by_id": args.sample, "by_filter": args.filter_sample, "insert": len(all_cells)}[way]
    re_sample = args.filter_sample if way == "by_filter" else args.sample
    buckets = []

    def filler(start: datetime, now: datetime):
        def fill(first: int):
            # The new rows not timed, inserted whole so the collection grows as it would.
            docs = []
            for i, cell in enumerate(all_cells[first:], first):
                _id, set_, max_ = row_fields(cell, start, 3 + i % 7, 1, now)
                docs.append({**({} if way == "by_filter" else {"_id": _id}), **set_, **max_})
            for i in range(0, len(docs), 5000):
                coll.insert_many(docs[i:i + 5000], ordered=False)
        return fill

    for b in range(args.buckets):
        start = T0 + timedelta(minutes=b)
        now = datetime.now(timezone.utc)
        before = coll.estimated_document_count()
        new_ops = [op(way, c, start, 3 + i % 7, 1, now) for i, c in enumerate(all_cells)]
        new_rate, new_timed = timed(coll, new_ops, batch, sample, filler(start, now))
        entry = {"bucket": b, "docs_before": before, "new_rows": len(new_ops),
                 "new_rows_per_s": round(new_rate, 1), "new_timed": new_timed}
        if b and rewrite_n:
            # Late pings: rows of the previous bucket rewritten (existing documents);
            # those not timed are left out (the collection's size is what matters).
            prev = T0 + timedelta(minutes=b - 1)
            re_ops = [op(way, c, prev, 20 + i % 7, 2, now)
                      for i, c in enumerate(all_cells[:rewrite_n])]
            re_rate, re_timed = timed(coll, re_ops, batch, re_sample)
            entry.update(rewrites=len(re_ops), rewrites_per_s=round(re_rate, 1),
                         rewrites_timed=re_timed)
        seconds = len(new_ops) / new_rate + (entry["rewrites"] / entry["rewrites_per_s"]
                                             if entry.get("rewrites") else 0.0)
        entry["bucket_seconds"] = round(seconds, 1)
        entry["docs_after"] = coll.estimated_document_count()
        log(f"{way} batch {batch}: bucket {b}: {entry}")
        buckets.append(entry)
    check = coll.find_one({"segment": SEGMENT, "key": {"h3": all_cells[0]},
                           "timeBucket": bucket_text(T0)})
    ok = check is not None and check["driversOnlineCount"] == (
        20 if rewrite_n and args.buckets > 1 else 3)
    if not args.keep:
        coll.drop()
    return {"way": way, "batch": batch, "buckets": buckets, "checked": ok}


def row_traffic(drivers: int, minutes: int, lateness: float = 30.0, bucket: int = 60,
                window: int = 300) -> dict:
    """Segment rows a live fleet writes per minute: first writes (one per (value, row))
    and rewrites (rows a late ping changes after they closed: a (value, row, driver)
    whose earliest ping is sent after the row closed at its end + ``lateness``), from
    the bench's cities workload (``drivers`` drivers, ``minutes`` minutes, 2 % late by
    1-10 min). Only rows far enough from both ends of the workload are counted."""
    import numpy as np

    from bench import workload as wl

    w = wl.generate(drivers * minutes * 2, drivers, cities=True)
    d = np.concatenate(w.drivers)
    t = np.concatenate(w.times)
    f = {k: np.concatenate([x[k] for x in w.fields]) for k in w.fields[0]}
    effects = wl._fault_effects()
    faulty = f["fault"] >= 0
    fault = np.where(faulty, f["fault"], 0)
    located = ~(faulty & effects[fault, 2])
    base = int(t.min() // bucket) * bucket
    bi = ((t - base) // bucket).astype(np.int64)
    span = window // bucket
    first_row, last_row = span, int((t.max() - base) // bucket) - 11  # late pings: <= 10 min
    codes = {}
    cells = np.zeros(len(d), dtype=np.int64)
    for k in np.nonzero(located)[0].tolist():
        cells[k] = h3.str_to_int(h3.latlng_to_cell(float(f["lat"][k]), float(f["lng"][k]), 8))
    codes["h3:8"] = (np.unique(cells, return_inverse=True)[1].reshape(-1), located)
    city = np.where(faulty & effects[fault, 0], len(wl.CITY_NAMES), f["city"])
    codes["city"] = (city, np.ones(len(d), dtype=bool))
    vehicle = np.where(faulty & effects[fault, 1], len(wl.VEHICLE_NAMES), f["vehicle"])
    codes["city,vehicle_type"] = (city * 8 + vehicle, np.ones(len(d), dtype=bool))
    out = {"drivers": drivers, "minutes": minutes, "rows_counted": max(0, last_row - first_row)}
    for name, (code, keep) in codes.items():
        c, b, dd, send = code[keep].astype(np.int64), bi[keep], d[keep], f["send"][keep]
        keys = np.concatenate([(c << 40) | ((b + k) << 24) | dd for k in range(span)])
        sends = np.tile(send, span)
        order = np.argsort(keys, kind="stable")
        keys, sends = keys[order], sends[order]
        starts = np.concatenate(([0], np.nonzero(np.diff(keys))[0] + 1))
        first_send = np.minimum.reduceat(sends, starts)
        keys = keys[starts]
        rows = (keys >> 24) & 0xFFFF
        closes = base + rows * bucket + bucket + lateness
        mid = (rows >= first_row) & (rows < last_row)
        all_rows = np.unique(keys[mid] >> 24)
        late_rows = np.unique(keys[mid & (first_send > closes)] >> 24)
        n = max(1, last_row - first_row)
        late_triples = int((mid & (first_send > closes)).sum())
        out[name] = {"rows_per_minute": round(len(all_rows) / n),
                     "rewritten_rows_per_minute": round(len(late_rows) / n),
                     # at most one rewrite per late (value, row, driver): the upper bound
                     "rewrites_per_minute_at_most": round(late_triples / n)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=50_000, help="rows per bucket (H3 cells)")
    ap.add_argument("--buckets", type=int, default=3)
    ap.add_argument("--rewrite-fraction", type=float, default=0.1,
                    help="share of the previous bucket's rows rewritten by late pings")
    ap.add_argument("--batches", default="100,500,2000",
                    help="bulk_write sizes to try (by_filter: the smallest only)")
    ap.add_argument("--ways", default=",".join(WAYS), help=f"out of {','.join(WAYS)}")
    ap.add_argument("--sample", type=int, default=2_000,
                    help="upserts timed per bucket (by_id new rows; rewrites)")
    ap.add_argument("--filter-sample", type=int, default=200,
                    help="upserts timed per bucket for by_filter (each scans the collection)")
    ap.add_argument("--traffic", metavar="DRIVERS,MINUTES",
                    help="only compute the rows a live fleet writes per minute (first writes "
                         "and rewrites by late pings), e.g. 100000,20; no database")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the database")
    args = ap.parse_args(argv)
    if args.traffic:
        drivers, minutes = (int(x) for x in args.traffic.split(","))
        print(json.dumps(row_traffic(drivers, minutes), indent=2))
        return 0
    ways = [w for w in args.ways.split(",") if w]
    for w in ways:
        if w not in WAYS:
            ap.error(f"unknown way {w!r}; choose from {', '.join(WAYS)}")
    client = MongoClient(MONGO_URI, tz_aware=True, serverSelectionTimeoutMS=5000)
    name = f"bench_mongo_writes_{datetime.now(timezone.utc):%Y%m%d%H%M%S}"
    db = client[name]
    all_cells = cells(args.cells)
    load0 = os.getloadavg()
    results = []
    try:
        batches = sorted(int(x) for x in args.batches.split(","))
        for batch in batches:
            for way in ways:
                if way == "by_filter" and batch != batches[0]:
                    continue
                results.append(run_way(db, way, batch, args, all_cells))
    finally:
        if not args.keep:
            client.drop_database(name)
    out = {"cells": len(all_cells), "buckets": args.buckets,
           "rewrite_fraction": args.rewrite_fraction, "results": results,
           "load_before": [round(x, 2) for x in load0],
           "load_after": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
