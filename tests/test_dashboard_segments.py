"""The dashboard's segment picker and zone map, in real headless Chromium.

Most tests serve the real dashboard files from a stub of the segment endpoints
(tests/dashboard_stub.py: the shapes of SEGMENTS-INTERFACES.md, no MongoDB);
``test_real_api_segments_and_zones`` runs the same page against the real API
over documents in the local MongoDB.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.dashboard_stub import CITIES, Served, Stub, bucket_iso
from tests.test_dashboard import browser, make_server, new_page  # noqa: F401  (fixtures)

AVAILABLE_COLORS = ["#ffffcc", "#c2e699", "#78c679", "#31a354", "#006837"]
SHARE_COLORS = ["#d7191c", "#fdae61", "#ffffbf", "#a6d96a", "#1a9641"]
NONE_COLOR = "#e4e7ec"


@pytest.fixture
def stub():
    return Stub()


@pytest.fixture
def served(stub):
    with Served(stub) as s:
        yield s


@pytest.fixture
def page(browser):  # noqa: F811
    context, page = new_page(browser)
    yield page
    context.close()


def chart_series(page) -> tuple[list, list]:
    data = page.evaluate("window.presence.chart.data")
    return data[1], data[2]  # online, available


def expected(rows) -> tuple[list, list]:
    return [r["online"] for r in rows], [r["available"] for r in rows]


def wait_for_rows(page, rows) -> None:
    online, available = expected(rows)
    page.wait_for_function(
        "([o, a]) => window.presence.chart && JSON.stringify(window.presence.chart.data[1]) === JSON.stringify(o)"
        " && JSON.stringify(window.presence.chart.data[2]) === JSON.stringify(a)",
        arg=[online, available], timeout=15000)


def option_labels(page, selector: str) -> list[str]:
    return page.evaluate(f"[...document.querySelector('{selector}').options].map(o => o.textContent)")


def select_value(page, starts: str) -> None:
    label = next(t for t in option_labels(page, "#segment-value") if t.startswith(starts))
    page.select_option("#segment-value", label=label)


def last_cells(stub: Stub, city: str | None = None) -> dict[str, tuple[int, int]]:
    import h3

    cells = stub.cells(8, stub.minutes - 1)
    if city is None:
        return cells
    lat, lng = CITIES[city]
    return {c: v for c, v in cells.items() if h3.great_circle_distance(h3.cell_to_latlng(c), (lat, lng)) < 30}


# ------------------------------------------------------------------ the picker


def test_segment_picker_changes_the_charts_data_source(served, stub, page):
    url = served.url
    page.goto(f"{url}/?range=all&live=0")
    page.wait_for_selector("#chart[data-state=ready]", timeout=15000)
    wait_for_rows(page, stub.rows(None))
    assert page.is_visible("#segment-picker")
    assert option_labels(page, "#segment") == ["whole fleet", "city", "city,vehicle_type", "h3:8 (zone)"]
    assert page.inner_text("#chart-scope") == "whole fleet"
    assert "segment" not in stub.data_requests("/reports")[-1]

    # A definition: its busiest value at once (/segments lists them by available, desc).
    page.select_option("#segment", "city")
    top = stub.segments({})["segments"][0]["values"][0]["key"]["city"]
    wait_for_rows(page, stub.rows({"city": top}))
    query = stub.data_requests("/reports")[-1]
    assert query["segment"] == "city" and query["city"] == top
    assert query["revision"] == "true" and query["newest"] == "true"
    assert page.inner_text("#chart-scope") == f"city = {top}"
    assert [t.split(" (")[0] for t in option_labels(page, "#segment-value")] == \
        [v["key"]["city"] for v in stub.segments({})["segments"][0]["values"]]

    # Another value, then a two-field definition.
    select_value(page, "Lisbon")
    wait_for_rows(page, stub.rows({"city": "Lisbon"}))
    assert "segment=city&city=Lisbon" in page.url
    page.select_option("#segment", "city,vehicle_type")
    select_value(page, "Nairobi · van")
    wait_for_rows(page, stub.rows({"city": "Nairobi", "vehicle_type": "van"}))
    query = stub.data_requests("/reports")[-1]
    assert (query["segment"], query["city"], query["vehicle_type"]) == ("city,vehicle_type", "Nairobi", "van")
    assert page.inner_text("#chart-scope") == "city = Nairobi, vehicle_type = van"

    # The choice survives a reload: the very first request already asks for it.
    before = len(stub.data_requests("/reports"))
    page.reload()
    page.wait_for_selector("#chart[data-state=ready]", timeout=15000)
    wait_for_rows(page, stub.rows({"city": "Nairobi", "vehicle_type": "van"}))
    first = stub.data_requests("/reports")[before]
    assert (first["segment"], first["city"], first["vehicle_type"]) == ("city,vehicle_type", "Nairobi", "van")
    page.wait_for_function("document.getElementById('segment').value === 'city,vehicle_type'", timeout=10000)
    assert page.input_value("#segment") == "city,vehicle_type"
    assert json.loads(page.input_value("#segment-value")) == ["Nairobi", "van"]

    # Back to the whole fleet: the URL forgets the segment.
    page.select_option("#segment", "")
    wait_for_rows(page, stub.rows(None))
    assert "segment" not in page.url and "city" not in page.url
    assert page.is_disabled("#segment-value")
    assert page.errors == [] and page.outside == []


def test_url_segment_in_another_spelling_and_an_unknown_value(served, stub, page):
    url = served.url
    # Any order and case of a configured definition's fields resolves to it.
    page.goto(f"{url}/?range=all&live=0&segment=Vehicle_Type,%20city&city=Lisbon&vehicle_type=car")
    wait_for_rows(page, stub.rows({"city": "Lisbon", "vehicle_type": "car"}))
    page.wait_for_function("document.getElementById('segment').value === 'city,vehicle_type'", timeout=10000)
    # A value /segments does not list (none lately): still charted, and said so.
    page.goto(f"{url}/?range=all&live=0&segment=city&city=Atlantis")
    page.wait_for_selector("#chart[data-state=ready]", timeout=15000)
    page.wait_for_function("window.presence.state.segments !== null", timeout=10000)
    assert page.evaluate("window.presence.points") == 0
    assert page.is_visible("#empty")
    assert "Atlantis (no recent row)" in option_labels(page, "#segment-value")
    assert page.errors == []


def test_no_segments_hides_the_picker_and_the_map_says_so(browser):  # noqa: F811
    for stub in (Stub(segments=""), None):
        if stub is None:  # a server from before segments: GET /segments is a 404
            stub = Stub()
            stub.override["/segments"] = (404, '{"error": "Not Found"}')
        with Served(stub) as s:
            context, page = new_page(browser)
            page.on("console", lambda msg: None)
            try:
                page.goto(f"{s.url}/?range=all&live=0")
                page.wait_for_selector("#map[data-state=off]", state="attached", timeout=15000)
                wait_for_rows(page, stub.rows(None))
                assert not page.is_visible("#segment-picker")
                assert page.is_visible("#map-off") and not page.is_visible("#map-body")
                line = page.inner_text("#map-off")
                assert "h3" in line and "\n" not in line.strip()
                assert page.locator("#map path.cell").count() == 0
                assert not stub.data_requests("/zones")
                assert not page.is_visible("#segments-error")
                assert [e for e in page.errors if "status of 404" not in e] == []
            finally:
                context.close()


def test_segments_without_an_h3_definition(browser):  # noqa: F811
    stub = Stub(segments="city;city,vehicle_type")
    with Served(stub) as s:
        context, page = new_page(browser)
        try:
            page.goto(f"{s.url}/?range=all&live=0")
            page.wait_for_selector("#map[data-state=off]", state="attached", timeout=15000)
            assert page.is_visible("#segment-picker")
            assert option_labels(page, "#segment") == ["whole fleet", "city", "city,vehicle_type"]
            assert page.is_visible("#map-off") and not page.is_visible("#map-body")
            assert not stub.data_requests("/zones")
            assert page.errors == []
        finally:
            context.close()


# ------------------------------------------------------------------ the zone map


def path_fills(page) -> list[str]:
    return page.evaluate("[...document.querySelectorAll('#map path.cell')].map(p => p.getAttribute('fill'))")


def legend(page) -> list[dict]:
    return page.evaluate("""[...document.querySelectorAll('#map-legend .item')].map(i => ({
        color: i.dataset.color, cells: Number(i.dataset.cells), label: i.textContent}))""")


def test_zone_map_draws_every_cell_coloured_with_a_legend(served, stub, page, tmp_path):
    url = served.url
    page.goto(f"{url}/?range=all&live=0")
    page.wait_for_selector("#map[data-state=ready]", timeout=15000)
    query = stub.data_requests("/zones")[-1]
    assert query == {"resolution": "8"}  # the latest bucket: no at=
    # Three cities far apart: the busiest is drawn, the others are a choice away.
    hk = last_cells(stub, "Hong Kong")
    assert page.locator("#map path.cell").count() == len(hk) > 50
    assert set(page.evaluate("[...document.querySelectorAll('#map path.cell')].map(p => p.dataset.h3)")) == set(hk)
    areas = option_labels(page, "#map-area")
    assert len(areas) == 4 and areas[0].startswith("all (")
    assert "22.30° N, 114.17° E" in areas[1]

    fills = path_fills(page)
    items = legend(page)
    assert len(items) >= 3
    assert set(fills) <= {i["color"] for i in items}
    assert {i["color"] for i in items} <= set(AVAILABLE_COLORS) | {NONE_COLOR}
    assert len(set(fills)) >= 3  # a scale, not one colour
    assert sum(i["cells"] for i in items) == len(hk)
    assert "available drivers per cell" in page.inner_text("#map-legend")
    # The colour follows the figure: the busiest cell is in the darkest class drawn.
    busiest = max(hk, key=lambda c: hk[c][1])
    fill = page.get_attribute(f"#map path[data-h3='{busiest}']", "fill")
    assert fill == [i["color"] for i in items][-1]
    # Fitted: the cells fill the box in one direction, and nothing is outside it.
    fit = page.evaluate("""() => {
        const box = document.getElementById('map-svg').getBoundingClientRect();
        const all = [...document.querySelectorAll('#map path.cell')].map(p => p.getBoundingClientRect());
        const l = Math.min(...all.map(r => r.left)), r = Math.max(...all.map(r => r.right));
        const t = Math.min(...all.map(r => r.top)), b = Math.max(...all.map(r => r.bottom));
        return {w: box.width, h: box.height, l: l - box.left, r: box.right - r, t: t - box.top, b: box.bottom - b,
                fw: (r - l) / box.width, fh: (b - t) / box.height};
    }""")
    assert min(fit["l"], fit["r"], fit["t"], fit["b"]) >= 0, fit
    assert max(fit["fw"], fit["fh"]) > 0.85, fit
    summary = page.inner_text("#map-summary")
    assert f"{len(hk)} cells" in summary and "2026-11-28 08:29:00 UTC" in summary
    assert "2026-11-28 08:29:00 UTC" in page.inner_text("#map-scope")
    page.locator("#zones").screenshot(path=str(tmp_path / "zone-map.png"))

    # Every area at once.
    page.select_option("#map-area", "all")
    page.wait_for_function(f"window.presence.cells === {len(last_cells(stub))}", timeout=10000)
    assert "map_area=all" in page.url

    # Coloured by the available share: other classes, the same cells.
    page.select_option("#map-mode", "share")
    page.wait_for_function("document.querySelector('#map-legend').textContent.includes('%')", timeout=10000)
    items = legend(page)
    assert {i["color"] for i in items} <= set(SHARE_COLORS) | {NONE_COLOR}
    assert set(path_fills(page)) <= {i["color"] for i in items}
    cells = last_cells(stub)
    low = min(cells, key=lambda c: cells[c][1] / cells[c][0])
    high = max(cells, key=lambda c: cells[c][1] / cells[c][0])
    share = lambda c: min(4, int(cells[c][1] / cells[c][0] * 5))  # noqa: E731
    assert page.get_attribute(f"#map path[data-h3='{low}']", "fill") == SHARE_COLORS[share(low)]
    assert page.get_attribute(f"#map path[data-h3='{high}']", "fill") == SHARE_COLORS[share(high)]
    assert "map=share" in page.url
    # Both choices survive a reload.
    page.reload()
    page.wait_for_selector("#map[data-state=ready]", timeout=15000)
    assert page.input_value("#map-mode") == "share" and page.input_value("#map-area") == "all"
    assert page.evaluate("window.presence.cells") == len(cells)
    assert page.errors == [] and page.outside == []


def test_hover_shows_the_cells_figures_and_a_click_charts_it(served, stub, page):
    page.goto(f"{served.url}/?range=all&live=0")
    page.wait_for_selector("#map[data-state=ready]", timeout=15000)
    hk = last_cells(stub, "Hong Kong")
    cell = max(hk, key=lambda c: (hk[c][1], c))
    online, available = hk[cell]
    assert not page.is_visible("#map-tip")
    page.hover(f"#map path[data-h3='{cell}']")
    page.wait_for_selector("#map-tip", state="visible", timeout=5000)
    tip = page.inner_text("#map-tip")
    assert cell in tip
    assert re.search(rf"online\s+{online}\b", tip), tip
    assert re.search(rf"available\s+{available}\b", tip), tip
    assert "2026-11-28 08:29:00 UTC" in tip
    # The tip stays inside the map.
    inside = page.evaluate("""() => {
        const m = document.getElementById('map').getBoundingClientRect();
        const t = document.getElementById('map-tip').getBoundingClientRect();
        return t.left >= m.left && t.right <= m.right && t.top >= m.top && t.bottom <= m.bottom;
    }""")
    assert inside
    page.mouse.move(2, 2)
    page.wait_for_selector("#map-tip", state="hidden", timeout=5000)

    page.click(f"#map path[data-h3='{cell}']")
    wait_for_rows(page, stub.rows({"h3": cell}))
    query = stub.data_requests("/reports")[-1]
    assert query["segment"] == "h3:8" and query["h3"] == cell
    assert page.input_value("#segment") == "h3:8"
    assert page.inner_text("#chart-scope") == f"h3 = {cell}"
    assert page.errors == []


def test_a_chosen_bucket(served, stub, page):
    page.goto(f"{served.url}/?range=all&live=0")
    page.wait_for_selector("#map[data-state=ready]", timeout=15000)
    assert page.input_value("#map-at") == "2026-11-28T08:29"  # the latest, shown
    page.fill("#map-at", "2026-11-28T08:10")
    page.click("#map-controls button[type=submit]")
    page.wait_for_function("document.getElementById('map-scope').textContent.includes('08:10:00')", timeout=10000)
    assert stub.data_requests("/zones")[-1] == {"resolution": "8", "at": "2026-11-28T08:10:00Z"}
    drawn = page.evaluate("[...document.querySelectorAll('#map path.cell')].map(p => p.dataset.h3)")
    assert drawn and set(drawn) <= set(stub.cells(8, 10))
    assert "map_at=2026-11-28T08%3A10%3A00Z" in page.url
    page.hover(f"#map path[data-h3='{drawn[0]}']")
    assert "2026-11-28 08:10:00 UTC" in page.inner_text("#map-tip")
    # A reload keeps the bucket.
    page.reload()
    page.wait_for_selector("#map[data-state=ready]", timeout=15000)
    assert stub.data_requests("/zones")[-1]["at"] == "2026-11-28T08:10:00Z"
    # A bucket with no rows: one line inside the box, not an empty box.
    page.fill("#map-at", "2026-11-29T08:10")
    page.click("#map-controls button[type=submit]")
    page.wait_for_selector("#map[data-state=empty]", timeout=10000)
    assert "No zone rows at 2026-11-29 08:10:00 UTC" in page.inner_text("#map-empty")
    assert page.locator("#map path.cell").count() == 0
    # Back to the latest.
    page.click("#map-latest")
    page.wait_for_selector("#map[data-state=ready]", timeout=10000)
    assert stub.data_requests("/zones")[-1] == {"resolution": "8"}
    assert "map_at" not in page.url
    assert page.errors == []


# ------------------------------------------------------------------ bad answers


def bad_feature_collection(stub: Stub) -> str:
    _, body = stub.zones({"resolution": "8"})
    body["features"][0]["geometry"]["coordinates"] = [[["x", 1], [2]]]
    body["features"][1]["properties"]["online"] = "many"
    return json.dumps(body)


@pytest.mark.parametrize("path, answer, words, cells", [
    ("/zones", (500, '{"error": "segment_summary: server selection timeout"}'), ["server selection timeout"], 0),
    ("/zones", (200, "<html>proxy error</html>"), ["/zones", "not a GeoJSON FeatureCollection"], 0),
    ("/zones", (200, '{"type": "FeatureCollection"}'), ["not a GeoJSON FeatureCollection"], 0),
    ("/zones", (400, '{"error": "no h3:8 segment is configured"}'), ["no h3:8 segment is configured"], 0),
    ("/zones", "bad-features", ["2 of", "features had no polygon or counts"], None),
    ("/segments", (500, '{"error": "boom in segments"}'), ["boom in segments"], 0),
    ("/segments", (200, '{"segments": 3}'), ["/segments", "unexpected answer"], 0),
])
def test_bad_answers_show_an_error_line(browser, path, answer, words, cells):  # noqa: F811
    stub = Stub()
    if answer == "bad-features":
        answer = (200, bad_feature_collection(stub))
    stub.override[path] = answer
    with Served(stub) as s:
        context, page = new_page(browser)
        page.errors = []
        try:
            page.goto(f"{s.url}/?range=all&live=0")
            page.wait_for_function("window.presence.updates > 0", timeout=15000)
            error = page.inner_text("#map-error")
            assert page.is_visible("#map-error")
            assert all(w in error for w in words), error
            assert "\n" not in error.strip()
            if cells is not None:
                assert page.locator("#map path.cell").count() == cells
                assert page.get_attribute("#map", "data-state") == "error"
            else:  # the good cells are drawn all the same
                assert page.locator("#map path.cell").count() > 10
            if path == "/segments":
                assert page.is_visible("#segments-error") and words[-1] in page.inner_text("#segments-error")
            assert "error" in page.inner_text("#updated")
            # The whole-fleet chart is unaffected.
            assert page.get_attribute("#chart", "data-state") == "ready"
            assert [e for e in page.errors if "Failed to load resource" not in e] == []
            # Good answers again: the next refresh draws the map and clears the line.
            del stub.override[path]
            updates = page.evaluate("window.presence.updates")
            page.click("#map-latest")
            page.wait_for_function(f"window.presence.updates > {updates}", timeout=15000)
            assert page.get_attribute("#map", "data-state") == "ready"
            assert not page.is_visible("#map-error") and not page.is_visible("#segments-error")
            assert page.locator("#map path.cell").count() == len(last_cells(stub, "Hong Kong"))
        finally:
            context.close()


def test_a_refused_segment_shows_the_api_error(served, stub, page):
    # The API refuses a value that is no H3 cell of the resolution: its own words, no rows.
    page.goto(f"{served.url}/?range=all&live=0&segment=h3:8&h3=banana")
    page.wait_for_selector("#chart[data-state=error]", timeout=15000)
    assert "not an H3 cell of resolution 8" in page.inner_text("#reports-error")
    assert page.evaluate("window.presence.points") == 0
    # Choosing a listed value clears it.
    page.wait_for_function("window.presence.state.segments !== null", timeout=10000)
    page.select_option("#segment", "city")
    page.wait_for_selector("#chart[data-state=ready]", timeout=15000)
    assert not page.is_visible("#reports-error")
    assert [e for e in page.errors if "status of 400" not in e] == []


def test_a_malformed_reports_answer_is_an_error_line_not_a_crash(served, stub, page):
    stub.override["/reports"] = (200, '{"rows": "nope"}')
    page.goto(f"{served.url}/?range=all&live=0")
    page.wait_for_selector("#chart[data-state=error]", timeout=15000)
    assert "unexpected answer" in page.inner_text("#reports-error")
    assert page.errors == []


def test_cells_over_the_value_limit_and_a_cut_answer_are_said(served, stub, page):
    # /zones puts the overflow value's counts in "other" (no cell, no polygon) and
    # says "truncated" when it sent only part of the cells.
    stub.zone_extra = {"other": {"online": 321, "available": 123}, "truncated": True}
    page.goto(f"{served.url}/?range=all&live=0")
    page.wait_for_selector("#map[data-state=ready]", timeout=15000)
    summary = page.inner_text("#map-summary")
    assert "321 online, 123 available" in summary and "PRESENCE_MAX_SEGMENT_VALUES" in summary
    assert "only part" in summary
    assert page.locator("#map path.cell").count() == len(last_cells(stub, "Hong Kong"))
    assert page.errors == []


def test_live_refresh_follows_the_latest_bucket(served, stub, page):
    page.goto(f"{served.url}/?range=all&refresh=2")
    page.wait_for_selector("#map[data-state=ready]", timeout=15000)
    stub.minutes = 31  # a new bucket arrives
    page.wait_for_function("document.getElementById('map-scope').textContent.includes('08:30:00')", timeout=20000)
    assert page.evaluate("window.presence.cells") == len(last_cells(stub, "Hong Kong"))
    assert stub.data_requests("/zones")[-1] == {"resolution": "8"}
    assert page.errors == []


# ------------------------------------------------------------------ the real API


@pytest.mark.stack
def test_real_api_segments_and_zones(make_server, browser):  # noqa: F811
    """The page against the real API (seg-api's endpoints) over segment_summary documents."""
    import h3

    from presence.tools import api

    source = Path(api.__file__).read_text()
    if '"/segments"' not in source or '"/zones"' not in source:
        pytest.skip("presence/tools/api.py has no GET /segments and /zones yet (helper seg-api adds them)")
    base = datetime(2018, 1, 1, 4, 0, tzinfo=timezone.utc)
    url, db = make_server(segments="city;h3:8")
    centre = h3.latlng_to_cell(*CITIES["Lisbon"], 8)
    cells = sorted(h3.grid_disk(centre, 2))
    docs = []
    for m in range(12):
        start = base + timedelta(minutes=m)
        bucket = start.strftime("%Y-%m-%d %H:%M:%S")
        for city, online in (("Lisbon", 40 + m), ("Hong Kong", 90 + m)):
            docs.append({"_id": f"city|{city}|{bucket}", "segment": "city", "key": {"city": city},
                         "timeBucket": bucket, "windowStart": start - timedelta(minutes=4),
                         "windowEnd": start + timedelta(minutes=1), "driversOnlineCount": online,
                         "driversAvailableCount": online - 10, "revision": 1,
                         "updatedAt": datetime.now(timezone.utc)})
        if m == 11:
            for i, cell in enumerate(cells):
                docs.append({"_id": f"h3:8|{cell}|{bucket}", "segment": "h3:8", "key": {"h3": cell},
                             "timeBucket": bucket, "windowStart": start - timedelta(minutes=4),
                             "windowEnd": start + timedelta(minutes=1), "driversOnlineCount": 3 + i,
                             "driversAvailableCount": 1 + i % 3, "revision": 1,
                             "updatedAt": datetime.now(timezone.utc)})
    db.segment_summary.insert_many(docs)
    context, page = new_page(browser)
    try:
        page.goto(f"{url}/?range=all&live=0&segment=city&city=Lisbon")
        page.wait_for_selector("#chart[data-state=ready]", timeout=15000)
        page.wait_for_function("window.presence.points === 12", timeout=15000)
        assert page.evaluate("window.presence.chart.data[1]") == [40 + m for m in range(12)]
        assert page.is_visible("#segment-picker")
        assert option_labels(page, "#segment")[:3] == ["whole fleet", "city", "h3:8 (zone)"]
        page.wait_for_selector("#map[data-state=ready]", timeout=15000)
        assert page.locator("#map path.cell").count() == len(cells)
        page.hover(f"#map path[data-h3='{cells[0]}']")
        tip = page.inner_text("#map-tip")
        assert cells[0] in tip and "2018-01-01 04:11:00 UTC" in tip
        assert page.errors == [] and page.outside == []
    finally:
        context.close()


def test_stub_follows_the_interface(stub):
    """The stub's answers have the documented shapes (SEGMENTS-INTERFACES.md)."""
    body = stub.segments({"limit": "5"})
    assert set(body) == {"segments", "from", "to"}
    for d in body["segments"]:
        assert set(d) == {"segment", "fields", "resolution", "valueCount", "truncated", "values"}
        for v in d["values"]:
            assert set(v) == {"key", "timeBucket", "online", "available"}
            assert list(v["key"]) == d["fields"]
    h3def = next(d for d in body["segments"] if d["segment"] == "h3:8")
    assert h3def["resolution"] == 8 and h3def["truncated"] and len(h3def["values"]) == 5
    status, zones = stub.zones({"resolution": "8"})
    assert status == 200 and zones["type"] == "FeatureCollection" and zones["resolution"] == 8
    assert zones["timeBucket"] == bucket_iso(stub.minutes - 1)
    feature = zones["features"][0]
    assert set(feature["properties"]) == {"h3", "online", "available", "timeBucket"}
    ring = feature["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 7
    assert all(-180 <= lng <= 180 and -90 <= lat <= 90 for lng, lat in ring)
    assert stub.reports({"segment": "city", "city": "Lisbon"})[0] == 200
    assert stub.reports({"segment": "city"})[0] == 400
    assert stub.reports({"segment": "h3:9", "h3": "x"})[0] == 400


# ------------------------------------------------------------------ PRESENCE_MAP_TILES

PNG = bytes.fromhex(  # 1x1 grey PNG
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a5d2e1a60000000049454e44ae426082")


def test_map_tiles_are_drawn_under_the_cells_and_line_up(served, stub, browser):  # noqa: F811
    import math

    import h3

    stub.config = {"mapTiles": "http://tiles.test/{z}/{x}/{y}.png"}
    context, page = new_page(browser)
    tiles = []

    def tile(route):
        tiles.append((route.request.url, route.request.headers))
        route.fulfill(status=200, content_type="image/png", body=PNG)

    page.route("http://tiles.test/**", tile)  # the later route wins over new_page's own
    try:
        page.goto(f"{served.url}/?range=all&live=0")
        page.wait_for_selector("#map[data-state=ready]", timeout=15000)
        z = int(page.get_attribute("#map g.tiles", "data-zoom"))
        assert 11 <= z <= 15, z  # some km across: a city's zoom
        hrefs = page.evaluate("[...document.querySelectorAll('#map g.tiles image')].map(i => i.getAttribute('href'))")
        assert hrefs and all(re.fullmatch(rf"http://tiles\.test/{z}/\d+/\d+\.png", h) for h in hrefs)
        # Under the cells, and covering the whole box.
        order = page.evaluate("[...document.getElementById('map-svg').children].map(c => c.tagName)")
        assert order[0] == "g" and order[1] == "path"
        cover = page.evaluate("""() => {
            const box = document.getElementById('map-svg').getBoundingClientRect();
            const r = [...document.querySelectorAll('#map g.tiles image')].map(i => i.getBoundingClientRect());
            return [Math.min(...r.map(x => x.left)) - box.left, Math.min(...r.map(x => x.top)) - box.top,
                    box.right - Math.max(...r.map(x => x.right)), box.bottom - Math.max(...r.map(x => x.bottom))];
        }""")
        assert all(v <= 0.5 for v in cover), cover
        # The tile holding a cell's centre (standard slippy-map numbering) is drawn where the cell is.
        cell = h3.latlng_to_cell(*CITIES["Hong Kong"], 8)
        lat, lng = h3.cell_to_latlng(cell)
        n = 2 ** z
        tx = int((lng + 180) / 360 * n)
        ty = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
        where = page.evaluate("""([cell, href]) => {
            const p = document.querySelector(`#map path[data-h3='${cell}']`).getBoundingClientRect();
            const i = [...document.querySelectorAll('#map g.tiles image')].find(x => x.getAttribute('href') === href);
            if (!i) return null;
            const t = i.getBoundingClientRect();
            const cx = (p.left + p.right) / 2, cy = (p.top + p.bottom) / 2;
            return cx >= t.left && cx <= t.right && cy >= t.top && cy <= t.bottom;
        }""", [cell, f"http://tiles.test/{z}/{tx}/{ty}.png"])
        assert where is True, (z, tx, ty, hrefs[:5])
        # The browser fetched them, with no token and no page address.
        page.wait_for_function(f"performance.getEntriesByType('resource').filter(e => e.name.startsWith('http://tiles.test/')).length >= {len(hrefs)}", timeout=10000)
        assert tiles and all("authorization" not in h and "referer" not in h for _, h in tiles)
        assert "background tiles from tiles.test" in page.inner_text("#map-summary")
        # The cells are still what the pointer finds.
        page.hover(f"#map path[data-h3='{cell}']")
        assert cell in page.inner_text("#map-tip")
        assert page.errors == [] and page.outside == []
    finally:
        context.close()


def test_no_tiles_unless_configured(served, stub, page):
    page.goto(f"{served.url}/?range=all&live=0")
    page.wait_for_selector("#map[data-state=ready]", timeout=15000)
    assert stub.data_requests("/dashboard.json")
    assert page.locator("#map g.tiles").count() == 0
    assert page.locator("#map image").count() == 0
    assert page.outside == []


def test_dashboard_json_serves_the_tile_template_and_nothing_secret():
    from fastapi.testclient import TestClient

    from presence.settings import load_settings
    from presence.tools.api import create_app
    from presence.tools.dashboard_config import add_dashboard_config

    token = "tiles-Token-31"
    template = "https://tiles.example.org/{z}/{x}/{y}.png?key=public-1"
    settings = load_settings({"PRESENCE_MAP_TILES": template, "PRESENCE_API_TOKEN": token,
                              "PRESENCE_MONGO_URI": "mongodb://user:pw-Secret-9@127.0.0.1:1/",
                              "PRESENCE_KAFKA_BROKERS": "127.0.0.1:1"})
    app = create_app(settings, kafka_timeout=0.2)
    add_dashboard_config(app, settings)  # a no-op once create_app serves it itself
    add_dashboard_config(app, settings)
    with TestClient(app) as client:
        assert client.get("/dashboard.json").status_code == 401  # behind the token like the API
        got = client.get("/dashboard.json", headers={"Authorization": f"Bearer {token}"})
        assert got.status_code == 200 and got.json() == {"mapTiles": template}
        assert token not in got.text and "pw-Secret-9" not in got.text
    off = load_settings({"PRESENCE_MAP_TILES": ""})
    app = create_app(off, kafka_timeout=0.2)
    add_dashboard_config(app, off)
    with TestClient(app) as client:
        assert client.get("/dashboard.json").json() == {"mapTiles": None}


@pytest.mark.parametrize("value, words", [
    ("ftp://tiles.example.org/{z}/{x}/{y}.png", ["http(s) URL template"]),
    ("https://tiles.example.org/{z}/{x}.png", ["{z}, {x} and {y}"]),
    ("tiles.other.net/{z}/{x}/{y}.png", ["http(s)"]),
    ("https://user:Hidden-77@tiles.example.org/{z}/{x}/{y}.png", ["user name or password"]),
])
def test_a_bad_map_tiles_setting_is_one_line(value, words):
    from presence.settings import SettingsError, load_settings

    with pytest.raises(SettingsError) as err:
        load_settings({"PRESENCE_MAP_TILES": value})
    message = str(err.value)
    assert message.startswith("PRESENCE_MAP_TILES: ") and "\n" not in message
    assert all(w in message for w in words), message
    assert "Hidden-77" not in message and value not in message
