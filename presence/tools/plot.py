"""The "Available vs Online drivers" chart, as a PNG or SVG file (matplotlib, Agg)."""

from __future__ import annotations

from datetime import datetime, timezone
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
