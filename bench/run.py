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
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench import workload as wl
from bench.measure import Measured, run_measured
from bench.peers.common import TUNED_FETCH
from presence.io.kafka import send

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
QUIX_PY = REPO / "bench" / ".quix-venv" / "bin" / "python"
BROKERS = os.environ.get("BENCH_BROKERS", "127.0.0.1:9092")
MONGO_URI = os.environ.get("BENCH_MONGO_URI", "mongodb://127.0.0.1:27017")
PY = sys.executable

FLINK_DIR = REPO / "bench" / "peers" / "flink"
M2 = Path(os.environ.get("BENCH_M2", Path.home() / ".cache" / "presence" / "m2"))
"""Maven's local repository for the Flink peer (like the stack's jars, under ~/.cache)."""

FLINK_SYSTEMS = ("flink-exact", "flink-exact-tuned", "flink-natural", "flink-natural-tuned")
MIXED_SYSTEMS = ("ceiling-mixed", "handloop-mixed", "presence-1w-mixed")
SYSTEMS = ("ceiling", "ceiling-2p", "handloop", "presence-1w", "presence-1w-fetch", "presence-2p",
           "presence-2p-fetch", "bytewax", "quix") + FLINK_SYSTEMS + MIXED_SYSTEMS
FLINK_WATERMARK = {"exact": 660, "natural": 30}
"""Watermark delay (s) of each Flink setting: 11 minutes covers the workload's partition
skew in a backlog read and its 10-minute late pings (exact); 30 s is presence's lateness."""
FLINK_TUNED_JVM = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
"""The fastest whole run of the JVM flags tried (issue 12): serial GC, C1 JIT only."""
FETCH_CONFIG = json.dumps({"max.partition.fetch.bytes": TUNED_FETCH["max.partition.fetch.bytes"]})
"""The peers' fetch size, given to the *-fetch presence runs (presence sets the backoff itself)."""

NOTES = {
    "ceiling": "1 consumer, consume(5000) + orjson.loads, nothing else; fetch 10 MiB",
    "ceiling-2p": "the same in 2 processes at once, partitions 0+2 / 1 (as bytewax places them)",
    "handloop": "plain Python: parse, per-bucket sets, unions, upserts; no recovery; fetch 10 MiB",
    "presence-1w": "python -m bytewax.run dataflow, PRESENCE_STOP_AT_END=1, defaults",
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
}


