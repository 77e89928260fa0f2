"""The real bytewax flow over in-memory topics: workers, crashes, incremental runs, gaps."""

from __future__ import annotations

import logging
import random
from collections import Counter
from datetime import timedelta

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, cluster_main

from presence.flow import Sinks, build_flow
from presence.io.memory import ABORT
from presence.core.model import Status, shard_key
from presence.io.source import PingSource
from presence.core.windows import WindowSpec
from tests.constants import oracle_rules
from tests.flow_helpers import Outputs, bounded_in_two, init_recovery, memory_topic, run_flow
from tests.oracle import P, oracle
from tests.streams import stream

from tests.streams import T0
SPEC = WindowSpec(bucket_s=60, window_s=300, lateness_s=30, horizon_s=1800, idle_s=10)


def expected(partitions):
    return oracle(partitions, *oracle_rules(SPEC))


def check(out: Outputs, partitions) -> None:
    rows, too_late, invalid = expected(partitions)
    assert out.final_rows() == rows
    dead = out.dead_ids()
    assert {k for k, r in dead.items() if r == "too_late"} == {f"pings:{p}:{o}" for p, o in too_late}
    assert {k for k, r in dead.items() if r != "too_late"} == {f"pings:{p}:{o}" for p, o in invalid}


def test_one_worker_equals_oracle() -> None:
    partitions = stream(1)
    out = run_flow(memory_topic(partitions), SPEC)
    check(out, partitions)
    assert any(r > 1 for r in out.revisions().values()), "late pings must correct rows"
    assert all(type(s) is Status for s in out.status)  # a named type, not a bare tuple
    marks, totals = out.status[-1]
    rows, too_late, invalid = expected(partitions)
    assert totals.too_late == len(too_late) and totals.invalid == len(invalid)
    assert totals.valid == sum(isinstance(m, P) for p in partitions for m in p) - len(too_late)
    assert totals.corrected_late > 0
    assert sorted(m.next_offset for m in marks) == sorted(len(p) for p in partitions)


@pytest.mark.parametrize("workers", [2, 3])
def test_several_workers_give_the_same_rows(workers: int) -> None:
    partitions = stream(2)
    one = run_flow(memory_topic(partitions), SPEC)
    many = run_flow(memory_topic(partitions), SPEC, workers=workers)
    assert many.final_rows() == one.final_rows()
    check(many, partitions)


def test_shard_keys_spread_over_workers() -> None:
    """The pane step's keys land on every worker, so the windowing work is spread."""
    seen: dict[str, int] = {}
    flow = Dataflow("routing")
    keyed = op.input("in", flow, TestingSource([(shard_key(i), i) for i in range(SPEC.shards)]))
    state = op.stateful_map("sm", keyed, lambda s, v: (s, v))
    op.inspect_debug("where", state, lambda _s, item, _e, worker: seen.setdefault(item[0], worker))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    per_worker = Counter(seen.values())
    assert len(seen) == SPEC.shards and min(per_worker.values()) >= SPEC.shards // 4, per_worker


