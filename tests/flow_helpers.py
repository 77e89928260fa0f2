"""Run presence's real bytewax flow over an in-memory topic, collecting outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, cluster_main, run_main

from presence.flow import Sinks, build_flow
from presence.io.memory import MemoryTopic
from presence.io.source import PingSource
from presence.core.windows import WindowSpec
from presence.core.model import Row, SegmentRow, SegmentRows
from tests.oracle import P
from tests.segment_oracle import SP


class RowList(list):
    """The rows sink's list (``TestingSink`` adds with ``+=``): a
    :class:`SegmentRows` batch is kept as its :class:`SegmentRow` s, and counted."""

    segment_batches = 0
    loose_segment_rows = 0
    """Segment rows that reached the sink one item each (the flow batches them)."""

    def __iadd__(self, items):
        for item in items:
            if type(item) is SegmentRows:
                self.segment_batches += 1
                self.extend(item)
            else:
                self.loose_segment_rows += type(item) is SegmentRow
                self.append(item)
        return self


@dataclass
class Outputs:
    rows: list = field(default_factory=RowList)
    dead: list = field(default_factory=list)
    status: list = field(default_factory=list)

    def final_rows(self) -> dict[int, tuple[int, int]]:
        """What MongoDB holds after the $max upserts of every row written."""
        best: dict[int, list[int]] = {}
        for row in self.rows:
            if type(row) is not Row:
                continue
            doc = best.setdefault(row.bucket, [0, 0])
            doc[0] = max(doc[0], row.online)
            doc[1] = max(doc[1], row.available)
        return {b: (d[0], d[1]) for b, d in best.items()}

    def revisions(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for row in self.rows:
            if type(row) is Row:
                out[row.bucket] = max(out.get(row.bucket, 0), row.revision)
        return out

    def final_segment_rows(self) -> dict[tuple, tuple[int, int]]:
        """segment_summary after the $max upserts: ``{(segment, key values, bucket):
        (online, available)}``, as tests/segment_oracle.py gives them."""
        best: dict[tuple, list[int]] = {}
        for row in self.rows:
            if type(row) is not SegmentRow:
                continue
            doc = best.setdefault((row.segment, tuple(row.key.values()), row.bucket), [0, 0])
            doc[0] = max(doc[0], row.online)
            doc[1] = max(doc[1], row.available)
        return {k: (d[0], d[1]) for k, d in best.items()}

    def dead_ids(self) -> dict[str, str]:
        return {d.id: d.reason for d in self.dead}


def memory_topic(partitions: list[list[object]], name: str = "pings") -> MemoryTopic:
    topic = MemoryTopic(name, len(partitions))
    for p, messages in enumerate(partitions):
        for m in messages:
            topic.append(p, m.value() if isinstance(m, P) else m.obj() if isinstance(m, SP) else m)
    return topic


def bounded_in_two(partitions: list[list[object]], spec: WindowSpec, recovery: Path,
                   between: Callable[[], None] = lambda: None) -> Outputs:
    """Two bounded runs with one recovery directory: over the first third of each
    partition, then (after ``between()``) over all of it; what both wrote."""
    topic = memory_topic([p[: len(p) // 3] for p in partitions])
    out = Outputs()
    run_flow(topic, spec, out, recovery=recovery)
    between()
    for p, msgs in enumerate(partitions):
        topic.partitions[p].extend(memory_topic([msgs[len(msgs) // 3:]]).partitions[0])
    run_flow(topic, spec, out, recovery=recovery)
    return out


def run_flow(
    topic: MemoryTopic,
    spec: WindowSpec,
    out: Outputs | None = None,
    workers: int = 1,
    recovery: Path | None = None,
    batch_size: int = 7,
    epoch: timedelta | None = None,
) -> Outputs:
    out = out or Outputs()
    source = PingSource(topic.name, len(topic.partitions), topic.feed, spec, bounded=True,
                        batch_size=batch_size)
    flow = build_flow(spec, source, Sinks(TestingSink(out.rows), TestingSink(out.dead),
                                          TestingSink(out.status)))
    config = RecoveryConfig(str(recovery)) if recovery else None
    if workers == 1:
        run_main(flow, recovery_config=config, epoch_interval=epoch)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers, recovery_config=config,
                     epoch_interval=epoch)
    return out


def init_recovery(path: Path, partitions: int = 2) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    init_db_dir(path, partitions)
    return path