def log(msg: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ environment

def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PRESENCE_", "BENCH_", "BYTEWAX_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["BENCH_BROKERS"] = BROKERS
    env["BENCH_MONGO_URI"] = MONGO_URI
    return env


def presence_env(topic: str, db: str, bounded: bool = True, **extra: str) -> dict[str, str]:
    env = base_env()
    env.update({
        "PRESENCE_KAFKA_BROKERS": BROKERS,
        "PRESENCE_TOPIC": topic,
        "PRESENCE_MONGO_URI": MONGO_URI,
        "PRESENCE_MONGO_DB": db,
        "PRESENCE_LOG_ROWS": "0",
    })
    if bounded:
        env["PRESENCE_STOP_AT_END"] = "1"
    env.update(extra)
    return env


def mongo():
    from pymongo import MongoClient

    return MongoClient(MONGO_URI, tz_aware=True, serverSelectionTimeoutMS=5000)


def stored_rows(db: str) -> dict[int, tuple[int, int]]:
    out = {}
    for doc in mongo()[db].report_summary.find():
        start = datetime.strptime(doc["timeBucket"], "%Y-%m-%d %H:%M:%S").replace(
            tzinfo=timezone.utc)
        out[int(start.timestamp())] = (doc["driversOnlineCount"], doc["driversAvailableCount"])
    return out


def compare(rows: dict, oracle: dict) -> tuple[bool, str]:
    if rows == oracle:
        return True, f"{len(rows)} rows equal"
    missing = [r for r in oracle if r not in rows]
    extra = [r for r in rows if r not in oracle]
    wrong = [r for r in oracle if r in rows and rows[r] != oracle[r]]
    lost = sum(oracle[r][0] - rows[r][0] for r in wrong)
    return False, (f"{len(missing)} of {len(oracle)} rows missing, {len(wrong)} wrong "
                   f"(online short by {lost} in all), {len(extra)} extra")


# ------------------------------------------------------------------ systems

def flink_setup(log=None) -> tuple[str | None, str]:
    """(classpath, "") once the Flink peer is built, or (None, why it is skipped).

    Built with Maven on first use (``-C``: strict checksums), offline (``-o``)
    once its dependencies are in :data:`M2`; rebuilt when pom.xml or the
    source is newer than the classpath file."""
    log = log or (lambda _msg: None)
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            return None, f"{tool} not found (the Flink rows need a JDK 17+ and Maven)"
    cp_file = FLINK_DIR / "target" / "classpath.txt"
    sources = [FLINK_DIR / "pom.xml", *sorted((FLINK_DIR / "src").rglob("*.java"))]
    fresh = cp_file.exists() and all(f.stat().st_mtime <= cp_file.stat().st_mtime
                                     for f in sources)
    if not fresh:
        base = ["mvn", "-B", "-q", "-C", f"-Dmaven.repo.local={M2}", "compile"]
        offline = M2.is_dir() and any(M2.iterdir())
        log(f"flink: building bench/peers/flink with Maven"
            f"{' (offline)' if offline else ' (first time: downloads Flink, a few minutes)'}")
        began = time.perf_counter()
        done = subprocess.run(base[:1] + ["-o"] + base[1:] if offline else base,
                              cwd=FLINK_DIR, capture_output=True, text=True)
        if done.returncode != 0 and offline:  # a dependency not yet in the cache
            done = subprocess.run(base, cwd=FLINK_DIR, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            return None, "Maven build failed: " + " | ".join(tail)
        cp_file.touch()  # Maven leaves an unchanged classpath file as it was
        log(f"flink: built in {time.perf_counter() - began:.0f} s")
    classpath = cp_file.read_text().strip()
    return str(FLINK_DIR / "target" / "classes") + os.pathsep + classpath, ""


def flink_command(system: str, topic: str, classpath: str) -> list[str]:
    """The JVM command of a ``flink-*`` system: the same job, two watermark delays,
    the JVM's default flags or the tuned ones."""
    setting = system.split("-")[1]
    jvm = FLINK_TUNED_JVM if system.endswith("-tuned") else []
    return ["java", *jvm, "-cp", classpath, "presence.bench.FlinkPeer",
            "--topic", topic, "--brokers", BROKERS,
            "--watermark-seconds", str(FLINK_WATERMARK[setting]),
            "--kafka", f"max.partition.fetch.bytes={TUNED_FETCH['max.partition.fetch.bytes']}"]


FLINK_STATS = re.compile(r"^flink-stats (\{.*\})$", re.M)
FLINK_ROW = re.compile(r'^\{"row":(\d+),"online":(\d+),"available":(\d+)\}$', re.M)


def flink_rows(output: str) -> dict[int, tuple[int, int]]:
    """The rows a Flink run printed (its JSON lines), keyed like the oracle."""
    return {int(r): (int(on), int(av)) for r, on, av in FLINK_ROW.findall(output)}


def command(system: str, topic: str, db: str, args) -> tuple[list[str], dict]:
    if system.endswith("-mixed"):
        return command(system[: -len("-mixed")], topic, db, args)
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


def run_system(system: str, topic: str, run_id: str, pings: int, oracle: dict, args) -> dict:
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
        if not args.keep_dbs:
            mongo().drop_database(db)
    log(f"{system}: {wall:.1f} s wall, {m.cpu:.1f} s CPU, "
        f"{result['pings_per_s']:,.0f} pings/s, {result['pings_per_cpu_s']:,.0f} pings/CPU-s, "
        f"{result['peak_rss_mb']:.0f} MB, {result['exactness']}"
        + (f", flink {result['flink']}" if "flink" in result else ""))
    return result


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
    wrong = [r for r in runs if r["exact"] is False]
    if wrong:
        out["exact"] = False
        out["exactness"] = wrong[0]["exactness"] + (
            f" in {len(wrong)} of {len(runs)} runs" if len(runs) > 1 else "")
    return out


def _delete_quix_topics(topic: str) -> None:
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


# ------------------------------------------------------------------ live latency

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


# ------------------------------------------------------------------ state size

def snapshot_bytes(recovery: Path) -> dict[str, int]:
    """Bytes of the latest snapshot of every (step, key), per step."""
    per_step: dict[str, int] = {}
    for f in sorted(recovery.glob("*.sqlite3")):
        con = sqlite3.connect(f)
        try:
            rows = con.execute(
                "SELECT s.step_id, length(s.ser_change) FROM snaps s JOIN "
                "(SELECT step_id, state_key, max(snap_epoch) e FROM snaps "
                " GROUP BY step_id, state_key) l "
                "ON s.step_id = l.step_id AND s.state_key = l.state_key AND s.snap_epoch = l.e"
            ).fetchall()
        finally:
            con.close()
        for step, n in rows:
            per_step[step] = per_step.get(step, 0) + (n or 0)
    return per_step


def state_test(args, run_id: str) -> dict:
    """Snapshot bytes and RSS growth per (driver, bucket) pair at ``state_drivers`` drivers."""
    out = {}
    runs = {}
    for label, drivers in (("big", args.state_drivers), ("control", args.state_control_drivers)):
        w = wl.generate(args.state_pings, drivers, seed=3)
        topic = f"bench-{run_id}-state-{label}"
        wl.create_topic(BROKERS, topic, 3)
        wl.produce(BROKERS, topic, w)
        rec = Path(tempfile.mkdtemp(prefix=f"bench-recovery-{label}-"))
        subprocess.run([PY, "-m", "bytewax.recovery", str(rec), "1"], check=True,
                       capture_output=True, cwd=REPO)
        db = f"bench_{run_id}_state_{label}"
        log(f"state: presence over {args.state_pings:,} pings of {drivers:,} drivers "
            f"with recovery")
        m = run_measured([PY, "-m", "bytewax.run", "dataflow", "-r", str(rec), "-s", "5",
                          "-b", "0"], presence_env(topic, db), str(REPO), timeout=args.timeout)
        if m.returncode != 0:
            raise RuntimeError(f"state run failed:\n{m.output[-3000:]}")
        snaps = snapshot_bytes(rec)
        pairs = _pairs_in_state(w)
        runs[label] = {"drivers": drivers, "pairs": pairs, "peak_rss": m.peak_rss,
                       "snap_total": sum(snaps.values()), "snap_panes": sum(n for k, n in snaps.items() if k.endswith("panes")),
                       "snap_steps": snaps, "wall_s": m.wall, "cpu_s": m.cpu}
        shutil.rmtree(rec, ignore_errors=True)
        wl.delete_topic(BROKERS, topic)
        if not args.keep_dbs:
            mongo().drop_database(db)
        log(f"state {label}: {runs[label]}")
    big, control = runs["big"], runs["control"]
    out["runs"] = runs
    out["pairs"] = big["pairs"]
    out["snapshot_bytes_per_pair"] = big["snap_total"] / big["pairs"]
    out["snapshot_panes_bytes_per_pair"] = big["snap_panes"] / big["pairs"]
    out["rss_bytes_per_pair"] = (big["peak_rss"] - control["peak_rss"]) / max(
        1, big["pairs"] - control["pairs"])
    return out


def _pairs_in_state(w: wl.Workload, bucket: int = 60, window: int = 300,
                    lateness: float = 30.0, horizon: float = 3600.0) -> int:
    """(driver, bucket) pairs presence must keep at the end: panes from the oldest
    countable time (least partition watermark - horizon) back by window - bucket."""
    oldest = min(t.max() for t in w.times if len(t)) - lateness - horizon
    first_pane = int(oldest // bucket) * bucket - (window - bucket)
    d = np.concatenate(w.drivers)
    t = np.concatenate(w.times)
    b = (np.floor(t / bucket) * bucket).astype(np.int64)
    keep = b >= first_pane
    return int(len(np.unique(b[keep] * (1 << 24) + d[keep])))


# ------------------------------------------------------------------ report

def machine() -> dict:
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in ("bytewax", "confluent-kafka", "orjson", "pymongo"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "?"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=REPO).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "presence"],
                                    capture_output=True, text=True, cwd=REPO).stdout.strip())
    except OSError:
        rev, dirty = "?", False
    return {
        "cpu": model, "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(), "python": platform.python_version(),
        "versions": versions, "quixstreams": quix_version(), "java": java_version(),
        "kafka": "Apache Kafka 4.1 (KRaft, 1 node, local)", "mongo": "FerretDB v1 (SQLite), local",
        "git": rev + (" (presence/ modified)" if dirty else ""),
    }


