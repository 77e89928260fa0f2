"""Reading ``report_summary``: time ranges and report rows, for the CLI and the API.

Shared by ``presence report``, ``presence plot`` and ``presence serve``:

- :func:`parse_time` reads a user's instant (ISO-8601, no offset = UTC, or
  epoch seconds) and :func:`parse_range` a ``from``/``to`` pair; instants
  before 2000-01-01 or after 9999-12-31 are refused;
- :func:`fetch_page` returns one bounded page of a range's rows, sorted by
  time, and where the next page starts; :func:`fetch_rows` a bounded list;
  :func:`load_rows` all rows of a range, page by page;
- :func:`pipeline_status` gathers ``pipeline_status`` (offsets, totals, dead
  letters by reason) and, when Kafka answers, each partition's lag, at a cost
  that does not grow with the data (no collection scan).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError

from presence.core.pings import (  # noqa: F401  (bucket_epoch: re-exported for the API)
    EPOCH_MS_THRESHOLD, MIN_EVENT_TIME, bucket_epoch, bucket_iso, format_instant,
)
from presence.io.mongo import (  # noqa: F401  (the document readers, re-exported)
    _ROW_FIELDS, REPORTS, TOTAL_FIELDS, ReportRow, _row, report_extent, row_count, store_status,
)
from presence.io.mongo import (
    SegmentValue, latest_segment_bucket, newest_segment_cells, recorded_segments,
    segment_cells, segment_rows, segment_values,
)
from presence.core.segments import (
    H3, OTHER, SegmentDefinition, SegmentsError, format_segments, parse_segments,
)
from presence.settings import Settings, mongo_hosts

DEFAULT_PAGE = 10_000
"""Rows of one ``/reports`` page unless ``limit`` says otherwise (about a week of minutes)."""

MAX_PAGE = 100_000
"""Most rows one page may hold (about ten weeks of one-minute buckets)."""

MAX_ROWS = MAX_PAGE
"""Kept for callers of :func:`fetch_rows`: its default bound."""

MIN_INSTANT = MIN_EVENT_TIME
"""2000-01-01T00:00:00Z: no ping (so no row) is older; an earlier bound is a mistake."""

MAX_INSTANT = 253_402_300_799.0
"""9999-12-31T23:59:59Z: the last instant a ``timeBucket`` can spell."""


class TimeError(ValueError):
    """A bad time or range: the message is one line for the user."""


class StoreUnavailable(RuntimeError):
    """MongoDB could not be reached or answered with an error (one line)."""


def parse_time(text: str | None, name: str = "time") -> float | None:
    """Epoch seconds of ``text``: ISO-8601 (no offset = UTC) or epoch seconds.

    ``None`` or an empty string means "no bound". A number at or above 1e11
    is read as epoch milliseconds, as the pings' timestamps are. An instant
    before 2000-01-01 or after 9999-12-31 (UTC) is a :class:`TimeError`: no
    row can be there, and outside those years ``timeBucket`` texts no longer
    sort like the instants they spell.
    """
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number) or number < 0:
            raise TimeError(f"{name}: {text!r} is not a valid epoch time")
        epoch = number / 1000.0 if number >= EPOCH_MS_THRESHOLD else number
    else:
        iso = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
        try:
            moment = datetime.fromisoformat(iso)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            epoch = moment.timestamp()
        except (ValueError, OverflowError):
            raise TimeError(
                f"{name}: {text!r} is neither an ISO-8601 time (e.g. 2018-01-01T04:00:00Z) "
                "nor epoch seconds"
            ) from None
    if not MIN_INSTANT <= epoch <= MAX_INSTANT:
        raise TimeError(
            f"{name}: {text!r} is out of range: give an instant from 2000-01-01 to "
            "9999-12-31 (UTC)" + (" (a number of 1e11 or more is epoch milliseconds)"
                                  if number is not None and number >= EPOCH_MS_THRESHOLD else "")
        )
    return epoch


@dataclass(frozen=True)
class TimeRange:
    """Bucket starts ``start <= T <= end``, either bound optional (epoch seconds)."""

    start: float | None = None
    end: float | None = None

    def query(self) -> dict[str, Any]:
        """A ``report_summary`` filter on the ``timeBucket`` index.

        :func:`parse_time` keeps both bounds within the years 2000 to 9999, where
        ``YYYY-MM-DD HH:MM:SS`` texts have a fixed width and sort exactly like
        the instants they spell, so this compares instants.
        """
        cond: dict[str, str] = {}
        if self.start is not None:
            cond["$gte"] = format_bucket(math.ceil(self.start))
        if self.end is not None:
            cond["$lte"] = format_bucket(math.floor(self.end))
        return {"timeBucket": cond} if cond else {}

    def describe(self) -> str:
        low = format_bucket(self.start) if self.start is not None else "the first row"
        high = format_bucket(self.end) if self.end is not None else "the last row"
        return f"from {low} to {high} (UTC)"


def parse_range(start: str | None, end: str | None) -> TimeRange:
    low = parse_time(start, "from")
    high = parse_time(end, "to")
    if low is not None and high is not None and low > high:
        raise TimeError(f"from ({start}) is after to ({end})")
    return TimeRange(low, high)


format_bucket = format_instant
"""A bucket's ``timeBucket`` text: the dataflow's own formatting, so reads match writes."""


def mongo_client(settings: Settings, timeout_ms: int = 3000) -> MongoClient:
    """A client for ``settings.mongo_uri``; a bad URI is :class:`StoreUnavailable`, secrets scrubbed."""
    try:
        return MongoClient(
            settings.mongo_uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=30000,
            appname="presence-reports",
            tz_aware=True,
        )
    except (PyMongoError, ValueError, TypeError) as exc:
        raise store_error(settings, exc) from None


def store_error(settings: Settings, exc: BaseException) -> StoreUnavailable:
    """A one-line message for a MongoDB failure: the host list only, no secret, no topology dump.

    pymongo's texts can hold the hosts, and for some errors parts of the URI:
    every secret of the settings is scrubbed from them.
    """
    text = str(exc)
    detail = text.splitlines()[0] if text.strip() else type(exc).__name__
    detail = detail.split(", Timeout:")[0].split(" (configured timeouts")[0]
    detail = settings.scrub(" ".join(detail.split()))
    if len(detail) > 160:
        detail = detail[:157] + "..."
    return StoreUnavailable(
        f"MongoDB at {mongo_hosts(settings.mongo_uri)} (PRESENCE_MONGO_URI) "
        f"failed: {type(exc).__name__}: {detail}"
    )


@dataclass(frozen=True)
class Page:
    """One page of a range's rows, sorted by time.

    ``next_range`` is the range holding the rest when the page is not the
    last one (``None`` when it is): the newer rows after the page, or with
    ``newest`` the older rows before it. ``next_bucket`` is the ``timeBucket``
    where that next page starts (``from`` of the newer rows, ``to`` of the
    older ones).
    """

    rows: list[ReportRow]
    next_range: TimeRange | None = None
    next_bucket: str | None = None


def fetch_page(db: Database, time_range: TimeRange, limit: int = DEFAULT_PAGE,
               newest: bool = False, segment: "SegmentSelection | None" = None) -> Page:
    """At most ``limit`` rows of the range, sorted by time: the oldest, or the newest.

    One indexed query of ``limit + 1`` rows: the extra row, if any, is where
    the next page starts (``timeBucket`` is unique, so no row is skipped or
    repeated when pages are followed). With ``segment``, the rows of that
    segment value (``segment_summary``, unique on segment, key and
    ``timeBucket``) instead of the global rows.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be from 1 to {MAX_PAGE}")
    if segment is not None:
        rows = segment_rows(db, segment.definition.name, segment.key, time_range.query(),
                            limit + 1, newest=newest)
        return _paged(rows, time_range, limit, newest)
    cursor = (
        db[REPORTS]
        .find(time_range.query(), _ROW_FIELDS)
        .sort("timeBucket", -1 if newest else 1)
        .limit(limit + 1)
    )
    return _paged([_row(doc) for doc in cursor], time_range, limit, newest)