def test_crash_and_resume_is_exact(tmp_path) -> None:
    partitions = stream(3, partitions=2)
    topic = memory_topic(partitions)
    # Abort in the middle of partition 1, once.
    topic.partitions[1].insert(len(topic.partitions[1]) // 2, ABORT())
    recovery = init_recovery(tmp_path / "recovery")
    out = Outputs()
    run_flow(topic, SPEC, out, recovery=recovery, epoch=timedelta(0))
    assert topic.partitions[1][len(topic.partitions[1]) // 2].triggered
    before = len(out.dead)
    resumed = run_flow(topic, SPEC, Outputs(), recovery=recovery, epoch=timedelta(0))
    # It went on from a snapshot, not from the start: fewer dead letters than all.
    assert 0 < len(resumed.dead) < len(out.dead_ids() | resumed.dead_ids())
    out.rows += resumed.rows
    out.dead += resumed.dead
    assert before > 0
    # The abort took an offset: shift the oracle's view of partition 1 to match.
    shifted = [partitions[0], partitions[1][: len(partitions[1]) // 2] + [b"x"] + partitions[1][len(partitions[1]) // 2:]]
    rows, _, _ = expected(shifted)
    assert out.final_rows() == rows


def test_incremental_bounded_runs_equal_one_run(tmp_path) -> None:
    partitions = stream(4)
    whole = run_flow(memory_topic(partitions), SPEC)

    out = bounded_in_two(partitions, SPEC, init_recovery(tmp_path / "recovery"))
    assert out.final_rows() == whole.final_rows()
    check(out, partitions)
    # Nothing was read twice: every dead letter once.
    assert len(out.dead) == len(out.dead_ids())


def test_retention_gap_is_detected_and_recorded(tmp_path, caplog) -> None:
    partitions = [[P(d, T0 + i, True) for i, d in enumerate(range(50))]]
    topic = memory_topic([partitions[0][:10]])
    recovery = init_recovery(tmp_path / "recovery")
    out = Outputs()
    run_flow(topic, SPEC, out, recovery=recovery)
    topic.partitions[0].extend(memory_topic([partitions[0][10:]]).partitions[0])
    topic.purge(0, 25)  # offsets 10..24 deleted before they were read
    with caplog.at_level(logging.WARNING, logger="presence.source"):
        run_flow(topic, SPEC, out, recovery=recovery)
    assert "offsets 10 to 24 (15 messages) were deleted by retention" in caplog.text
    marks, _ = out.status[-1]
    assert marks[0].gaps == ((10, 25),)
    assert marks[0].next_offset == 50
    rows, _, _ = expected([partitions[0][:10] + partitions[0][25:]])
    assert out.final_rows() == rows


def test_step_ids_are_stable() -> None:
    """Renaming a step silently drops its recovery state: this list must not change."""
    topic = memory_topic([[]])
    flow = build_flow(SPEC, PingSource("pings", 1, topic.feed, SPEC, True), Sinks(None, None, None))
    ids = [s.step_id.split(".", 1)[1] for s in flow.substeps]
    assert ids == [
        "pings", "dead_letters", "write_dead_letters", "split_by_shard", "panes", "reports",
        "marks", "to_book", "rows", "unkey", "split_output", "write_rows", "write_status",
    ]


def test_resume_with_more_workers(tmp_path) -> None:
    """Scale out between runs: state snapshotted by one worker is resumed by three."""
    partitions = stream(5)
    recovery = init_recovery(tmp_path / "recovery")
    topic = memory_topic([p[: len(p) // 2] for p in partitions])
    out = Outputs()
    run_flow(topic, SPEC, out, recovery=recovery)
    for p, msgs in enumerate(partitions):
        topic.partitions[p].extend(memory_topic([msgs[len(msgs) // 2:]]).partitions[0])
    run_flow(topic, SPEC, out, workers=3, recovery=recovery)
    check(out, partitions)
    assert len(out.dead) == len(out.dead_ids())


def test_the_dataflow_process_tunes_the_garbage_collector() -> None:
    """tune_gc (called by dataflow_from_env once the flow is built) freezes what
    start-up made and raises the collector's thresholds; cycles are still collected."""
    import gc

    from presence.app import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a
        import weakref

        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None  # a cycle made later is still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_without_recovery_the_steps_build_no_snapshots() -> None:
    """Bytewax asks for snapshot() every epoch, recovery or not; a run without a
    recovery directory (snapshots=False, as dataflow_from_env passes it) answers
    None instead of building state nothing will read. With it, the state."""
    from presence.flow import BookLogic, PaneLogic
    from presence.core.segments import parse_segments

    spec = WindowSpec(segments=parse_segments("city;h3:8"))
    clock = lambda: 1_800_000_000.0  # noqa: E731
    assert PaneLogic(spec, None, clock, snapshots=False).snapshot() is None
    assert BookLogic(spec, None, clock, 10.0, snapshots=False).snapshot() is None
    assert PaneLogic(spec, None, clock).snapshot().version >= 1
    assert BookLogic(spec, None, clock, 10.0).snapshot().version >= 1
