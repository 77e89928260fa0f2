"""The dataflow watermark, from what every partition last said (SPEC "Time").

Each partition's watermark is its greatest valid event time minus
``allowed_lateness``. The dataflow watermark (:func:`dataflow_watermark`) is
the least of them over the *live* partitions: an idle one (no valid ping for
``idle`` seconds) or an ended one (bounded mode) is left out; when none is
live, it is the freshest partition's. It is made of event times only, so it
may be kept in state: a clock step cannot change it.

The wall clock decides only *when* closed rows are written in a quiet live
run (:func:`flush_watermark`): when no partition is live, rows up to the
wall clock minus ``allowed_lateness`` (or the freshest partition's event
time carried on with the wall clock, if that is ahead) may be written, so a
row whose interval has ended is written at most ``allowed_lateness + idle``
after the last ping was read, as the SPEC promises. That value is never
stored, and never decides lateness, too-late or what state is dropped.

Until every partition of the topic has been heard from, both are ``-inf``:
a partition not yet read may hold the oldest pings.
"""

from __future__ import annotations

from typing import Iterable

from presence.core.model import LIVE, NO_EVENT, PartitionMark
from presence.core.windows import WindowSpec


def _complete(marks: list[PartitionMark]) -> bool:
    return bool(marks) and len(marks) >= max(m.partitions for m in marks)


def dataflow_watermark(marks: Iterable[PartitionMark], spec: WindowSpec) -> float:
    """The event-time watermark of the dataflow (no wall clock in it)."""
    marks = list(marks)
    if not _complete(marks):
        return NO_EVENT
    live = [m.max_event for m in marks if m.state == LIVE]
    if live:
        return min(live) - spec.lateness_s
    return max(m.max_event for m in marks) - spec.lateness_s


def flush_watermark(marks: Iterable[PartitionMark], now: float, spec: WindowSpec) -> float:
    """Rows ending at or before this may be written now (never stored).

    The dataflow watermark while a partition is live; in a quiet run (none
    live) the wall clock minus ``allowed_lateness``, or the freshest
    partition's event time carried on with the wall clock if that is ahead.
    """
    marks = list(marks)
    if not _complete(marks):
        return NO_EVENT
    if any(m.state == LIVE for m in marks):
        return dataflow_watermark(marks, spec)
    carried = [
        m.max_event + max(0.0, now - m.read_at) for m in marks if m.max_event > NO_EVENT
    ]
    return max([now, *carried]) - spec.lateness_s


def oldest_countable(marks: Iterable[PartitionMark], spec: WindowSpec) -> float:
    """The oldest event time any partition may still count (state before it may go).

    A ping is too late when older than its own partition's watermark minus
    the correction horizon, so the least of those over all partitions (idle
    and ended ones included: they may wake up) bounds what can still arrive.

    A partition that has had no valid ping yet has no watermark and judges
    against the dataflow's instead (SPEC): once it is idle or ended it is
    left out, so a partition that stays empty never holds clean-up back, and
    a ping it later brings that is older than the state kept is too late
    (see :class:`presence.core.shard.ShardState`). While it is live (at most
    ``idle`` seconds without a valid ping, e.g. the first fetch of a run) it
    holds the dataflow watermark back, and clean-up with it: its first pings
    may be as old as any other partition's.
    """
    marks = list(marks)
    if not _complete(marks):
        return NO_EVENT
    known = []
    for m in marks:
        if m.max_event > NO_EVENT:
            known.append(m.max_event)
        elif m.state == LIVE:
            return NO_EVENT
    if not known:
        return NO_EVENT
    return min(known) - spec.lateness_s - spec.horizon_s
