"""The systems compared: each one's command line and environment, one measured run
of it, the median of its runs, and presence's fixed start-up cost."""

from __future__ import annotations

import json
import re
import subprocess

from bench import workload as wl
from bench.env import BROKERS, PY, QUIX_PY, REPO, base_env, log, mongo, presence_env
from bench.exactness import compare, stored_rows, stored_segment_rows
from bench.flink import FLINK_STATS, FLINK_SYSTEMS, flink_command, flink_rows
from bench.measure import run_measured
from bench.peers.common import TUNED_FETCH

MIXED_SYSTEMS = ("ceiling-mixed", "handloop-mixed", "presence-1w-mixed", "presence-1w-mixed-python")
SEGMENT_SYSTEMS = ("presence-1w-cities", "presence-1w-segments")
"""presence without and with segments, on the same pings carrying city/vehicle_type/lat/lng."""
SEGMENTS = ";".join(wl.BENCH_SEGMENTS)
PYTHON_READER = "-python"
"""A system name ending so runs that presence with PRESENCE_READER=python (the
pure-Python partition reader), beside the same row with the default reader."""
SYSTEMS = ("ceiling", "ceiling-2p", "handloop", "presence-1w", "presence-1w-python",
           "presence-1w-fetch", "presence-2p",
           "presence-2p-fetch", "bytewax", "quix") + FLINK_SYSTEMS + MIXED_SYSTEMS + SEGMENT_SYSTEMS
FETCH_CONFIG = json.dumps({"max.partition.fetch.bytes": TUNED_FETCH["max.partition.fetch.bytes"]})
"""The peers' fetch size, given to the *-fetch presence runs (presence sets the backoff itself)."""

NOTES = {
    "ceiling": "1 consumer, consume(5000) + orjson.loads, nothing else; fetch 10 MiB",
    "ceiling-2p": "the same in 2 processes at once, partitions 0+2 / 1 (as bytewax places them)",
    "handloop": "plain Python: parse, per-bucket sets, unions, upserts; no recovery; fetch 10 MiB",
    "presence-1w": "python -m bytewax.run dataflow, PRESENCE_STOP_AT_END=1, defaults "
                   "(PRESENCE_READER=auto: the compiled reader when built)",
    "presence-1w-python": "same, PRESENCE_READER=python (the pure-Python partition reader)",
    "presence-1w-fetch": "same + PRESENCE_KAFKA_CONFIG max.partition.fetch.bytes 10 MiB",
    "presence-2p": "python -m bytewax.testing dataflow -p 2 -w 1, defaults",
    "presence-2p-fetch": "same + PRESENCE_KAFKA_CONFIG max.partition.fetch.bytes 10 MiB",
    "bytewax": "SlidingWindower + fold_window(sets), ordered=False, wait {wait:g} s",
    "quix": "quixstreams {quix}: group_by + hopping_window.collect().final(), grace {grace:g} s",
    "flink-exact": "Flink 2.2.1 SQL, MiniCluster p=1, HOP + COUNT(DISTINCT), watermark "
                   "11 min; default JVM; fetch 10 MiB; rows via collect()",
    "flink-exact-tuned": "same, JVM -XX:+UseSerialGC -XX:TieredStopAtLevel=1",
    "flink-natural": "same as flink-exact with watermark 30 s; default JVM",
    "flink-natural-tuned": "same, JVM -XX:+UseSerialGC -XX:TieredStopAtLevel=1",
    "ceiling-mixed": "ceiling on the mixed-timestamp topic (orjson.loads only: no instant computed)",
    "handloop-mixed": "handloop on the mixed-timestamp topic (ms rule + datetime.fromisoformat)",
    "presence-1w-mixed": "presence-1w on the mixed-timestamp topic",
    "presence-1w-mixed-python": "presence-1w-python on the mixed-timestamp topic",
    "presence-1w-cities": "presence-1w on the cities topic (pings with city, vehicle_type, "
                          "lat, lng), no segments",
    "presence-1w-segments": "same + PRESENCE_SEGMENTS=" + SEGMENTS,
}


