"""The types the pure core and the flow share: what passes between steps.

A ping's path (:mod:`presence.flow`): a :class:`PartitionBatch` per read of a
partition (its :class:`PartitionMark`, its pings grouped per shard, its
:class:`DeadLetter` s) -> one :class:`ShardPart` per driver shard -> a
:class:`ShardReport` per shard -> the row book's :class:`Row` s and
:class:`Totals`.

Recovery snapshots hold :class:`PartitionMark` s (by the module path they had
when written: :mod:`presence.partition` is kept as an alias for older ones).
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar, Iterable, Iterator, NamedTuple

from presence.core.pings import format_instant


class PartitionState(StrEnum):
    """How a partition stands; the value is what status documents and snapshots hold."""

    LIVE = "live"
    IDLE = "idle"
    """No valid ping for ``idle`` seconds: left out of the dataflow watermark."""
    ENDED = "ended"
    """Bounded mode: read to the end of the topic."""


LIVE = PartitionState.LIVE
IDLE = PartitionState.IDLE
ENDED = PartitionState.ENDED

NO_EVENT = float("-inf")
"""The event time of nothing yet: below every real time."""


def partition_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def shard_key(shard: int) -> str:
    """The key of one driver shard in the pane step."""
    return f"shard-{shard:02d}"


def shard_of(driver_id: str, shards: int) -> int:
    """Stable across processes (unlike ``hash``, which is salted per process)."""
    return zlib.crc32(driver_id.encode()) % shards


@dataclass(frozen=True, slots=True)
class PartitionMark:
    """What one partition tells the rest of the flow after each read."""

    topic: str
    partition: int
    partitions: int
    """How many partitions the topic has: whom a watermark must wait for."""
    max_event: float
    """Greatest valid event time read so far (``-inf`` before the first)."""
    read_at: float
    """Wall clock of the last valid ping read (or of opening the partition)."""
    state: PartitionState
    """``live``, ``idle`` (no valid ping for ``idle`` seconds) or ``ended``."""
    next_offset: int
    valid: int = 0
    invalid: int = 0
    too_late: int = 0
    gaps: tuple[tuple[int, int], ...] = ()
    """Offset ranges ``[start, end)`` lost to retention before being read."""
    late: int = 0
    """Valid pings older than this partition's watermark when read, not too late."""
    rejected: tuple[tuple[str, int], ...] = ()
    """Invalid messages by reason (``too_late`` is :attr:`too_late`), sorted by reason."""
    unlocated: int = 0
    """Counted pings without a valid location (counted only when a segment has ``h3``)."""

    def __getstate__(self) -> list:
        # Plain values only: the state is stored as its string ("live", ...),
        # as before it was an enum, so snapshots name no enum class.
        values = [getattr(self, f) for f in _MARK_FIELDS]
        values[_STATE_AT] = str(values[_STATE_AT])
        return values

    def __setstate__(self, state: list) -> None:
        # A mark pickled by an older version has fewer fields: the rest take
        # their defaults, so old recovery snapshots still restore.
        for name, value in zip(_MARK_FIELDS, state):
            object.__setattr__(self, name, value)
        for name in _MARK_FIELDS[len(state):]:
            object.__setattr__(self, name, _MARK_DEFAULTS[name])
        object.__setattr__(self, "state", PartitionState(self.state))

    @property
    def key(self) -> str:
        return partition_key(self.topic, self.partition)


_MARK_FIELDS = tuple(f.name for f in fields(PartitionMark))
_STATE_AT = _MARK_FIELDS.index("state")
_MARK_DEFAULTS = {f.name: f.default for f in fields(PartitionMark) if f.default is not MISSING}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message, stored once per ``topic:partition:offset``."""

    topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    raw: str
    received_at: float

    @property
    def id(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


BucketSets = dict
"""``{bucket start: [online driver ids, off-duty driver ids, ping count]}``.

