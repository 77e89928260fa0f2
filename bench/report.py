"""The results as text: the machine, the table, the targets and the Markdown page."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone

from bench import segments
from bench.env import REPO
from bench.flink import java_version
from bench.systems import quix_version


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
        "reader": native_reader(),
    }


def native_reader() -> str:
    """Which partition reader PRESENCE_READER=auto runs here (the compiled one when built)."""
    from presence.core.partition import native_reader_built

    return ("compiled (presence._native, Rust)" if native_reader_built()
            else "pure Python (compiled reader not built)")


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


def targets(by: dict, lat: dict | None, state: dict | None,
            seg_state: dict | None = None) -> list[tuple[str, str, bool | None]]:
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
    for fast, slow in (("presence-1w", "presence-1w-python"),
                       ("presence-1w-mixed", "presence-1w-mixed-python")):
        if by.get(fast) and by.get(slow):
            x = by[fast]["pings_per_s"] / by[slow]["pings_per_s"]
            y = by[fast]["pings_per_cpu_s"] / by[slow]["pings_per_cpu_s"]
            out.append((f"(reader) {fast} / {slow}: the default reader over the pure-Python "
                        "one (wall, pings/CPU-s)", f"{x:.2f} x, {y:.2f} x", None))
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
    out += segments.targets(by, seg_state)
    return out


def render(args, mach: dict, results: list[dict], lat: dict | None, state: dict | None,
           load: dict, produce_s: float, seg_state: dict | None = None) -> str:
    by = {r["system"]: r for r in results}
    lines = [f"# presence benchmark, {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}", ""]
    only_cities = "cities_rows" in load and "float_rows" not in load and "mixed_rows" not in load
    if not only_cities:  # else the segments paragraph describes the one workload
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
    lines += segments.text(args, by, seg_state, load)
    lines += ["Targets (presence):", "", "| target | measured | met |", "|---|---|---|"]
    for name, val, ok in targets(by, lat, state, seg_state):
        met = {True: "yes", False: "**no**", None: "(for reference)"}[ok]
        lines.append(f"| {name} | {val} | {met} |")
    lines += ["", "Machine: " + ", ".join(f"{k}: {v}" for k, v in mach.items()), "",
              f"Load average (1/5/15 min) at start {load['start']}, at end {load['end']}. "
              "The 2 cores are shared with Kafka, FerretDB and anything else running.", ""]
    return "\n".join(lines)