def java_version() -> str:
    """The JVM the Flink rows run on (Flink 2.2.1, flink-sql-connector-kafka 5.0.0-2.2)."""
    if shutil.which("java") is None:
        return "not installed"
    out = subprocess.run(["java", "-version"], capture_output=True, text=True)
    return (out.stderr.splitlines() or ["?"])[0]


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def spread(r: dict) -> str:
    n = r.get("runs", 1)
    if n == 1:
        return "1"
    return f"{n}: {r['wall_min_s']:.2f}-{r['wall_max_s']:.2f}"


def table(results: list[dict], ceiling: dict | None) -> str:
    head = ("| system | exact | wall s (median) | runs: wall min-max | pings/s (wall) "
            "| pings/CPU-s | vs ceiling (wall) | vs ceiling (CPU) | peak RSS MB | load avg "
            "| settings |")
    lines = [head, "|" + "---|" * 11]
    for r in results:
        exact = {True: "yes", False: "**no**", None: "n/a"}[r["exact"]]
        if r["exact"] is False:
            exact += f" ({r['exactness']})"
        vw = r["pings_per_s"] / ceiling["pings_per_s"] if ceiling else float("nan")
        vc = r["pings_per_cpu_s"] / ceiling["pings_per_cpu_s"] if ceiling else float("nan")
        lines.append(
            f"| {r['system']} | {exact} | {r['wall_s']:.2f} | {spread(r)} "
            f"| {fmt_rate(r['pings_per_s'])} "
            f"| {fmt_rate(r['pings_per_cpu_s'])} | {vw:.2f} | {vc:.2f} | {r['peak_rss_mb']:.0f} "
            f"| {r['load_before']:.1f}→{r['load_after']:.1f} | {r['note']} |")
    return "\n".join(lines)