def command(system: str, topic: str, db: str, args) -> tuple[list[str], dict]:
    if system.endswith(PYTHON_READER):
        cmd, env = command(system.removesuffix(PYTHON_READER), topic, db, args)
        env["PRESENCE_READER"] = "python"
        return cmd, env
    if system.endswith("-mixed") or system == "presence-1w-cities":
        return command(system.rsplit("-", 1)[0], topic, db, args)
    if system == "presence-1w-segments":
        return ([PY, "-m", "bytewax.run", "dataflow"],
                presence_env(topic, db, PRESENCE_SEGMENTS=SEGMENTS))
    if system.startswith("flink-"):
        return flink_command(system, topic, args.flink_classpath), base_env()
    if system == "ceiling":
        return [PY, "-m", "bench.peers.ceiling", topic], base_env()
    if system == "ceiling-2p":
        return [PY, "-m", "bench.peers.ceiling", topic, "--processes", "2"], base_env()
    if system == "handloop":
        return [PY, "-m", "bench.peers.handloop", topic, db], base_env()
    if system == "presence-1w":
        return [PY, "-m", "bytewax.run", "dataflow"], presence_env(topic, db)
    if system == "presence-1w-fetch":
        return ([PY, "-m", "bytewax.run", "dataflow"],
                presence_env(topic, db, PRESENCE_KAFKA_CONFIG=FETCH_CONFIG))
    if system == "presence-2p":
        return ([PY, "-m", "bytewax.testing", "dataflow", "-p", "2", "-w", "1"],
                presence_env(topic, db))
    if system == "presence-2p-fetch":
        return ([PY, "-m", "bytewax.testing", "dataflow", "-p", "2", "-w", "1"],
                presence_env(topic, db, PRESENCE_KAFKA_CONFIG=FETCH_CONFIG))
    if system == "bytewax":
        env = base_env()
        env.update(BENCH_TOPIC=topic, BENCH_DB=db,
                   BENCH_BYTEWAX_WAIT_SECONDS=str(args.bytewax_wait))
        return [PY, "-m", "bytewax.run", "bench.peers.bytewax_windows:flow"], env
    if system == "quix":
        env = base_env()
        env.update(BENCH_QUIX_GRACE_SECONDS=str(args.quix_grace),
                   BENCH_QUIX_IDLE_SECONDS=str(args.quix_idle),
                   BENCH_QUIX_MODE=args.quix_mode)
        return [str(QUIX_PY), "-m", "bench.peers.quix_windows", topic, db], env
    raise ValueError(system)