def _paged(rows: list[ReportRow], time_range: TimeRange, limit: int, newest: bool) -> Page:
    """A page from ``limit + 1`` rows read in the page's order (the extra one, if any,
    is where the next page starts)."""
    more = len(rows) > limit
    following = rows[limit] if more else None
    rows = rows[:limit]
    if newest:
        rows.reverse()
    if following is None:
        return Page(rows)
    if newest:
        rest = TimeRange(time_range.start, following.epoch)
    else:
        rest = TimeRange(following.epoch, time_range.end)
    return Page(rows, rest, following.time)


def fetch_rows(db: Database, time_range: TimeRange, limit: int = MAX_ROWS) -> list[ReportRow]:
    """Rows of the range sorted by time (at most ``limit``, the oldest first)."""
    return fetch_page(db, time_range, limit).rows


def iter_rows(db: Database, time_range: TimeRange, page: int = MAX_PAGE,
              segment: "SegmentSelection | None" = None) -> Iterator[ReportRow]:
    """Every row of the range (of one segment value if given), oldest first, read a
    bounded page at a time."""
    current: TimeRange | None = time_range
    while current is not None:
        result = fetch_page(db, current, page, segment=segment)
        yield from result.rows
        current = result.next_range


def load_rows(settings: Settings, time_range: TimeRange,
              segment: "SegmentSelection | None" = None) -> list[ReportRow]:
    """Every row of the range, with its own client; :class:`StoreUnavailable` on failure."""
    client = mongo_client(settings)
    try:
        return list(iter_rows(client[settings.mongo_db], time_range, segment=segment))
    except PyMongoError as exc:
        raise store_error(settings, exc) from None
    finally:
        client.close()


