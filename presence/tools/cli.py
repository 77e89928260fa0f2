"""The ``presence`` command: simulate pings, read reports, chart them, serve them.

Settings come from the ``PRESENCE_*`` environment variables (see
:mod:`presence.settings`). Exit codes (README, "Exit codes"): 0 done; 1 a
runtime failure, such as MongoDB or Kafka being unreachable or a busy port,
one line on stderr, never a traceback; 2 a bad argument or setting; 130
interrupted (Ctrl-C).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from presence.settings import Settings, SettingsError, load_settings, scrub

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
"""The exit codes every command keeps (README, "Exit codes")."""


class BadSetting(click.ClickException):
    """A bad ``PRESENCE_*`` setting: one line naming the variable, exit 2."""

    exit_code = EXIT_USAGE


class Interrupted(click.ClickException):
    """Ctrl-C: one line, exit 130 (no ``Aborted!``, no traceback)."""

    exit_code = EXIT_INTERRUPTED

    def show(self, file: Any = None) -> None:
        click.echo(f"presence: {self.message}", err=True)


class PresenceGroup(click.Group):
    """Turns any runtime error of a subcommand into one line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort):
            raise
        except click.exceptions.ClickException as exc:
            from presence.settings import env_secrets

            exc.message = scrub(exc.message, env_secrets())
            raise
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None
        except SettingsError as exc:
            raise BadSetting(scrub(str(exc))) from None
        except Exception as exc:  # noqa: BLE001 - the whole point: no traceback
            if os.environ.get("PRESENCE_DEBUG"):
                raise
            raise click.ClickException(_one_line(exc)) from None


def _one_line(exc: BaseException) -> str:
    from presence.settings import env_secrets

    return scrub(_describe(exc), env_secrets())


def _describe(exc: BaseException) -> str:
    from presence.tools.reports import StoreUnavailable, TimeError
    from presence.io.kafka import KafkaError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (SettingsError, StoreUnavailable, KafkaError, TimeError)):
        return text
    try:
        from pymongo.errors import PyMongoError

        if isinstance(exc, PyMongoError):
            return f"MongoDB failed: {type(exc).__name__}: {text[:200]}"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, OSError):
        return text
    return f"{type(exc).__name__}: {text[:300]}"


def settings_from_env(**overrides: Any) -> Settings:
    """The ``PRESENCE_*`` settings, with command-line values on top."""
    settings = load_settings()
    changes = {k: v for k, v in overrides.items() if v is not None}
    if not changes:
        return settings
    try:
        return Settings.model_validate({**settings.model_dump(), **changes})
    except Exception as exc:  # pydantic ValidationError: say which option
        first = exc.errors(include_url=False)[0] if hasattr(exc, "errors") else {}
        field = (first.get("loc") or ("value",))[0]
        message = scrub(str(first.get("msg", exc)).removeprefix("Value error, "))
        raise click.BadParameter(message, param_hint=f"--{str(field).replace('_', '-')}")