Off-duty drivers are those of the online ones with no on-duty ping in the
bucket (in this batch): usually far fewer than the available ones, so the
pane step maps fewer ids, and fewer cross between processes."""

SegmentPings = dict
"""``{bucket start: [(driver id, on_duty, values), ...]}``: the counted pings of
one shard with their segment values (one per definition, ``None`` when
unlocated), as :meth:`presence.core.segment_panes.SegmentPanes.add_pings` takes them."""


@dataclass(slots=True)
class ShardPart:
    """The share of one partition batch for one driver shard."""

    mark: PartitionMark
    buckets: BucketSets
    segments: SegmentPings | None = None
    """The same pings with their segment values; ``None`` when no segments are configured."""


@dataclass(slots=True)
class PartitionBatch:
    """The outcome of one read of one partition."""

    mark: PartitionMark
    shards: list[BucketSets]
    dead_letters: list[DeadLetter] = field(default_factory=list)
    segments: list[SegmentPings] | None = None
    """Per shard, as :attr:`ShardPart.segments`; ``None`` when no segments are configured."""

    def shard_parts(self) -> Iterator[tuple[str, ShardPart]]:
        """Every shard gets the mark (its watermark view moves on), with data or not."""
        mark = self.mark
        segments = self.segments
        for shard, buckets in enumerate(self.shards):
            yield shard_key(shard), ShardPart(
                mark, buckets, None if segments is None else segments[shard]
            )


@dataclass(frozen=True, slots=True)
class ShardReport:
    """What a shard tells the row book."""

    watermark: float
    """The dataflow watermark as this shard sees it (event time only): rows
    ending at or before it are complete in this shard."""
    oldest_countable: float
    partials: dict[int, tuple[int, int]] = field(default_factory=dict)
    """``{row: (online, available)}`` of this shard's drivers, for changed rows."""
    not_counted: int = 0
    """Pings too late because older than the state kept (cumulative): only
    possible from a partition that had no watermark when that state was
    dropped (an empty partition, or one added to the topic)."""
    flush: float = NO_EVENT
    """Rows ending at or before it may be written now: ``watermark``, or in a
    quiet live run the wall clock minus the lateness. Never stored."""
    segment_partials: dict | bytes = field(default_factory=dict)
    """``{row: {partial key: packed}}`` of this shard's drivers, for changed
    segment rows (as ``partials``): the value named by its partial key
    (:func:`presence.core.segment_tally.partial_key`), ``packed`` is
    :func:`presence.core.segment_panes.pack_partial` of ``(online, available,
    overflow)``; or the same as packed bytes
    (:func:`presence.core.segment_tally.pack_partials`, from the compiled store)."""
    other_pings: tuple[int, ...] = ()
    """Per definition: pings this shard counted under ``other`` (cumulative)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One ``report_summary`` document."""

    bucket: int
    window_start: int
    window_end: int
    online: int
    available: int
    revision: int

    @property
    def time_bucket(self) -> str:
        return format_instant(self.bucket)

    def log_line(self) -> str:
        return (
            f"bucket {self.time_bucket} | online {self.online} | "
            f"available {self.available} | revision {self.revision}"
        )


def segment_doc_id(segment: str, values: Iterable[str], time_bucket: str) -> str:
    """The ``_id`` of a ``segment_summary`` document: segment, key values (in the
    definition's field order) and ``timeBucket`` joined by ``|``. A ``|`` or
    ``\\`` inside a value is escaped with ``\\``, so two keys never share an id."""
    parts = [v.replace("\\", "\\\\").replace("|", "\\|") if "|" in v or "\\" in v else v
             for v in values]
    return "|".join([segment, *parts, time_bucket])


@functools.lru_cache(maxsize=4096)
def bucket_text(bucket: int) -> str:
    """A segment row's ``timeBucket``: :func:`format_instant`, kept for the recent
    buckets (tens of thousands of segment rows share a few)."""
    return format_instant(bucket)


@dataclass(slots=True)
class SegmentRow:
    """One ``segment_summary`` document (one segment value in one row).

    Not frozen (nothing changes one once made): a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, about three
    times the cost, and tens of thousands of these are made per bucket."""

    segment: str
    """The definition's name (``city,vehicle_type``)."""
    key: dict
    """``{field: value}`` in the definition's order (H3 cells as hex strings)."""
    bucket: int
    window_start: int
    window_end: int
    online: int
    available: int
    revision: int
    overflow: bool = False
    """Some shard sent new values of this segment to ``other`` in one of the row's panes."""

    @property
    def time_bucket(self) -> str:
        return bucket_text(self.bucket)

    @property
    def doc_id(self) -> str:
        return segment_doc_id(self.segment, self.key.values(), self.time_bucket)

    def log_line(self) -> str:
        key = ", ".join(f"{k}={v}" for k, v in self.key.items())
        return (
            f"segment {self.segment} {key} | bucket {self.time_bucket} | online {self.online} | "
            f"available {self.available} | revision {self.revision}"
        )


Taken = tuple
"""One segment row as the row book's tally takes it: ``(bucket, definition
number, key document, online, available, revision, overflow)``."""


