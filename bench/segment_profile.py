"""CPU of presence's pure core with and without segments on the same pings.

``python -m bench.segment_profile [--pings N --drivers D] [--profile]``

The bench's cities workload (:func:`bench.workload.generate` with
``cities=True``) is read by one :class:`PartitionReader` per partition, in
batches as the Kafka source would give them, interleaved by send time; every
batch goes to the 16 driver shards (:class:`ShardState`: apply, then report,
as the pane step does per batch) and the row book (:class:`RowBook`), which
takes rows every few batches and every row at the end. No Kafka, no Bytewax,
no MongoDB, and CPython's collector tuned as the dataflow tunes it
(:func:`presence.app.tune_gc`): what is left is the per-ping cost of the
core, once without segments and once with ``city;city,vehicle_type;h3:8``
(``--segments``), on the same messages, interleaved ``--repeat`` times. ``--check`` compares the
segment rows with :func:`bench.workload.segment_oracle_rows`. ``--profile``
prints cProfile's top functions of one run with segments.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from bench import workload as wl
from presence.app import tune_gc
from presence.core.partition import PartitionReader, RawMessage
from presence.core.rows import RowBook
from presence.core.segments import parse_segments
from presence.core.shard import ShardState
from presence.core.windows import WindowSpec

NOW = 1_900_000_000.0


def messages(w: wl.Workload, batch: int) -> list[tuple[int, list[RawMessage], bool]]:
    """``(partition, messages, last)`` batches, interleaved by send time."""
    out = []
    for p in range(len(w.drivers)):
        values = w.values(p)
        send = w.fields[p]["send"].tolist()
        ms = [RawMessage(i, v, int(s * 1000)) for i, (v, s) in enumerate(zip(values, send))]
        for at in range(0, len(ms), batch):
            chunk = ms[at:at + batch]
            out.append((send[at], p, chunk, at + batch >= len(ms)))
    out.sort(key=lambda x: (x[0], x[1]))
    return [(p, chunk, last) for _, p, chunk, last in out]


def run(spec: WindowSpec, batches, partitions: int, rows_every: int = 4, parts: dict | None = None):
    """``parts``, if given, gets the CPU seconds of each stage (read, apply, report, book)."""
    clock = time.process_time
    spent = {"read": 0.0, "apply": 0.0, "report": 0.0, "book": 0.0}
    readers = [PartitionReader("t", p, partitions, spec, NOW) for p in range(partitions)]
    shards = {f"shard-{s:02d}": ShardState(spec) for s in range(spec.shards)}
    book = RowBook(spec)
    rows, seg_rows = [], []
    for n, (p, chunk, last) in enumerate(batches):
        t0 = clock()
        batch = readers[p].read(chunk, NOW, ended=last)
        t1 = clock()
        spent["read"] += t1 - t0
        for key, part in batch.shard_parts():
            state = shards[key]
            t0 = clock()
            state.apply(part)
            t1 = clock()
            report = state.report(NOW)
            t2 = clock()
            if report is not None:
                book.add_report(key, report)
            spent["apply"] += t1 - t0
            spent["report"] += t2 - t1
            spent["book"] += clock() - t2
        t0 = clock()
        book.add_mark(batch.mark)
        if n % rows_every == 0:
            rows += book.take_rows()
            seg_rows.append(book.take_segment_batch())
        spent["book"] += clock() - t0
    for key, state in shards.items():
        report = state.report(NOW, final=True)
        if report is not None:
            book.add_report(key, report)
    rows += book.take_rows(final=True)
    seg_rows.append(book.take_segment_batch(final=True))
    if parts is not None:
        parts.update(spent)
    return rows, seg_rows


def latest(seg_rows) -> dict:
    out = {}
    for r in (row for batch in seg_rows for row in batch):
        key = (r.segment, tuple(r.key.values()), r.bucket)
        out[key] = (r.online, r.available)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pings", type=int, default=120_000)
    ap.add_argument("--drivers", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--segments", default=";".join(wl.BENCH_SEGMENTS))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    w = wl.generate(args.pings, args.drivers, cities=True)
    batches = messages(w, args.batch)
    tune_gc()  # as the dataflow process does
    parts = len(w.drivers)
    plain = WindowSpec(bucket_s=60, window_s=300, lateness_s=30, horizon_s=3600)
    seg = WindowSpec(bucket_s=60, window_s=300, lateness_s=30, horizon_s=3600,
                     segments=parse_segments(args.segments))
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(seg, batches, parts)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
        return
    best = {"without": float("inf"), "with": float("inf")}
    stages = {}
    out = None
    for _ in range(args.repeat):
        for name, spec in (("without", plain), ("with", seg)):
            spent: dict = {}
            t0 = time.process_time()
            result = run(spec, batches, parts, parts=spent)
            took = time.process_time() - t0
            if took < best[name]:
                best[name] = took
                stages[name] = spent
            if name == "with":
                out = result
    n = w.pings
    off, on = best["without"] / n * 1e6, best["with"] / n * 1e6
    print(f"{n:,} pings of {args.drivers:,} drivers, batches of {args.batch}: "
          f"without segments {off:.2f} us/ping, with {args.segments!r} {on:.2f} us/ping "
          f"(core only; ratio of pings/CPU-s {off / on:.3f}); {sum(map(len, out[1])):,} segment row writes")
    for name, spent in stages.items():
        print(f"  {name}: " + ", ".join(f"{k} {v / n * 1e6:.2f}" for k, v in spent.items())
              + " us/ping")
    if args.check:
        from bench.exactness import compare
        oracle = wl.segment_oracle_rows(w, tuple(args.segments.split(";")))
        print("segment rows:", compare(latest(out[1]), oracle)[1])


if __name__ == "__main__":
    main()