# ------------------------------------------------------------------ status


class KafkaWatermarks:
    """One long-lived Kafka consumer that reads a topic's low and high watermarks.

    Made on first use and kept (a new client per call costs a connection and
    metadata round trips); every call is bounded by ``timeout`` in all. After
    a failure Kafka is not asked again for ``retry_after`` seconds: the
    failure is reported again meanwhile, so a page refreshed every second
    does not wait ``timeout`` on every refresh while Kafka is down.
    Thread-safe (one query at a time).
    """

    def __init__(self, settings: Settings, timeout: float = 3.0, retry_after: float = 5.0,
                 clock=time.monotonic) -> None:
        self.settings = settings
        self.timeout = timeout
        self.retry_after = retry_after
        self.clock = clock
        self._lock = threading.Lock()
        self._consumer = None
        self._failed: tuple[float, Exception] | None = None
        self.queries = 0
        """Queries that reached Kafka (for tests)."""

    def _client(self):
        if self._consumer is None:
            from confluent_kafka import Consumer

            config = {
                "bootstrap.servers": self.settings.kafka_brokers,
                "group.id": "presence-status",
                "enable.auto.commit": False,
                "socket.connection.setup.timeout.ms": max(1000, int(self.timeout * 1000)),
                "log_level": 0,
                "error_cb": lambda err: None,
            }
            config.update(self.settings.kafka_extra)
            self._consumer = Consumer(config)
        return self._consumer

    def offsets(self, topic: str) -> dict[int, tuple[int, int]]:
        """``{partition: (low, high)}`` of ``topic``; raises ConnectionError or LookupError."""
        from confluent_kafka import KafkaException, TopicPartition

        with self._lock:
            if self._failed is not None:
                at, exc = self._failed
                if self.clock() - at < self.retry_after:
                    raise exc
                self._failed = None
            self.queries += 1
            deadline = self.clock() + self.timeout
            left = lambda: max(0.05, deadline - self.clock())  # noqa: E731
            try:
                consumer = self._client()
                meta = consumer.list_topics(topic, timeout=left())
                info = meta.topics.get(topic)
                if info is None or info.error is not None:
                    why = f": {info.error.str()}" if info is not None and info.error else ""
                    raise LookupError(f"topic {topic!r} not found{why}")
                offsets = {}
                for number in sorted(info.partitions):
                    offsets[number] = consumer.get_watermark_offsets(
                        TopicPartition(topic, number), timeout=left(), cached=False
                    )
                return offsets
            except KafkaException as exc:
                err = exc.args[0] if exc.args else exc
                text = err.str() if hasattr(err, "str") else str(err)
                failure = ConnectionError(
                    f"Kafka at {self.settings.kafka_brokers} unreachable: {text}")
                self._failed = (self.clock(), failure)
                raise failure from None
            except LookupError as exc:
                self._failed = (self.clock(), exc)
                raise

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None


