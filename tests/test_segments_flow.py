"""Segments through the real bytewax flow (in-memory topics): workers, processes,
a crash resumed from a recovery directory, incremental bounded runs; the
segment rows equal the brute-force oracle (tests/segment_oracle.py), and the
global rows, dead letters and ping totals are those of a run without segments."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from presence.core.model import Row, SegmentRow
from presence.core.segments import parse_segments
from presence.io.memory import ABORT
from tests.constants import oracle_rules
from tests.flow_helpers import Outputs, init_recovery, memory_topic, run_flow
from tests.flow_procs import SPEC as PLAIN
from tests.flow_procs import run_processes
from tests.segment_oracle import expected
from tests.streams import segment_stream

SEGMENTS = "city;city,vehicle_type;h3:8"
SPEC = replace(PLAIN, segments=parse_segments(SEGMENTS))
NAMES = [d.name for d in SPEC.segments]


def check(out: Outputs, partitions) -> None:
    rows, too_late, invalid, segment_rows, unlocated = expected(
        partitions, NAMES, *oracle_rules(SPEC))
    assert out.final_rows() == rows
    assert out.final_segment_rows() == segment_rows
    assert len(segment_rows) > 3 * len(rows)
    dead = out.dead_ids()
    assert {k for k, r in dead.items() if r == "too_late"} == {f"pings:{p}:{o}" for p, o in too_late}
    assert {k for k, r in dead.items() if r != "too_late"} == {f"pings:{p}:{o}" for p, o in invalid}
    _, totals = out.status[-1]
    assert totals.unlocated == unlocated > 0
    assert [s.segment for s in totals.segments] == NAMES
    assert all(s.rows_written > 0 and s.other_pings == 0 for s in totals.segments)


@pytest.mark.parametrize("workers", [1, 3])
def test_segment_rows_equal_the_oracle(workers: int) -> None:
    partitions = segment_stream(21)
    out = run_flow(memory_topic(partitions), SPEC, workers=workers)
    check(out, partitions)
    segment_rows = [r for r in out.rows if type(r) is SegmentRow]
    assert all(r.revision >= 1 for r in segment_rows)
    # one item per take of the row book, not one per row
    assert out.rows.loose_segment_rows == 0
    assert 0 < out.rows.segment_batches < len(segment_rows) / 10


def test_segments_off_leaves_global_rows_dead_letters_and_totals_alone() -> None:
    partitions = segment_stream(22)
    on = run_flow(memory_topic(partitions), SPEC)
    off = run_flow(memory_topic(partitions), PLAIN)
    assert not [r for r in off.rows if type(r) is not Row]
    assert off.final_rows() == on.final_rows()
    assert sorted(off.dead_ids().items()) == sorted(on.dead_ids().items())
    _, t_on = on.status[-1]
    _, t_off = off.status[-1]
    assert replace(t_on, unlocated=0, segments=(), rows_written=0, row_rewrites=0) == \
        replace(t_off, rows_written=0, row_rewrites=0)
    assert t_off.unlocated == 0 and t_off.segments == ()


def test_two_processes(tmp_path) -> None:
    out = run_processes(23, tmp_path / "procs", processes=2, segments=SEGMENTS)
    check(out, segment_stream(23))


def test_crash_and_resume_is_exact(tmp_path) -> None:
    partitions = segment_stream(24, partitions=2)
    topic = memory_topic(partitions)
    middle = len(topic.partitions[1]) // 2
    topic.partitions[1].insert(middle, ABORT())
    recovery = init_recovery(tmp_path / "recovery")
    out = Outputs()
    run_flow(topic, SPEC, out, recovery=recovery, epoch=timedelta(0))
    assert topic.partitions[1][middle].triggered
    resumed = run_flow(topic, SPEC, Outputs(), recovery=recovery, epoch=timedelta(0))
    assert 0 < len(resumed.dead) < len(out.dead_ids() | resumed.dead_ids())
    out.rows += resumed.rows
    out.dead += resumed.dead
    out.status += resumed.status
    # The abort took an offset: shift the oracle's view of partition 1 to match.
    shifted = [partitions[0], partitions[1][:middle] + [b"x"] + partitions[1][middle:]]
    rows, _, _, segment_rows, unlocated = expected(shifted, NAMES, *oracle_rules(SPEC))
    assert out.final_rows() == rows
    assert out.final_segment_rows() == segment_rows
    assert out.status[-1].totals.unlocated == unlocated


def test_incremental_bounded_runs_equal_one_run(tmp_path) -> None:
    partitions = segment_stream(25)
    whole = run_flow(memory_topic(partitions), SPEC)
    recovery = init_recovery(tmp_path / "recovery")
    topic = memory_topic([p[: len(p) // 3] for p in partitions])
    out = Outputs()
    run_flow(topic, SPEC, out, recovery=recovery)
    for p, msgs in enumerate(partitions):
        topic.partitions[p].extend(memory_topic([msgs[len(msgs) // 3:]]).partitions[0])
    run_flow(topic, SPEC, out, recovery=recovery, workers=2)
    assert out.final_segment_rows() == whole.final_segment_rows()
    check(out, partitions)
    assert len(out.dead) == len(out.dead_ids())