def targets(by: dict, lat: dict | None, state: dict | None) -> list[tuple[str, str, bool | None]]:
    out = []
    p1 = by.get("presence-1w")
    ceil = by.get("ceiling")
    if ceil and by.get("ceiling-2p"):
        x = by["ceiling-2p"]["pings_per_s"] / ceil["pings_per_s"]
        out.append(("(machine) ceiling-2p / ceiling (wall): what a second process adds "
                    "here with no framework", f"{x:.2f} x", None))
    for name in ("presence-1w", "presence-1w-fetch"):
        if by.get(name) and ceil:
            x = by[name]["pings_per_s"] / ceil["pings_per_s"]
            out.append((f"{name} >= 0.5 x ceiling (wall)", f"{x:.2f} x", x >= 0.5))
    if p1:
        x = p1["pings_per_cpu_s"]
        out.append(("1 worker >= 300,000 pings/CPU-s", fmt_rate(x), x >= 300_000))
    flink = [by[s] for s in ("flink-exact", "flink-exact-tuned") if by.get(s)]
    if p1 and flink:
        best = max(flink, key=lambda r: r["pings_per_cpu_s"])
        x = p1["pings_per_cpu_s"] / best["pings_per_cpu_s"]
        note = "" if best["exact"] else " (peer inexact)"
        out.append((f"1 worker >= 2 x Flink exact, best JVM ({best['system']}) (pings/CPU-s)",
                    f"{x:.2f} x{note}", x >= 2 and p1["exact"] is True))
    if by.get("presence-1w-mixed") and by.get("ceiling-mixed"):
        x = by["presence-1w-mixed"]["pings_per_s"] / by["ceiling-mixed"]["pings_per_s"]
        out.append(("presence-1w-mixed >= 0.4 x ceiling-mixed (wall; mixed timestamp shapes)",
                    f"{x:.2f} x", x >= 0.4 and by["presence-1w-mixed"]["exact"] is True))
    for peer, need in (("handloop", 0.5), ("bytewax", 4), ("quix", 10)):
        if p1 and by.get(peer):
            x = p1["pings_per_cpu_s"] / by[peer]["pings_per_cpu_s"]
            ok = x >= need and p1["exact"] is True
            note = "" if by[peer]["exact"] else " (peer inexact)"
            out.append((f"1 worker >= {need:g} x {peer} (pings/CPU-s)", f"{x:.2f} x{note}", ok))
    for two, one in (("presence-2p", "presence-1w"), ("presence-2p-fetch", "presence-1w-fetch")):
        if by.get(two) and by.get(one):
            x = by[two]["pings_per_s"] / by[one]["pings_per_s"]
            out.append((f"{two} >= 1.6 x {one} (wall)", f"{x:.2f} x", x >= 1.6))
            if by[two].get("steady_pings_per_s") and by[one].get("steady_pings_per_s"):
                y = by[two]["steady_pings_per_s"] / by[one]["steady_pings_per_s"]
                retries = by[two].get("connect_retries", 0)
                out.append((f"  same, steady rate (first read to end, as logged; no start-up "
                            f"or exit; {retries} of {by[two].get('runs', 1)} {two} runs waited "
                            "1 s for a peer process to listen)",
                            f"{y:.2f} x", y >= 1.6))
    if lat:
        out.append(("p99 latency <= 2 s", f"{lat['p99']:.2f} s", lat["p99"] <= 2.0))
    if state:
        x = state["snapshot_bytes_per_pair"]
        out.append(("state <= 64 bytes per (driver, bucket) pair (snapshot)", f"{x:.1f} B",
                    x <= 64))
    return out


