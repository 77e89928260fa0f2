"""Measure segment_summary writes on a MongoDB-compatible server (the local FerretDB).

``python scripts/segment_upserts.py --docs 2000 --batch 1000 --cases id,filter+index,presence``:
per case a fresh database with ``--docs`` h3-like segment rows of one bucket,
written new (revision 1) then all rewritten (revision 2):

- ``id``, ``id+index``: one upsert per row by ``_id`` (``$set``/``$max``), unordered bulk;
- ``filter+index``: the same by the (segment, key, timeBucket) filter;
- ``presence``: :func:`presence.io.mongo.write_segment_rows` as the dataflow calls
  it on this server (on FerretDB: inserts, and rewrites read-merged-replaced).

Prints seconds and documents per second for each. Drops its databases after.
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import datetime, timezone

from pymongo import MongoClient, UpdateOne

from presence.core.model import SegmentRow
from presence.io.mongo import SEGMENT_INDEX, is_ferretdb, segment_row_update, write_segment_rows

T0 = 1_514_779_200


def rows(count: int, revision: int) -> list[SegmentRow]:
    return [SegmentRow("h3:8", {"h3": f"88{i:013x}"}, T0, T0 - 240, T0 + 60, 2 + revision, 1,
                       revision) for i in range(count)]


def by_filter(row: SegmentRow, now: datetime) -> UpdateOne:
    update = segment_row_update(row, now)
    doc = update._doc
    return UpdateOne({"segment": row.segment, "key": row.key, "timeBucket": row.time_bucket},
                     doc, upsert=True)


def run(coll, make, docs: int, batch: int) -> list[float]:
    out = []
    for revision in (1, 2):
        now = datetime.now(timezone.utc)
        if make is None:  # presence's writer
            replace = is_ferretdb(coll.database)
            batch_rows = rows(docs, revision)
            start = time.perf_counter()
            for at in range(0, len(batch_rows), batch):
                write_segment_rows(coll, batch_rows[at:at + batch], now, replace)
            out.append(time.perf_counter() - start)
            continue
        updates = [make(r, now) for r in rows(docs, revision)]
        start = time.perf_counter()
        for at in range(0, len(updates), batch):
            coll.bulk_write(updates[at:at + batch], ordered=False)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uri", default="mongodb://127.0.0.1:27017")
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--cases", default="id,id+index,filter+index")
    args = parser.parse_args()
    client = MongoClient(args.uri, socketTimeoutMS=600_000)
    for case in args.cases.split(","):
        name = f"segbench_{uuid.uuid4().hex[:10]}"
        coll = client[name]["segment_summary"]
        try:
            if "index" in case:
                coll.create_index([("segment", 1), ("key", 1), ("timeBucket", 1)],
                                  unique=True, name=SEGMENT_INDEX)
            make = (None if case.startswith("presence") else by_filter
                    if case.startswith("filter") else segment_row_update)
            new, again = run(coll, make, args.docs, args.batch)
            assert coll.count_documents({}) == args.docs
            assert coll.count_documents({"revision": 2}) == args.docs
            print(f"{case:14s} {args.docs} docs, batches of {args.batch}: "
                  f"new {new:.2f} s ({args.docs / new:.0f}/s), "
                  f"rewrite {again:.2f} s ({args.docs / again:.0f}/s)", flush=True)
        finally:
            client.drop_database(name)


if __name__ == "__main__":
    main()
