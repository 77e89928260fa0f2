"""Smoke tests of the benchmark harness (no timing assertions).

    .venv/bin/python -m pytest -q bench/tests
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

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
    from presence.pings import Rejection, parse_ping

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
    text = bench_run.table(results, results[0])
    assert "| presence-1w | yes |" in text and "**no** (2 rows missing)" in text
    checks = dict((name, ok) for name, _val, ok in bench_run.targets(
        {r["system"]: r for r in results}, None, None))
    assert checks["presence-1w >= 0.5 x ceiling (wall)"] is True
    assert checks["1 worker >= 10 x quix (pings/CPU-s)"] is True


def test_median_run_reports_the_spread_and_any_inexact_run():
    runs = [{"wall_s": w, "exact": e, "exactness": x}
            for w, e, x in ((3.0, True, "ok"), (1.0, True, "ok"), (2.0, False, "1 row wrong"))]
    r = bench_run.median_run(runs)
    assert (r["wall_s"], r["runs"], r["wall_min_s"], r["wall_max_s"]) == (2.0, 3, 1.0, 3.0)
    assert r["exact"] is False and r["exactness"] == "1 row wrong in 1 of 3 runs"
    assert bench_run.spread(r) == "3: 1.00-3.00"


@pytest.mark.stack
@pytest.mark.skipif(not _stack_up(), reason="needs the local stack (make stack-up)")
def test_tiny_end_to_end_run(tmp_path):
    code = bench_run.main([
        "--pings", "3000", "--drivers", "100",
        "--only", "ceiling,ceiling-2p,handloop,presence-1w", "--repeat", "2",
        "--no-latency", "--no-state", "--no-startup", "--results", str(tmp_path),
    ])
    assert code == 0
    [result] = tmp_path.glob("*.json")
    data = json.loads(result.read_text())
    by = {r["system"]: r for r in data["results"]}
    assert set(by) == {"ceiling", "ceiling-2p", "handloop", "presence-1w"}
    assert all(r["runs"] == 2 and r["wall_min_s"] <= r["wall_s"] <= r["wall_max_s"]
               for r in by.values())
    assert by["handloop"]["exact"] is True
    assert by["presence-1w"]["exact"] is True, by["presence-1w"]["exactness"]
    assert all(r["pings_per_cpu_s"] > 0 and r["peak_rss_mb"] > 0 for r in by.values())
    # presence's own "done" line is found: the steady rate of the scaling target.
    assert by["presence-1w"]["steady_pings_per_s"] > 0
    assert list(tmp_path.glob("*.md"))
