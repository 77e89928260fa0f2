"""``make bench``: presence side by side with a ceiling, a hand loop, Bytewax, Quix and Flink.

One run loads a workload into a fresh 3-partition topic, computes the oracle
rows once, then runs every system one after another over the same topic,
each writing ``report_summary`` to a database of its own, and compares its
rows to the oracle. Then a live-latency test and a state-size test. Prints
one table and writes it, with the machine description, to
``bench/results/<UTC date-time>.md`` (and ``.json``).

    python -m bench.run                       # the full run (1,000,000 pings)
    python -m bench.run --pings 50000 --only ceiling,presence-1w --no-latency --no-state
    python -m bench.run --no-flink            # without the Flink SQL rows (no Java needed)

``--quick``: a small run of a few systems (seconds per system), for a smoke test.

The ``presence-1w-cities`` and ``presence-1w-segments`` systems read a topic
of pings carrying ``city``, ``vehicle_type``, ``lat`` and ``lng``
(``--segment-pings`` pings of ``--segment-drivers`` drivers in 10 cities):
presence without segments and with ``city;city,vehicle_type;h3:8``, segment
rows checked against the segment oracle; then ``bench/segment_state.py``
gives the segment state's bytes per (driver, bucket, segment value).

The ``*-mixed`` systems read a second topic whose ``timestamp`` mixes every
shape the SPEC accepts (``--timestamps``). The ``flink-*`` systems run
``bench/peers/flink`` (Flink SQL on a local MiniCluster), built once with
Maven into ``~/.cache/presence/m2``; without ``java`` or ``mvn`` they are
skipped with one line saying so.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from bench import segments
from bench import workload as wl
from bench.env import BROKERS, QUIX_PY, RESULTS, log
from bench.flink import FLINK_SYSTEMS, flink_setup
from bench.latency import latency_test
from bench.report import machine, render
from bench.state import state_test
from bench.systems import (MIXED_SYSTEMS, NOTES, PYTHON_READER, SEGMENT_SYSTEMS, SYSTEMS,
                           delete_quix_topics, measure_startup, median_run, run_system, select_systems)

QUICK = dict(pings=20_000, drivers=1_000, segment_pings=20_000, segment_drivers=2_000,
             segment_state_panes=8, repeat=1, no_latency=True, no_state=True, no_startup=True,
             no_flink=True)
QUICK_SYSTEMS = ("ceiling", "handloop", "presence-1w") + SEGMENT_SYSTEMS
SHAPE_ORDER = ("float", "mixed", "cities")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pings", type=int, default=1_000_000)
    ap.add_argument("--drivers", type=int, default=10_000)
    ap.add_argument("--only", default=",".join(SYSTEMS),
                    help=f"comma-separated systems out of {','.join(SYSTEMS)}")
    ap.add_argument("--skip", default="", help="comma-separated systems to leave out")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--no-state", action="store_true")
    ap.add_argument("--no-startup", action="store_true",
                    help="skip measuring presence's fixed start-up cost")
    ap.add_argument("--bytewax-wait", type=float, default=3600.0)
    ap.add_argument("--quix-grace", type=float, default=600.0)
    ap.add_argument("--quix-idle", type=float, default=5.0)
    ap.add_argument("--quix-mode", choices=("collect", "reduce"), default="collect")
    ap.add_argument("--latency-rate", type=int, default=20_000)
    ap.add_argument("--latency-seconds", type=int, default=60)
    ap.add_argument("--latency-bucket", type=int, default=1)
    ap.add_argument("--latency-window", type=int, default=60)
    ap.add_argument("--latency-late", type=float, default=0.0,
                    help="fraction of live pings sent 1-5 min late (corrections)")
    ap.add_argument("--state-pings", type=int, default=1_000_000)
    ap.add_argument("--state-drivers", type=int, default=100_000)
    ap.add_argument("--state-control-drivers", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each system, interleaved; the table shows the median run")
    ap.add_argument("--repeat-under", type=float, default=30.0,
                    help="only systems whose first run took under this many seconds "
                         "are repeated (the slow peers run once)")
    ap.add_argument("--flink-repeat-under", type=float, default=120.0,
                    help="the same for the flink-* systems (whose start-up alone takes "
                         "seconds; the natural setting's exactness is counted over the runs)")
    ap.add_argument("--no-flink", action="store_true",
                    help="leave out the flink-* systems (no Java or Maven needed)")
    ap.add_argument("--timestamps", choices=("float", "mixed", "both"), default="both",
                    help="float: only the float-timestamp topic; mixed: only the *-mixed "
                         "systems, on a topic mixing every timestamp shape the SPEC accepts; "
                         "both (default): both topics")
    ap.add_argument("--segment-pings", type=int, default=600_000,
                    help="pings of the cities topic (presence-1w-cities, presence-1w-segments)")
    ap.add_argument("--segment-drivers", type=int, default=100_000)
    ap.add_argument("--segment-state-panes", type=int, default=65,
                    help="one-minute panes of the segment state measure (bench/segment_state.py)")
    ap.add_argument("--no-segments", action="store_true",
                    help="leave out the segment systems and the segment state measure")
    ap.add_argument("--no-segment-state", action="store_true",
                    help="leave out the segment state measure (run with the segment systems)")
    ap.add_argument("--quick", action="store_true",
                    help="a small, fast run: " + ", ".join(
                        f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                        for k, v in QUICK.items())
                    + f", systems {','.join(QUICK_SYSTEMS)} unless --only is given")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--keep-dbs", action="store_true")
    ap.add_argument("--results", default=str(RESULTS), help="where to write the results")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
        if args.only == ",".join(SYSTEMS):
            args.only = ",".join(QUICK_SYSTEMS)
    return args


def shape_of(system: str) -> str:
    """The workload a system reads: float timestamps, mixed ones, or the cities topic."""
    if system in MIXED_SYSTEMS:
        return "mixed"
    return "cities" if system in SEGMENT_SYSTEMS else "float"


def main(argv=None) -> int:
    args = parse_args(argv)
    systems = select_systems(args)
    if "quix" in systems and not QUIX_PY.exists():
        log("quix: bench/.quix-venv missing (make bench creates it); skipped")
        systems.remove("quix")
    args.flink_classpath = None
    if any(s in FLINK_SYSTEMS for s in systems):
        args.flink_classpath, why = flink_setup(log)
        if args.flink_classpath is None:
            log(f"flink: skipped: {why}")
            systems = [s for s in systems if s not in FLINK_SYSTEMS]
    run_id = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    load = {"start": tuple(round(x, 2) for x in os.getloadavg())}
    mach = machine()

    # One topic per workload in use: (topic, oracle) by shape.
    needed = {shape_of(s) for s in systems}
    shapes = [s for s in SHAPE_ORDER if s in needed] or ["float"]
    topics: dict[str, tuple[str, dict]] = {}
    segment_oracle = None
    produce_s = 0.0
    try:
        for shape in shapes:
            if shape == "cities":
                w = wl.generate(args.segment_pings, args.segment_drivers, cities=True)
            else:
                w = wl.generate(args.pings, args.drivers, timestamps=shape)
            oracle, too_late = wl.oracle_rows(w)
            if shape == shapes[0]:
                load.update(rows=len(oracle), too_late=too_late)
            load[f"{shape}_rows"], load[f"{shape}_too_late"] = len(oracle), too_late
            if shape == "cities" and "presence-1w-segments" in systems:
                segment_oracle = wl.segment_oracle_rows(w)
                load["cities_segment_rows"] = len(segment_oracle)
            topic = f"bench-{run_id}" + ("" if shape == "float" else f"-{shape}")
            wl.create_topic(BROKERS, topic, 3)
            topics[shape] = (topic, oracle)
            log(f"producing {w.pings:,} pings ({shape} timestamps) to {topic} "
                f"(partitions {[len(d) for d in w.drivers]}, {w.late:,} late)")
            took = wl.produce(BROKERS, topic, w)
            load[f"{shape}_produce_s"] = took
            if shape != "cities":  # the segment paragraph says its own
                produce_s += took
            log(f"produced in {took:.1f} s; oracle {len(oracle)} rows, {too_late} too late")
            del w
    except BaseException:
        for topic, _ in topics.values():
            wl.delete_topic(BROKERS, topic)
        raise

    startup = {}
    first_runs = [s for s in systems if s.startswith("presence") and s not in MIXED_SYSTEMS
                  and not s.endswith(PYTHON_READER)]
    if first_runs and not args.no_startup:
        startup = measure_startup(run_id, first_runs, args)
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    quix = mach["quixstreams"]
    try:
        for round_no in range(max(1, args.repeat)):
            if round_no:
                log(f"round {round_no + 1} of {args.repeat}")
            for system in systems:
                under = args.flink_repeat_under if system in FLINK_SYSTEMS else args.repeat_under
                if round_no and runs[system][0]["wall_s"] >= under:
                    continue
                shape = shape_of(system)
                topic, oracle = topics[shape]
                pings = args.segment_pings if shape == "cities" else args.pings
                runs[system].append(run_system(
                    system, topic, run_id, pings, oracle, args,
                    segment_oracle if system == "presence-1w-segments" else None))
    finally:
        for topic, _ in topics.values():
            wl.delete_topic(BROKERS, topic)
            delete_quix_topics(topic)
    results = []
    for system in systems:
        r = median_run(runs[system])
        r["note"] = NOTES[system].format(wait=args.bytewax_wait, grace=args.quix_grace,
                                         quix=quix)
        if system == "quix" and args.quix_mode == "reduce":
            r["note"] = r["note"].replace("collect()", "reduce(sets)")
        if system in startup:
            r["startup_s"] = startup[system]
        results.append(r)

    lat = None if args.no_latency else latency_test(args, run_id)
    state = None if args.no_state else state_test(args, run_id)
    seg_state = None
    if any(s in SEGMENT_SYSTEMS for s in systems) and not args.no_segment_state:
        seg_state = segments.segment_state_test(args)
    load["end"] = tuple(round(x, 2) for x in os.getloadavg())
    text = render(args, mach, results, lat, state, load, produce_s, seg_state)
    print(text)
    if not args.no_write:
        out = Path(args.results)
        out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
        (out / f"{stamp}.md").write_text(text)
        (out / f"{stamp}.json").write_text(json.dumps(
            {"args": {k: v for k, v in vars(args).items() if k != "flink_classpath"},
             "machine": mach, "load": load, "results": results,
             "latency": lat, "state": state, "segment_state": seg_state}, indent=2,
            default=str))
        log(f"written {out / (stamp + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