def render(args, mach: dict, results: list[dict], lat: dict | None, state: dict | None,
           load: dict, produce_s: float) -> str:
    by = {r["system"]: r for r in results}
    lines = [f"# presence benchmark, {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}", ""]
    lines += [f"Workload: {args.pings:,} pings, {args.drivers:,} drivers, window 5 min, bucket "
              f"1 min, ~2% late (1-10 min), 3 partitions of 20/30/50% "
              f"(loaded in {produce_s:.1f} s). Oracle: {load['rows']} rows, "
              f"{load['too_late']} too late.", ""]
    if "mixed_rows" in load:
        lines += [f"The `*-mixed` rows read a second topic of the same pings whose `timestamp` "
                  f"mixes, in equal shares, float and integer epoch seconds, epoch ms and "
                  f"ISO-8601 strings with `Z`, `+02:00` and no offset (loaded in "
                  f"{load['mixed_produce_s']:.1f} s; oracle {load['mixed_rows']} rows, "
                  f"{load['mixed_too_late']} too late); their vs-ceiling columns are against "
                  f"`ceiling` (float topic): compare them with `ceiling-mixed`.", ""]
    lines += [table(results, by.get("ceiling")), ""]
    fl = [r for r in results if r.get("flink")]
    if fl:
        parts = []
        for r in fl:
            f = r["flink"]
            if "first_record_s" not in f:
                continue
            rest = r["wall_s"] - f["first_record_s"]
            parts.append(
                f"{r['system']}: first record read {f['first_record_s']:.2f} s after the JVM "
                f"started (job submitted at {f['submitted_s']:.2f} s), read phase "
                f"{f['read_s']:.2f} s at **{fmt_rate(f['read_rate'])} pings/s**, "
                f"{rest:.2f} s from first record to exit; exact in {r['exact_runs']} of "
                f"{r['runs']} runs")
        if parts:
            lines += ["Flink's time (median run; the probe in its SQL counts records as the "
                      "source hands them on): " + "; ".join(parts) + ".", ""]
    fixed = [f"{r['system']} {r['startup_s']:.2f} s" for r in results if "startup_s" in r]
    if fixed:
        lines += ["Fixed cost of a run (start-up and shut-down, bounded run over 3 pings): "
                  + ", ".join(fixed) + ".", ""]
    steady = [f"{r['system']} {fmt_rate(r['steady_pings_per_s'])}"
              for r in results if r.get("steady_pings_per_s")]
    if steady:
        lines += ["Steady rate (pings/s from presence's first read to its end, from its own "
                  "`done` line; median run): " + ", ".join(steady) + ".", ""]
    if lat:
        lines += [
            f"Live latency (presence, 1 worker): {lat['rate']:,.0f} pings/s for "
            f"{args.latency_seconds} s, bucket {lat['bucket']} s, window {lat['window']} s; "
            f"written - (windowEnd + allowed lateness 30 s) over the {lat['rows_during']} rows "
            f"that closed while pings flowed: **p50 {lat['p50']:.2f} s, p99 {lat['p99']:.2f} s**, "
            f"max {lat['max']:.2f} s. The {lat['rows_tail']} rows closing after the last ping "
            f"(written by the idle rule) max {lat['tail_max']:.2f} s. CPU {lat['cpu_s']:.1f} s, "
            f"peak RSS {lat['peak_rss_mb']:.0f} MB.", ""]
    if state:
        big, ctl = state["runs"]["big"], state["runs"]["control"]
        lines += [
            f"State size (presence with recovery, -s 5): {args.state_pings:,} pings of "
            f"{big['drivers']:,} drivers -> {big['pairs']:,} (driver, bucket) pairs in state; "
            f"latest snapshot {big['snap_total']:,} bytes "
            f"(**{state['snapshot_bytes_per_pair']:.1f} B/pair**; the panes step "
            f"{state['snapshot_panes_bytes_per_pair']:.1f} B/pair). RSS growth "
            f"{state['rss_bytes_per_pair']:.0f} B/pair (peak RSS {big['peak_rss'] / 2**20:.0f} MB "
            f"vs {ctl['peak_rss'] / 2**20:.0f} MB for the same pings from {ctl['drivers']:,} "
            f"drivers, {ctl['pairs']:,} pairs).", ""]
    lines += ["Targets (presence):", "", "| target | measured | met |", "|---|---|---|"]
    for name, val, ok in targets(by, lat, state):
        met = {True: "yes", False: "**no**", None: "(for reference)"}[ok]
        lines.append(f"| {name} | {val} | {met} |")
    lines += ["", "Machine: " + ", ".join(f"{k}: {v}" for k, v in mach.items()), "",
              f"Load average (1/5/15 min) at start {load['start']}, at end {load['end']}. "
              "The 2 cores are shared with Kafka, FerretDB and anything else running.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ main

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
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--keep-dbs", action="store_true")
    ap.add_argument("--results", default=str(RESULTS), help="where to write the results")
    ap.add_argument("--no-write", action="store_true", help="print only")
    return ap.parse_args(argv)


def select_systems(args) -> list[str]:
    """The systems of this run: --only less --skip, --no-flink and --timestamps."""
    systems = [s for s in args.only.split(",") if s and s not in args.skip.split(",")]
    for s in systems:
        if s not in SYSTEMS:
            raise SystemExit(f"unknown system {s!r}; choose from {', '.join(SYSTEMS)}")
    if args.no_flink:
        systems = [s for s in systems if s not in FLINK_SYSTEMS]
    if args.timestamps == "float":
        systems = [s for s in systems if s not in MIXED_SYSTEMS]
    elif args.timestamps == "mixed":
        systems = [s for s in systems if s in MIXED_SYSTEMS]
    return systems


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

    # One topic per timestamp shape in use: (topic, oracle) by shape.
    shapes = sorted({"mixed" if s in MIXED_SYSTEMS else "float" for s in systems}) or ["float"]
    topics: dict[str, tuple[str, dict]] = {}
    produce_s = 0.0
    try:
        for shape in shapes:
            w = wl.generate(args.pings, args.drivers, timestamps=shape)
            oracle, too_late = wl.oracle_rows(w)
            if shape == shapes[0]:
                load.update(rows=len(oracle), too_late=too_late)
            load[f"{shape}_rows"], load[f"{shape}_too_late"] = len(oracle), too_late
            topic = f"bench-{run_id}" + ("-mixed" if shape == "mixed" else "")
            wl.create_topic(BROKERS, topic, 3)
            topics[shape] = (topic, oracle)
            log(f"producing {w.pings:,} pings ({shape} timestamps) to {topic} "
                f"(partitions {[len(d) for d in w.drivers]}, {w.late:,} late)")
            took = wl.produce(BROKERS, topic, w)
            load[f"{shape}_produce_s"] = took
            produce_s += took
            log(f"produced in {took:.1f} s; oracle {len(oracle)} rows, {too_late} too late")
            del w
    except BaseException:
        for topic, _ in topics.values():
            wl.delete_topic(BROKERS, topic)
        raise

    startup = {}
    first_runs = [s for s in systems if s.startswith("presence") and s not in MIXED_SYSTEMS]
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
                topic, oracle = topics["mixed" if system in MIXED_SYSTEMS else "float"]
                runs[system].append(run_system(system, topic, run_id, args.pings, oracle, args))
    finally:
        for topic, _ in topics.values():
            wl.delete_topic(BROKERS, topic)
            _delete_quix_topics(topic)
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
    load["end"] = tuple(round(x, 2) for x in os.getloadavg())
    text = render(args, mach, results, lat, state, load, produce_s)
    print(text)
    if not args.no_write:
        out = Path(args.results)
        out.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
        (out / f"{stamp}.md").write_text(text)
        (out / f"{stamp}.json").write_text(json.dumps(
            {"args": {k: v for k, v in vars(args).items() if k != "flink_classpath"},
             "machine": mach, "load": load, "results": results,
             "latency": lat, "state": state}, indent=2, default=str))
        log(f"written {out / (stamp + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
