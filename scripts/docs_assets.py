"""Regenerate the README's demo sample and docs/*.png from a real run (`make docs-assets`).

Runs scripts/demo.sh (exactly what `make demo` runs) twice on the local stack,
with a fixed start time so the sample's time buckets stay put, then writes:

  README.md             the demo's output, between the markers
                        <!-- demo-output:start --> and <!-- demo-output:end -->;
                        a figure that differed between the two runs, or that
                        depends on how reads were batched (timings, rates, rows
                        written, rows corrected), is shown as [varies], the
                        report's revision column is left out, a line only one
                        run printed too, and long tables keep head, middle, end
  docs/demo-chart.png   the chart the second run drew (presence plot)
  docs/demo-zones.png   its zone map picture (presence zones -o zones.png)
  docs/dashboard.png    the dashboard on the demo's data, in headless Chromium
                        (Debian's package, driven by Playwright, as the tests do)
  docs/dashboard-segments.png   the dashboard with the chart on one city (the
                        segment picker) and the zone map below it
  docs/zone-map.png     the zone map alone (the demo's h3:R segment, its busiest
                        area, coloured by available drivers, one cell hovered);
                        both only when the demo's API lists an h3:R segment

Needs `make install`, the local stack (`make stack-up`) and /usr/bin/chromium
(`make system-deps`); `make docs-assets` does all three first. It uses the
demo's topic and database (demo-pings, presence_demo; DEMO_TOPIC / DEMO_DB
override them) and its demo-output/ directory, like `make demo`.

    --dry-run           check the prerequisites and the README markers, print the
                        plan, change nothing (exit 1 only if the README markers
                        are missing or broken)
    --from-log FILE [FILE2]   no run: splice the sample from saved demo output
                        (each full run keeps demo-output/docs-run-1.log and
                        docs-run-2.log); no pictures
    --once              run the demo once (faster; no comparison of two runs)
    --segments-from-stub  no run: draw docs/dashboard-segments.png and
                        docs/zone-map.png from tests/dashboard_stub.py's made-up
                        figures (the shapes of GET /segments and /zones)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_MARK = "<!-- demo-output:start -->"
END_MARK = "<!-- demo-output:end -->"
DEFAULT_START = "2026-11-28T08:00:00Z"
DEFAULT_TOPIC, DEFAULT_DB = "demo-pings", "presence_demo"
VARIES = "[varies]"
CHROMIUM = os.environ.get("PRESENCE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 1000}

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# " in 0.3 s (231,696/s)", " in 12 ms", " in 1 s": how long something took.
_TIMING = re.compile(r"\s+in\s+\d[\d.,]*\s?(?:ms|s|seconds?)\b(?:\s*\([\d.,]+\s*(?:/s|pings/s|msg/s)\))?")
_RATE = re.compile(r"\s*\(?[\d.,]+\s*(?:pings|msgs?|rows)?/s\)?")
# Figures that depend on how reads were batched (SPEC: counts never do, revisions may).
_VARYING = [
    re.compile(r"(?P<pre>\brows? written:?\s+)(?P<n>\d[\d,]*)", re.I),
    re.compile(r"(?P<pre>\brows? rewritten:?\s+)(?P<n>\d[\d,]*)", re.I),
    re.compile(r"(?P<pre>\brewrites?:?\s+)(?P<n>\d[\d,]*)", re.I),
    re.compile(r"(?P<pre>\brevisions?:?\s+)(?P<n>\d[\d,]*)", re.I),
    re.compile(r"(?P<n>\d[\d,]*)(?P<post>\s+(?:rows?\s+)?(?:late-)?corrected\b)", re.I),
    re.compile(r"(?P<pre>\b(?:late-)?corrected rows?:?\s+)(?P<n>\d[\d,]*)", re.I),
]
_DROP_SECTIONS = re.compile(r"^==> Fresh start", re.I)
_END = re.compile(r"^(Done in\b|Done\.)")


def _mask_varying(line: str) -> str:
    for pat in _VARYING:
        def repl(m: re.Match) -> str:
            groups = m.groupdict()
            return f"{groups.get('pre') or ''}{VARIES}{groups.get('post') or ''}"
        line = pat.sub(repl, line)
    return line


def _drop_column(rows: list[str], index: int) -> list[str]:
    out = []
    for row in rows:
        sep = "+" if set(row.replace("+", "").strip()) <= {"-"} else "|"
        cells = row.split(sep)
        if len(cells) > index:
            del cells[index]
            if index == len(cells):  # it was the last column: drop the separator before it too
                cells[-1] = cells[-1].rstrip()
        out.append(sep.join(cells).rstrip())
    return out


def _strip_revision_column(lines: list[str]) -> list[str]:
    """Drop a table column named "revision" (and the late-corrected marks after it)."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        cells = [c.strip().lower() for c in line.split("|")]
        if "|" in line and "revision" in cells:
            index = cells.index("revision")
            j = i
            table = []
            while j < len(lines) and ("|" in lines[j] or lines[j].strip() in ("...", "…")
                                      or set(lines[j].strip()) <= {"-", "+"} and lines[j].strip()):
                table.append(lines[j])
                j += 1
            kept = []
            for row in table:
                if "|" in row or "+" in row:
                    row = re.sub(r"\s*\((?:late-)?corrected\)\s*$", "", row)
                    kept.append(_drop_column([row], index)[0])
                else:
                    kept.append(row)
            out.extend(kept)
            i = j
            continue
        out.append(line)
        i += 1
    return out


