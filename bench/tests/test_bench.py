"""Smoke tests of the benchmark harness (no timing assertions).

    .venv/bin/python -m pytest -q bench/tests
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from bench import flink, report, systems
from bench import run as bench_run
from bench import workload as wl
from tests.oracle import P, oracle


def _stack_up() -> bool:
    for port in (9092, 27017):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
    return True


def test_workload_is_deterministic_with_unequal_partitions():
    a = wl.generate(20_000, 500)
    b = wl.generate(20_000, 500)
    assert a.pings == 20_000
    for x, y in zip(a.drivers + a.times, b.drivers + b.times):
        assert np.array_equal(x, y)
    sizes = [len(d) for d in a.drivers]
    assert sizes[0] < sizes[1] < sizes[2]
    assert 0.01 < a.late / a.pings < 0.03
    # one driver, one partition
    owners = {}
    for p, d in enumerate(a.drivers):
        for driver in set(d.tolist()):
            assert owners.setdefault(driver, p) == p


@pytest.mark.parametrize("horizon", [3600.0, 120.0])
def test_fast_oracle_equals_the_brute_force_oracle(horizon):
    w = wl.generate(6_000, 150, late_fraction=0.2)
    rows, too_late = wl.oracle_rows(w, horizon=horizon)
    parts = [[P(int(d), float(t), bool(u)) for d, t, u in zip(w.drivers[p], w.times[p], w.duty[p])]
             for p in range(3)]
    expected, expected_late, _ = oracle(parts, 60, 300, 30.0, horizon)
    assert rows == expected
    assert too_late == len(expected_late)
    if horizon == 120.0:
        assert too_late > 0


def test_values_are_spec_pings():
    from presence.core.pings import Rejection, parse_ping

    w = wl.generate(300, 30)
    for p in range(3):
        for value, d, t in zip(w.values(p), w.drivers[p], w.times[p]):
            ping = parse_ping(value, 4e9)
            assert not isinstance(ping, Rejection), ping
            driver, time, _duty = ping
            assert driver == str(d) and abs(time - t) < 1e-6


def test_table_and_targets_render():
    base = dict(wall_s=1.0, cpu_s=1.0, peak_rss_mb=10.0, load_before=0.1, load_after=0.2,
                note="n", exactness="ok")
    results = [
        {**base, "system": "ceiling", "exact": None, "pings_per_s": 100.0, "pings_per_cpu_s": 200.0},
        {**base, "system": "presence-1w", "exact": True, "pings_per_s": 60.0, "pings_per_cpu_s": 90.0},
        {**base, "system": "quix", "exact": False, "exactness": "2 rows missing",
         "pings_per_s": 5.0, "pings_per_cpu_s": 8.0},
    ]
    text = report.table(results, results[0])
    assert "| presence-1w | yes |" in text and "**no** (2 rows missing)" in text
    checks = dict((name, ok) for name, _val, ok in report.targets(
        {r["system"]: r for r in results}, None, None))
    assert checks["presence-1w >= 0.5 x ceiling (wall)"] is True
    assert checks["1 worker >= 10 x quix (pings/CPU-s)"] is True


def test_median_run_reports_the_spread_and_any_inexact_run():
    runs = [{"wall_s": w, "exact": e, "exactness": x}
            for w, e, x in ((3.0, True, "ok"), (1.0, True, "ok"), (2.0, False, "1 row wrong"))]
    r = systems.median_run(runs)
    assert (r["wall_s"], r["runs"], r["wall_min_s"], r["wall_max_s"]) == (2.0, 3, 1.0, 3.0)
    assert r["exact"] is False and r["exactness"] == "1 row wrong in 1 of 3 runs"
    assert report.spread(r) == "3: 1.00-3.00"


@pytest.mark.stack
@pytest.mark.skipif(not _stack_up(), reason="needs the local stack (make stack-up)")
def test_tiny_end_to_end_run(tmp_path):
    code = bench_run.main([
        "--pings", "3000", "--drivers", "100",
        "--only", "ceiling,ceiling-2p,handloop,presence-1w,presence-1w-python", "--repeat", "2",
        "--no-latency", "--no-state", "--no-startup", "--results", str(tmp_path),
    ])
    assert code == 0
    [result] = tmp_path.glob("*.json")
    data = json.loads(result.read_text())
    by = {r["system"]: r for r in data["results"]}
    assert set(by) == {"ceiling", "ceiling-2p", "handloop", "presence-1w", "presence-1w-python"}
    assert all(r["runs"] == 2 and r["wall_min_s"] <= r["wall_s"] <= r["wall_max_s"]
               for r in by.values())
    assert by["handloop"]["exact"] is True
    assert by["presence-1w"]["exact"] is True, by["presence-1w"]["exactness"]
    assert by["presence-1w-python"]["exact"] is True, by["presence-1w-python"]["exactness"]
    assert all(r["pings_per_cpu_s"] > 0 and r["peak_rss_mb"] > 0 for r in by.values())
    # presence's own "done" line is found: the steady rate of the scaling target.
    assert by["presence-1w"]["steady_pings_per_s"] > 0
    assert list(tmp_path.glob("*.md"))


# ------------------------------------------------------------------ mixed timestamps

def test_mixed_workload_states_every_instant_in_every_accepted_shape():
    from presence.core.pings import Rejection, parse_ping

    w = wl.generate(3_000, 100, timestamps="mixed")
    seen = set()
    for p in range(3):
        for value, d, t, shape in zip(w.values(p), w.drivers[p], w.times[p], w.shapes[p]):
            ping = parse_ping(value, 4e9)
            assert not isinstance(ping, Rejection), (value, ping)
            # exactly the oracle's instant, whatever the shape
            assert ping[0] == str(d) and ping[1] == t, value
            seen.add(wl.SHAPES[shape])
            if wl.SHAPES[shape] == "iso_offset":
                assert b'+02:00"' in value
    assert seen == set(wl.SHAPES)


def test_mixed_oracle_equals_the_brute_force_oracle():
    w = wl.generate(6_000, 150, late_fraction=0.2, timestamps="mixed")
    rows, too_late = wl.oracle_rows(w)
    parts = [[P(int(d), float(t), bool(u)) for d, t, u in zip(w.drivers[p], w.times[p], w.duty[p])]
             for p in range(3)]
    expected, expected_late, _ = oracle(parts, 60, 300, 30.0, 3600.0)
    assert rows == expected and too_late == len(expected_late)


def test_float_workload_is_unchanged_by_the_mixed_option():
    a = wl.generate(2_000, 100)
    assert a.shapes is None
    assert a.values(0)[0] == b'{"driver_id":%d,"timestamp":%.3f,"on_duty":%d}' % (
        a.drivers[0][0], a.times[0][0], a.duty[0][0])
    with pytest.raises(ValueError):
        wl.generate(10, 10, timestamps="iso")


def test_handloop_reads_every_shape_like_presence():
    from bench.peers.handloop import instant

    t = 1_704_067_205.123
    for stamp in (t, 1_704_067_205, 1_704_067_205_123, "2024-01-01T00:00:05.123Z",
                  "2024-01-01T02:00:05.123+02:00", "2024-01-01T00:00:05.123"):
        expected = float(int(t)) if stamp == 1_704_067_205 else t
        assert instant(stamp) == expected, stamp


# ------------------------------------------------------------------ Flink runner

def _args(*argv):
    return bench_run.parse_args(list(argv))


def test_flink_commands_differ_only_in_watermark_and_jvm_flags():
    cmds = {s: flink.flink_command(s, "t1", "CP") for s in flink.FLINK_SYSTEMS}
    for system, cmd in cmds.items():
        assert cmd[0] == "java" and cmd[cmd.index("-cp") + 1] == "CP"
        assert "presence.bench.FlinkPeer" in cmd
        assert cmd[cmd.index("--topic") + 1] == "t1"
        delay = cmd[cmd.index("--watermark-seconds") + 1]
        assert delay == ("660" if "exact" in system else "30")
        tuned = "-XX:+UseSerialGC" in cmd and "-XX:TieredStopAtLevel=1" in cmd
        assert tuned == system.endswith("-tuned")
        # the same fetch size as every other consumer of the bench
        assert "max.partition.fetch.bytes=10485760" in cmd
    # the harness dispatches flink-* systems to that command
    args = _args()
    args.flink_classpath = "CP"
    assert systems.command("flink-exact", "t1", "db", args)[0] == cmds["flink-exact"]


def test_flink_rows_and_stats_are_read_from_its_output():
    out = ('noise\n{"row":1704067200,"online":10000,"available":8000}\n'
           '{"row":1704067260,"online":9,"available":0}\n'
           'flink-stats {"rows":2,"records":5,"submitted_s":1.5,"first_record_s":2.0,'
           '"read_s":0.5,"read_rate":10,"end_s":3.0}\n')
    assert flink.flink_rows(out) == {1704067200: (10000, 8000), 1704067260: (9, 0)}
    stats = json.loads(flink.FLINK_STATS.search(out).group(1))
    assert stats["first_record_s"] == 2.0 and stats["read_rate"] == 10


def test_flink_is_skipped_with_a_reason_without_java_or_maven(monkeypatch):
    monkeypatch.setattr(flink.shutil, "which", lambda tool: None)
    classpath, why = flink.flink_setup()
    assert classpath is None and "java not found" in why


def test_system_selection_by_no_flink_and_timestamps():
    every = systems.select_systems(_args())
    assert set(flink.FLINK_SYSTEMS) <= set(every) and set(systems.MIXED_SYSTEMS) <= set(every)
    no_flink = systems.select_systems(_args("--no-flink"))
    assert not set(flink.FLINK_SYSTEMS) & set(no_flink) and "presence-1w" in no_flink
    assert systems.select_systems(_args("--timestamps", "mixed")) == list(systems.MIXED_SYSTEMS)
    assert not set(systems.MIXED_SYSTEMS) & set(systems.select_systems(
        _args("--timestamps", "float")))
    with pytest.raises(SystemExit):
        systems.select_systems(_args("--only", "flink"))


def test_python_reader_rows_run_presence_with_presence_reader_python():
    args = _args()
    for fast in ("presence-1w", "presence-1w-mixed"):
        cmd, env = systems.command(fast, "t", "db", args)
        slow_cmd, slow_env = systems.command(fast + "-python", "t", "db", args)
        assert slow_cmd == cmd and "PRESENCE_READER" not in env
        assert slow_env == {**env, "PRESENCE_READER": "python"}
    assert bench_run.shape_of("presence-1w-mixed-python") == "mixed"
    assert bench_run.shape_of("presence-1w-python") == "float"
    every = systems.select_systems(_args())
    assert {"presence-1w-python", "presence-1w-mixed-python"} <= set(every)
    assert "presence-1w-mixed-python" in systems.select_systems(_args("--timestamps", "mixed"))
    assert "presence-1w-python" not in systems.select_systems(_args("--timestamps", "mixed"))


def test_reader_ratio_renders():
    base = dict(wall_s=1.0, cpu_s=1.0, peak_rss_mb=10.0, load_before=0.1, load_after=0.2,
                note="n", exactness="ok", exact=True)
    by = {name: {**base, "system": name, "pings_per_s": wall, "pings_per_cpu_s": cpu}
          for name, wall, cpu in (("presence-1w", 60.0, 90.0), ("presence-1w-python", 40.0, 45.0))}
    got = {name: (val, ok) for name, val, ok in report.targets(by, None, None)}
    assert got["(reader) presence-1w / presence-1w-python: the default reader over the "
               "pure-Python one (wall, pings/CPU-s)"] == ("1.50 x, 2.00 x", None)


def test_flink_and_mixed_targets_render():
    base = dict(wall_s=1.0, cpu_s=1.0, peak_rss_mb=10.0, load_before=0.1, load_after=0.2,
                note="n", exactness="ok", exact=True)
    by = {
        "presence-1w": {**base, "system": "presence-1w", "pings_per_s": 60.0,
                        "pings_per_cpu_s": 90.0},
        "flink-exact": {**base, "system": "flink-exact", "pings_per_s": 5.0,
                        "pings_per_cpu_s": 30.0},
        "flink-exact-tuned": {**base, "system": "flink-exact-tuned", "pings_per_s": 6.0,
                              "pings_per_cpu_s": 50.0},
        "ceiling-mixed": {**base, "system": "ceiling-mixed", "exact": None, "pings_per_s": 100.0,
                          "pings_per_cpu_s": 100.0},
        "presence-1w-mixed": {**base, "system": "presence-1w-mixed", "pings_per_s": 30.0,
                              "pings_per_cpu_s": 30.0},
    }
    got = {name: (val, ok) for name, val, ok in report.targets(by, None, None)}
    # against the better JVM of the exact setting: 90 / 50
    assert got["1 worker >= 2 x Flink exact, best JVM (flink-exact-tuned) (pings/CPU-s)"] == (
        "1.80 x", False)
    assert got["presence-1w-mixed >= 0.4 x ceiling-mixed (wall; mixed timestamp shapes)"] == (
        "0.30 x", False)


FLINK_CLASSES = flink.FLINK_DIR / "target" / "classes" / "presence" / "bench" / "FlinkPeer.class"


def _flink_built() -> bool:
    """Built already, or buildable offline from the Maven cache `make bench` filled (no download)."""
    if FLINK_CLASSES.exists():
        return True
    m2 = flink.M2
    if not (m2.is_dir() and any(m2.iterdir())) or flink.shutil.which("java") is None:
        return False
    classpath, _why = flink.flink_setup()
    return classpath is not None and FLINK_CLASSES.exists()


@pytest.mark.skipif(not _flink_built(),
                    reason="the Flink peer is not built and Maven's cache is empty (make bench "
                           "builds it; CI does not download Flink)")
def test_flink_peer_command_line():
    import subprocess

    cp = str(flink.FLINK_DIR / "target" / "classes")
    help_ = subprocess.run(["java", "-cp", cp, "presence.bench.FlinkPeer", "--help"],
                           capture_output=True, text=True, timeout=120)
    assert help_.returncode == 0 and "--watermark-seconds" in help_.stdout
    bad = subprocess.run(["java", "-cp", cp, "presence.bench.FlinkPeer", "--topic", "t",
                          "--watermark-seconds", "-1"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--watermark-seconds must be >= 0" in bad.stderr
    sql = subprocess.run(["java", "-cp", cp, "presence.bench.FlinkPeer", "--topic", "t",
                          "--print-sql", *flink.flink_command("flink-exact", "t", cp)[6:]],
                         capture_output=True, text=True, timeout=120)
    assert sql.returncode == 0, sql.stderr
    assert "ts - INTERVAL '11' MINUTE" in sql.stdout
    assert "'scan.bounded.mode' = 'latest-offset'" in sql.stdout
    assert "HOP(TABLE read_pings, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '5' MINUTE)" \
        in sql.stdout


# ------------------------------------------------------------------ segment workload

@pytest.mark.parametrize("horizon", [3600.0, 120.0])
def test_city_workload_oracle_equals_the_brute_force_segment_oracle(horizon):
    """The vectorised segment oracle against tests/segment_oracle.py, on the pings as
    sent (decoded from their bytes), too-late ones left out by tests/oracle.py."""
    import orjson

    from tests.segment_oracle import SP, segment_oracle

    w = wl.generate(6_000, 300, late_fraction=0.2, cities=True)
    parts = [[P(int(d), float(t), bool(u)) for d, t, u in zip(w.drivers[p], w.times[p], w.duty[p])]
             for p in range(3)]
    _rows, too_late, _ = oracle(parts, 60, 300, 30.0, horizon)
    counted = []
    for p in range(3):
        for offset, value in enumerate(w.values(p)):
            if (p, offset) in too_late:
                continue
            obj = orjson.loads(value)
            extra = tuple((k, v) for k, v in obj.items()
                          if k not in ("driver_id", "timestamp", "on_duty"))
            counted.append(SP(obj["driver_id"], obj["timestamp"], bool(obj["on_duty"]), extra))
    expected = segment_oracle(counted, list(wl.BENCH_SEGMENTS), 60, 300)
    got = wl.segment_oracle_rows(w, horizon=horizon)
    assert got == expected
    segments = {s for s, _k, _r in got}
    assert segments == set(wl.BENCH_SEGMENTS)
    assert any(k == ("unknown",) for s, k, _r in got if s == "city")  # field faults


def test_city_workload_keeps_the_global_pings_and_carries_the_fields():
    from presence.core.pings import Rejection, parse_ping

    plain = wl.generate(20_000, 2_000)
    cities = wl.generate(20_000, 2_000, cities=True)
    for a, b in zip(plain.drivers + plain.times + plain.duty,
                    cities.drivers + cities.times + cities.duty):
        assert np.array_equal(a, b)
    assert wl.oracle_rows(plain) == wl.oracle_rows(cities)
    values = cities.values(0)
    assert all(not isinstance(parse_ping(v, 4e9), Rejection) for v in values)
    with_all = sum(all(f in v for f in (b'"city"', b'"vehicle_type"', b'"lat"', b'"lng"'))
                   for v in values)
    assert 0.9 < with_all / len(values) < 1.0
    drivers_per_city = np.bincount(np.concatenate([f["city"] for f in cities.fields]))
    assert len(drivers_per_city) == 10 and drivers_per_city.min() > 0
    with pytest.raises(ValueError):
        wl.generate(10, 10, timestamps="mixed", cities=True)


def test_segment_systems_run_presence_with_and_without_the_segments():
    args = _args()
    _cmd, plain = systems.command("presence-1w-cities", "t", "db", args)
    cmd, seg = systems.command("presence-1w-segments", "t", "db", args)
    assert cmd[-2:] == ["bytewax.run", "dataflow"] or cmd[-1] == "dataflow"
    assert "PRESENCE_SEGMENTS" not in plain
    assert seg["PRESENCE_SEGMENTS"] == "city;city,vehicle_type;h3:8"
    assert {k: v for k, v in seg.items() if k != "PRESENCE_SEGMENTS"} == plain
    every = systems.select_systems(_args())
    assert set(systems.SEGMENT_SYSTEMS) <= set(every)
    assert not set(systems.SEGMENT_SYSTEMS) & set(systems.select_systems(_args("--no-segments")))
    assert not set(systems.SEGMENT_SYSTEMS) & set(
        systems.select_systems(_args("--timestamps", "mixed")))


def test_quick_is_a_small_run_of_a_few_systems():
    args = _args("--quick")
    assert (args.pings, args.segment_pings, args.repeat) == (20_000, 20_000, 1)
    assert args.no_latency and args.no_state and args.no_startup and args.no_flink
    assert systems.select_systems(args) == list(bench_run.QUICK_SYSTEMS)
    assert systems.select_systems(_args("--quick", "--only", "presence-1w")) == ["presence-1w"]


def test_segment_rows_and_targets_render():
    from bench import segments

    base = dict(wall_s=1.0, cpu_s=1.0, peak_rss_mb=10.0, load_before=0.1, load_after=0.2,
                note="n", exactness="ok", exact=True, runs=1)
    off = {**base, "system": "presence-1w-cities", "pings_per_s": 50.0, "pings_per_cpu_s": 100.0}
    on = {**base, "system": "presence-1w-segments", "pings_per_s": 30.0, "pings_per_cpu_s": 60.0,
          "segment_exact": None, "segment_exactness": systems.SEGMENT_ROWS_UNAVAILABLE}
    seg_state = {"snapshot_bytes_per_triple": 4.87, "shard_drivers": 6272, "drivers": 100000,
                 "panes": 65, "triples": 1292473, "us_per_ping_add_pings": 15.0,
                 "us_per_ping_values_3_segments": 3.0, "us_per_ping_partials": 9.9,
                 "per_definition": {"h3:8": {"values_per_pane": 5362.0}}}
    by = {r["system"]: r for r in (off, on)}
    got = {name.split(" (")[0]: (val, ok) for name, val, ok in report.targets(by, None, None,
                                                                              seg_state)}
    ratio = got["presence-1w-segments >= 0.5 x presence-1w-cities"]
    assert ratio[0].startswith("0.60 x (segment rows unavailable") and ratio[1] is None
    assert got["segment rows exact"] == (systems.SEGMENT_ROWS_UNAVAILABLE, None)
    assert got["segment state <= 16 bytes per"] == ("4.87 B", True)
    exact = {**on, "segment_exact": True, "segment_exactness": "120 rows equal"}
    got = {name.split(" (")[0]: (val, ok) for name, val, ok in segments.targets(
        {"presence-1w-cities": off, "presence-1w-segments": exact}, None)}
    assert got["presence-1w-segments >= 0.5 x presence-1w-cities"] == ("0.60 x", True)
    assert got["segment rows exact"] == ("120 rows equal", True)
    args = _args("--quick")
    text = report.render(args, {"cpu": "x"}, [off, exact], None, None,
                         {"start": (1, 1, 1), "end": (1, 1, 1), "rows": 3, "too_late": 0,
                          "cities_segment_rows": 120}, 1.0, seg_state)
    assert "**0.60 x** the pings/CPU-s" in text and "4.87 B per (driver, bucket" in text


def test_segment_median_run_reports_an_inexact_segment_run():
    runs = [{"wall_s": w, "exact": True, "exactness": "ok", "segment_exact": e,
             "segment_exactness": x}
            for w, e, x in ((1.0, True, "ok"), (2.0, False, "3 wrong"), (3.0, True, "ok"))]
    r = systems.median_run(runs)
    assert r["exact"] is True
    assert r["segment_exact"] is False and r["segment_exactness"] == "3 wrong in 1 of 3 runs"


@pytest.mark.stack
@pytest.mark.skipif(not _stack_up(), reason="needs the local stack (make stack-up)")
def test_quick_run_with_segments(tmp_path):
    """presence without and with segments on the cities topic, and the segment state:
    both exact, the segment rows too."""
    code = bench_run.main(["--quick", "--only", "presence-1w-cities,presence-1w-segments",
                           "--segment-pings", "6000", "--segment-drivers", "600",
                           "--results", str(tmp_path)])
    assert code == 0
    [result] = tmp_path.glob("*.json")
    data = json.loads(result.read_text())
    by = {r["system"]: r for r in data["results"]}
    assert by["presence-1w-cities"]["exact"] is True, by["presence-1w-cities"]["exactness"]
    seg = by["presence-1w-segments"]
    assert seg["exact"] is True, seg["exactness"]
    assert seg["segment_exact"] is True, seg["segment_exactness"]
    assert 0 < data["segment_state"]["snapshot_bytes_per_triple"] <= 16
    assert "presence-1w-segments" in next(tmp_path.glob("*.md")).read_text()