class TimeType(click.ParamType):
    """ISO-8601 (no offset = UTC) or epoch seconds; the value stays text."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from presence.tools.reports import TimeError, parse_time

        try:
            parse_time(str(value), param.name if param else "time")
        except TimeError as exc:
            self.fail(str(exc).split(": ", 1)[-1], param, ctx)
        return str(value)


TIME = TimeType()


def range_options(func):
    func = click.option(
        "--to", "end", type=TIME, default=None,
        help="Last bucket start to include: ISO-8601 (UTC if no offset) or epoch seconds.",
    )(func)
    func = click.option(
        "--from", "start", type=TIME, default=None,
        help="First bucket start to include: ISO-8601 (UTC if no offset) or epoch seconds.",
    )(func)
    return func


def _time_range(start: str | None, end: str | None):
    from presence.tools.reports import TimeError, parse_range

    try:
        return parse_range(start, end)
    except TimeError as exc:
        raise click.UsageError(str(exc)) from None


@click.group(name="presence", cls=PresenceGroup, context_settings=CONTEXT)
@click.version_option(package_name="presence", prog_name="presence")
def cli() -> None:
    """presence: drivers online and available, per time bucket.

    Settings come from PRESENCE_* environment variables (PRESENCE_KAFKA_BROKERS,
    PRESENCE_TOPIC, PRESENCE_MONGO_URI, PRESENCE_MONGO_DB, ...). The dataflow
    itself runs with `python -m bytewax.run dataflow`.
    """


# ------------------------------------------------------------------ simulate


@cli.command(context_settings=CONTEXT)
@click.option("--drivers", type=click.IntRange(min=1), default=1000, show_default=True,
              help="How many drivers to simulate.")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=10,
              show_default=True, help="Simulated minutes of pings.")
@click.option("--start", type=TIME, default=None,
              help="Event time of the first simulated instant (ISO-8601 or epoch seconds). "
                   "Default: with --fast, the current minute minus --minutes; else now.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="PINGS_PER_S",
              help="Replay in real time, at most this many pings per second.")
@click.option("--fast", is_flag=True,
              help="Produce as fast as Kafka takes them (historical event times from --start).")
@click.option("--late-fraction", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="Fraction of valid pings sent 1 to 10 minutes after their event time.")
@click.option("--bad-fraction", type=click.FloatRange(0, 1), default=0.005, show_default=True,
              help="Fraction of malformed pings (invalid JSON, missing or bad fields, too large).")
@click.option("--partitions", type=click.IntRange(min=1, max=10_000), default=4,
              show_default=True, help="Partitions of the topic if it has to be created.")
@click.option("--seed", type=int, default=None,
              help="Random seed: the same seed gives the same pings. Default: a random one.")
@click.option("--topic", default=None, help="Kafka topic. Default: PRESENCE_TOPIC.")
@click.option("--recreate-topic", is_flag=True,
              help="Delete the topic first (all its pings) and create it anew.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar (default: when stderr is a terminal).")
def simulate(drivers: int, minutes: float, start: str | None, rate: float | None, fast: bool,
             late_fraction: float, bad_fraction: float, partitions: int, seed: int | None,
             topic: str | None, recreate_topic: bool, progress: bool | None) -> None:
    """Produce realistic driver pings to Kafka (SPEC input format).

    Drivers log on and off, go on and off duty and ping every 20 to 40 s while
    online. Messages are keyed by driver id; one driver stays on one partition.
    Creates the topic if it is missing. Prints a one-line summary at the end.
    """
    import random

    from confluent_kafka import Producer

    from presence.tools.reports import parse_time
    from presence.io.kafka import ensure_topic
    from presence.tools.simulate import (
        SimConfig, Summary, default_start, generate, produce, producer_config,
    )

    if rate is not None and fast:
        raise click.UsageError("--rate and --fast are mutually exclusive")
    if late_fraction + bad_fraction > 1:
        raise click.UsageError("--late-fraction plus --bad-fraction must not exceed 1")
    settings = settings_from_env(topic=topic)
    first = parse_time(start) if start is not None else default_start(fast, minutes)
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    from confluent_kafka import KafkaException

    from presence.io.kafka import logging_config

    try:
        # Refused settings first, as a bad setting (exit 2), before any connection.
        Producer({**producer_config(settings.kafka_brokers, settings.kafka_extra),
                  "log_level": 0}).flush(0)
    except (KafkaException, ValueError, TypeError) as exc:
        err = exc.args[0] if exc.args else exc
        reason = err.str() if hasattr(err, "str") else str(err)
        raise BadSetting(f"PRESENCE_KAFKA_CONFIG: librdkafka refused it: "
                         f"{settings.scrub(reason)}") from None
    count, created = ensure_topic(settings.kafka_brokers, settings.topic, partitions,
                                  recreate=recreate_topic, extra=settings.kafka_extra)
    if not created and count != partitions:
        click.echo(f"topic {settings.topic} exists with {count} partitions; using them", err=True)
    config = SimConfig(drivers=drivers, minutes=minutes, start=first,
                       late_fraction=late_fraction, bad_fraction=bad_fraction,
                       partitions=count, seed=seed)
    producer = Producer({**producer_config(settings.kafka_brokers, settings.kafka_extra),
                         **logging_config("WARNING")})
    mode = "fast" if fast else (f"real time, at most {rate:g}/s" if rate else "real time")
    # Ctrl-C during the sending is produce's to count; one just before it began
    # is a summary of nothing sent, never a bare "interrupted".
    try:
        click.echo(f"simulating {drivers:,} drivers for {minutes:g} min ({mode}), seed {seed}",
                   err=True)
        show = sys.stderr.isatty() if progress is None else progress
        bar = None
        callback = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=round(minutes * 60), unit="sim-s", file=sys.stderr,
                       desc=f"simulate -> {settings.topic}", dynamic_ncols=True, leave=False)

            def callback(done: float, sent: int) -> None:
                value = min(bar.total, max(0, int(done)))
                if value > bar.n:
                    bar.update(value - bar.n)
                bar.set_postfix_str(f"{sent:,} pings", refresh=False)

        try:
            summary = produce(generate(config), settings.topic, producer, config.start,
                              fast=fast, rate=rate, progress=callback)
        finally:
            if bar is not None:
                bar.close()
    except KeyboardInterrupt:
        summary = Summary(settings.topic, interrupted=True)
    click.echo(summary.line())
    if summary.interrupted:
        raise Interrupted(f"interrupted: {summary.sent:,} pings delivered to {settings.topic}, "
                          f"{summary.failed:,} not delivered")


# ------------------------------------------------------------------ report


SEGMENT_HELP = ("One value of a configured segment (PRESENCE_SEGMENTS, else the segments the "
                "database records), as FIELD=VALUE pairs separated by commas: "
                "\"city=Hong Kong,vehicle_type=van\", \"h3=88411c8d27fffff\". The set of "
                "fields picks the definition. Default: the global rows.")


def segment_option(func):
    return click.option("--segment", "segment", default=None, metavar="FIELD=VALUE,...",
                        help=SEGMENT_HELP)(func)


def _selection(settings: Settings, text: str | None):
    """The segment value of ``--segment`` (None without it); a bad one is exit 2."""
    if text is None:
        return None
    from presence.tools.reports import SegmentQueryError, open_selection

    try:
        return open_selection(settings, text)
    except SegmentQueryError as exc:
        raise click.BadParameter(str(exc), param_hint="'--segment'") from None


@cli.command(context_settings=CONTEXT)
@range_options
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True, help="Output format.")
@segment_option
def report(start: str | None, end: str | None, fmt: str, segment: str | None) -> None:
    """Print the report rows (report_summary), one per time bucket.

    JSON is a list of {"time", "online", "available", "revision"}. With --segment, the
    rows of that segment value (segment_summary), in the same formats.
    """
    from presence.tools.reports import load_rows

    time_range = _time_range(start, end)
    settings = settings_from_env()
    selection = _selection(settings, segment)
    rows = load_rows(settings, time_range, segment=selection)
    out = sys.stdout
    if fmt == "json":
        out.write(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["time", "online", "available", "revision"])
        for r in rows:
            writer.writerow([r.time, r.online, r.available, r.revision])
    else:
        out.write(format_table(rows))
        if not rows:
            click.echo(no_rows_message(settings, time_range, selection), err=True)


def no_rows_message(settings: Settings, time_range, selection=None) -> str:
    """Why there is nothing to show: an empty database, or rows outside the range."""
    from presence.io.mongo import REPORTS
    from presence.tools.reports import mongo_client, store_error

    if selection is not None:
        return (f"no rows of {selection.describe()} {time_range.describe()} in database "
                f"{settings.mongo_db} (a value with no pings in a bucket has no row there)")
    client = mongo_client(settings)
    try:
        coll = client[settings.mongo_db][REPORTS]
        first = coll.find_one({}, {"timeBucket": 1}, sort=[("timeBucket", 1)])
        last = coll.find_one({}, {"timeBucket": 1}, sort=[("timeBucket", -1)]) if first else None
    except Exception as exc:  # noqa: BLE001 - pymongo: say it in one line
        raise store_error(settings, exc) from None
    finally:
        client.close()
    if first is None:
        return (f"no rows yet in database {settings.mongo_db} (topic {settings.topic}): "
                "send pings (`presence simulate`, or your producers) and run the dataflow "
                "(`make run`, or `make run-bounded` to process what is there and stop)")
    return (f"no rows {time_range.describe()} in database {settings.mongo_db}; its rows go "
            f"from {first['timeBucket']} to {last['timeBucket']} (UTC)")


def format_table(rows) -> str:
    """One line per bucket, like the console lines of the job presence replaces."""
    if not rows:
        return ""
    online_w = max(6, *(len(f"{r.online:,}") for r in rows))
    avail_w = max(9, *(len(f"{r.available:,}") for r in rows))
    lines = [
        f"{'time bucket (UTC)':<19} | {'online':>{online_w}} | {'available':>{avail_w}} | revision",
        f"{'-' * 19}-+-{'-' * online_w}-+-{'-' * avail_w}-+---------",
    ]
    corrected = 0
    for r in rows:
        mark = "  (late-corrected)" if r.revision > 1 else ""
        corrected += r.revision > 1
        lines.append(
            f"{r.time:<19} | {r.online:>{online_w},} | {r.available:>{avail_w},} | {r.revision:>8}{mark}"
        )
    lines.append(f"{len(rows):,} buckets, {corrected:,} corrected by late pings")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ plot


@cli.command(context_settings=CONTEXT)
@range_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              required=True, help="Output file: .png or .svg.")
@click.option("--title", default=None,
              help="Chart title.  [default: Available vs Online drivers, and the segment "
                   "value with --segment]")
@segment_option
def plot(start: str | None, end: str | None, output: Path, title: str | None,
         segment: str | None) -> None:
    """Draw the "Available vs Online drivers" line chart to a PNG or SVG file
    (with --segment, of one segment value)."""
    suffix = output.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise click.BadParameter("the file name must end in .png or .svg",
                                 param_hint="'-o' / '--output'")
    from presence.tools.plot import DEFAULT_TITLE, render_chart
    from presence.tools.reports import load_rows

    time_range = _time_range(start, end)
    settings = settings_from_env()
    selection = _selection(settings, segment)
    if title is None:
        title = DEFAULT_TITLE
        if selection is not None:
            title += ": " + ", ".join(f"{f}={v}" for f, v in selection.key.items())
    rows = load_rows(settings, time_range, segment=selection)
    if not rows:
        raise click.ClickException(
            f"{no_rows_message(settings, time_range, selection)}; nothing to plot")
    if output.parent and not output.parent.exists():
        output.parent.mkdir(parents=True, exist_ok=True)
    render_chart(rows, output, title=title)
    corrected = sum(r.revision > 1 for r in rows)
    click.echo(f"wrote {output} ({len(rows):,} buckets, {corrected:,} late-corrected)")


# ------------------------------------------------------------------ zones


@cli.command(context_settings=CONTEXT)
@click.option("--at", type=TIME, default=None,
              help="An instant in the bucket to map: ISO-8601 (UTC if no offset) or epoch "
                   "seconds. Default: the newest bucket with cells.")
@click.option("--resolution", type=click.IntRange(0, 15), default=None,
              help="H3 resolution R of a configured segment h3:R. Default: the only one "
                   "configured.")
@click.option("-o", "--output", default="-", show_default=True,
              type=click.Path(dir_okay=False, writable=True, allow_dash=True, path_type=Path),
              help="Output file: GeoJSON, or a picture when it ends in .png or .svg; "
                   "- is standard output (GeoJSON).")
def zones(at: str | None, resolution: int | None, output: Path) -> None:
    """Write the zone map of one bucket as GeoJSON: a FeatureCollection of the H3 cells of
    a configured segment h3:R, each a polygon with "h3", "online", "available" and
    "timeBucket" properties (what GET /zones serves); with -o FILE.png or .svg, a picture
    of it instead (one panel per area, cells coloured by available drivers). A summary
    line goes to stderr.
    """
    from presence.tools.reports import SegmentQueryError, load_zones, parse_time

    settings = settings_from_env()
    try:
        body = load_zones(settings, resolution, parse_time(at, "at") if at else None)
    except SegmentQueryError as exc:
        raise click.UsageError(str(exc)) from None
    text = json.dumps(body, separators=(",", ":")) + "\n"
    to_stdout = str(output) == "-"
    picture = not to_stdout and output.suffix.lower() in (".png", ".svg")
    if picture:
        from presence.tools.plot import render_zones

        if output.parent and not output.parent.exists():
            output.parent.mkdir(parents=True, exist_ok=True)
        render_zones(body, output)
    elif to_stdout:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        if output.parent and not output.parent.exists():
            output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    cells = body["features"]
    where = "stdout" if to_stdout else str(output)
    if body["timeBucket"] is None:
        click.echo(f"no cells of segment h3:{body['resolution']} yet in database "
                   f"{settings.mongo_db}: wrote an empty FeatureCollection to {where}", err=True)
        return
    online = sum(f["properties"]["online"] for f in cells)
    available = sum(f["properties"]["available"] for f in cells)
    click.echo(f"wrote {where}: {len(cells):,} cells of h3:{body['resolution']} at "
               f"{body['timeBucket']} ({online:,} online and {available:,} available "
               "summed over cells)" + (", truncated" if body.get("truncated") else ""),
               err=True)


# ------------------------------------------------------------------ serve


@cli.command(context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True, help="Server log level.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME[:PORT]",
              help="Also accept this Host header (repeatable). On a loopback address only "
                   "localhost, 127.0.0.1 and [::1] with the port are accepted (a DNS-rebinding "
                   "defence); '*' turns the check off.")
def serve(host: str, port: int, log_level: str, allowed_hosts: tuple[str, ...]) -> None:
    """Serve the reports API and the live dashboard.

    GET / (dashboard), /reports?from=&to=&limit=[&segment=...], /segments, /zones,
    /status, /metrics, /healthz.
    PRESENCE_API_TOKEN closes every endpoint but /healthz to requests without
    Authorization: Bearer <token>; PRESENCE_CORS_ORIGINS lets pages on other
    origins call it.
    """
    import uvicorn

    from presence.tools.api import create_app, loopback_hosts

    settings = settings_from_env()
    sock = listen(host, port)  # a busy port is one line and exit 1, before any other output
    port = sock.getsockname()[1]
    hosts = loopback_hosts(host, port)
    if "*" in allowed_hosts:
        hosts = None
    elif hosts is not None:
        hosts = hosts | {h.lower() for h in allowed_hosts}
    app = create_app(settings, allowed_hosts=hosts)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"dashboard: http://{shown}:{port}/  (database {settings.mongo_db}, "
               f"topic {settings.topic}); Ctrl-C stops", err=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def listen(host: str, port: int):
    """A listening socket on (host, port), as uvicorn would make it; one clear error if not."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {reason.lower()} (another server uses it? "
            "pick another with --port)"
        ) from None
    sock.set_inheritable(True)
    return sock


# ------------------------------------------------------------------ stack


def stack_script() -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        script = base / "stack" / "stack.sh"
        if script.is_file():
            return script
    raise click.ClickException(
        "stack/stack.sh not found: run this from the presence repository"
    )


@cli.command(context_settings=CONTEXT)
@click.argument("action", type=click.Choice(["up", "down", "status"]))
def stack(action: str) -> None:
    """Start, stop or show the local Kafka + MongoDB-compatible stack (stack/stack.sh)."""
    script = stack_script()
    code = subprocess.call(["bash", str(script), action])
    if code:
        sys.exit(EXIT_INTERRUPTED if code == EXIT_INTERRUPTED else EXIT_FAILED)


from presence.tools.recovery_cli import recovery as _recovery  # noqa: E402 - its own module

cli.add_command(_recovery)


def main() -> None:
    cli(prog_name="presence")


if __name__ == "__main__":  # pragma: no cover
    main()
