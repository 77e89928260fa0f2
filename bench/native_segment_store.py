"""The compiled segment store against ``SegmentPanes`` on the same calls.

``python -m bench.native_segment_store [--pings N --drivers D --segments S]``

Runs :mod:`bench.segment_profile`'s core (cities workload, 16 shards,
``city;city,vehicle_type;h3:8``) once, recording every call its shards make
to their segment store (``add_records``, as the compiled reader sends pings,
or ``add_pings``, as the pure-Python one does; ``take_keyed_partials``,
``take_row_partials``, ``first_dirty_row``, ``drop_before``,
``freeze_closed``), then replays the calls on fresh ``SegmentPanes`` and on
fresh ``NativeSegmentPanes`` (pings as packed records, as the compiled reader
hands them over, and once more as ``(driver, on_duty, values)`` tuples; both
forms made before the clock starts), checks that every answer is the same,
and prints the time per (ping, definition) of adding, per partial of
reporting, and the compiled store's memory per (driver, bucket, value) at
its peak and at the end, once ``freeze_closed`` has turned every pane into
its snapshot bytes (the state of the panes kept for the correction horizon
once their rows closed).
"""

from __future__ import annotations

import argparse
import gc
import time
from collections import defaultdict

from bench import segment_profile as sp
from bench import workload as wl
from presence.core import shard as shard_module
from presence.core.native_segments import NativeSegmentPanes
from presence.core.segment_panes import SegmentPanes
from presence.core.segment_records import decode_records, dimension_kinds, encode_records
from presence.core.segment_tally import unpack_partials
from presence.core.segments import parse_segments
from presence.core.windows import WindowSpec

CALLS = ("add_pings", "add_records", "take_keyed_partials", "take_row_partials",
         "first_dirty_row", "drop_before", "freeze_closed")
ADD = ("add_pings", "add_records")
TAKE = ("take_keyed_partials", "take_row_partials")


def record(spec: WindowSpec, batches, partitions: int) -> list[tuple[int, str, tuple]]:
    """Every call the shards make to their segment stores: ``(store, method, args)``,
    whichever store class the shards keep (:func:`shard.segment_store_class`)."""
    log: list[tuple[int, str, tuple]] = []
    stores: dict[int, int] = {}

    def recording(base: type) -> type:
        def wrap(name):
            method = getattr(base, name)

            def recorded(self, *args):
                number = stores.setdefault(id(self), len(stores))
                if name == "add_pings":
                    args = (args[0], list(args[1]))
                log.append((number, name, args))
                return method(self, *args)
            return recorded

        return type("Recording" + base.__name__, (base,), {name: wrap(name) for name in CALLS})

    originals = shard_module.SegmentPanes, shard_module.NativeSegmentPanes
    shard_module.SegmentPanes = recording(SegmentPanes)
    if originals[1] is not None:
        shard_module.NativeSegmentPanes = recording(originals[1])
    try:
        sp.run(spec, batches, partitions)
    finally:
        shard_module.SegmentPanes, shard_module.NativeSegmentPanes = originals
    return log


def as_records(log, kinds) -> list[tuple[int, str, tuple]]:
    """``log`` with every add as ``add_records`` (pane, packed records)."""
    return [(n, "add_records", (a[0], encode_records(a[1], kinds))) if name == "add_pings"
            else (n, name, a) for n, name, a in log]


