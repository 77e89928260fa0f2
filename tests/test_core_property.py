"""Property: for random ping streams, presence's rows equal the brute-force oracle.

Random: 1-3 partitions, order within and across partitions, duplicates,
late and too-late pings, invalid messages, batch sizes, crashes with replay
from the last snapshot (at-least-once), and incremental bounded runs.

Every partition starts with a valid ping near ``BASE`` and is read once
before anything else, so each has its own watermark from the start: a
partition without one judges too-late against the dataflow's watermark
(SPEC "Time"), which depends on the interleaving, and has its own tests
(tests/test_core_time.py).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence.core.windows import WindowSpec
from tests.constants import NOW, T0, oracle_rules
from tests.core_sim import Core
from tests.oracle import P, late_pings, oracle

BASE = float(T0)
SPEC = WindowSpec(bucket_s=60, window_s=180, lateness_s=10, horizon_s=300, idle_s=10, shards=3)

INVALID = st.sampled_from(
    [b"{not json", b"[]", b'{"driver_id": 1, "timestamp": 1514779230}',
     b'{"driver_id": true, "timestamp": 1514779230, "on_duty": 1}', None]
)


@st.composite
def partition_messages(draw) -> list[object]:
    """Event time drifts forward; some pings are late, some far too late."""
    n = draw(st.integers(0, 60))
    clock = BASE + draw(st.integers(0, 60))
    out: list[object] = [P(draw(st.sampled_from([1, "4", 9])), clock, draw(st.booleans()))]
    for _ in range(n):
        clock += draw(st.integers(0, 40))
        kind = draw(st.sampled_from(["ok"] * 6 + ["late", "edge", "too_late", "bad", "dup"]))
        if kind == "bad":
            out.append(draw(INVALID))
            continue
        if kind == "dup" and out:
            out.append(draw(st.sampled_from(out)))
            continue
        edge = int(SPEC.lateness_s + SPEC.horizon_s)  # the oldest a ping may be and still count
        shift = {"ok": draw(st.integers(-5, 5)), "late": -draw(st.integers(20, 250)),
                 "edge": -draw(st.integers(edge - SPEC.window_s, edge + 5)),
                 "too_late": -draw(st.integers(320, 2000)), "dup": 0}[kind]
        driver = draw(st.sampled_from([1, 2, 3, "4", "5", 6, 7, "x-8", 9, 10]))
        out.append(P(driver, clock + shift + draw(st.sampled_from([0, 0.5])), draw(st.booleans())))
    return out


@st.composite
def schedules(draw, partitions: int) -> list[tuple[str, int, int]]:
    steps = draw(st.lists(
        st.tuples(st.sampled_from(["read"] * 8 + ["snapshot", "crash"]),
                  st.integers(0, partitions - 1), st.integers(1, 17)),
        max_size=80))
    return steps


def run(partitions: list[list[object]], steps, split_at: int | None = None) -> Core:
    core = Core(SPEC, partitions, NOW)
    for p in range(len(partitions)):
        core.read(p, 1)  # every partition has a watermark from here on
    blob = core.snapshot()
    for action, p, count in steps:
        if action == "read" and not core.done(p):
            core.read(p, count)
        elif action == "snapshot":
            blob = core.snapshot()
        elif action == "crash":
            core.restore(blob)
    for p in range(len(partitions)):
        while not core.done(p):
            core.read(p, 7)
    core.finish()
    return core


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_rows_equal_oracle(data) -> None:
    count = data.draw(st.integers(1, 3))
    partitions = [data.draw(partition_messages()) for _ in range(count)]
    steps = data.draw(schedules(count))
    core = run(partitions, steps)

    rows, too_late, invalid = oracle(partitions, *oracle_rules(SPEC))
    assert core.store.counts() == rows
    dead = {(int(i.split(":")[1]), int(i.split(":")[2])): r for i, r in core.store.dead.items()}
    assert {k for k, r in dead.items() if r == "too_late"} == too_late
    assert {k for k, r in dead.items() if r != "too_late"} == invalid
    # Every ping total is exact too, whatever the interleaving, batching and crashes.
    totals = core.book.totals()
    late = late_pings(partitions, SPEC.lateness_s, SPEC.horizon_s)
    valid = sum(isinstance(m, P) for msgs in partitions for m in msgs) - len(too_late)
    assert (totals.valid, totals.invalid, totals.late, totals.too_late, totals.dead_letters) == (
        valid, len(invalid), len(late), len(too_late), len(invalid) + len(too_late))
    assert sum(n for _, n in totals.dead_letters_by_reason) == totals.dead_letters
    # A row's counts never go down from one write to the next, even across restarts.
    seen: dict[int, tuple[int, int]] = {}
    for row in core.store.history:
        before = seen.get(row.bucket)
        if before:
            assert row.online >= before[0] and row.available >= before[1]
        seen[row.bucket] = (row.online, row.available)
        assert row.available <= row.online
    # Since the last restart (a restart clears the history), a row is rewritten only
    # when its counts change, each time with the next revision; without a restart
    # every row starts at revision 1.
    crashed = any(action == "crash" for action, _, _ in steps)
    last: dict[int, object] = {}
    for row in core.store.history:
        before = last.get(row.bucket)
        if before is not None:
            assert row.revision == before.revision + 1
            assert (row.online, row.available) != (before.online, before.available)
        else:
            assert row.revision >= 1 if crashed else row.revision == 1
        last[row.bucket] = row
    assert all(doc["revision"] >= 1 for doc in core.store.rows.values())


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_incremental_bounded_runs_equal_one_run(data) -> None:
    """Run to the end of what is there, add more, run again: same rows as one run."""
    count = data.draw(st.integers(1, 3))
    partitions = [data.draw(partition_messages()) for _ in range(count)]
    cuts = [data.draw(st.integers(1, len(m))) for m in partitions]

    core = Core(SPEC, [m[:c] for m, c in zip(partitions, cuts)], NOW)
    for p in range(count):
        while not core.done(p):
            core.read(p, 5)
    core.finish()
    blob, store = core.snapshot(), core.store
    # Second bounded run over the grown topic, from the first run's state.
    core = Core(SPEC, partitions, NOW)
    core.restore(blob)
    core.store = store
    for p in range(count):
        while not core.done(p):
            core.read(p, 5)
    core.finish()

    rows, _, _ = oracle(partitions, *oracle_rules(SPEC))
    assert core.store.counts() == rows