@dataclass(slots=True)
class SegmentRows:
    """The segment rows of one take of the row book, as one item.

    An H3 definition makes tens of thousands of rows per bucket: one Bytewax
    item and one :class:`SegmentRow` each would cost more than counting them.
    The batch keeps the tally's tuples; iterating it gives :class:`SegmentRow` s
    (for tests and in-memory sinks), and the MongoDB sink encodes its
    documents straight from :attr:`taken`.
    """

    names: tuple[str, ...]
    """Definition names by number."""
    bucket_s: int
    window_s: int
    taken: list[Taken]

    def __len__(self) -> int:
        return len(self.taken)

    def __iter__(self) -> Iterator[SegmentRow]:
        names, bucket, window = self.names, self.bucket_s, self.window_s
        for row, number, key, online, available, revision, overflow in self.taken:
            yield SegmentRow(names[number], key, row, row + bucket - window, row + bucket,
                             online, available, revision, overflow)


@dataclass(frozen=True, slots=True)
class SegmentTotals:
    """Status counters of one segment definition."""

    segment: str
    other_pings: int = 0
    """Pings counted under ``other`` (the overflow valve), summed over shards."""
    rows_written: int = 0
    overflow_rows: int = 0
    """Row writes with ``overflow``."""


@dataclass(frozen=True, slots=True)
class Totals:
    """Pipeline-wide counters, for ``pipeline_status`` and progress lines."""

    valid: int
    """Pings counted."""
    invalid: int
    """Messages that are not valid pings (dead letters, every reason but too_late)."""
    late: int
    """Valid pings older than their partition's watermark when read, not too late."""
    too_late: int
    """Pings too late to count: dead-lettered by their partition, plus ``not_counted``."""
    watermark: float
    not_counted: int
    """Too-late pings judged against the state kept (no dead letter): from a
    partition that had no watermark yet when that state was dropped."""
    rows_written: int
    """Row writes, first writes and rewrites."""
    row_rewrites: int = 0
    """Row writes with ``revision`` > 1 (depends on batching)."""
    dead_letters: int = 0
    """Dead letters stored: ``invalid`` plus the too-late pings judged by their partition."""
    dead_letters_by_reason: tuple[tuple[str, int], ...] = ()
    """``(reason, count)`` of every dead letter, sorted by reason."""
    unlocated: int = 0
    """Counted pings without a valid location (counted only when a segment has ``h3``)."""
    segments: tuple[SegmentTotals, ...] = ()
    """One per configured definition, in their order; empty without segments."""

    @property
    def corrected_late(self) -> int:
        """The ``correctedLate`` status field: the late pings (kept for its users)."""
        return self.late


# -- what the row step receives and sends ----------------------------------------


@dataclass(frozen=True, slots=True)
class ShardReported:
    """To the row step: one shard's report (shard key, e.g. ``shard-03``)."""

    shard: str
    report: ShardReport


@dataclass(frozen=True, slots=True)
class MarkSeen:
    """To the row step: a partition's latest mark (for status and progress)."""

    mark: PartitionMark


BookItem = ShardReported | MarkSeen
"""An item of the row step's input."""


class Status(NamedTuple):
    """From the row step to ``pipeline_status``: every partition's latest mark and the totals."""

    marks: tuple[PartitionMark, ...]
    totals: Totals


class VersionedState:
    """What the recovery state of a stateful step shares: a frozen dataclass with
    a ``version`` (its ``VERSION``), whose older shape, version 0, is the plain
    dict earlier presence pickled (read by :meth:`from_version_0`)."""

    VERSION: ClassVar[int]
    WHAT: ClassVar[str]
    """Names the state in errors (``"shard state"``)."""
    NOUN: ClassVar[str]

    def __getitem__(self, name: str) -> Any:
        """Fields by name too, as the dict of version 0 had them (``snap["watermark"]``)."""
        return getattr(self, name)

    @classmethod
    def from_version_0(cls, resume: dict) -> Any:
        raise NotImplementedError

    @classmethod
    def of(cls, resume: Any) -> Any:
        """A snapshot of any known version; ``ValueError`` for anything else."""
        if isinstance(resume, cls):
            if resume.version != cls.VERSION:
                raise ValueError(
                    f"{cls.WHAT} version {resume.version} is not known to this presence "
                    f"(it reads {cls.VERSION} and 0)"
                )
            return resume
        if isinstance(resume, dict):  # version 0: the dict of presence before segments
            return cls.from_version_0(resume)
        raise ValueError(f"{cls.WHAT} is a {type(resume).__name__}, not a {cls.NOUN}")