def kafka_offsets(settings: Settings, topic: str, timeout: float = 3.0) -> dict[int, tuple[int, int]]:
    """``{partition: (low, high)}`` watermarks of ``topic`` with a client of its own."""
    watermarks = KafkaWatermarks(settings, timeout)
    try:
        return watermarks.offsets(topic)
    finally:
        watermarks.close()


def pipeline_status(settings: Settings, db: Database, kafka_timeout: float = 3.0,
                    kafka: KafkaWatermarks | None = None) -> dict[str, Any]:
    """:func:`store_status` plus each partition's Kafka high watermark and lag.

    Kafka being unreachable is reported in ``kafka`` (``reachable: false``),
    never raised; MongoDB failures raise :class:`PyMongoError`. ``kafka`` is
    a long-lived :class:`KafkaWatermarks` to reuse (the API's); without it a
    client is made for this call.
    """
    status = store_status(db)
    topic = settings.topic
    info: dict[str, Any] = {"brokers": settings.kafka_brokers, "topic": topic}
    try:
        if kafka is not None:
            offsets = kafka.offsets(topic)
        else:
            offsets = kafka_offsets(settings, topic, kafka_timeout)
        info.update(reachable=True, error=None)
    except (ConnectionError, LookupError, OSError) as exc:
        offsets = None
        info.update(reachable=False, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a status page must not fail on Kafka
        offsets = None
        info.update(reachable=False, error=f"{type(exc).__name__}: {exc}")
    status["kafka"] = info
    known = {(p["topic"], p["partition"]): p for p in status["partitions"]}
    if offsets is not None:
        for number in offsets:
            if (topic, number) not in known:
                entry = {"topic": topic, "partition": number, "nextOffset": None,
                         "state": "unread", "valid": 0, "invalid": 0, "tooLate": 0,
                         "maxEventTime": None, "gaps": [], "updatedAt": None}
                status["partitions"].append(entry)
                known[(topic, number)] = entry
        status["partitions"].sort(key=lambda p: (p["topic"], p["partition"]))
    total_lag = 0
    for part in status["partitions"]:
        marks = offsets.get(part["partition"]) if offsets is not None and part["topic"] == topic else None
        if marks is None:
            part["lowWatermark"] = part["highWatermark"] = part["lag"] = None
            continue
        low, high = marks
        start = part["nextOffset"] if part["nextOffset"] is not None else low
        part["lowWatermark"], part["highWatermark"] = low, high
        part["lag"] = max(0, high - start)
        total_lag += part["lag"]
    info["lag"] = total_lag if offsets is not None else None
    return status


# ------------------------------------------------------------------ segments


class SegmentQueryError(ValueError):
    """A bad segment, value or zone query (an unknown or unconfigured definition, a
    missing or extra value, a bad H3 cell): the message is one line for the user."""


SEGMENTS_DEFAULT_SPAN = 3600.0
"""Seconds of segment data ``/segments`` looks at when no range is given: the hour
ending at the newest bucket with segment rows."""

DEFAULT_SEGMENT_VALUES = 200
MAX_SEGMENT_VALUES = 5000
"""Values per definition in one ``/segments`` answer: the default and the most."""


@dataclass(frozen=True)
class Segments:
    """The segment definitions the rows were written with, and where they come from."""

    definitions: tuple[SegmentDefinition, ...]
    bucket_seconds: int
    source: str
    """``PRESENCE_SEGMENTS``, ``the database`` (its fingerprint) or ``""`` (none)."""

    def describe(self) -> str:
        if not self.definitions:
            return ("no segments are configured: PRESENCE_SEGMENTS is empty and the database "
                    "records none")
        return f"configured ({self.source}): {format_segments(self.definitions)}"


def configured_segments(settings: Settings, db: Database) -> Segments:
    """``PRESENCE_SEGMENTS`` (and ``PRESENCE_BUCKET_SECONDS``) when set, else the
    segments (and bucket size) recorded in the database's fingerprint by the dataflow
    that writes it (one ``_id`` lookup)."""
    if settings.segments.strip():
        return Segments(parse_segments(settings.segments), settings.bucket_seconds,
                        "PRESENCE_SEGMENTS")
    recorded = recorded_segments(db)
    bucket = recorded[1] if recorded is not None and recorded[1] else settings.bucket_seconds
    if recorded is None or not recorded[0].strip():
        return Segments((), bucket, "")
    try:
        definitions = parse_segments(recorded[0])
    except SegmentsError:  # written by another version: nothing we can read by it
        definitions = ()
    return Segments(definitions, bucket, "the database")


def resolve_definition(text: str, segments: Segments) -> SegmentDefinition:
    """The configured definition ``text`` names (any spelling or order of its fields)."""
    try:
        parsed = parse_segments(text)
    except SegmentsError as exc:
        raise SegmentQueryError(f"segment: {exc}") from None
    if len(parsed) != 1:
        raise SegmentQueryError(
            f"segment: {text.strip()!r} is not one definition (e.g. city,vehicle_type or h3:8)")
    wanted = frozenset(parsed[0].dimensions)
    for definition in segments.definitions:
        if frozenset(definition.dimensions) == wanted:
            return definition
    raise SegmentQueryError(
        f"segment {parsed[0].name!r} is not configured; {segments.describe()}")


@dataclass(frozen=True)
class SegmentSelection:
    """One value of one definition: ``key`` as in its documents (fields in order)."""

    definition: SegmentDefinition
    key: dict[str, str]

    def describe(self) -> str:
        values = ", ".join(f"{f}={v}" for f, v in self.key.items())
        return f"{values} (segment {self.definition.name})"


def select_value(definition: SegmentDefinition, values: dict[str, str]) -> SegmentSelection:
    """The value of ``definition`` given one text per field (``h3``: the hex cell)."""
    for name, text in values.items():
        if not text:
            raise SegmentQueryError(f"{name}: empty value")
    try:
        value = definition.value_of_key(values)
    except SegmentsError as exc:
        raise SegmentQueryError(str(exc)) from None
    return SegmentSelection(definition, definition.key(value))


def parse_selector(text: str) -> dict[str, str]:
    """``city=Hong Kong,vehicle_type=van`` as ``{"city": "Hong Kong", ...}`` (field
    names case-insensitive; spaces around names and values dropped)."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        name, equals, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not equals or not name:
            raise SegmentQueryError(
                f"{part.strip()!r} is not FIELD=VALUE (e.g. city=Hong Kong,vehicle_type=van)")
        if name in fields:
            raise SegmentQueryError(f"{name} given twice")
        fields[name] = value
    return fields


def resolve_selector(text: str, segments: Segments) -> SegmentSelection:
    """The segment value ``city=Hong Kong,vehicle_type=van`` names: the configured
    definition with exactly those fields (for ``h3``, the cell's resolution picks
    among several)."""
    fields = parse_selector(text)
    candidates = [d for d in segments.definitions if set(d.fields) == set(fields)]
    if not candidates:
        raise SegmentQueryError(
            f"no configured segment has exactly the fields {', '.join(fields)}; "
            f"{segments.describe()}")
    problems = []
    for definition in candidates:
        try:
            return select_value(definition, fields)
        except SegmentQueryError as exc:
            problems.append(str(exc))
    raise SegmentQueryError("; ".join(problems))


def segments_range(db: Database, time_range: TimeRange) -> TimeRange:
    """``time_range``, or with neither bound the hour ending at the newest bucket with
    segment rows (one query; an empty range stays open when there is none)."""
    if time_range.start is not None or time_range.end is not None:
        return time_range
    latest = latest_segment_bucket(db)
    if latest is None:
        return time_range
    end = bucket_epoch(latest)
    return TimeRange(end - SEGMENTS_DEFAULT_SPAN, end)


def segments_overview(db: Database, segments: Segments, time_range: TimeRange,
                      limit: int = DEFAULT_SEGMENT_VALUES
                      ) -> tuple[list[dict[str, Any]], TimeRange]:
    """For every configured definition, its values in the range with their latest row,
    sorted by available drivers (most first) then key, at most ``limit``; and the range
    (with neither bound: the hour ending at the newest bucket with segment rows, see
    :func:`segments_range`). One bounded query per definition: with no bounds, the
    rows from an hour before the newest ``report_summary`` bucket on, which hold that
    hour whenever the newest segment row is not older than the newest global row;
    otherwise one query more finds the newest segment bucket first."""
    if not 1 <= limit <= MAX_SEGMENT_VALUES:
        raise ValueError(f"limit must be from 1 to {MAX_SEGMENT_VALUES}")
    found: list[tuple[list[SegmentValue], bool]] | None = None
    if time_range.start is None and time_range.end is None and segments.definitions:
        newest = db[REPORTS].find_one({}, {"_id": 0, "timeBucket": 1},
                                      sort=[("timeBucket", -1)])
        if newest is not None:
            start = bucket_epoch(newest["timeBucket"]) - SEGMENTS_DEFAULT_SPAN
            query = TimeRange(start, None).query()
            found = [segment_values(db, d.name, query) for d in segments.definitions]
            last = max((v.time for values, _ in found for v in values), default=None)
            if last is not None and last >= newest["timeBucket"]:
                end = bucket_epoch(last)
                time_range = TimeRange(end - SEGMENTS_DEFAULT_SPAN, end)
                low = format_bucket(math.ceil(time_range.start))
                found = [([v for v in values if v.time >= low], cut) for values, cut in found]
            else:
                found = None
    if found is None:
        time_range = segments_range(db, time_range)
        query = time_range.query()
        found = [segment_values(db, d.name, query) for d in segments.definitions]
    out = []
    for definition, (values, cut) in zip(segments.definitions, found):
        order = definition.fields
        values.sort(key=lambda v: (-v.available, tuple(v.key.get(f, "") for f in order)))
        out.append({
            "segment": definition.name,
            "fields": list(order),
            "resolution": definition.resolution,
            "valueCount": len(values),
            "truncated": cut or len(values) > limit,
            "values": [_value_dict(v, order) for v in values[:limit]],
        })
    return out, time_range


def _value_dict(value: SegmentValue, order: tuple[str, ...]) -> dict[str, Any]:
    body = value.as_dict()
    body["key"] = {f: value.key[f] for f in order if f in value.key} or dict(value.key)
    return body


def zone_definition(segments: Segments, resolution: int | None) -> SegmentDefinition:
    """The configured definition ``h3:R`` (exactly that one dimension) of the zone map;
    with no ``resolution``, the only such definition."""
    maps = [d for d in segments.definitions if d.located and len(d.dimensions) == 1]
    if resolution is None:
        if len(maps) == 1:
            return maps[0]
        if not maps:
            raise SegmentQueryError(
                f"no zone map: no segment h3:R is configured; {segments.describe()}")
        raise SegmentQueryError(
            f"resolution: several zone maps are configured ({', '.join(d.name for d in maps)}); "
            "give one")
    for definition in maps:
        if definition.resolution == resolution:
            return definition
    raise SegmentQueryError(
        f"no zone map at resolution {resolution}: segment 'h3:{resolution}' is not "
        f"configured; {segments.describe()}")


def cell_ring(cell: str) -> list[list[float]]:
    """The boundary of an H3 cell (hex string) as a closed GeoJSON ring of
    ``[lng, lat]`` (H3 gives ``(lat, lng)`` pairs, counter-clockwise, as RFC 7946
    wants exterior rings). ``ValueError`` if ``cell`` is not a valid cell."""
    import h3

    try:
        valid = h3.is_valid_cell(cell)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"{cell!r} is not an H3 cell")
    ring = [[round(lng, 7), round(lat, 7)] for lat, lng in h3.cell_to_boundary(cell)]
    ring.append(list(ring[0]))
    return ring


def zones_geojson(db: Database, segments: Segments, resolution: int | None = None,
                  at: float | None = None) -> dict[str, Any]:
    """The zone map: a GeoJSON FeatureCollection of the cells of the ``h3:R`` definition
    at the bucket holding ``at`` (default: the newest bucket with its rows), each a
    Polygon with ``h3``, ``online``, ``available`` and ``timeBucket`` properties. Cells
    are sorted by their hex id. Rows under the overflow value ``other`` are not cells:
    their counts go to the collection's ``other`` member (absent when none)."""
    definition = zone_definition(segments, resolution)
    if at is None:
        bucket, cells, cut = newest_segment_cells(db, definition.name)
    else:
        size = segments.bucket_seconds
        bucket = format_bucket(int(at // size) * size)
        cells, cut = segment_cells(db, definition.name, bucket)
    features: list[dict[str, Any]] = []
    body: dict[str, Any] = {
        "type": "FeatureCollection",
        "resolution": definition.resolution,
        "timeBucket": bucket_iso(bucket) if bucket is not None else None,
        "features": features,
    }
    if bucket is None:
        return body
    iso = bucket_iso(bucket)
    for cell in sorted(cells, key=lambda c: c.key.get(H3, "")):
        name = cell.key.get(H3, "")
        if name == OTHER[0]:
            body["other"] = {"online": cell.online, "available": cell.available}
            continue
        try:
            ring = cell_ring(name)
        except ValueError:
            continue  # not written by presence
        features.append({
            "type": "Feature",
            "id": name,
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"h3": name, "online": cell.online, "available": cell.available,
                           "timeBucket": iso},
        })
    if cut:
        body["truncated"] = True
    return body


def open_selection(settings: Settings, text: str) -> SegmentSelection:
    """The segment value ``text`` (``city=Hong Kong,vehicle_type=van``) names, among the
    configured definitions (:func:`configured_segments`), with a client of its own.
    :class:`SegmentQueryError` for a bad selector (checked before any connection),
    :class:`StoreUnavailable` when MongoDB fails."""
    parse_selector(text)
    client = mongo_client(settings)
    try:
        return resolve_selector(text, configured_segments(settings, client[settings.mongo_db]))
    except PyMongoError as exc:
        raise store_error(settings, exc) from None
    finally:
        client.close()


def load_zones(settings: Settings, resolution: int | None, at: float | None) -> dict[str, Any]:
    """:func:`zones_geojson` with a client of its own; :class:`StoreUnavailable` on failure."""
    client = mongo_client(settings)
    try:
        db = client[settings.mongo_db]
        return zones_geojson(db, configured_segments(settings, db), resolution, at)
    except PyMongoError as exc:
        raise store_error(settings, exc) from None
    finally:
        client.close()
