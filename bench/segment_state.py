"""Segment pane state: size and speed of the candidate representations.

``python -m bench.segment_state [--drivers 100000] [--shards 16] [--panes 65]``

A fleet of ``drivers`` drivers in 10 cities (a vehicle type each; half of
them driving at 10-50 km/h around the city, the others parked near a spot),
one ping every 30 s, ``panes`` one-minute buckets (the 60-minute correction
horizon plus a 5-minute window). Only ONE driver shard (``drivers /
shards`` drivers, as ``presence.core.model.shard_of`` spreads them) is built:
shards are independent, so the per-shard figures times ``shards`` are the
fleet's. Segments ``city;city,vehicle_type;h3:8``.

Prints the cost per ping of computing segment values (with and without a
cell cache), of grouping and adding pings to :class:`SegmentPanes`, of row
counts and snapshots, and the pickled snapshot bytes per (driver, bucket,
segment value) of the chosen representation and of the alternatives
(bitmaps only, sorted positions only, ``frozenset``, ``pyroaring`` if it is
installed), over the same content.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import pickle
import random
import resource
import sys
import time
from array import array

from presence.core.model import shard_of
from presence.core.segment_panes import (
    SegmentPanes, decode, group_pings, mask_of_positions, settle, settled, union_size,
)
from presence.core.segments import ValueExtractor, parse_segments
from presence.core.windows import WindowSpec

CITIES = {
    "Hong Kong": (22.3193, 114.1694), "London": (51.5072, -0.1276),
    "New York": (40.7128, -74.0060), "Sao Paulo": (-23.5558, -46.6396),
    "Lagos": (6.5244, 3.3792), "Mumbai": (19.0760, 72.8777),
    "Jakarta": (-6.2088, 106.8456), "Paris": (48.8566, 2.3522),
    "Mexico City": (19.4326, -99.1332), "Sydney": (-33.8688, 151.2093),
}
VEHICLES = (("car", 0.6), ("bike", 0.2), ("van", 0.15), ("truck", 0.05))
SEGMENTS = "city;city,vehicle_type;h3:8"
T0 = 1_704_067_200
RADIUS_KM = 15.0


def fleet(drivers: int, shards: int, seed: int = 7) -> list[tuple]:
    """The drivers of shard 0: (id, city, vehicle, lat0, lng0, dlat/s, dlng/s, on-duty share)."""
    rng = random.Random(seed)
    names = list(CITIES)
    out = []
    for n in range(drivers):
        driver = f"driver-{n}"
        if shard_of(driver, shards) != 0:
            continue
        city = names[n % len(names)]
        lat, lng = CITIES[city]
        r = RADIUS_KM * math.sqrt(rng.random()) / 111.0
        a = rng.uniform(0, 2 * math.pi)
        lat0, lng0 = lat + r * math.sin(a), lng + r * math.cos(a) / math.cos(math.radians(lat))
        speed = rng.uniform(10, 50) / 3600 / 111.0 if rng.random() < 0.5 else 0.0  # deg/s
        heading = rng.uniform(0, 2 * math.pi)
        vehicle = rng.choices([v for v, _ in VEHICLES], [w for _, w in VEHICLES])[0]
        out.append((driver, city, vehicle, lat0, lng0, speed * math.sin(heading),
                    speed * math.cos(heading) / math.cos(math.radians(lat)), rng.random() < 0.8))
    return out


def pings_of_minute(drivers: list[tuple], minute: int, rng: random.Random) -> list[tuple]:
    """Two pings per driver per minute, as (driver, time, on_duty, fields)."""
    out = []
    for driver, city, vehicle, lat0, lng0, dlat, dlng, duty in drivers:
        for k in (0, 30):
            t = minute * 60 + k + rng.random() * 29
            jitter = rng.gauss(0, 0.00003)  # ~3 m of GPS noise
            # Driving back and forth along a 10 km stretch (a triangle wave).
            phase = (t * 1.0) % 1200.0
            s = phase if phase < 600 else 1200 - phase
            fields = {"city": city, "vehicle_type": vehicle,
                      "lat": lat0 + dlat * s + jitter, "lng": lng0 + dlng * s + jitter}
            out.append((driver, T0 + t, duty or rng.random() < 0.2, fields))
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--panes", type=int, default=65)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--compare-grouped", action="store_true",
                        help="also time group_pings + add_panes (the per-value id-set path)")
    args = parser.parse_args()

    spec = WindowSpec(bucket_s=60, window_s=300)
    definitions = parse_segments(SEGMENTS)
    extract = ValueExtractor(definitions)
    cached = ValueExtractor(definitions, cache_size=100_000)
    rng = random.Random(1)
    shard = fleet(args.drivers, args.shards)
    figures: dict = {"drivers": args.drivers, "shards": args.shards, "shard_drivers": len(shard),
                     "panes": args.panes, "segments": SEGMENTS}

    state = SegmentPanes(spec, definitions)
    grouped = SegmentPanes(spec, definitions) if args.compare_grouped else None
    t_values = t_group = t_add = t_fast = t_partials = t_freeze = 0.0
    rows = 0
    pings = 0
    rss0 = rss_mb()
    for minute in range(args.panes):
        raw = pings_of_minute(shard, minute, rng)
        pings += len(raw)
        start = time.process_time()
        items = [(d, t, on, extract.of_object(f)) for d, t, on, f in raw]
        t_values += time.process_time() - start
        # Batches of ~1,000 pings, as a partition read would hand them over.
        for i in range(0, len(items), 1000):
            batch = items[i:i + 1000]
            start = time.process_time()
            by_pane: dict = {}
            for d, t, on, v in batch:
                pane = int(t // 60) * 60
                group = by_pane.get(pane)
                if group is None:
                    group = by_pane[pane] = []
                group.append((d, on, v))
            for pane, group in by_pane.items():
                state.add_pings(pane, group)
            t_fast += time.process_time() - start
            if grouped is not None:
                start = time.process_time()
                groups = group_pings(spec, batch, len(definitions))
                t_group += time.process_time() - start
                start = time.process_time()
                grouped.add_panes(groups)
                t_add += time.process_time() - start
        # The shard's report after the minute: closed rows, then cold panes.
        watermark = T0 + (minute + 1) * 60 - 30
        start = time.process_time()
        rows += len(state.take_partials(watermark))
        t_partials += time.process_time() - start
        start = time.process_time()
        state.freeze_closed(watermark)
        t_freeze += time.process_time() - start
    figures["pings"] = pings
    figures["us_per_ping_add_pings"] = round(t_fast / pings * 1e6, 2)
    figures["us_per_ping_partials"] = round(t_partials / pings * 1e6, 2)
    figures["us_per_ping_freeze"] = round(t_freeze / pings * 1e6, 2)
    figures["rows_per_ping"] = round(rows / pings, 3)
    figures["us_per_ping_values_3_segments"] = round(t_values / pings * 1e6, 2)
    if grouped is not None:
        figures["us_per_ping_group_pings"] = round(t_group / pings * 1e6, 2)
        figures["us_per_ping_add_panes"] = round(t_add / pings * 1e6, 2)

    # The cell cache: parked drivers repeat exact coordinates only without GPS noise.
    sample = pings_of_minute(shard, 0, random.Random(2))[:20_000]
    for name, extractor, points in (
        ("no_cache", extract, sample),
        ("cache_0pc_hits", cached, sample),
        ("cache_50pc_hits", cached, sample[: len(sample) // 2] * 2),
    ):
        start = time.process_time()
        for _, _, _, f in points:
            extractor.of_object(f)
        figures[f"us_per_ping_values_{name}"] = round((time.process_time() - start) / len(points) * 1e6, 2)
    start = time.process_time()
    for _, _, _, f in sample:
        extract.values(f["city"], f["vehicle_type"])  # no h3 at all: strings only
    figures["us_per_ping_values_strings_only"] = round((time.process_time() - start) / len(sample) * 1e6, 2)

    # Content: (driver, bucket, segment value) triples, values per pane.
    triples = 0
    per_definition = {}
    for number, d in enumerate(definitions):
        n_values = n_triples = 0
        for pane in state.panes[number]:
            values = pickle.loads(state.panes[number][pane]) if type(
                state.panes[number][pane]) is bytes else state.panes[number][pane]
            for entry in values.values():
                entry = settle(entry)
                online = entry[0] if type(entry) is tuple else entry
                n_triples += len(decode(online))
                n_values += 1
        triples += n_triples
        per_definition[d.name] = {
            "values_per_pane": round(n_values / len(state.panes[number]), 1),
            "drivers_per_value_per_pane": round(n_triples / max(n_values, 1), 2),
            "triples": n_triples,
        }
    figures["per_definition"] = per_definition
    figures["triples"] = triples

    start = time.process_time()
    partials = state.take_partials()
    elapsed = time.process_time() - start
    rows += len(partials)
    figures["rows"] = rows
    figures["us_per_row_count"] = round((t_partials + elapsed) / rows * 1e6, 1)

    gc.collect()
    figures["rss_growth_mb"] = round(rss_mb() - rss0, 1)
    state.freeze_closed(T0 + args.panes * 60)
    state.freeze_closed(T0 + args.panes * 60)
    figures["memory_bytes_per_triple_cold"] = round(deep_bytes(state) / triples, 1)
    start = time.process_time()
    blob = pickle.dumps(state.snapshot())
    figures["snapshot_cold_ms"] = round((time.process_time() - start) * 1e3, 1)
    figures["snapshot_bytes"] = len(blob)
    figures["snapshot_bytes_per_triple"] = round(len(blob) / triples, 2)
    # One more batch into the newest pane, then the next epoch's snapshot.
    last = pings_of_minute(shard, args.panes - 1, rng)[:1000]
    by_pane = {}
    for d, t, on, f in last:
        by_pane.setdefault(int(t // 60) * 60, []).append((d, on, extract.of_object(f)))
    for pane, group in by_pane.items():
        state.add_pings(pane, group)
    start = time.process_time()
    pickle.dumps(state.snapshot())
    figures["snapshot_warm_ms"] = round((time.process_time() - start) * 1e3, 1)
    start = time.process_time()
    SegmentPanes.restore(spec, definitions, pickle.loads(blob))
    figures["restore_ms"] = round((time.process_time() - start) * 1e3, 1)

    for number, panes in enumerate(state.panes):
        for pane in list(panes):
            state._table(number, pane)
    figures["memory_bytes_per_triple_all_thawed"] = round(deep_bytes(state) / triples, 1)
    figures["alternatives_bytes_per_triple"] = alternatives(state, triples)
    figures["union_us"] = unions(state, spec)
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)


def deep_bytes(root: object) -> int:
    """Bytes of every object reachable from ``root`` (each counted once), by sys.getsizeof."""
    seen: set[int] = set()
    total = 0
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or type(obj) in (bool, type):
            continue
        seen.add(id(obj))
        if type(obj) is int and -5 <= obj <= 256:
            continue  # cached small ints
        total += sys.getsizeof(obj)
        kind = type(obj)
        if kind is dict:
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif kind in (list, tuple, set, frozenset):
            stack.extend(obj)
        elif hasattr(obj, "__slots__") or hasattr(obj, "__dict__"):
            if hasattr(obj, "__dict__"):
                stack.append(vars(obj))
            for name in getattr(type(obj), "__slots__", ()):
                stack.append(getattr(obj, name, None))
    return total


def _sets(state: SegmentPanes):
    """Every (definition, pane) as {code: (online positions, available positions)}."""
    for number, panes in enumerate(state.panes):
        for pane, values in panes.items():
            out = {}
            for code, entry in values.items():
                entry = settle(entry)
                on, av = entry if type(entry) is tuple else (entry, entry)
                out[code] = (list(decode(on)), [] if av is None else list(decode(av)))
            yield number, pane, out


def alternatives(state: SegmentPanes, triples: int) -> dict:
    """Pickled bytes per triple if every set were stored one way (same pane layout)."""
    try:
        from pyroaring import FrozenBitMap
    except ImportError:  # not a dependency: measured when installed
        FrozenBitMap = None
    ways = {
        "bitmap_int": lambda p: mask_of_positions(p),
        "sorted_uint16_bytes": lambda p: array("H", sorted(p)).tobytes(),
        "frozenset": lambda p: frozenset(p),
    }
    if FrozenBitMap is not None:
        ways["pyroaring_frozen"] = lambda p: FrozenBitMap(p)
    out = {}
    for name, make in ways.items():
        total = 0
        for _, _, values in _sets(state):
            total += len(pickle.dumps({c: (make(on), make(av)) for c, (on, av) in values.items()}, 5))
        out[name] = round(total / triples, 2)
    out["chosen_hybrid"] = round(
        sum(len(pickle.dumps(v if type(v) is bytes else settled(v), 5))
            for p in state.panes for v in p.values()) / triples, 2)
    return out


def unions(state: SegmentPanes, spec: WindowSpec) -> dict:
    """Time of one row count (union of 5 panes) for a dense and a sparse value, per way."""
    try:
        from pyroaring import FrozenBitMap
    except ImportError:
        FrozenBitMap = None
    out = {}
    row = max(state.panes[0])
    panes = list(spec.panes_of_row(row))
    for number, label in ((0, "city"), (2, "h3:8")):
        code = next(iter(state.panes[number][row]))
        entries = [settle(state.panes[number][p].get(code, b"")) for p in panes]
        lists = [list(decode(e if not isinstance(e, tuple) else e[0])) for e in entries]
        ways = {
            "chosen": [settle(state.panes[number][p].get(code)) for p in panes],
            "bitmap_int": [mask_of_positions(x) for x in lists],
            "frozenset": [frozenset(x) for x in lists],
        }
        if FrozenBitMap is not None:
            ways["pyroaring"] = [FrozenBitMap(x) for x in lists]
        for name, items in ways.items():
            items = [i[0] if type(i) is tuple else i for i in items if i is not None]
            if name == "chosen":
                fn = lambda: union_size(items)
            elif name == "bitmap_int":
                def fn():
                    m = 0
                    for x in items:
                        m |= x
                    return m.bit_count()
            elif name == "frozenset":
                fn = lambda: len(frozenset().union(*items))
            else:
                fn = lambda: len(FrozenBitMap.union(*items))
            reps = 2000
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            out[f"{label}_{name}"] = round((time.perf_counter() - start) / reps * 1e6, 2)
    return out


if __name__ == "__main__":
    main()
