"""Window geometry: buckets, panes and report rows (SPEC "Windows").

A *bucket* is ``bucket`` seconds long, aligned to the UNIX epoch. The *pane*
of a bucket is the set of drivers seen in it. The report *row* for bucket
start ``T`` covers ``[T + bucket - window, T + bucket)``, i.e. the union of
the ``span = window / bucket`` panes ending with bucket ``T``. A ping in
bucket ``B`` therefore belongs to rows ``B, B + bucket, ..., B + window -
bucket``.

Times are float epoch seconds (UTC); bucket starts are ints.
"""

from __future__ import annotations

from dataclasses import dataclass

SHARDS = 16
"""Drivers are spread over this many shards (the keys of the pane step).

Fixed, because the recovery state is keyed by it: changing it would mix
drivers of one shard into another after a restart.
"""


@dataclass(frozen=True)
class WindowSpec:
    """The time rules of one dataflow, built from settings."""

    bucket_s: int = 60
    window_s: int = 300
    lateness_s: float = 30.0
    horizon_s: float = 3600.0
    idle_s: float = 10.0
    max_future_skew_s: float = 300.0
    shards: int = SHARDS
    segments: tuple = ()
    """The segment definitions (:class:`presence.core.segments.SegmentDefinition`,
    PRESENCE_SEGMENTS); empty: the global rows only."""
    max_segment_values: int = 50_000
    """PRESENCE_MAX_SEGMENT_VALUES: values per definition per bucket in one shard."""

    def __post_init__(self) -> None:
        if self.bucket_s <= 0 or self.window_s <= 0 or self.window_s % self.bucket_s:
            raise ValueError("window must be a positive whole multiple of bucket")

    @property
    def span(self) -> int:
        """How many panes make one row."""
        return self.window_s // self.bucket_s

    def bucket_of(self, time: float) -> int:
        """Start of the bucket holding event time ``time``."""
        return int(time // self.bucket_s) * self.bucket_s

    def row_end(self, row: int) -> int:
        """End (exclusive) of the interval of the row of bucket start ``row``."""
        return row + self.bucket_s

    def row_start(self, row: int) -> int:
        """Start (inclusive) of the interval of the row of bucket start ``row``."""
        return row + self.bucket_s - self.window_s

    def rows_of_pane(self, pane: int) -> range:
        """Bucket starts of the rows that pane ``pane`` is part of."""
        return range(pane, pane + self.window_s, self.bucket_s)

    def panes_of_row(self, row: int) -> range:
        """Bucket starts of the panes whose union is row ``row``."""
        return range(row + self.bucket_s - self.window_s, row + self.bucket_s, self.bucket_s)

    def oldest_kept_pane(self, gc_time: float) -> float:
        """Panes starting before this may be dropped once ``gc_time`` is known.

        ``gc_time`` is the oldest event time that can still be counted (the
        least partition watermark minus the correction horizon). A ping at
        ``gc_time`` rewrites rows whose panes reach ``window - bucket``
        seconds further back, so those panes stay too.
        """
        if gc_time == float("-inf"):
            return gc_time
        return self.bucket_of(gc_time) - (self.window_s - self.bucket_s)
