"""State size: snapshot bytes and RSS growth per (driver, bucket) pair kept."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from bench import workload as wl
from bench.env import BROKERS, PY, REPO, log, mongo, presence_env
from bench.measure import run_measured


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
