"""What the dashboard's page needs to know from the settings: ``GET /dashboard.json``.

Only settings meant for every browser that opens the dashboard (today the map's
tile URL template, ``PRESENCE_MAP_TILES``); never the API token or any other
secret. The route sits behind the same token, Host and CORS rules as the API.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from presence.settings import Settings

PATH = "/dashboard.json"


def dashboard_config(settings: Settings) -> dict[str, Any]:
    """The page's settings: ``{"mapTiles": "<template>" | null}``."""
    return {"mapTiles": settings.map_tiles or None}


def add_dashboard_config(app: FastAPI, settings: Settings) -> None:
    """Serve :func:`dashboard_config` at ``GET /dashboard.json`` (idempotent)."""
    if any(getattr(route, "path", None) == PATH for route in app.router.routes):
        return
    body = dashboard_config(settings)

    @app.get(PATH, include_in_schema=False)
    def _dashboard_config() -> JSONResponse:
        return JSONResponse(body, headers={"Cache-Control": "no-cache"})
