"""Times and window rules the tests share (one place, not one copy per file)."""

from __future__ import annotations

T0 = 1_514_779_200
"""2018-01-01 04:00:00 UTC, a whole minute: the first bucket of the test streams."""

NOW = 1_800_000_000.0
"""The wall clock of the pure tests (2027-01-15): later than every event time."""

BUCKET, WINDOW, LATENESS, HORIZON = 60, 300, 30, 3600
"""The default rules (``WindowSpec()``, ``PRESENCE_*`` defaults), in seconds."""

DEFAULT_RULES = (BUCKET, WINDOW, LATENESS, HORIZON)
"""The default rules as the oracle takes them: ``oracle(partitions, *DEFAULT_RULES)``."""


def oracle_rules(spec) -> tuple:
    """``(bucket, window, lateness, horizon)`` of a ``WindowSpec``, the oracle's arguments."""
    return (spec.bucket_s, spec.window_s, spec.lateness_s, spec.horizon_s)
