"""The reports API and live dashboard (FastAPI; ``presence serve`` runs it with uvicorn).

- ``GET /reports?from=&to=&limit=&newest=``: ``[{"time", "available", "online"}]``
  sorted by time, the shape of the API presence replaces (``revision=true``
  adds each row's revision). One bounded page (``limit``, default 10,000, at
  most 100,000 rows); when the range holds more, a ``Link: <...>; rel="next"``
  header gives the next page's URL (and ``X-Next-From``, or with
  ``newest=true`` ``X-Next-To``, where it starts). A bad parameter is a 400
  with ``{"error": ...}``. ``segment=city,vehicle_type&city=...&vehicle_type=...``
  gives the rows of one segment value instead (``segment_summary``), same shape
  and paging;
- ``GET /segments?from=&to=&limit=``: every configured segment definition and its
  values in the range (default: the hour ending at the newest segment row), each
  with its latest row, most available first;
- ``GET /zones?resolution=&at=``: the zone map of a configured ``h3:R`` segment at
  one bucket, a GeoJSON FeatureCollection of cell polygons;
- ``GET /status``: pipeline status (offsets, Kafka lag, watermark, retention
  gaps, totals, dead letters by reason); Kafka being down is reported, not an
  error;
- ``GET /metrics``: the same figures in Prometheus text format (prometheus_client);
- ``GET /healthz``: 200 when MongoDB answers, 503 otherwise;
- ``GET /``: the dashboard, served from the package (no CDN).

Security (README "The API and the dashboard"): with ``PRESENCE_API_TOKEN``
set, every endpoint but ``/healthz`` and the dashboard's static files (``/``
and ``/static/``, which hold no data) needs ``Authorization: Bearer
<token>``; ``PRESENCE_CORS_ORIGINS`` lets browser pages on other origins
call it; bound to a loopback address, requests whose ``Host`` is not that
loopback name and port are refused (a DNS-rebinding defence).

Cost: ``/status`` and ``/metrics`` read a few documents whatever the size of
the data, through one cached payload (:data:`STATUS_TTL_SECONDS`) refreshed by one
request at a time in a worker thread; every MongoDB and Kafka call runs in a
worker thread, never on the event loop, and ``/healthz`` has threads of its
own, so it answers while other requests wait for the database.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import anyio
import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from presence.core.pings import bucket_iso
from presence.settings import Settings, load_settings
from presence.core.segments import CITY, H3, VEHICLE_TYPE
from presence.tools.dashboard_config import add_dashboard_config
from presence.tools.reports import (
    DEFAULT_PAGE, DEFAULT_SEGMENT_VALUES, MAX_PAGE, MAX_SEGMENT_VALUES, KafkaWatermarks,
    SegmentQueryError, TimeError, bucket_epoch, configured_segments, fetch_page, mongo_client,
    parse_range, parse_time, pipeline_status, resolve_definition, segments_overview,
    select_value, store_error, zones_geojson,
)

SEGMENT_FIELDS = (CITY, VEHICLE_TYPE, H3)
"""Query parameters that carry a segment value in ``/reports?segment=...``."""

WEB_DIR = Path(__file__).resolve().parent / "web"

STATUS_TTL_SECONDS = 1.0
"""Seconds one ``/status`` payload is served before MongoDB and Kafka are asked again."""

OPEN_PATHS = ("/healthz", "/")
OPEN_PREFIXES = ("/static/",)
"""Paths served without the API token: the health probe and the dashboard's files."""

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text format every Prometheus reads (our names are plain ASCII, so prometheus_client's
output is that format whatever version it labels it with)."""


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)


# ------------------------------------------------------------------ guards


def loopback_hosts(host: str, port: int | None) -> frozenset[str] | None:
    """The ``Host`` header values to accept when serving on ``host``:``port``.

    ``None`` (no check) unless ``host`` is a loopback address or
    ``localhost``: a server bound to all interfaces is reached under names
    we cannot know. A port of 0 or ``None`` accepts any port.
    """
    name = host.strip("[]").lower()
    try:
        loopback = name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return None
    if not port:
        return frozenset(LOOPBACK_NAMES)
    hosts = {f"{n}:{port}" for n in LOOPBACK_NAMES}
    if port == 80:
        hosts.update(LOOPBACK_NAMES)
    return frozenset(hosts)


class HostCheck:
    """Refuse requests whose ``Host`` header is not one we serve (DNS rebinding).

    A page on ``evil.example`` whose name is re-pointed at 127.0.0.1 makes the
    browser send ``Host: evil.example:8000``: refused with a 400.
    ``allowed`` entries are ``name`` (any port) or ``name:port``.
    """

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(h.lower() for h in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = ""
            for key, value in scope.get("headers", ()):
                if key == b"host":
                    host = value.decode("latin-1").lower()
                    break
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if host not in self.allowed and name not in self.allowed:
                shown = host[:100] or "(none)"
                response = _json_response(400, {"error": (
                    f"Host header {shown!r} is not served here; use one of "
                    f"{', '.join(sorted(self.allowed))} (presence serve --allowed-host adds names)")})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BearerAuth:
    """``Authorization: Bearer <token>`` on every path but the open ones (constant-time check)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode("utf-8")

    @staticmethod
    def is_open(path: str) -> bool:
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.is_open(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        given = None
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = credentials.strip()
                break
        if given is not None and hmac.compare_digest(given, self.token):
            await self.app(scope, receive, send)
            return
        if given is None:
            message = "this endpoint needs the API token: send Authorization: Bearer <PRESENCE_API_TOKEN>"
            challenge = 'Bearer realm="presence"'
        else:
            message = "invalid API token"
            challenge = 'Bearer realm="presence", error="invalid_token"'
        response = _json_response(401, {"error": message}, {"WWW-Authenticate": challenge})
        await response(scope, receive, send)


def cors_origins(value: str | tuple[str, ...]) -> list[str]:
    """``PRESENCE_CORS_ORIGINS`` as a list: empty = none, ``*`` anywhere = any origin."""
    items = value.split(",") if isinstance(value, str) else value
    origins = [o.strip().rstrip("/") for o in items if o.strip()]
    return ["*"] if "*" in origins else origins


# ------------------------------------------------------------------ status cache


@dataclass
class _Snapshot:
    at: float
    payload: dict[str, Any] | None
    error: ApiError | None


class StatusCache:
    """The status payload, computed by one worker thread at a time and kept ``ttl`` seconds.

    Any number of concurrent requests cost one computation: while one runs,
    the others await it (on the event loop, holding no thread). A failure
    (MongoDB down) is kept just as long, so it is not retried per request.
    """

    def __init__(self, compute: Callable[[], dict[str, Any]], ttl: float = STATUS_TTL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.compute = compute
        self.ttl = ttl
        self.clock = clock
        self.latest: _Snapshot | None = None
        self._task: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self.requests = 0
        """Requests served (for tests)."""
        self.computations = 0
        """Payloads computed (for tests)."""

    async def get(self) -> dict[str, Any]:
        """The payload, or raise the :class:`ApiError` of the last computation."""
        self.requests += 1
        snap = self.latest
        if snap is None or self.clock() - snap.at >= self.ttl:
            loop = asyncio.get_running_loop()
            if self._task is None or self._loop is not loop:
                self._loop = loop
                self._task = asyncio.ensure_future(self._refresh())
            snap = await asyncio.shield(self._task)
        if snap.error is not None:
            raise ApiError(snap.error.status, snap.error.message)
        assert snap.payload is not None
        return snap.payload

    async def _refresh(self) -> _Snapshot:
        try:
            payload = await anyio.to_thread.run_sync(self.compute, limiter=self._limiter)
            snap = _Snapshot(self.clock(), payload, None)
        except ApiError as exc:
            snap = _Snapshot(self.clock(), None, exc)
        finally:
            self._task = None
        self.computations += 1
        self.latest = snap
        return snap


# ------------------------------------------------------------------ the app


def create_app(settings: Settings | None = None, kafka_timeout: float = 2.0,
               allowed_hosts: Iterable[str] | None = None,
               status_ttl: float = STATUS_TTL_SECONDS) -> FastAPI:
    """The API. ``allowed_hosts``: accepted ``Host`` values (``None``: no check);
    ``presence serve`` passes :func:`loopback_hosts` of its address."""
    settings = settings or load_settings()
    client = mongo_client(settings, timeout_ms=2000)
    db = client[settings.mongo_db]
    kafka = KafkaWatermarks(settings, timeout=kafka_timeout)
    health_threads = anyio.CapacityLimiter(4)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        kafka.close()
        client.close()

    app = FastAPI(
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads from a CDN; the schema stays at /openapi.json
        redoc_url=None,
        title="presence",
        description="Drivers online and available per time bucket.",
        version="0.1.0",
    )
    app.state.settings = settings
    app.state.kafka = kafka

    # Middleware: the last added runs first. Host check, then CORS (a preflight
    # carries no token, and a 401 must still carry CORS headers), then the token.
    if settings.api_token:
        app.add_middleware(BearerAuth, token=settings.api_token)
    origins = cors_origins(settings.cors_origins)
    if origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["GET"],
            allow_headers=["Authorization"], expose_headers=["Link", "X-Next-From", "X-Next-To"],
            max_age=600,
        )
    if allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed=allowed_hosts)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return _json_response(exc.status, {"error": exc.message})

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "query")
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return _json_response(400, {"error": "; ".join(problems) or "bad request"})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _json_response(exc.status_code, {"error": str(exc.detail)}, exc.headers)

    def store_failed(exc: PyMongoError) -> ApiError:
        return ApiError(503, str(store_error(settings, exc)))

    # A sync handler: FastAPI runs it in a worker thread, off the event loop.
    @app.get("/reports", summary="Report rows of a time range, sorted by time (one page)")
    def reports(
        request: Request,
        start: str | None = Query(None, alias="from",
                                  description="First bucket: ISO-8601 (UTC if no offset) or epoch seconds"),
        end: str | None = Query(None, alias="to",
                                description="Last bucket: ISO-8601 (UTC if no offset) or epoch seconds"),
        limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE, description="Most rows in this page"),
        newest: bool = Query(False, description="The newest rows of the range instead of the "
                                                "oldest (still sorted by time); the next page is older"),
        revision: bool = Query(False, description="Add each row's revision"),
        segment: str | None = Query(
            None, description="A configured segment definition (e.g. city,vehicle_type): the "
                              "rows of one of its values, given as one query parameter per "
                              "field (city=, vehicle_type=, h3=<hex cell>)"),
    ) -> Response:
        try:
            time_range = parse_range(start, end)
        except TimeError as exc:
            raise ApiError(400, str(exc)) from None
        values = segment_values_of(request)
        try:
            selection = None
            if segment is not None:
                selection = select_value(
                    resolve_definition(segment, configured_segments(settings, db)), values)
            elif values:
                raise SegmentQueryError(
                    f"{', '.join(values)} given without segment= (e.g. "
                    "segment=city,vehicle_type&city=...&vehicle_type=...)")
            page = fetch_page(db, time_range, limit, newest=newest, segment=selection)
        except SegmentQueryError as exc:
            raise ApiError(400, str(exc)) from None
        except PyMongoError as exc:
            raise store_failed(exc) from None
        if revision:
            body = [{"time": r.time, "available": r.available, "online": r.online,
                     "revision": r.revision} for r in page.rows]
        else:
            body = [{"time": r.time, "available": r.available, "online": r.online}
                    for r in page.rows]
        headers = {}
        if page.next_bucket is not None:
            at = bucket_iso(page.next_bucket)
            if newest:
                url = request.url.include_query_params(to=at)
                headers["X-Next-To"] = at
            else:
                url = request.url.include_query_params(**{"from": at})
                headers["X-Next-From"] = at
            headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
        return Response(orjson.dumps(body), media_type="application/json", headers=headers)

    def segment_values_of(request: Request) -> dict[str, str]:
        """The segment value fields among the query parameters (each at most once)."""
        values: dict[str, str] = {}
        for name, value in request.query_params.multi_items():
            if name in SEGMENT_FIELDS:
                if name in values:
                    raise ApiError(400, f"{name} given twice")
                values[name] = value
        return values

    @app.get("/segments", summary="The configured segment definitions and their values "
                                  "in a range, each with its latest row")
    def segments(
        start: str | None = Query(None, alias="from",
                                  description="First bucket: ISO-8601 (UTC if no offset) or "
                                              "epoch seconds. Without from and to: the hour "
                                              "ending at the newest bucket with segment rows"),
        end: str | None = Query(None, alias="to",
                                description="Last bucket: ISO-8601 (UTC if no offset) or "
                                            "epoch seconds"),
        limit: int = Query(DEFAULT_SEGMENT_VALUES, ge=1, le=MAX_SEGMENT_VALUES,
                           description="Most values per definition (most available first)"),
    ) -> Response:
        try:
            time_range = parse_range(start, end)
        except TimeError as exc:
            raise ApiError(400, str(exc)) from None
        try:
            overview, time_range = segments_overview(
                db, configured_segments(settings, db), time_range, limit)
            body = {
                "segments": overview,
                "from": _iso_or_none(time_range.start),
                "to": _iso_or_none(time_range.end),
            }
        except PyMongoError as exc:
            raise store_failed(exc) from None
        return _json_response(200, body)

    @app.get("/zones", summary="The zone map: a GeoJSON FeatureCollection of the H3 cells "
                               "of one bucket, with online and available drivers")
    def zones(
        resolution: int | None = Query(None, ge=0, le=15,
                                       description="H3 resolution of a configured segment "
                                                   "h3:R (default: the only one configured)"),
        at: str | None = Query(None, description="An instant in the bucket to show: ISO-8601 "
                                                 "(UTC if no offset) or epoch seconds. "
                                                 "Default: the newest bucket with cells"),
    ) -> Response:
        try:
            instant = parse_time(at, "at")
        except TimeError as exc:
            raise ApiError(400, str(exc)) from None
        try:
            body = zones_geojson(db, configured_segments(settings, db), resolution, instant)
        except SegmentQueryError as exc:
            raise ApiError(400, str(exc)) from None
        except PyMongoError as exc:
            raise store_failed(exc) from None
        return Response(orjson.dumps(body), media_type="application/geo+json")

    def compute_status() -> dict[str, Any]:
        try:
            status = pipeline_status(settings, db, kafka=kafka)
        except PyMongoError as exc:
            raise store_failed(exc) from None
        status["database"] = settings.mongo_db
        status["generatedAt"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return status

    cache = StatusCache(compute_status, ttl=status_ttl)
    app.state.status_cache = cache

    @app.get("/status", summary="Pipeline status: offsets, lag, watermark, gaps, dead letters")
    async def status() -> Response:
        return _json_response(200, await cache.get())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(lambda: cache.latest))
    app.state.metrics_registry = registry

    @app.get("/metrics", summary="The status figures in Prometheus text format")
    async def metrics() -> Response:
        try:
            await cache.get()
        except ApiError:
            pass  # presence_mongo_up 0
        return Response(generate_latest(registry), media_type=METRICS_CONTENT_TYPE)

    def ping() -> float:
        began = time.perf_counter()
        client.admin.command("ping")
        return (time.perf_counter() - began) * 1000

    @app.get("/healthz", summary="200 when MongoDB answers")
    async def healthz() -> Response:
        # Threads of its own: a flood of other requests cannot hold it up.
        try:
            took = await anyio.to_thread.run_sync(ping, limiter=health_threads)
        except PyMongoError as exc:
            return _json_response(503, {"status": "unavailable",
                                        "mongo": str(store_error(settings, exc))})
        return _json_response(200, {"status": "ok", "mongo": "ok", "mongoMs": round(took, 1)})

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    add_dashboard_config(app, settings)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    return app