def _elide_tables(lines: list[str], keep_over: int = 12) -> list[str]:
    """Long tables (the report) keep their head, their middle and their end."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if "|" in lines[i] and i + 1 < len(lines) and set(lines[i + 1].strip()) <= {"-", "+", "|"} \
                and lines[i + 1].strip():
            j = i + 2
            while j < len(lines) and "|" in lines[j]:
                j += 1
            rows = lines[i + 2:j]
            out.extend(lines[i:i + 2])
            if len(rows) > keep_over:
                mid = len(rows) // 2
                rows = rows[:3] + ["..."] + rows[mid - 1:mid + 2] + ["..."] + rows[-2:]
            out.extend(rows)
            i = j
            continue
        out.append(lines[i])
        i += 1
    return out


_FIGURE = re.compile(r"(\d[\d,.:TZ+-]*\d(?:Z)?|\d)")


def merge_runs(first: str, second: str) -> str:
    """What two runs printed alike: lines are paired by their text without figures;
    a figure that differs becomes [varies]; a line only one run printed is left out."""
    import difflib

    a, b = first.splitlines(), second.splitlines()
    split_a, split_b = [_FIGURE.split(x) for x in a], [_FIGURE.split(y) for y in b]
    skel_a = ["\0".join(parts[0::2]) for parts in split_a]
    skel_b = ["\0".join(parts[0::2]) for parts in split_b]
    out: list[str] = []
    matcher = difflib.SequenceMatcher(None, skel_a, skel_b, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            xs, ys = split_a[block.a + k], split_b[block.b + k]
            out.append("".join(p if n % 2 == 0 or p == q else VARIES
                               for n, (p, q) in enumerate(zip(xs, ys))))
    return "\n".join(out)


def sanitize(raw: str, topic: str = DEFAULT_TOPIC, db: str = DEFAULT_DB) -> str:
    """The demo's console output reduced to what every run prints the same."""
    lines: list[str] = []
    dropping = False
    for line in _ANSI.sub("", raw).replace("\r", "\n").splitlines():
        line = line.rstrip()
        if _END.match(line):
            break
        if line.startswith("==> "):
            dropping = bool(_DROP_SECTIONS.match(line))
        if dropping:
            continue
        if re.match(r"^\s*(dataflow finished|finished)\b", line):
            line = _TIMING.sub("", line)
        line = _TIMING.sub("", line)
        line = _RATE.sub("", line) if "/s" in line else line
        if topic != DEFAULT_TOPIC:
            line = line.replace(topic, DEFAULT_TOPIC)
        if db != DEFAULT_DB:
            line = line.replace(db, DEFAULT_DB)
        lines.append(_mask_varying(line))
    lines = _elide_tables(_strip_revision_column(lines))
    text = "\n".join(lines).strip("\n")
    return re.sub(r"\n{3,}", "\n\n", text)


def splice(readme: str, sample: str) -> str:
    """README text with the block between the markers replaced by the sample."""
    if readme.count(START_MARK) != 1 or readme.count(END_MARK) != 1:
        raise ValueError(f"README needs exactly one {START_MARK} and one {END_MARK}")
    head, rest = readme.split(START_MARK)
    _, tail = rest.split(END_MARK)
    if "```" in sample:
        raise ValueError("the sample contains a code fence")
    return f"{head}{START_MARK}\n```\n{sample}\n```\n{END_MARK}{tail}"


