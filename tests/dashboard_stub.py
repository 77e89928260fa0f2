"""A stand-in for the API's segment endpoints, for the dashboard's browser tests and pictures.

It serves the real dashboard files (``presence/tools/web``) and answers ``/reports``
(whole fleet, or ``?segment=...&<field>=...``), ``/status``, ``/segments`` and
``/zones`` with the shapes fixed in SEGMENTS-INTERFACES.md (the HTTP API part),
from made-up but plausible figures: three cities, three vehicle types, real H3
cells (resolution 8) around each city centre, one row per minute. No MongoDB.

``Stub.override[path] = (status, text)`` makes a path answer that instead (a bad
or empty answer); ``Stub.requests`` records every data request as (path, query).
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import h3
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from presence.core.segments import SegmentsError, parse_segments
from presence.tools.reports import TimeError, parse_range, parse_time

WEB_DIR = Path(__file__).resolve().parent.parent / "presence" / "tools" / "web"
START = datetime(2026, 11, 28, 8, 0, tzinfo=timezone.utc)
CITIES = {  # real centres
    "Hong Kong": (22.2988, 114.1722),
    "Lisbon": (38.7223, -9.1393),
    "Nairobi": (-1.2864, 36.8172),
}
RADIUS = {"Hong Kong": 7, "Lisbon": 5, "Nairobi": 4}  # grid_disk rings of resolution-8 cells
VEHICLES = ("car", "van", "motorbike")
SIZE = {("Hong Kong", "car"): 420, ("Hong Kong", "van"): 150, ("Hong Kong", "motorbike"): 260,
        ("Lisbon", "car"): 210, ("Lisbon", "van"): 60, ("Lisbon", "motorbike"): 90,
        ("Nairobi", "car"): 120, ("Nairobi", "van"): 45, ("Nairobi", "motorbike"): 180}


def _noise(*parts: Any) -> float:
    """A deterministic number in [0, 1) for ``parts``."""
    return (zlib.crc32(repr(parts).encode()) % 10007) / 10007


def bucket_text(minute: int) -> str:
    return (START + timedelta(minutes=minute)).strftime("%Y-%m-%d %H:%M:%S")


def bucket_iso(minute: int) -> str:
    return (START + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ")


class Stub:
    def __init__(self, segments: str = "city;city,vehicle_type;h3:8", minutes: int = 30) -> None:
        self.definitions = parse_segments(segments)
        self.minutes = minutes
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.override: dict[str, tuple[int, str]] = {}
        self.zone_extra: dict[str, Any] = {}  # more members of /zones' answer ("other", "truncated")
        self.config: dict[str, Any] = {"mapTiles": None}  # GET /dashboard.json
        self.lock = threading.Lock()

    # -------------------------------------------------------------- figures

    @staticmethod
    def counts(city: str, vehicle: str, minute: int) -> tuple[int, int]:
        size = SIZE[(city, vehicle)]
        online = round(size * (1 + 0.25 * math.sin(minute / 6 + len(city)) + 0.05 * _noise(city, vehicle, minute)))
        available = round(online * (0.55 + 0.2 * math.sin(minute / 9 + len(vehicle))))
        return online, available

    def value_row(self, key: dict[str, str], minute: int) -> tuple[int, int] | None:
        cities = [key["city"]] if "city" in key else list(CITIES)
        vehicles = [key["vehicle_type"]] if "vehicle_type" in key else list(VEHICLES)
        if "h3" in key:
            cell = self.cells(8, minute).get(key["h3"])
            return (cell[0], cell[1]) if cell else None
        if any(c not in CITIES for c in cities) or any(v not in VEHICLES for v in vehicles):
            return None
        online = available = 0
        for c in cities:
            for v in vehicles:
                o, a = self.counts(c, v, minute)
                online, available = online + o, available + a
        return online, available

    def cells(self, resolution: int, minute: int) -> dict[str, tuple[int, int]]:
        """H3 cell -> (online, available) at ``minute``: only cells with drivers."""
        out = {}
        for city, (lat, lng) in CITIES.items():
            centre = h3.latlng_to_cell(lat, lng, resolution)
            radius = RADIUS[city]
            for cell in h3.grid_disk(centre, radius):
                d = h3.grid_distance(centre, cell)
                online = round(14 * math.exp(-(d / (0.55 * radius)) ** 2) * (0.6 + 0.8 * _noise(cell, minute // 5))
                               - 1.5 * _noise(cell))
                if online <= 0:
                    continue
                available = round(online * (0.15 + 0.85 * _noise(cell, "share", minute // 10)))
                out[cell] = (online, available)
        return out

    def rows(self, key: dict[str, str] | None) -> list[dict[str, Any]]:
        rows = []
        for m in range(self.minutes):
            got = self.value_row(key or {}, m)
            if got is None:
                continue
            rows.append({"time": bucket_text(m), "available": got[1], "online": got[0],
                         "revision": 2 if m % 7 == 3 else 1})
        return rows

    # -------------------------------------------------------------- answers

    def reports(self, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        try:
            time_range = parse_range(query.get("from"), query.get("to"))
        except TimeError as exc:
            return 400, {"error": str(exc)}, {}
        key = None
        if "segment" in query:
            try:
                wanted = parse_segments(query["segment"])
            except SegmentsError as exc:
                return 400, {"error": f"segment: {exc}"}, {}
            known = [d for d in self.definitions if len(wanted) == 1
                     and set(d.dimensions) == set(wanted[0].dimensions)]
            if not known:
                return 400, {"error": f"segment {query['segment']!r} is not configured"
                                      f" (PRESENCE_SEGMENTS: {';'.join(d.name for d in self.definitions)})"}, {}
            definition = known[0]
            try:
                definition.value_of_key({f: query[f] for f in query if f in definition.fields})
            except SegmentsError as exc:
                return 400, {"error": str(exc)}, {}
            key = {f: query[f] for f in definition.fields}
        rows = [r for r in self.rows(key)
                if (time_range.start is None or parse_time(r["time"].replace(" ", "T")) >= time_range.start)
                and (time_range.end is None or parse_time(r["time"].replace(" ", "T")) <= time_range.end)]
        limit = int(query.get("limit", 1000))
        headers = {}
        if len(rows) > limit:
            rows = rows[-limit:] if query.get("newest") == "true" else rows[:limit]
            headers["Link"] = '</reports?more>; rel="next"'
        if query.get("revision") != "true":
            rows = [{k: v for k, v in r.items() if k != "revision"} for r in rows]
        return 200, rows, headers

    def segments(self, query: dict[str, str]) -> dict[str, Any]:
        limit = int(query.get("limit", 200))
        last = self.minutes - 1
        out = []
        for d in self.definitions:
            fields = list(d.fields)
            resolution = d.resolution
            if fields == ["h3"]:
                keys = [{"h3": c} for c in self.cells(resolution, last)]
            else:
                keys = [{"city": c} for c in CITIES] if fields == ["city"] else \
                    [{f: v for f, v in zip(fields, (c, t))} for c in CITIES for t in VEHICLES]
            values = []
            for key in keys:
                online, available = self.value_row(key, last)
                values.append({"key": key, "timeBucket": bucket_iso(last),
                               "online": online, "available": available})
            values.sort(key=lambda v: (-v["available"], [v["key"][f] for f in fields]))
            out.append({"segment": d.name, "fields": fields, "resolution": resolution,
                        "valueCount": len(values), "truncated": len(values) > limit,
                        "values": values[:limit]})
        return {"segments": out, "from": bucket_iso(max(0, last - 59)), "to": bucket_iso(last)}

    def zones(self, query: dict[str, str]) -> tuple[int, Any]:
        try:
            resolution = int(query.get("resolution", ""))
        except ValueError:
            return 400, {"error": "resolution: give a whole number 0..15"}
        if f"h3:{resolution}" not in {d.name for d in self.definitions}:
            return 400, {"error": f"no h3:{resolution} segment is configured"}
        minute = self.minutes - 1
        if query.get("at"):
            try:
                at = parse_time(query["at"], "at")
            except TimeError as exc:
                return 400, {"error": str(exc)}
            minute = int((at - START.timestamp()) // 60)
        if not 0 <= minute < self.minutes:
            return 200, {"type": "FeatureCollection", "resolution": resolution, "timeBucket": None,
                         "features": []}
        features = []
        for cell, (online, available) in sorted(self.cells(resolution, minute).items()):
            ring = [[lng, lat] for lat, lng in h3.cell_to_boundary(cell)]
            ring.append(ring[0])
            features.append({"type": "Feature", "id": cell,
                             "geometry": {"type": "Polygon", "coordinates": [ring]},
                             "properties": {"h3": cell, "online": online, "available": available,
                                            "timeBucket": bucket_iso(minute)}})
        return 200, {"type": "FeatureCollection", "resolution": resolution,
                     "timeBucket": bucket_iso(minute), "features": features, **self.zone_extra}

    def status(self) -> dict[str, Any]:
        last = self.minutes - 1
        return {
            "kafka": {"topic": "pings", "reachable": True, "lag": 0},
            "watermark": bucket_iso(last),
            "totals": {"valid": 123456, "invalid": 12, "late": 40, "tooLate": 1,
                       "rowsWritten": 4321, "rowRewrites": 55},
            "reports": {"count": self.minutes, "first": bucket_text(0), "last": bucket_text(last)},
            "gaps": {"count": 0, "lostOffsets": 0},
            "deadLetters": {"total": 13, "byReason": {"invalid_json": 12, "too_late": 1}},
            "partitions": [{"topic": "pings", "partition": p, "state": "live", "nextOffset": 41152 + p,
                            "highWatermark": 41152 + p, "lag": 0, "valid": 41152, "invalid": 4,
                            "tooLate": 0, "gaps": []} for p in range(3)],
        }

    # -------------------------------------------------------------- the app

    def app(self) -> Starlette:
        def respond(path: str, status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
            if path in self.override:
                status, text = self.override[path]
                return Response(text, status_code=status, media_type="application/json")
            return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                            headers=headers or {})

        async def data(request: Request) -> Response:
            path = request.url.path
            query = dict(request.query_params)
            with self.lock:
                self.requests.append((path, query))
            if path == "/reports":
                status, body, headers = self.reports(query)
                return respond(path, status, body, headers)
            if path == "/segments":
                return respond(path, 200, self.segments(query))
            if path == "/zones":
                return respond(path, *self.zones(query))
            if path == "/dashboard.json":
                return respond(path, 200, self.config)
            return respond(path, 200, self.status())

        async def index(request: Request) -> Response:
            return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8")

        return Starlette(routes=[
            Route("/", index),
            Route("/reports", data), Route("/status", data),
            Route("/segments", data), Route("/zones", data), Route("/dashboard.json", data),
            Mount("/static", StaticFiles(directory=WEB_DIR)),
        ])

    def data_requests(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [q for p, q in self.requests if p == path]


class Served:
    """``Stub`` served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, stub: Stub) -> None:
        import socket

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.stub = stub
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(stub.app(), host="127.0.0.1", port=port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the dashboard stub did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