# ------------------------------------------------------------------ metrics


def _iso_or_none(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


DETERMINISTIC = ("Deterministic: the same topic gives the same total whatever the workers, "
                 "processes, batching or crashes.")
DEPENDS_ON_BATCHING = ("A count of writes, not of pings: it depends on batching and timing "
                       "(how often a row was written before all its pings were read).")

HELP = {
    "presence_mongo_up": "1 if MongoDB answered the last status query (refreshed at most "
                         "once a second), else 0; when 0 no other family has samples.",
    "presence_kafka_up": "1 if Kafka answered the last query for the topic's high "
                         "watermarks, else 0.",
    "presence_pings_total": "Messages read by the dataflow, by outcome: valid (counted), "
                            "invalid (dead-lettered: malformed, or a future timestamp), "
                            "too_late (dead-lettered: older than its partition's watermark "
                            "minus the correction horizon). " + DETERMINISTIC,
    "presence_late_pings_total": "Valid pings older than their own partition's watermark "
                                 "when read but not too late; counted, and they may correct "
                                 "rows already written. Part of outcome=\"valid\". "
                                 + DETERMINISTIC,
    "presence_corrected_late_pings_total": "The same count as presence_late_pings_total "
                                           "(the name earlier versions used): valid pings older "
                                           "than their own partition's watermark when read, "
                                           "not too late. " + DETERMINISTIC,
    "presence_rows_written_total": "Writes of report rows to report_summary, first writes and "
                                   "rewrites (one per row revision written). "
                                   + DEPENDS_ON_BATCHING,
    "presence_row_rewrites_total": "Writes of a report row that had been written before "
                                   "(corrections: revision 2 and up). " + DEPENDS_ON_BATCHING,
    "presence_watermark_seconds": "The dataflow's watermark in epoch seconds: the least of "
                                  "its partitions' watermarks (greatest event time read minus "
                                  "the allowed lateness), idle and finished partitions left out.",
    "presence_partition_next_offset": "Next offset of the partition the dataflow will process.",
    "presence_partition_high_watermark": "Kafka high watermark of the partition (the offset "
                                         "the next message produced will get).",
    "presence_partition_lag": "Messages of the partition not processed yet: Kafka high "
                              "watermark minus the next offset to process.",
    "presence_partition_gap_offsets": "Offsets of the partition lost to Kafka retention "
                                      "before they were read (sum over the recorded gaps).",
    "presence_partition_max_event_time_seconds": "Greatest event time of a valid ping read "
                                                 "from the partition (epoch seconds).",
    "presence_dead_letters": "Messages dead-lettered since the first run, by reason "
                             "(the dataflow's totals, not a count of stored documents, "
                             "which expire after PRESENCE_DEAD_LETTER_TTL_DAYS). "
                             + DETERMINISTIC,
    "presence_report_rows": "Rows in report_summary (the count in the collection's metadata).",
    "presence_unlocated_pings_total": "Valid pings without a valid location (lat/lng), so in "
                                      "no zone of an h3 segment; counted only when a segment "
                                      "has an h3 dimension. " + DETERMINISTIC,
    "presence_segment_other_pings_total": "Pings counted under the value \"other\" of a "
                                          "segment definition because it had "
                                          "PRESENCE_MAX_SEGMENT_VALUES values in the bucket "
                                          "already; one series per definition, never per "
                                          "value. Depends on arrival order.",
    "presence_segment_rows_written_total": "Writes of segment rows to segment_summary, per "
                                           "segment definition (first writes and rewrites). "
                                           + DEPENDS_ON_BATCHING,
    "presence_segment_overflow_rows_total": "Writes of segment rows marked overflow (values "
                                            "beyond PRESENCE_MAX_SEGMENT_VALUES counted under "
                                            "\"other\"), per segment definition. "
                                            + DEPENDS_ON_BATCHING,
    "presence_latest_bucket_seconds": "Bucket start of the newest row in report_summary "
                                      "(epoch seconds).",
}
"""Every metric family served, with what it counts (README "Metrics")."""


def status_metrics(status: dict[str, Any] | None, mongo_up: bool) -> list[Metric]:
    """The metric families of one status payload (``None`` when MongoDB did not answer)."""
    out: list[Metric] = []

    def gauge(name: str, labels: list[str] | None = None) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, HELP[name], labels=labels)
        out.append(family)
        return family

    def counter(name: str, value: float, labels: list[str] | None = None) -> CounterMetricFamily:
        family = CounterMetricFamily(name, HELP[name], labels=labels)
        if labels is None:
            family.add_metric([], value)
        out.append(family)
        return family

    gauge("presence_mongo_up").add_metric([], 1 if mongo_up else 0)
    if status is None:
        return out
    kafka = status.get("kafka", {})
    gauge("presence_kafka_up", ["topic"]).add_metric(
        [str(kafka.get("topic", ""))], 1 if kafka.get("reachable") else 0)
    totals = status.get("totals", {})
    pings = counter("presence_pings_total", 0, ["outcome"])
    for outcome, key in (("valid", "valid"), ("invalid", "invalid"), ("too_late", "tooLate")):
        pings.add_metric([outcome], totals.get(key, 0))
    counter("presence_late_pings_total", totals.get("late", 0))
    counter("presence_corrected_late_pings_total", totals.get("correctedLate", 0))
    counter("presence_rows_written_total", totals.get("rowsWritten", 0))
    counter("presence_row_rewrites_total", totals.get("rowRewrites", 0))
    watermark = gauge("presence_watermark_seconds")
    if _epoch(status.get("watermark")) is not None:
        watermark.add_metric([], _epoch(status["watermark"]))
    parts = status.get("partitions", [])
    per_partition = [
        ("presence_partition_next_offset", lambda p: p.get("nextOffset")),
        ("presence_partition_high_watermark", lambda p: p.get("highWatermark")),
        ("presence_partition_lag", lambda p: p.get("lag")),
        ("presence_partition_gap_offsets", lambda p: sum(g["lost"] for g in p.get("gaps", []))),
        ("presence_partition_max_event_time_seconds", lambda p: _epoch(p.get("maxEventTime"))),
    ]
    for name, value_of in per_partition:
        family = gauge(name, ["topic", "partition"])
        for p in parts:
            value = value_of(p)
            if value is not None:
                family.add_metric([str(p["topic"]), str(p["partition"])], value)
    dead = gauge("presence_dead_letters", ["reason"])
    for reason, n in sorted(status.get("deadLetters", {}).get("byReason", {}).items()):
        dead.add_metric([reason], n)
    reports = status.get("reports", {})
    gauge("presence_report_rows").add_metric([], reports.get("count", 0))
    latest = gauge("presence_latest_bucket_seconds")
    if reports.get("last"):
        latest.add_metric([], bucket_epoch(reports["last"]))
    seg = status.get("segmentTotals") or {}
    counter("presence_unlocated_pings_total", seg.get("unlocated", 0))
    by_definition = seg.get("segments") or {}
    for name, field in (("presence_segment_other_pings_total", "otherPings"),
                        ("presence_segment_rows_written_total", "rowsWritten"),
                        ("presence_segment_overflow_rows_total", "overflowRows")):
        family = counter(name, 0, ["segment"])
        for definition, counts in sorted(by_definition.items()):
            family.add_metric([definition], counts.get(field, 0))
    return out


class StatusCollector:
    """A prometheus_client collector over the API's cached status payload."""

    def __init__(self, latest: Callable[[], _Snapshot | None]) -> None:
        self.latest = latest

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration; families depend on the data

    def collect(self) -> Iterable[Metric]:
        snap = self.latest()
        if snap is None or snap.error is not None:
            return status_metrics(None, mongo_up=False)
        return status_metrics(snap.payload, mongo_up=True)


def prometheus_text(status: dict[str, Any] | None, mongo_up: bool) -> str:
    """The status as Prometheus exposition text (format 0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    snap = _Snapshot(0.0, status, None if mongo_up else ApiError(503, "MongoDB down"))
    registry.register(StatusCollector(lambda: snap))
    return generate_latest(registry).decode("utf-8")
