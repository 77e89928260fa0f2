"""The reports API and live dashboard (FastAPI; ``presence serve`` runs it with uvicorn).

- ``GET /reports?from=&to=``: ``[{"time", "available", "online"}]`` sorted by
  time, the shape of the API presence replaces (``revision=true`` adds each
  row's revision); a bad parameter is a 400 with ``{"error": ...}``;
- ``GET /status``: pipeline status (offsets, Kafka lag, watermark, retention
  gaps, dead letters by reason); Kafka being down is reported, not an error;
- ``GET /metrics``: the same figures in Prometheus text format;
- ``GET /healthz``: 200 when MongoDB answers, 503 otherwise;
- ``GET /``: the dashboard, served from the package (no CDN).
"""

from __future__ import annotations

import math
from contextlib import asynccontextmanager
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException

from presence.reports import (
    TimeError, fetch_rows, mongo_client, parse_range, pipeline_status, store_error,
)
from presence.settings import Settings, load_settings

WEB_DIR = Path(__file__).resolve().parent / "web"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(settings: Settings | None = None, kafka_timeout: float = 2.0) -> FastAPI:
    settings = settings or load_settings()
    client = mongo_client(settings, timeout_ms=2000)
    db = client[settings.mongo_db]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
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

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "query")
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"error": "; ".join(problems) or "bad request"}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    def store_failed(exc: PyMongoError) -> ApiError:
        return ApiError(503, str(store_error(settings, exc)))

    @app.get("/reports", summary="Report rows of a time range, sorted by time")
    def reports(
        start: str | None = Query(None, alias="from",
                                  description="First bucket: ISO-8601 (UTC if no offset) or epoch seconds"),
        end: str | None = Query(None, alias="to",
                                description="Last bucket: ISO-8601 (UTC if no offset) or epoch seconds"),
        revision: bool = Query(False, description="Add each row's revision"),
    ) -> list[dict[str, Any]]:
        try:
            time_range = parse_range(start, end)
        except TimeError as exc:
            raise ApiError(400, str(exc)) from None
        try:
            rows = fetch_rows(db, time_range)
        except PyMongoError as exc:
            raise store_failed(exc) from None
        if revision:
            return [{"time": r.time, "available": r.available, "online": r.online,
                     "revision": r.revision} for r in rows]
        return [{"time": r.time, "available": r.available, "online": r.online} for r in rows]

    def status_payload() -> dict[str, Any]:
        try:
            status = pipeline_status(settings, db, kafka_timeout=kafka_timeout)
        except PyMongoError as exc:
            raise store_failed(exc) from None
        status["database"] = settings.mongo_db
        status["generatedAt"] = datetime.now().astimezone().isoformat(timespec="seconds")
        return status

    @app.get("/status", summary="Pipeline status: offsets, lag, watermark, gaps, dead letters")
    def status() -> dict[str, Any]:
        return status_payload()

    @app.get("/metrics", response_class=PlainTextResponse,
             summary="The status figures in Prometheus text format")
    def metrics() -> PlainTextResponse:
        try:
            text = prometheus_text(status_payload(), mongo_up=True)
        except ApiError:
            text = prometheus_text(None, mongo_up=False)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/healthz", summary="200 when MongoDB answers")
    def healthz() -> JSONResponse:
        began = time.perf_counter()
        try:
            client.admin.command("ping")
        except PyMongoError as exc:
            return JSONResponse({"status": "unavailable", "mongo": str(store_error(settings, exc))},
                                status_code=503)
        return JSONResponse({"status": "ok", "mongo": "ok",
                             "mongoMs": round((time.perf_counter() - began) * 1000, 1)})

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    return app


# ------------------------------------------------------------------ metrics


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def prometheus_text(status: dict[str, Any] | None, mongo_up: bool) -> str:
    """The status as Prometheus exposition text (format 0.0.4)."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str,
               samples: list[tuple[dict[str, Any], float | int | None]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            tag = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            number = repr(float(value)) if isinstance(value, float) else str(int(value))
            lines.append(f"{name}{{{tag}}} {number}" if tag else f"{name} {number}")

    family("presence_mongo_up", "gauge", "1 if MongoDB answered the status query.",
           [({}, int(mongo_up))])
    if status is None:
        return "\n".join(lines) + "\n"
    kafka = status.get("kafka", {})
    family("presence_kafka_up", "gauge", "1 if Kafka answered the offsets query.",
           [({"topic": kafka.get("topic", "")}, int(bool(kafka.get("reachable"))))])
    totals = status.get("totals", {})
    family("presence_pings_total", "counter", "Pings read, by outcome.", [
        ({"outcome": "valid"}, totals.get("valid", 0)),
        ({"outcome": "invalid"}, totals.get("invalid", 0)),
        ({"outcome": "too_late"}, totals.get("tooLate", 0)),
    ])
    family("presence_corrected_late_pings_total", "counter",
           "Late pings that corrected rows already written.",
           [({}, totals.get("correctedLate", 0))])
    family("presence_rows_written_total", "counter", "Report rows written (all revisions).",
           [({}, totals.get("rowsWritten", 0))])
    family("presence_watermark_seconds", "gauge", "The dataflow's watermark (epoch seconds).",
           [({}, _epoch(status.get("watermark")))])
    parts = status.get("partitions", [])
    key = lambda p: {"topic": p["topic"], "partition": p["partition"]}  # noqa: E731
    family("presence_partition_next_offset", "gauge", "Next offset the dataflow will process.",
           [(key(p), p.get("nextOffset")) for p in parts])
    family("presence_partition_high_watermark", "gauge", "Kafka high watermark of the partition.",
           [(key(p), p.get("highWatermark")) for p in parts])
    family("presence_partition_lag", "gauge", "Kafka high watermark minus next offset.",
           [(key(p), p.get("lag")) for p in parts])
    family("presence_partition_gap_offsets", "gauge",
           "Offsets lost to Kafka retention before they were read.",
           [(key(p), sum(g["lost"] for g in p.get("gaps", []))) for p in parts])
    family("presence_partition_max_event_time_seconds", "gauge",
           "Greatest valid event time read from the partition (epoch seconds).",
           [(key(p), _epoch(p.get("maxEventTime"))) for p in parts])
    reasons = status.get("deadLetters", {}).get("byReason", {})
    family("presence_dead_letters", "gauge", "Dead letters stored, by reason.",
           [({"reason": r}, n) for r, n in sorted(reasons.items())])
    reports = status.get("reports", {})
    family("presence_report_rows", "gauge", "Rows in report_summary.",
           [({}, reports.get("count", 0))])
    family("presence_latest_bucket_seconds", "gauge", "Start of the newest report row (epoch seconds).",
           [({}, _epoch(reports["last"].replace(" ", "T") + "+00:00") if reports.get("last") else None)])
    return "\n".join(lines) + "\n"
