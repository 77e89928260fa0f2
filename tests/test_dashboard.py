"""The live dashboard in real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import os
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from presence.settings import load_settings
from tests.known_docs import BASE, known_rows, seed_database

CHROMIUM = os.environ.get("PRESENCE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} missing (make system-deps installs Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BY_REASON = {"invalid_json": 3, "missing_field": 2, "too_late": 1}
TOKEN = "dash-Token-77"


@pytest.fixture
def make_server(mongo_uri, unique_name):  # noqa: F811
    """Start the API on a free port over ``rows`` known rows; extra settings as keywords."""
    import uvicorn
    from pymongo import MongoClient

    from presence.tools.api import create_app

    client = MongoClient(mongo_uri)
    db = client[unique_name]
    servers = []

    def start(rows: int = 12, **extra: str):
        seed_database(db, topic="pings", rows=rows)
        db.pipeline_status.update_one({"_id": "totals"},
                                      {"$set": {"deadLettersByReason": BY_REASON}})
        env = {"PRESENCE_MONGO_URI": mongo_uri, "PRESENCE_MONGO_DB": unique_name,
               "PRESENCE_TOPIC": "pings", "PRESENCE_KAFKA_BROKERS": "127.0.0.1:1"}
        env.update({f"PRESENCE_{k.upper()}": v for k, v in extra.items()})
        port = free_port()
        config = uvicorn.Config(create_app(load_settings(env), kafka_timeout=0.5),
                                host="127.0.0.1", port=port, log_level="warning")
        srv = uvicorn.Server(config)
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        servers.append((srv, thread))
        deadline = time.monotonic() + 10
        while not srv.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}", db

    yield start
    for srv, thread in servers:
        srv.should_exit = True
        thread.join(10)
    client.drop_database(unique_name)
    client.close()


@pytest.fixture
def server(make_server):
    return make_server()


def new_page(browser, width: int = 1400, height: int = 950):
    context = browser.new_context(viewport={"width": width, "height": height},
                                  timezone_id="Asia/Kolkata")  # the page must show UTC anyway
    page = context.new_page()
    page.outside = []
    page.errors = []

    def only_local(route):
        host = urlsplit(route.request.url).hostname
        if route.request.url.startswith("data:") or host == "127.0.0.1":
            route.continue_()
        else:
            page.outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    # A 401 or 400 that the page shows is expected; anything else logged as an error is not.
    page.on("console", lambda msg: msg.type == "error" and "status of 40" not in msg.text
            and page.errors.append(msg.text))
    return context, page


@pytest.fixture
def page(browser):
    context, page = new_page(browser)
    yield page
    context.close()


def test_chart_points_status_and_screenshot(server, page, tmp_path):
    url, _ = server
    page.goto(f"{url}/?range=all")
    page.wait_for_selector("#chart[data-state=ready]", timeout=15000)
    assert page.get_attribute("#chart", "data-points") == "12"
    data = page.evaluate("window.presence.chart.data")
    assert len(data[0]) == 12
    assert data[0][0] == BASE.timestamp() and data[0][-1] == BASE.timestamp() + 11 * 60
    assert data[1] == [500 + i for i in range(12)]  # online
    assert data[2] == [400 + i for i in range(12)]  # available
    assert [i for i, v in enumerate(data[3]) if v is not None] == [3, 7, 11]  # revised
    assert page.get_attribute("#chart", "data-corrected") == "3"
    legend = page.inner_text(".u-legend")
    assert "Online" in legend and "Available" in legend and "Late-corrected" in legend
    box = page.locator("#chart canvas").bounding_box()
    assert box["width"] > 400 and box["height"] > 200
    # Axis labels in UTC, 24-hour clock, with the date at the first tick and each new day.
    assert "Time (UTC)" in page.inner_text("#chart")
    ticks = page.evaluate("window.presence.timeTicks(null, [1514779500, 1514779560, 1514851200])")
    assert ticks == ["04:05\n2018-01-01", "04:06", "00:00\n2018-01-02"]

    # Pipeline status.
    assert page.locator("#partitions tbody tr").count() == 2
    assert page.locator("#dead-letters tbody tr").count() == 3
    facts = page.inner_text("#facts")
    assert "2018-01-01 04:11:00" in facts  # watermark
    assert "unreachable" in facts  # Kafka is down here: said, not failed

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] >= 600 and pixels.shape[1] >= 1000
    assert pixels.std() > 0.01
    assert page.outside == [] and page.errors == []


def test_updates_live_without_reload(server, page):
    url, db = server
    page.goto(f"{url}/?range=all&refresh=1")
    page.wait_for_selector("#chart[data-state=ready]", timeout=15000)
    page.evaluate("window.notReloaded = true")
    assert page.evaluate("window.presence.points") == 12
    new = known_rows(13)[-1]
    db.report_summary.insert_one(new)
    page.wait_for_function("window.presence.points === 13", timeout=10000)
    assert page.evaluate("window.notReloaded") is True
    assert page.evaluate("window.presence.chart.data[1][12]") == new["driversOnlineCount"]
    # A revision arriving later is marked too.
    db.report_summary.update_one({"_id": new["_id"]}, {"$set": {"revision": 2}})
    page.wait_for_function("window.presence.chart.data[3][12] !== null", timeout=10000)
    assert page.errors == []


def test_range_picker(server, page):
    url, _ = server
    page.goto(f"{url}/?range=all&live=0")
    page.wait_for_selector("#chart[data-state=ready]", timeout=15000)
    page.select_option("#preset", "custom")
    page.fill("#from", (BASE + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M"))
    page.fill("#to", (BASE + timedelta(minutes=6)).strftime("%Y-%m-%dT%H:%M"))
    page.click("#range button[type=submit]")
    page.wait_for_function("window.presence.points === 5", timeout=10000)
    assert page.evaluate("window.presence.chart.data[1]") == [502, 503, 504, 505, 506]
    # A preset relative to now has none of 2018's rows, and says where the data is.
    page.select_option("#preset", "1h")
    page.wait_for_function("window.presence.points === 0", timeout=10000)
    assert page.is_visible("#empty")
    assert "2018-01-01 04:11:00" in page.inner_text("#empty")
    page.click("#show-all")
    page.wait_for_function("window.presence.points === 12", timeout=10000)
    assert page.errors == []


def test_url_range(server, page):
    url, _ = server
    page.goto(f"{url}/?from=2018-01-01T04:10:00Z&to=1514779860&live=0")  # to 04:11
    page.wait_for_selector("#chart[data-state=ready]", timeout=15000)
    assert page.get_attribute("#chart", "data-points") == "2"
    assert page.input_value("#preset") == "custom"
    assert page.input_value("#from") == "2018-01-01T04:10"


@pytest.mark.parametrize("query, words", [
    ("from=banana", ["from", "banana"]),
    ("from=1e15", ["from", "out of range"]),
    ("from=2018-01-02&to=2018-01-01", ["after"]),
])
def test_a_refused_range_shows_the_api_error_not_every_row(server, page, query, words, tmp_path):
    url, _ = server
    page.goto(f"{url}/?{query}&live=0")
    page.wait_for_selector("#chart[data-state=error]", timeout=15000)
    error = page.inner_text("#reports-error")
    assert page.is_visible("#reports-error")
    assert all(w in error for w in words), error
    assert page.evaluate("window.presence.points") == 0
    assert page.get_attribute("#chart", "data-points") == "0"
    assert "error" in page.inner_text("#updated")
    assert page.errors == []
    page.screenshot(path=str(tmp_path / "refused-range.png"))
    # Picking a range again clears it.
    page.select_option("#preset", "all")
    page.wait_for_function("window.presence.points === 12", timeout=10000)
    assert not page.is_visible("#reports-error")


def test_the_token_is_asked_once_and_sent_as_a_bearer_header(make_server, browser, tmp_path):
    url, _ = make_server(api_token=TOKEN)
    context, page = new_page(browser)
    sent = []
    page.on("request", lambda req: "/reports" in req.url and sent.append(
        req.headers.get("authorization")))
    try:
        page.goto(f"{url}/?range=all")
        page.wait_for_selector("#chart[data-state=auth]", timeout=15000)
        assert page.is_visible("#auth") and "PRESENCE_API_TOKEN" in page.inner_text("#auth")
        page.screenshot(path=str(tmp_path / "token.png"))
        assert page.evaluate("window.presence.points") == 0
        page.fill("#token", "wrong-token")
        page.click("#auth button[type=submit]")
        page.wait_for_function(
            "document.getElementById('auth-message').textContent.includes('refused')",
            timeout=10000)
        assert page.is_visible("#auth")
        page.fill("#token", TOKEN)
        page.click("#auth button[type=submit]")
        page.wait_for_selector("#chart[data-state=ready]", timeout=15000)
        assert page.get_attribute("#chart", "data-points") == "12"
        assert not page.is_visible("#auth")
        assert page.evaluate("sessionStorage.getItem('presence.apiToken')") == TOKEN
        assert sent[0] is None and sent[-1] == f"Bearer {TOKEN}"
        # Live refreshes go on with the token, without asking again.
        updates = page.evaluate("window.presence.updates")
        page.wait_for_function(f"window.presence.updates > {updates}", timeout=15000)
        assert not page.is_visible("#auth") and page.get_attribute(
            "#chart", "data-state") == "ready"
        assert page.errors == [] and page.outside == []
    finally:
        context.close()
    # A link may carry it once as #token=...: a fragment never reaches the server (nor
    # its access log); the page keeps it and takes it out of the address bar and history.
    context, page = new_page(browser)
    urls = []
    page.on("request", lambda req: urls.append(req.url))
    try:
        page.goto(f"{url}/?range=all&live=0#token={TOKEN}")
        page.wait_for_selector("#chart[data-state=ready]", timeout=15000)
        assert "token" not in page.url and "range=all" in page.url
        assert urls and not [u for u in urls if TOKEN in u]
        assert page.evaluate("sessionStorage.getItem('presence.apiToken')") == TOKEN
        assert page.errors == []
    finally:
        context.close()


def test_all_shows_the_newest_rows_when_the_range_holds_more(server, page):
    url, _ = server
    page.goto(f"{url}/?range=all&limit=5&live=0")
    page.wait_for_selector("#chart[data-state=ready]", timeout=15000)
    data = page.evaluate("window.presence.chart.data")
    assert data[0] == [BASE.timestamp() + m * 60 for m in range(7, 12)]
    assert page.get_attribute("#chart", "data-more") == "1"
    assert "newest 5 rows" in page.inner_text("#summary")


def test_refresh_period_is_bounded(server, page):
    url, _ = server
    for given, every in [("0.01", 2), ("1e9", 3600), ("banana", 5), ("30", 30)]:
        page.goto(f"{url}/?range=all&live=0&refresh={given}")
        page.wait_for_selector("#chart[data-state=ready]", timeout=15000)
        assert page.evaluate("window.presence.state.every") == every, given
        assert page.inner_text("#every") == str(every)


def test_axis_labels_are_not_repeated_with_a_handful_of_rows(make_server, browser, tmp_path):
    url, _ = make_server(rows=4)
    for width in (1400, 1280, 800):
        context, page = new_page(browser, width=width)
        try:
            page.goto(f"{url}/?range=all&live=0")
            page.wait_for_selector("#chart[data-state=ready]", timeout=15000)
            labels = [v for v in page.evaluate("window.presence.chart.axes[0]._values") if v]
            assert len(labels) >= 2, labels
            assert len(labels) == len(set(labels)), labels
            assert all(len(v.split("\n")[0]) == 5 for v in labels), labels  # HH:MM, whole minutes
            if width == 1400:
                page.screenshot(path=str(tmp_path / "few-rows.png"), full_page=True)
        finally:
            context.close()
    # Ticks closer than a minute show seconds, and equal neighbours are not repeated.
    context, page = new_page(browser)
    try:
        page.goto(f"{url}/?range=all&live=0")
        page.wait_for_selector("#chart[data-state=ready]", timeout=15000)
        ticks = page.evaluate("window.presence.timeTicks(null, [1514779500, 1514779530, 1514779560])")
        assert ticks == ["04:05:00\n2018-01-01", "04:05:30", "04:06:00"]
        ticks = page.evaluate("window.presence.timeTicks(null, [1514779500, 1514779530], 0, 50, 60)")
        assert ticks == ["04:05\n2018-01-01", ""]
    finally:
        context.close()


def test_partitions_table_is_not_cut_off_at_1280_px(make_server, browser, tmp_path):
    url, db = make_server()
    # Wide figures, as a busy topic has.
    db.pipeline_status.update_many({"kind": "partition"}, {"$set": {
        "nextOffset": 123456789012, "valid": 98765432109, "invalid": 1234567,
        "gaps": [{"from": 1000000, "to": 2000000, "lost": 1000000}]}})
    for width in (1280, 1366, 1600, 1800, 1920, 2560):
        context, page = new_page(browser, width=width, height=900)
        try:
            page.goto(f"{url}/?range=all&live=0")
            page.wait_for_selector("#partitions tbody tr", timeout=15000)
            fits = page.evaluate("""() => {
                const box = document.querySelector('#partitions').closest('.scroll');
                const last = document.querySelector('#partitions thead th:last-child').getBoundingClientRect();
                const card = box.getBoundingClientRect();
                return {scroll: box.scrollWidth, client: box.clientWidth,
                        last: last.right, card: card.right};
            }""")
            assert fits["scroll"] <= fits["client"], (width, fits)
            assert fits["last"] <= fits["card"] + 0.5, (width, fits)
            if width == 1280:
                page.screenshot(path=str(tmp_path / "dashboard-1280.png"), full_page=True)
        finally:
            context.close()
