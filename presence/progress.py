"""The row step's progress lines (``presence.flow: progress | ...``) and its timers.

Kept apart from the flow's wiring: what a line says, the rate since the last
one, and the warning when pings were too late to count without a dead letter.
"""

from __future__ import annotations

import logging

from presence.core.model import Totals
from presence.core.pings import format_instant

log = logging.getLogger("presence.flow")  # the lines users and tests know


def due(now: float, at: float, period: float) -> bool:
    """Is a timer of ``period`` seconds set for ``at`` due at ``now``? A time further
    ahead than its period means the clock stepped back: due now."""
    return now >= at or at - now > period


class ProgressLog:
    """One INFO line per call (pings counted and their rate, rows, dead letters, watermark)."""

    def __init__(self, totals: Totals, now: float) -> None:
        self._last_progress = (now, totals.valid)
        self._not_counted = totals.not_counted

    def log(self, totals: Totals, now: float, final: bool = False) -> None:
        if totals.not_counted > self._not_counted:
            log.warning(
                "%d pings were too late: older than the state kept, from a partition that "
                "had no watermark yet when that state was dropped (an empty or new "
                "partition); not counted, no dead letter (pipeline_status totals.tooLate "
                "and notCounted)", totals.not_counted - self._not_counted,
            )
            self._not_counted = totals.not_counted
        then, valid_then = self._last_progress
        rate = (totals.valid - valid_then) / max(now - then, 1e-9)
        self._last_progress = (now, totals.valid)
        watermark = totals.watermark
        shown = (
            format_instant(watermark)
            if watermark not in (float("inf"), float("-inf"))
            else "none yet"
        )
        log.info(
            "%s | %d pings counted (%.0f/s) | %d rows written (%d rewrites) | %d dead "
            "letters | %d late | %d too late | watermark %s",
            "done" if final else "progress",
            totals.valid, rate, totals.rows_written, totals.row_rewrites,
            totals.dead_letters, totals.late, totals.too_late, shown,
        )