def _say(msg: str) -> None:
    print(f"docs-assets: {msg}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_demo(env: dict[str, str], log: Path) -> str:
    _say(f"running scripts/demo.sh (start {env['DEMO_START']}; output in {log})")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], cwd=ROOT, env=env,
                              stdout=fh, stderr=subprocess.STDOUT)
    text = log.read_text()
    if proc.returncode != 0:
        sys.stderr.write(text[-3000:])
        raise SystemExit(f"docs-assets: the demo failed (exit {proc.returncode}); log: {log}")
    return text


def screenshot_dashboard(env: dict[str, str], out: Path) -> None:
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"docs-assets: {CHROMIUM} missing (make system-deps installs Debian's chromium)")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    port = _free_port()
    server_env = {k: v for k, v in env.items() if k != "PRESENCE_API_TOKEN"}
    server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "presence"), "serve", "--host", "127.0.0.1",
                               "--port", str(port)], cwd=ROOT, env=server_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                err = server.stderr.read().decode(errors="replace") if server.stderr else ""
                raise SystemExit(f"docs-assets: presence serve exited ({server.returncode}): {err[-500:]}")
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("docs-assets: presence serve did not answer /healthz within 60 s")
            time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(f"{url}/?range=all")
                try:
                    page.wait_for_selector("#chart[data-state=ready]", timeout=60000)
                    page.wait_for_load_state("networkidle", timeout=30000)
                except PlaywrightTimeout:
                    raise SystemExit("docs-assets: the dashboard did not draw its chart within 60 s"
                                     " (#chart[data-state=ready])") from None
                page.wait_for_timeout(1000)  # let the status panel and the legend settle
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out), full_page=True)
                if page.evaluate("window.presence.state.segments !== null && "
                                 "window.presence.state.segments.some(d => d.resolution != null)"):
                    screenshot_segments(browser, url, out.parent)
                else:
                    _say("the demo's API lists no h3:R segment: docs/dashboard-segments.png and"
                         " docs/zone-map.png left as they are")
            finally:
                browser.close()
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)
    _say(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def screenshot_segments(browser, url: str, docs: Path) -> None:
    """docs/dashboard-segments.png and docs/zone-map.png from the dashboard at ``url``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{url}/?range=all&live=0")
        try:
            page.wait_for_function("window.presence.state.segments !== null", timeout=60000)
            # The chart on the busiest value of the first definition without h3 (city).
            name = page.evaluate("(window.presence.state.segments.find(d => d.resolution == null)"
                                 " || window.presence.state.segments[0]).segment")
            page.select_option("#segment", name)
            page.wait_for_function("window.presence.state.segmentKey !== null && "
                                   "document.getElementById('chart').dataset.state === 'ready'",
                                   timeout=60000)
            page.wait_for_selector("#map[data-state=ready]", timeout=60000)
            page.wait_for_load_state("networkidle", timeout=30000)
        except PlaywrightTimeout:
            raise SystemExit("docs-assets: the dashboard did not draw the segment chart and the"
                             " zone map within 60 s") from None
        page.wait_for_timeout(500)
        page.screenshot(path=str(docs / "dashboard-segments.png"), full_page=True)
        _say(f"wrote {docs / 'dashboard-segments.png'}")
        # The map alone, one of its busiest cells hovered (the figures it shows).
        page.evaluate("document.getElementById('zones').scrollIntoView()")
        cell = page.evaluate("() => { const cells = window.presence.state.map.cells.slice()"
                             ".sort((a, b) => b.available - a.available);"
                             " return cells.length ? cells[Math.min(2, cells.length - 1)].id : null; }")
        if cell:
            page.hover(f"#map path[data-h3='{cell}']")
            page.wait_for_selector("#map-tip", state="visible", timeout=5000)
        page.locator("#zones").screenshot(path=str(docs / "zone-map.png"))
        _say(f"wrote {docs / 'zone-map.png'}")
    finally:
        page.close()


def segments_from_stub(docs: Path) -> None:
    """The two segment pictures from tests/dashboard_stub.py (no demo run, no stack)."""
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"docs-assets: {CHROMIUM} missing (make system-deps installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT))
    from tests.dashboard_stub import Served, Stub

    docs.mkdir(parents=True, exist_ok=True)
    with Served(Stub()) as served, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            screenshot_segments(browser, served.url, docs)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/docs_assets.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--dry-run", action="store_true", help="check and print the plan; change nothing")
    parser.add_argument("--from-log", type=Path, metavar="FILE", nargs="+",
                        help="splice the README sample from saved demo output (one or two runs);"
                             " no run, no pictures")
    parser.add_argument("--once", action="store_true", help="run the demo once, not twice")
    parser.add_argument("--no-screenshot", action="store_true", help="leave docs/dashboard.png as it is")
    parser.add_argument("--segments-from-stub", action="store_true",
                        help="only draw docs/dashboard-segments.png and docs/zone-map.png, from"
                             " tests/dashboard_stub.py's made-up figures (no run)")
    parser.add_argument("--start", default=os.environ.get("DEMO_START", DEFAULT_START),
                        help=f"the demo's first simulated instant (default {DEFAULT_START})")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)

    if args.segments_from_stub:
        segments_from_stub(args.docs)
        return 0

    readme_text = args.readme.read_text()
    try:
        splice(readme_text, "check")
    except ValueError as exc:
        print(f"docs-assets: {args.readme}: {exc}", file=sys.stderr)
        return 1

    env = dict(os.environ)
    env["DEMO_START"] = args.start
    out_dir = ROOT / env.get("DEMO_OUT", "demo-output")
    topic = env.get("DEMO_TOPIC", DEFAULT_TOPIC)
    db = env.get("DEMO_DB", DEFAULT_DB)
    env["PRESENCE_TOPIC"], env["PRESENCE_MONGO_DB"] = topic, db
    runs = 1 if args.once else 2
    logs = [out_dir / f"docs-run-{i}.log" for i in range(1, runs + 1)]

    if args.dry_run:
        checks = [
            (".venv (make install)", (ROOT / ".venv" / "bin" / "presence").exists()),
            ("the local stack (make stack-up)",
             subprocess.run(["bash", str(ROOT / "stack" / "stack.sh"), "status"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0),
            (f"{CHROMIUM} (make system-deps)", Path(CHROMIUM).exists()),
        ]
        for what, ok in checks:
            _say(f"{'ok     ' if ok else 'missing'} {what}")
        _say(f"would run scripts/demo.sh {runs}x with DEMO_START={args.start} (topic {topic},"
             f" database {db}), keep its output in {', '.join(str(p) for p in logs)}")
        _say(f"would rewrite {args.readme} between {START_MARK} and {END_MARK}")
        _say(f"would write {args.docs / 'demo-chart.png'}, {args.docs / 'demo-zones.png'}"
             + ("" if args.no_screenshot else f", {args.docs / 'dashboard.png'} and (when the demo"
                f" has an h3:R segment) {args.docs / 'dashboard-segments.png'},"
                f" {args.docs / 'zone-map.png'}"))
        _say("dry run: nothing changed")
        return 0

    if args.from_log:
        if len(args.from_log) > 2:
            parser.error("--from-log takes one or two files")
        raws = [path.read_text() for path in args.from_log]
    else:
        raws = [run_demo(env, path) for path in logs]
    samples = [sanitize(raw, topic=topic, db=db) for raw in raws]
    sample = samples[0] if len(samples) == 1 else merge_runs(*samples)
    if not sample.strip():
        print("docs-assets: the demo printed nothing to show", file=sys.stderr)
        return 1
    new = splice(readme_text, sample)
    if new != readme_text:
        args.readme.write_text(new)
        _say(f"updated the demo sample in {args.readme}")
    else:
        _say(f"the demo sample in {args.readme} is already up to date")
    if args.from_log:
        return 0

    chart = out_dir / "chart.png"
    if not chart.exists():
        print(f"docs-assets: the demo wrote no {chart}", file=sys.stderr)
        return 1
    args.docs.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(chart, args.docs / "demo-chart.png")
    _say(f"wrote {args.docs / 'demo-chart.png'}")
    zones = out_dir / "zones.png"
    if zones.exists():  # the demo ran with an h3:R segment
        shutil.copyfile(zones, args.docs / "demo-zones.png")
        _say(f"wrote {args.docs / 'demo-zones.png'}")
    if not args.no_screenshot:
        screenshot_dashboard(env, args.docs / "dashboard.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