def quix_version() -> str:
    if not QUIX_PY.exists():
        return "not installed"
    out = subprocess.run([str(QUIX_PY), "-c", "import quixstreams; print(quixstreams.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "not installed"


def run_system(system: str, topic: str, run_id: str, pings: int, oracle: dict, args,
               segment_oracle: dict | None = None) -> dict:
    db = f"bench_{run_id}_{system.replace('-', '_')}"
    mongo().drop_database(db)
    cmd, env = command(system, topic, db, args)
    classpath = getattr(args, "flink_classpath", None)
    shown = ["CLASSPATH" if classpath and c == classpath else c for c in cmd[1:]]
    log(f"{system}: {' '.join(shown)}")
    m = run_measured(cmd, env, str(REPO), timeout=args.timeout)
    wall = m.wall
    if system == "quix":
        wall = max(0.0, wall - args.quix_idle)  # the idle stop is not work
    result = {
        "system": system,
        "wall_s": wall,
        "cpu_s": m.cpu,
        "user_s": m.user,
        "sys_s": m.sys,
        "peak_rss_mb": m.peak_rss / 2**20,
        "pings_per_s": pings / wall if wall else 0.0,
        "pings_per_cpu_s": pings / m.cpu if m.cpu else 0.0,
        "returncode": m.returncode,
        "load_before": m.load_before[0],
        "load_after": m.load_after[0],
    }
    if m.returncode != 0:
        log(f"{system} exited {m.returncode}:\n{m.output[-3000:]}")
    steady = STEADY_RATE.search(m.output)
    if steady:
        result["steady_pings_per_s"] = float(steady.group(1))
    if "error connecting to worker" in m.output:
        result["connect_retry"] = True
    stats = FLINK_STATS.search(m.output)
    if stats:
        result["flink"] = json.loads(stats.group(1))
    if system.startswith("ceiling"):
        result["exact"], result["exactness"] = None, "no rows (reads only)"
    elif system.startswith("flink-"):
        result["exact"], result["exactness"] = compare(flink_rows(m.output), oracle)
    else:
        result["exact"], result["exactness"] = compare(stored_rows(db), oracle)
        if segment_oracle is not None:
            result.update(segment_exactness(db, segment_oracle))
        if not args.keep_dbs:
            mongo().drop_database(db)
    log(f"{system}: {wall:.1f} s wall, {m.cpu:.1f} s CPU, "
        f"{result['pings_per_s']:,.0f} pings/s, {result['pings_per_cpu_s']:,.0f} pings/CPU-s, "
        f"{result['peak_rss_mb']:.0f} MB, {result['exactness']}"
        + (f", segment rows: {result['segment_exactness']}" if "segment_exactness" in result
           else "")
        + (f", flink {result['flink']}" if "flink" in result else ""))
    return result


SEGMENT_ROWS_UNAVAILABLE = ("unavailable: this dataflow wrote no segment_summary rows "
                            "(segments not wired into it yet)")


def segment_exactness(db: str, oracle: dict) -> dict:
    """``segment_exact`` (None when the dataflow wrote no segment rows at all) and
    ``segment_exactness``, against :func:`bench.workload.segment_oracle_rows`."""
    rows = stored_segment_rows(db)
    if not rows:
        return {"segment_exact": None, "segment_exactness": SEGMENT_ROWS_UNAVAILABLE}
    exact, text = compare(rows, oracle)
    return {"segment_exact": exact, "segment_exactness": text, "segment_rows": len(rows)}


STEADY_RATE = re.compile(r"done \| \d+ pings counted \((\d+)/s\)")
"""presence's own last progress line: pings over the time from its first read to the end."""


def median_run(runs: list[dict]) -> dict:
    """The run of median wall time, with the spread and exactness of all runs."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["runs"] = len(runs)
    out["wall_min_s"], out["wall_max_s"] = ordered[0]["wall_s"], ordered[-1]["wall_s"]
    steady = sorted(r["steady_pings_per_s"] for r in runs if "steady_pings_per_s" in r)
    if steady:
        out["steady_pings_per_s"] = steady[(len(steady) - 1) // 2]
    out["connect_retries"] = sum(1 for r in runs if r.get("connect_retry"))
    out["exact_runs"] = sum(1 for r in runs if r["exact"] is True)
    for field in ("exact", "segment_exact"):
        wrong = [r for r in runs if r.get(field) is False]
        if wrong:
            out[field] = False
            out[field + "ness"] = wrong[0][field + "ness"] + (
                f" in {len(wrong)} of {len(runs)} runs" if len(runs) > 1 else "")
    return out


def delete_quix_topics(topic: str) -> None:
    """Quix's internal repartition/changelog topics made for this run."""
    from confluent_kafka.admin import AdminClient

    names = AdminClient({"bootstrap.servers": BROKERS}).list_topics(timeout=10).topics
    for name in names:
        if topic in name and name != topic:
            wl.delete_topic(BROKERS, name)


def measure_startup(run_id: str, systems: list[str], args) -> dict[str, float]:
    """Wall seconds of a whole bounded run over 3 pings: the fixed cost of a run."""
    topic = f"bench-{run_id}-startup"
    tiny = wl.generate(3, 3, weights=(1 / 3, 1 / 3, 1 / 3))
    wl.create_topic(BROKERS, topic, 3)
    wl.produce(BROKERS, topic, tiny)
    out = {}
    try:
        for system in systems:
            db = f"bench_{run_id}_startup"
            cmd, env = command(system, topic, db, args)
            m = run_measured(cmd, env, str(REPO), timeout=120)
            out[system] = m.wall
            mongo().drop_database(db)
            log(f"{system}: start-up + shut-down {m.wall:.2f} s (3 pings)")
    finally:
        wl.delete_topic(BROKERS, topic)
    return out


def select_systems(args) -> list[str]:
    """The systems of this run: --only less --skip, --no-flink, --no-segments and --timestamps."""
    systems = [s for s in args.only.split(",") if s and s not in args.skip.split(",")]
    for s in systems:
        if s not in SYSTEMS:
            raise SystemExit(f"unknown system {s!r}; choose from {', '.join(SYSTEMS)}")
    if args.no_flink:
        systems = [s for s in systems if s not in FLINK_SYSTEMS]
    if args.no_segments:
        systems = [s for s in systems if s not in SEGMENT_SYSTEMS]
    if args.timestamps == "float":
        systems = [s for s in systems if s not in MIXED_SYSTEMS]
    elif args.timestamps == "mixed":
        systems = [s for s in systems if s in MIXED_SYSTEMS]
    return systems
