"""The "Available vs Online drivers" chart, as a PNG or SVG file (matplotlib, Agg)."""

from __future__ import annotations

from datetime import datetime, timezone
from math import cos, radians
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot

import matplotlib.dates as mdates  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from presence.tools.reports import ReportRow  # noqa: E402

ONLINE_COLOR = "#1f77b4"
AVAILABLE_COLOR = "#2ca02c"
CORRECTED_COLOR = "#d62728"
DEFAULT_TITLE = "Available vs Online drivers"


def render_chart(rows: Sequence[ReportRow], output: Path | str,
                 title: str = DEFAULT_TITLE) -> Path:
    """Write the chart of ``rows`` (sorted by time) to ``output`` (.png or .svg)."""
    output = Path(output)
    times = [datetime.fromtimestamp(r.epoch, timezone.utc) for r in rows]
    online = [r.online for r in rows]
    available = [r.available for r in rows]

    fig = Figure(figsize=(11, 5.5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    marker = "o" if len(rows) <= 120 else None
    ax.plot(times, online, color=ONLINE_COLOR, linewidth=2, marker=marker, markersize=3,
            label="Online")
    ax.plot(times, available, color=AVAILABLE_COLOR, linewidth=2, marker=marker, markersize=3,
            label="Available")
    ax.fill_between(times, available, online, color=ONLINE_COLOR, alpha=0.07, linewidth=0)

    corrected = [i for i, r in enumerate(rows) if r.revision > 1]
    if corrected:
        ax.scatter([times[i] for i in corrected] * 2,
                   [online[i] for i in corrected] + [available[i] for i in corrected],
                   s=46, facecolors="none", edgecolors=CORRECTED_COLOR, linewidths=1.6,
                   zorder=5, label="Late-corrected (revision > 1)")

    ax.set_title(title, fontsize=14, fontweight="bold")
    span = f"{times[0]:%Y-%m-%d %H:%M} to {times[-1]:%Y-%m-%d %H:%M} UTC" if times else ""
    if span:
        fig.suptitle(span, fontsize=9, color="#555555", x=0.99, ha="right")
    ax.set_xlabel("Time (UTC)")
    ax.set_ylabel("Drivers")
    locator = mdates.AutoDateLocator(tz=timezone.utc, minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=timezone.utc))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_ylim(bottom=0, top=max(online) * 1.1 + 1 if online else 1)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", frameon=True)
    fmt = output.suffix.lower().lstrip(".") or "png"
    fig.savefig(output, format=fmt)
    return output


AREA_DEGREES = 1.0
"""Cells whose first corner is within this many degrees of an area's first cell join it."""

MAX_AREAS = 12
"""Areas drawn at most (the busiest), one panel each."""


def zone_areas(features: Sequence[dict]) -> list[list[dict]]:
    """The cells of a ``/zones`` FeatureCollection grouped into areas (cities far
    apart), busiest (most available drivers) first."""
    areas: list[tuple[float, float, list[dict]]] = []
    for feature in features:
        lng, lat = feature["geometry"]["coordinates"][0][0]
        for a_lng, a_lat, cells in areas:
            if abs(lat - a_lat) <= AREA_DEGREES and abs(lng - a_lng) <= AREA_DEGREES:
                cells.append(feature)
                break
        else:
            areas.append((lng, lat, [feature]))
    groups = [cells for _, _, cells in areas]
    groups.sort(key=lambda cells: -sum(f["properties"]["available"] for f in cells))
    return groups


def render_zones(body: dict, output: Path | str) -> Path:
    """Write the zone map of a ``/zones`` FeatureCollection (``presence zones``) to
    ``output`` (.png or .svg): one panel per area, cells coloured by available drivers."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import Normalize

    output = Path(output)
    areas = zone_areas(body["features"])[:MAX_AREAS]
    columns = min(4, max(1, len(areas)))
    rows = max(1, -(-len(areas) // columns))
    fig = Figure(figsize=(3.6 * columns + 0.8, 3.4 * rows + 0.6), dpi=110, layout="constrained")
    most = max((f["properties"]["available"] for f in body["features"]), default=0)
    norm = Normalize(vmin=0, vmax=max(1, most))
    cmap = colormaps["YlGn"]
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, cells in zip(axes.flat, areas):
        polygons = [[tuple(p) for p in f["geometry"]["coordinates"][0]] for f in cells]
        colours = [cmap(norm(f["properties"]["available"])) for f in cells]
        ax.add_collection(PolyCollection(polygons, facecolors=colours, edgecolors="#999999",
                                         linewidths=0.2))
        ax.autoscale_view()
        lng, lat = polygons[0][0]
        ax.set_aspect(1 / max(0.05, cos(radians(lat))))  # a degree of longitude is shorter
        available = sum(f["properties"]["available"] for f in cells)
        online = sum(f["properties"]["online"] for f in cells)
        ax.set_title(f"near {abs(lat):.2f}° {'N' if lat >= 0 else 'S'}, "
                     f"{abs(lng):.2f}° {'E' if lng >= 0 else 'W'}\n"
                     f"{len(cells):,} cells · {available:,} available of {online:,} online",
                     fontsize=8)
    when = body.get("timeBucket") or "no bucket yet"
    fig.suptitle(f"Available drivers per H3 cell (resolution {body.get('resolution')}), "
                 f"bucket {when}", fontsize=12, fontweight="bold")
    if areas:
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.6,
                     label="available drivers in the cell")
    fmt = output.suffix.lower().lstrip(".") or "png"
    fig.savefig(output, format=fmt)
    return output