def replay(cls, spec, log, tuples=None, measure=False):
    """Replay ``log`` on fresh stores of ``cls`` (its adds as records, or as the
    ``tuples`` given per call index): (answers, seconds per kind of call, peak store sizes)."""
    stores: dict[int, object] = defaultdict(lambda: cls(spec, spec.segments, spec.max_segment_values))
    spent = defaultdict(float)
    answers = []
    peak = (0, 0, 0)
    clock = time.perf_counter
    for i, (number, name, args) in enumerate(log):
        store = stores[number]
        if name == "add_records" and tuples is not None:
            method, args = store.add_pings, (args[0], tuples[i])
        else:
            method = getattr(store, name)
        t0 = clock()
        answer = method(*args)
        spent["add" if name in ADD else "take" if name in TAKE else name] += clock() - t0
        if name == "take_keyed_partials" and type(answer) is bytes:
            answer = unpack_partials(answer)
        answers.append(answer)
        if measure and name == "drop_before":
            sizes = [s._store.sizes() for s in stores.values()]
            memory = sum(s._store.memory() for s in stores.values())
            if memory > peak[0]:
                peak = (memory, sum(e for e, _ in sizes), sum(m for _, m in sizes))
    if measure:  # then every pane closed and frozen
        for s in stores.values():
            s.freeze_closed(float("inf"))
            s.freeze_closed(float("inf"))  # the panes changed before the first call too
        sizes = [s._store.sizes() for s in stores.values()]
        peak = peak + (sum(s._store.memory() for s in stores.values()), sum(m for _, m in sizes))
    return answers, spent, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pings", type=int, default=120_000)
    ap.add_argument("--drivers", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--segments", default=";".join(wl.BENCH_SEGMENTS))
    args = ap.parse_args()
    w = wl.generate(args.pings, args.drivers, cities=True)
    batches = sp.messages(w, args.batch)
    spec = WindowSpec(bucket_s=60, window_s=300, lateness_s=30, horizon_s=3600,
                      segments=parse_segments(args.segments))
    kinds = dimension_kinds(spec.segments)
    log = as_records(record(spec, batches, len(w.drivers)), kinds)
    tuples = {i: decode_records(a[1], kinds) for i, (_, name, a) in enumerate(log) if name == "add_records"}
    pairs = sum(1 for pings in tuples.values() for p in pings for v in p[2] if v is not None)
    pings = sum(len(p) for p in tuples.values())
    if not pairs:
        raise SystemExit("the shards added no segment pings: nothing to compare")
    gc.collect()
    gc.freeze()  # the recorded calls' millions of objects: not traversed by every collection
    py_answers, py_spent, _ = replay(SegmentPanes, spec, log)
    nat_answers, nat_spent, peak = replay(NativeSegmentPanes, spec, log, measure=True)
    tup_answers, tup_spent, _ = replay(NativeSegmentPanes, spec, log, tuples)
    assert nat_answers == py_answers == tup_answers, "the compiled store answered differently"
    partials = sum(len(by) for (_, name, _), out in zip(log, py_answers)
                   if name in TAKE for by in out.values())
    calls = len(tuples)
    print(f"{pings:,} pings ({pairs:,} ping-definitions, {calls:,} add calls) of {args.drivers:,} drivers, "
          f"{partials:,} partials, segments {args.segments!r}; same answers from both stores")
    for label, spent in (("SegmentPanes", py_spent), ("NativeSegmentPanes records", nat_spent),
                         ("NativeSegmentPanes tuples", tup_spent)):
        print(f"  {label}: add {spent['add'] / pairs * 1e6:.3f} us/ping-definition, "
              f"take partials {spent['take'] / max(partials, 1) * 1e6:.3f} us/partial, "
              f"first_dirty_row {spent['first_dirty_row'] * 1e3:.1f} ms, "
              f"drop_before {spent['drop_before'] * 1e3:.1f} ms, "
              f"freeze_closed {spent['freeze_closed'] * 1e3:.1f} ms in all")
    memory, entries, members, end_memory, end_members = peak
    if members:
        print(f"  compiled store at its peak: {memory / 1e6:.1f} MB for {entries:,} (value, bucket) "
              f"entries, {members:,} (driver, bucket, value) memberships: "
              f"{memory / members:.1f} bytes each")
    if end_members:
        print(f"  at the end, every pane frozen: {end_memory / 1e6:.1f} MB for {end_members:,} "
              f"memberships: {end_memory / end_members:.1f} bytes each")


if __name__ == "__main__":
    main()
