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


@pytest.fixture
def server(mongo_uri, unique_name):  # noqa: F811
    import uvicorn
    from pymongo import MongoClient

    from presence.api import create_app

    client = MongoClient(mongo_uri)
    db = client[unique_name]
    seed_database(db, topic="pings", rows=12)
    settings = load_settings({"PRESENCE_MONGO_URI": mongo_uri, "PRESENCE_MONGO_DB": unique_name,
                              "PRESENCE_TOPIC": "pings", "PRESENCE_KAFKA_BROKERS": "127.0.0.1:1"})
    port = free_port()
    config = uvicorn.Config(create_app(settings, kafka_timeout=0.5), host="127.0.0.1",
                            port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", db
    srv.should_exit = True
    thread.join(10)
    client.drop_database(unique_name)
    client.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 950},
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
    page.on("console", lambda msg: msg.type == "error" and page.errors.append(msg.text))
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
    page.click("button[type=submit]")
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
