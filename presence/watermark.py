"""The dataflow watermark, from what every partition last said (SPEC "Time").

Each partition's watermark is its greatest valid event time minus
``allowed_lateness``. The dataflow watermark is the least of them over the
*live* partitions: an idle one (no valid ping for ``idle`` seconds) or an
ended one (bounded mode) is left out. When none is live, the watermark is the
wall clock minus ``allowed_lateness`` (or the freshest partition's event time
carried on with the wall clock, if that is ahead): a row whose interval has
ended is then written at most ``allowed_lateness + idle`` after the last ping
was read, as the SPEC promises for a quiet live run.

Until every partition of the topic has been heard from, the watermark is
``-inf``: a partition not yet read may hold the oldest pings.
"""

from __future__ import annotations

from typing import Iterable

from presence.partition import LIVE, NO_EVENT, PartitionMark
from presence.windows import WindowSpec


def _complete(marks: list[PartitionMark]) -> bool:
    return bool(marks) and len(marks) >= max(m.partitions for m in marks)


def dataflow_watermark(
    marks: Iterable[PartitionMark], now: float, spec: WindowSpec
) -> float:
    marks = list(marks)
    if not _complete(marks):
        return NO_EVENT
    live = [m.max_event for m in marks if m.state == LIVE]
    if live:
        return min(live) - spec.lateness
    carried = [
        m.max_event + max(0.0, now - m.read_at) for m in marks if m.max_event > NO_EVENT
    ]
    return max([now, *carried]) - spec.lateness


def oldest_countable(marks: Iterable[PartitionMark], spec: WindowSpec) -> float:
    """The oldest event time any partition may still count (state before it may go).

    A ping is too late when older than its own partition's watermark minus
    the correction horizon, so the least of those over all partitions (idle
    and ended ones included: they may wake up) bounds what can still arrive.
    A partition that has not had a valid ping yet has no watermark: none of
    its pings is ever too late, so it holds clean-up back until it has one
    (whether live, idle or ended: it may wake up in this run or the next).
    """
    marks = list(marks)
    if not _complete(marks) or any(m.max_event == NO_EVENT for m in marks):
        return NO_EVENT
    return min(m.max_event for m in marks) - spec.lateness - spec.horizon
