"""Segment figures of ``make bench``: presence with ``city;city,vehicle_type;h3:8`` against
presence without segments on the same pings, and the segment state's bytes per
(driver, bucket, segment value) measured by :mod:`bench.segment_state`."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from bench.env import PY, REPO, base_env, log
from bench.systems import SEGMENTS

STATE_TARGET_BYTES = 16.0
"""The issue's target: snapshot bytes per (driver, bucket, segment value)."""
THROUGHPUT_TARGET = 0.5
"""The issue's target: pings/CPU-s with the three segments over pings/CPU-s without."""


def segment_state_test(args) -> dict | None:
    """``python -m bench.segment_state`` for ``--segment-drivers`` drivers (16 shards,
    ``--segment-state-panes`` one-minute panes): its figures, or None if it failed."""
    with tempfile.TemporaryDirectory(prefix="bench-segment-state-") as tmp:
        out = Path(tmp) / "figures.json"
        cmd = [PY, "-m", "bench.segment_state", "--drivers", str(args.segment_drivers),
               "--shards", "16", "--panes", str(args.segment_state_panes), "--json", str(out)]
        log(f"segment state: {' '.join(cmd[1:-2])}")
        done = subprocess.run(cmd, cwd=REPO, env=base_env(), capture_output=True, text=True,
                              timeout=args.timeout)
        if done.returncode != 0 or not out.exists():
            log(f"segment state failed ({done.returncode}): {done.stderr[-2000:]}")
            return None
        figures = json.loads(out.read_text())
    log(f"segment state: {figures['snapshot_bytes_per_triple']} B per (driver, bucket, "
        f"segment value), {figures['triples']:,} triples in one shard")
    return figures


def ratio(by: dict) -> float | None:
    """pings/CPU-s with segments over without, same pings (None unless both ran)."""
    on, off = by.get("presence-1w-segments"), by.get("presence-1w-cities")
    if not (on and off and off["pings_per_cpu_s"]):
        return None
    return on["pings_per_cpu_s"] / off["pings_per_cpu_s"]


def targets(by: dict, seg_state: dict | None) -> list[tuple[str, str, bool | None]]:
    out = []
    x = ratio(by)
    on = by.get("presence-1w-segments")
    if x is not None:
        name = (f"presence-1w-segments >= {THROUGHPUT_TARGET:g} x presence-1w-cities "
                f"(pings/CPU-s, same pings; segments {SEGMENTS})")
        if on.get("segment_exact") is None:
            out.append((name, f"{x:.2f} x (segment rows unavailable: not yet a measure of "
                              "segments)", None))
        else:
            out.append((name, f"{x:.2f} x", x >= THROUGHPUT_TARGET and on["exact"] is True
                        and on["segment_exact"] is True))
    if on is not None:
        exact = on.get("segment_exact")
        out.append(("segment rows exact (bench.workload.segment_oracle_rows, checked against "
                    "tests/segment_oracle.py)", on.get("segment_exactness", "not measured"),
                    exact))
    if seg_state:
        b = seg_state["snapshot_bytes_per_triple"]
        out.append((f"segment state <= {STATE_TARGET_BYTES:g} bytes per (driver, bucket, segment "
                    "value) (pickled SegmentPanes snapshot, bench/segment_state.py)",
                    f"{b:.2f} B", b <= STATE_TARGET_BYTES))
    return out


def text(args, by: dict, seg_state: dict | None, load: dict) -> list[str]:
    """The report's paragraph on segments (empty when none of it ran)."""
    lines = []
    on, off = by.get("presence-1w-segments"), by.get("presence-1w-cities")
    if on or off:
        x = ratio(by)
        lines.append(
            f"Segments: the `presence-1w-cities` and `presence-1w-segments` rows read a third "
            f"topic, {args.segment_pings:,} pings of {args.segment_drivers:,} drivers in 10 "
            f"cities carrying `city`, `vehicle_type`, `lat`, `lng` (3 % with a missing or bad "
            f"field; loaded in {load.get('cities_produce_s', 0):.1f} s; oracle "
            f"{load.get('cities_rows', 0)} global rows, {load.get('cities_segment_rows', 0):,} "
            f"segment rows), without segments and with `PRESENCE_SEGMENTS={SEGMENTS}`"
            + (f": **{x:.2f} x** the pings/CPU-s" if x is not None else "")
            + (f"; segment rows {on['segment_exactness']}" if on else "") + ".")
        lines.append("")
    if seg_state:
        per = seg_state.get("per_definition", {})
        parts = ", ".join(f"`{k}` {v['values_per_pane']:,} values per pane"
                          for k, v in per.items())
        lines.append(
            f"Segment state (`bench/segment_state.py`, one shard of {seg_state['shard_drivers']:,}"
            f" drivers of {seg_state['drivers']:,}, {seg_state['panes']} panes; {parts}): "
            f"snapshot **{seg_state['snapshot_bytes_per_triple']:.2f} B per (driver, bucket, "
            f"segment value)** over {seg_state['triples']:,} triples; "
            f"`add_pings` {seg_state['us_per_ping_add_pings']} µs/ping, values "
            f"{seg_state['us_per_ping_values_3_segments']} µs/ping, partials "
            f"{seg_state['us_per_ping_partials']} µs/ping.")
        lines.append("")
    return lines
