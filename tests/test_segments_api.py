"""The read side of segments (SPEC "Segments"): segment_summary readers, GET /segments,
GET /reports?segment=..., GET /zones (GeoJSON), the per-definition /metrics counters, and
`presence report/plot --segment` and `presence zones`.

Documents are inserted directly, in the shape the dataflow writes
(SEGMENTS-INTERFACES.md); the tests marked ``stack`` read them back from the local
FerretDB (a database of their own)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import h3
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from prometheus_client import parser as prom_parser

from presence.core.segments import parse_segments
from presence.settings import load_settings
from presence.tools.api import create_app, prometheus_text
from presence.tools.cli import cli
from presence.tools.reports import (
    SegmentQueryError, Segments, cell_ring, parse_selector, resolve_definition,
    resolve_selector, select_value, zone_definition,
)
from tests.known_docs import known_rows
from tests.stack_helpers import follow

DOWN = "mongodb://127.0.0.1:1"
NO_KAFKA = "127.0.0.1:1"
TOKEN = "seg-Token-0042"
CONFIGURED = "city;city,vehicle_type;h3:8;vehicle_type"
BASE = datetime(2018, 1, 1, 4, 0, tzinfo=timezone.utc)

HK = (22.3, 114.17)
CELLS = sorted({h3.latlng_to_cell(HK[0] + d, HK[1] + d, 8) for d in (0.0, 0.01, 0.02)})
CELL7 = h3.latlng_to_cell(*HK, 7)


def settings(**values):
    return load_settings({f"PRESENCE_{k.upper()}": str(v) for k, v in values.items()})


def segments(text: str = CONFIGURED) -> Segments:
    return Segments(parse_segments(text), 60, "PRESENCE_SEGMENTS")


def bucket(minute: int) -> str:
    return (BASE + timedelta(minutes=minute)).strftime("%Y-%m-%d %H:%M:%S")


def seg_doc(segment: str, key: dict, minute: int, online: int, available: int,
            revision: int = 1, overflow: bool = False) -> dict:
    start = BASE + timedelta(minutes=minute)
    doc = {
        "_id": "|".join([segment, *key.values(), bucket(minute)]),
        "segment": segment, "key": key, "timeBucket": bucket(minute),
        "windowStart": start - timedelta(minutes=4), "windowEnd": start + timedelta(minutes=1),
        "driversOnlineCount": online, "driversAvailableCount": available,
        "revision": revision, "updatedAt": datetime.now(timezone.utc),
    }
    if overflow:
        doc["overflow"] = True
    return doc


def known_segment_docs() -> list[dict]:
    docs = []
    for i in range(10):
        docs.append(seg_doc("city,vehicle_type", {"city": "Hong Kong", "vehicle_type": "van"},
                            i, 10 + i, 5 + i, revision=2 if i == 3 else 1))
        docs.append(seg_doc("city,vehicle_type", {"city": "Hong Kong", "vehicle_type": "car"},
                            i, 100 + i, 90 + i))
        docs.append(seg_doc("city", {"city": "Hong Kong"}, i, 110 + i, 95 + i))
    for i in range(5, 10):
        docs.append(seg_doc("city,vehicle_type", {"city": "Paris", "vehicle_type": "van"},
                            i, 7, 7))
        docs.append(seg_doc("city", {"city": "Paris"}, i, 7, 7))
    # Two hours before the newest bucket: outside /segments' default hour.
    docs.append(seg_doc("city,vehicle_type", {"city": "Paris", "vehicle_type": "car"}, -120, 1, 1))
    for n, cell in enumerate(CELLS):
        docs.append(seg_doc("h3:8", {"h3": cell}, 8, 2 + n, 1 + n))
        docs.append(seg_doc("h3:8", {"h3": cell}, 9, 3 + n, 2 + n, overflow=True))
    docs.append(seg_doc("h3:8", {"h3": "other"}, 9, 4, 3, overflow=True))
    return docs


SEGMENT_TOTALS = {"unlocated": 12, "segments": {
    "city": {"otherPings": 0, "rowsWritten": 15, "overflowRows": 0},
    "h3:8": {"otherPings": 5, "rowsWritten": 7, "overflowRows": 4}}}


# ------------------------------------------------------------------ pure: queries


@pytest.mark.parametrize("text, name", [
    ("city,vehicle_type", "city,vehicle_type"),
    (" Vehicle_Type , CITY ", "city,vehicle_type"),  # any spelling and order
    ("h3:08", "h3:8"),
    ("vehicle_type", "vehicle_type"),
])
def test_resolve_definition_finds_the_configured_one(text, name):
    assert resolve_definition(text, segments()).name == name


@pytest.mark.parametrize("text, words", [
    ("city,colour", "unknown dimension 'colour'"),
    ("h3:7", "'h3:7' is not configured"),
    ("city;h3:8", "not one definition"),
    ("", "not one definition"),
    ("h3", "needs a resolution"),
    ("city,city", "named twice"),
])
def test_resolve_definition_refuses_with_one_line(text, words):
    with pytest.raises(SegmentQueryError) as err:
        resolve_definition(text, segments())
    assert words in str(err.value) and "\n" not in str(err.value)


def test_resolve_definition_names_what_is_configured():
    with pytest.raises(SegmentQueryError, match="configured \\(PRESENCE_SEGMENTS\\): city;"):
        resolve_definition("h3:9", segments())
    with pytest.raises(SegmentQueryError, match="no segments are configured"):
        resolve_definition("city", Segments((), 60, ""))


def test_select_value_keys_as_documents_have_them():
    city_type = resolve_definition("city,vehicle_type", segments())
    chosen = select_value(city_type, {"vehicle_type": "van", "city": "Hong Kong"})
    assert list(chosen.key.items()) == [("city", "Hong Kong"), ("vehicle_type", "van")]
    zone = resolve_definition("h3:8", segments())
    assert select_value(zone, {"h3": CELLS[0].upper()}).key == {"h3": CELLS[0]}
    assert select_value(zone, {"h3": "other"}).key == {"h3": "other"}


@pytest.mark.parametrize("definition, values, words", [
    ("city,vehicle_type", {"city": "Hong Kong"}, "missing vehicle_type"),
    ("city", {"city": "Paris", "vehicle_type": "van"}, "unknown vehicle_type"),
    ("city", {"city": ""}, "city: empty value"),
    ("h3:8", {"h3": "banana"}, "not an H3 cell of resolution 8"),
    ("h3:8", {"h3": CELL7}, "not an H3 cell of resolution 8"),
])
def test_select_value_refuses_with_one_line(definition, values, words):
    with pytest.raises(SegmentQueryError, match=words):
        select_value(resolve_definition(definition, segments()), values)


def test_cli_selector_picks_the_definition_by_its_fields():
    assert parse_selector(" City = Hong Kong , vehicle_type=van") == {
        "city": "Hong Kong", "vehicle_type": "van"}
    chosen = resolve_selector("vehicle_type=van,city=Hong Kong", segments())
    assert chosen.definition.name == "city,vehicle_type"
    assert resolve_selector("city=Paris", segments()).definition.name == "city"
    # Two zone maps: the cell's resolution picks one.
    two = segments("h3:7;h3:8")
    assert resolve_selector(f"h3={CELL7}", two).definition.name == "h3:7"
    assert resolve_selector(f"h3={CELLS[0]}", two).definition.name == "h3:8"
    for text, words in [("city", "not FIELD=VALUE"), ("city=a,city=b", "given twice"),
                        ("colour=red", "no configured segment has exactly the fields colour"),
                        ("h3=abc", "not an H3 cell")]:
        with pytest.raises(SegmentQueryError, match=words):
            resolve_selector(text, two if text.startswith("h3") else segments())


def test_zone_definition():
    assert zone_definition(segments(), None).name == "h3:8"
    assert zone_definition(segments(), 8).name == "h3:8"
    with pytest.raises(SegmentQueryError, match="'h3:7' is not configured"):
        zone_definition(segments(), 7)
    with pytest.raises(SegmentQueryError, match="no segment h3:R is configured"):
        zone_definition(segments("city;city,h3:8"), None)  # city,h3:8 is no zone map
    with pytest.raises(SegmentQueryError, match="several zone maps .*h3:7, h3:8"):
        zone_definition(segments("h3:7;h3:8"), None)


# ------------------------------------------------------------------ pure: GeoJSON


def signed_area(ring):
    return sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(ring, ring[1:])) / 2


@pytest.mark.parametrize("lat, lng, resolution", [
    (22.3, 114.17, 8), (51.5, -0.12, 8), (-33.87, 151.21, 9), (40.71, -74.0, 5),
    (-23.55, -46.63, 0),
])
def test_cell_ring_is_a_closed_lng_lat_ring(lat, lng, resolution):
    cell = h3.latlng_to_cell(lat, lng, resolution)
    ring = cell_ring(cell)
    boundary = h3.cell_to_boundary(cell)
    assert ring[0] == ring[-1] and len(ring) == len(boundary) + 1
    for (x, y), (b_lat, b_lng) in zip(ring, boundary):
        assert (x, y) == (round(b_lng, 7), round(b_lat, 7))  # [lng, lat], not (lat, lng)
        assert -180 <= x <= 180 and -90 <= y <= 90
    assert signed_area(ring) > 0  # counter-clockwise: RFC 7946's exterior rings
    # The cell's centre is inside the ring's bounding box (lng on x).
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    c_lat, c_lng = h3.cell_to_latlng(cell)
    assert min(xs) < c_lng < max(xs) and min(ys) < c_lat < max(ys)


@pytest.mark.parametrize("bad", ["other", "banana", "", "8841", None])
def test_cell_ring_refuses_what_is_not_a_cell(bad):
    with pytest.raises(ValueError):
        cell_ring(bad)


# ------------------------------------------------------------------ pure: metrics


def families(text: str) -> dict:
    return {f.name: f for f in prom_parser.text_string_to_metric_families(text)}


def samples(fams: dict, name: str) -> dict:
    return {tuple(sorted(s.labels.items())): s.value for s in fams[name].samples}


def test_metrics_have_per_definition_segment_counters_never_per_value():
    status = {"totals": {}, "partitions": [], "deadLetters": {}, "reports": {},
              "kafka": {"topic": "t", "reachable": True}, "segmentTotals": SEGMENT_TOTALS}
    fams = families(prometheus_text(status, mongo_up=True))
    assert samples(fams, "presence_unlocated_pings") == {(): 12}
    assert samples(fams, "presence_segment_other_pings") == {
        (("segment", "city"),): 0, (("segment", "h3:8"),): 5}
    assert samples(fams, "presence_segment_rows_written") == {
        (("segment", "city"),): 15, (("segment", "h3:8"),): 7}
    assert samples(fams, "presence_segment_overflow_rows") == {
        (("segment", "city"),): 0, (("segment", "h3:8"),): 4}
    for name in ["presence_unlocated_pings", "presence_segment_other_pings",
                 "presence_segment_rows_written", "presence_segment_overflow_rows"]:
        assert fams[name].type == "counter"
        assert all(set(s.labels) <= {"segment"} for s in fams[name].samples)
    assert "Deterministic" in fams["presence_unlocated_pings"].documentation
    # A database without segments: the families are there, with no per-definition series.
    del status["segmentTotals"]
    fams = families(prometheus_text(status, mongo_up=True))
    assert samples(fams, "presence_unlocated_pings") == {(): 0}
    assert samples(fams, "presence_segment_rows_written") == {}


# ------------------------------------------------------------------ API without a server


@pytest.fixture
def offline():
    app = create_app(settings(mongo_uri=DOWN, kafka_brokers=NO_KAFKA, segments=CONFIGURED),
                     kafka_timeout=0.2)
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize("query, words", [
    ("/reports?segment=city,colour&city=x", "unknown dimension 'colour'"),
    ("/reports?segment=h3:7&h3=x", "segment 'h3:7' is not configured"),
    ("/reports?segment=city;vehicle_type&city=x", "not one definition"),
    ("/reports?segment=city,vehicle_type&city=Paris", "missing vehicle_type"),
    ("/reports?segment=city&city=Paris&vehicle_type=van", "unknown vehicle_type"),
    ("/reports?segment=city&city=", "city: empty value"),
    ("/reports?segment=city&city=a&city=b", "city given twice"),
    ("/reports?segment=h3:8&h3=abc", "'abc' is not an H3 cell of resolution 8"),
    (f"/reports?segment=h3:8&h3={CELL7}", "is not an H3 cell of resolution 8"),
    ("/reports?city=Paris", "city given without segment="),
    ("/reports?segment=city&city=Paris&from=yesterday", "from"),
    ("/segments?from=2018-13-01", "from"),
    ("/segments?from=2018-01-02&to=2018-01-01", "after"),
    ("/segments?limit=0", "limit"),
    ("/segments?limit=5001", "limit"),
    ("/zones?resolution=7", "segment 'h3:7' is not configured"),
    ("/zones?resolution=16", "resolution"),
    ("/zones?resolution=eight", "resolution"),
    ("/zones?at=banana", "at: 'banana' is neither"),
    ("/zones?at=1e15", "out of range"),
])
def test_every_bad_segment_query_is_a_400_with_one_line(offline, query, words):
    res = offline.get(query)
    assert res.status_code == 400, res.text
    body = res.json()
    assert set(body) == {"error"} and words in body["error"] and "\n" not in body["error"]


def test_zones_without_a_zone_map_configured_is_a_400():
    app = create_app(settings(mongo_uri=DOWN, kafka_brokers=NO_KAFKA, segments="city"),
                     kafka_timeout=0.2)
    with TestClient(app) as client:
        res = client.get("/zones")
        assert res.status_code == 400
        assert "no segment h3:R is configured" in res.json()["error"]


def test_segment_endpoints_need_the_token_when_one_is_set():
    app = create_app(settings(mongo_uri=DOWN, kafka_brokers=NO_KAFKA, segments=CONFIGURED,
                              api_token=TOKEN), kafka_timeout=0.2)
    with TestClient(app) as client:
        for path in ["/segments", "/zones", "/reports?segment=city&city=Paris",
                     "/zones?at=banana"]:
            res = client.get(path)
            assert res.status_code == 401, path
            assert TOKEN not in res.text
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/zones?at=banana", headers=good).status_code == 400
        assert client.get("/segments", headers=good).status_code == 503  # MongoDB is down


# ------------------------------------------------------------------ against FerretDB


@pytest.fixture(scope="module")
def seeded(mongo_uri):
    """One database for the module's readers (they only read): global and segment rows,
    a fingerprint recording the segments, and status totals with segment counters."""
    from pymongo import MongoClient

    name = "t" + uuid.uuid4().hex[:12]
    client = MongoClient(mongo_uri)
    db = client[name]
    db.report_summary.insert_many(known_rows(10))
    db.segment_summary.create_index([("segment", 1), ("key", 1), ("timeBucket", 1)],
                                    unique=True, name="segment_key_bucket")
    db.segment_summary.insert_many(list(reversed(known_segment_docs())))
    db.fingerprint.insert_one({"_id": "fingerprint", "topic": "pings", "topicId": "",
                               "partitions": 2, "bucketSeconds": 60, "windowSeconds": 300,
                               "segments": "city,vehicle_type;h3:8", "shards": 16, "format": 2})
    db.pipeline_status.insert_one({"_id": "totals", "kind": "totals", "valid": 7,
                                   **SEGMENT_TOTALS})
    yield mongo_uri, name
    client.drop_database(name)
    client.close()


def api_client(seeded, **extra):
    uri, name = seeded
    values = {"mongo_uri": uri, "mongo_db": name, "kafka_brokers": NO_KAFKA, "topic": "pings"}
    values.update(extra)
    return TestClient(create_app(settings(**values), kafka_timeout=0.2, status_ttl=0))


@pytest.fixture(scope="module")
def api(seeded):
    with api_client(seeded, segments=CONFIGURED) as client:
        yield client


@pytest.mark.stack
def test_reports_of_a_segment_value(api):
    res = api.get("/reports", params={"segment": "vehicle_type,city", "city": "Hong Kong",
                                      "vehicle_type": "van"})
    assert res.status_code == 200
    assert res.json() == [{"time": bucket(i), "available": 5 + i, "online": 10 + i}
                          for i in range(10)]
    assert "link" not in res.headers
    # Same options as the global rows: range, revision.
    rows = api.get("/reports?segment=city,vehicle_type&city=Hong%20Kong&vehicle_type=van"
                   "&revision=true&from=2018-01-01T04:03:00Z&to=2018-01-01T04:04:00Z").json()
    assert rows == [{"time": bucket(3), "available": 8, "online": 13, "revision": 2},
                    {"time": bucket(4), "available": 9, "online": 14, "revision": 1}]
    assert api.get("/reports?segment=city&city=Paris").json() == [
        {"time": bucket(i), "available": 7, "online": 7} for i in range(5, 10)]
    # A value with no rows reads as no rows (a missing row is zero), not an error.
    assert api.get("/reports?segment=city&city=Lima").json() == []
    # The global rows are unchanged.
    assert api.get("/reports").json()[0] == {"time": bucket(0), "available": 400, "online": 500}


@pytest.mark.stack
def test_reports_of_a_segment_value_pages_by_link_headers(api):
    url = "/reports?segment=city,vehicle_type&city=Hong%20Kong&vehicle_type=car&limit=4"
    res = api.get(url)
    assert res.headers["x-next-from"] == "2018-01-01T04:04:00Z"
    assert "segment=city%2Cvehicle_type" in res.headers["link"]
    pages = follow(api, url)
    assert [len(p) for p in pages] == [4, 4, 2]
    assert [r["online"] for p in pages for r in p] == [100 + i for i in range(10)]
    pages = follow(api, url + "&newest=true")
    assert [[r["time"] for r in p] for p in pages] == [
        [bucket(i) for i in range(6, 10)], [bucket(i) for i in range(2, 6)],
        [bucket(0), bucket(1)]]


@pytest.mark.stack
def test_segments_lists_every_configured_definition_with_latest_values(api):
    res = api.get("/segments")
    assert res.status_code == 200
    body = res.json()
    # Default range: the hour ending at the newest bucket with segment rows.
    assert (body["from"], body["to"]) == ("2018-01-01T03:09:00Z", "2018-01-01T04:09:00Z")
    by_name = {s["segment"]: s for s in body["segments"]}
    assert list(by_name) == ["city", "city,vehicle_type", "h3:8", "vehicle_type"]
    city_type = by_name["city,vehicle_type"]
    assert (city_type["fields"], city_type["resolution"]) == (["city", "vehicle_type"], None)
    # Paris/car is two hours old: not in the default range.
    assert (city_type["valueCount"], city_type["truncated"]) == (3, False)
    assert city_type["values"] == [
        {"key": {"city": "Hong Kong", "vehicle_type": "car"}, "timeBucket": "2018-01-01T04:09:00Z",
         "online": 109, "available": 99},
        {"key": {"city": "Hong Kong", "vehicle_type": "van"}, "timeBucket": "2018-01-01T04:09:00Z",
         "online": 19, "available": 14},
        {"key": {"city": "Paris", "vehicle_type": "van"}, "timeBucket": "2018-01-01T04:09:00Z",
         "online": 7, "available": 7},
    ]
    zone = by_name["h3:8"]
    assert zone["resolution"] == 8 and zone["fields"] == ["h3"]
    # Most available first, then by key: other (3 available) after the cell with 3 too.
    assert [(v["key"]["h3"], v["available"]) for v in zone["values"]] == [
        (CELLS[2], 4), (CELLS[1], 3), ("other", 3), (CELLS[0], 2)]
    assert by_name["vehicle_type"] == {"segment": "vehicle_type", "fields": ["vehicle_type"],
                                       "resolution": None, "valueCount": 0, "truncated": False,
                                       "values": []}
    # A range and a limit: the latest row in the range, the most available first.
    body = api.get("/segments?from=2018-01-01T01:00:00Z&to=2018-01-01T04:05:00Z&limit=2").json()
    city_type = next(s for s in body["segments"] if s["segment"] == "city,vehicle_type")
    assert (city_type["valueCount"], city_type["truncated"]) == (4, True)
    assert [(v["key"]["city"], v["key"]["vehicle_type"], v["timeBucket"], v["online"])
            for v in city_type["values"]] == [
        ("Hong Kong", "car", "2018-01-01T04:05:00Z", 105),
        ("Hong Kong", "van", "2018-01-01T04:05:00Z", 15)]
    assert body["from"] == "2018-01-01T01:00:00Z"


@pytest.mark.stack
def test_configured_segments_come_from_the_database_without_presence_segments(seeded):
    with api_client(seeded) as client:  # PRESENCE_SEGMENTS empty
        body = client.get("/segments").json()
        assert [s["segment"] for s in body["segments"]] == ["city,vehicle_type", "h3:8"]
        assert client.get("/reports?segment=city,vehicle_type&city=Paris&vehicle_type=van"
                          ).status_code == 200
        res = client.get("/reports?segment=city&city=Paris")
        assert res.status_code == 400
        assert "configured (the database): city,vehicle_type;h3:8" in res.json()["error"]
        assert client.get("/zones").json()["timeBucket"] == "2018-01-01T04:09:00Z"


@pytest.mark.stack
def test_zones_is_a_geojson_feature_collection_of_cells(api):
    res = api.get("/zones?resolution=8")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("application/geo+json")
    body = res.json()
    assert body["type"] == "FeatureCollection"
    assert (body["resolution"], body["timeBucket"]) == (8, "2018-01-01T04:09:00Z")
    assert body["other"] == {"online": 4, "available": 3}  # overflow: not a cell
    assert [f["id"] for f in body["features"]] == CELLS
    for n, feature in enumerate(body["features"]):
        assert feature["type"] == "Feature"
        assert feature["properties"] == {"h3": CELLS[n], "online": 3 + n, "available": 2 + n,
                                         "timeBucket": "2018-01-01T04:09:00Z"}
        geometry = feature["geometry"]
        assert geometry["type"] == "Polygon" and len(geometry["coordinates"]) == 1
        ring = geometry["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) == 7
        assert all(113 < lng < 115 and 22 < lat < 23 for lng, lat in ring)  # [lng, lat]
    # The bucket holding `at`.
    body = api.get("/zones?at=2018-01-01T04:08:59Z").json()
    assert body["timeBucket"] == "2018-01-01T04:08:00Z" and "other" not in body
    assert [f["properties"]["online"] for f in body["features"]] == [2, 3, 4]
    assert api.get("/zones?at=1514779680").json()["timeBucket"] == "2018-01-01T04:08:00Z"
    # A bucket without cells: an empty collection, still valid GeoJSON.
    body = api.get("/zones?at=2018-01-01T04:00:00Z").json()
    assert body == {"type": "FeatureCollection", "resolution": 8,
                    "timeBucket": "2018-01-01T04:00:00Z", "features": []}


@pytest.mark.stack
def test_zones_before_any_cell_is_an_empty_collection(mongo_uri, unique_name):
    from pymongo import MongoClient

    app = create_app(settings(mongo_uri=mongo_uri, mongo_db=unique_name,
                              kafka_brokers=NO_KAFKA, segments="h3:8"), kafka_timeout=0.2)
    try:
        with TestClient(app) as client:
            assert client.get("/zones").json() == {
                "type": "FeatureCollection", "resolution": 8, "timeBucket": None, "features": []}
            body = client.get("/segments").json()
            assert body == {"segments": [{"segment": "h3:8", "fields": ["h3"], "resolution": 8,
                                          "valueCount": 0, "truncated": False, "values": []}],
                            "from": None, "to": None}
    finally:
        MongoClient(mongo_uri).drop_database(unique_name)


@pytest.mark.stack
def test_status_and_metrics_serve_the_segment_totals(api):
    status = api.get("/status").json()
    assert status["segmentTotals"] == SEGMENT_TOTALS
    fams = families(api.get("/metrics").text)
    assert samples(fams, "presence_segment_rows_written") == {
        (("segment", "city"),): 15, (("segment", "h3:8"),): 7}
    assert samples(fams, "presence_unlocated_pings") == {(): 12}


# ------------------------------------------------------------------ CLI


def run(args, env):
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def cli_env(seeded):
    uri, name = seeded
    return {"PRESENCE_MONGO_URI": uri, "PRESENCE_MONGO_DB": name,
            "PRESENCE_SEGMENTS": CONFIGURED}


@pytest.mark.stack
def test_cli_report_of_a_segment_value(cli_env):
    result = run(["report", "--segment", "city=Hong Kong,vehicle_type=van", "--format", "json"],
                 cli_env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"time": bucket(i), "online": 10 + i, "available": 5 + i,
         "revision": 2 if i == 3 else 1} for i in range(10)]
    result = run(["report", "--segment", "vehicle_type=van, city=Hong Kong", "--from",
                  "2018-01-01T04:08:00Z"], cli_env)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("time bucket (UTC)")
    assert lines[2].startswith("2018-01-01 04:08:00 |     18 |        13 |")
    assert lines[-1] == "2 buckets, 0 corrected by late pings"
    result = run(["report", "--segment", "city=Lima"], cli_env)
    assert result.exit_code == 0 and result.stdout == ""
    assert "no rows of city=Lima (segment city)" in result.stderr


@pytest.mark.stack
def test_cli_plot_of_a_segment_value(cli_env, tmp_path):
    out = tmp_path / "van.png"
    result = run(["plot", "--segment", "city=Hong Kong,vehicle_type=van", "-o", str(out)],
                 cli_env)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "10 buckets, 1 late-corrected" in result.stdout
    svg = tmp_path / "van.svg"
    assert run(["plot", "--segment", "city=Hong Kong,vehicle_type=van", "-o", str(svg)],
               cli_env).exit_code == 0
    assert "Available vs Online drivers: city=Hong Kong, vehicle_type=van" in svg.read_text()
    result = run(["plot", "--segment", "city=Lima", "-o", str(out)], cli_env)
    assert result.exit_code == 1 and "nothing to plot" in result.stderr


@pytest.mark.stack
def test_cli_zones_writes_geojson(cli_env, tmp_path):
    out = tmp_path / "maps" / "zones.geojson"
    result = run(["zones", "--resolution", "8", "-o", str(out)], cli_env)
    assert result.exit_code == 0, result.output
    body = json.loads(out.read_text())
    assert body["type"] == "FeatureCollection" and body["timeBucket"] == "2018-01-01T04:09:00Z"
    assert [f["id"] for f in body["features"]] == CELLS
    assert result.stdout == ""
    assert result.stderr.startswith(f"wrote {out}: 3 cells of h3:8 at 2018-01-01T04:09:00Z")
    # Standard output by default; the summary on stderr only.
    result = run(["zones", "--at", "2018-01-01T04:08:30Z"], cli_env)
    assert result.exit_code == 0
    body = json.loads(result.stdout)
    assert body["timeBucket"] == "2018-01-01T04:08:00Z" and len(body["features"]) == 3
    assert "wrote stdout: 3 cells" in result.stderr


def test_cli_zones_draws_a_picture_for_png_and_svg(cli_env, tmp_path):
    for name, magic in (("zones.png", b"\x89PNG"), ("zones.svg", b"<?xml")):
        out = tmp_path / name
        result = run(["zones", "--resolution", "8", "-o", str(out)], cli_env)
        assert result.exit_code == 0, result.output
        assert out.read_bytes().startswith(magic) and out.stat().st_size > 5_000
        assert result.stderr.startswith(f"wrote {out}: 3 cells of h3:8")


def test_zone_areas_group_far_apart_cities_busiest_first():
    from presence.tools.plot import zone_areas

    def cell(lat, lng, available):
        ring = [[lng, lat], [lng + 0.01, lat], [lng, lat + 0.01], [lng, lat]]
        return {"geometry": {"coordinates": [ring]}, "properties": {"available": available}}

    hong_kong = [cell(22.30, 114.17, 1), cell(22.35, 114.10, 2)]
    tokyo = [cell(35.68, 139.69, 4), cell(35.70, 139.80, 0)]
    areas = zone_areas(hong_kong[:1] + tokyo[:1] + hong_kong[1:] + tokyo[1:])
    assert areas == [tokyo, hong_kong]
    assert zone_areas([]) == []


@pytest.mark.parametrize("args, words", [
    (["report", "--segment", "city"], "not FIELD=VALUE"),
    (["report", "--segment", "colour=red"], "no configured segment has exactly the fields"),
    (["report", "--segment", "h3=abc"], "not an H3 cell of resolution 8"),
    (["plot", "--segment", "city=", "-o", "x.png"], "city: empty value"),
    (["zones", "--resolution", "7"], "'h3:7' is not configured"),
    (["zones", "--resolution", "16"], "16"),
    (["zones", "--at", "banana"], "banana"),
])
def test_cli_bad_segment_arguments_exit_2_with_one_line(args, words):
    # Settings only: every check here happens before MongoDB is asked anything but
    # the fingerprint (and PRESENCE_SEGMENTS is set, so not even that).
    env = {"PRESENCE_MONGO_URI": "mongodb://127.0.0.1:27017", "PRESENCE_MONGO_DB": "tnothere",
           "PRESENCE_SEGMENTS": CONFIGURED}
    result = run(args, env)
    assert result.exit_code == 2, result.output
    assert words in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [
    ["report", "--segment", "city=Paris"],
    ["zones"],
])
def test_cli_segment_commands_with_mongodb_down_exit_1(args):
    env = {"PRESENCE_MONGO_URI": "mongodb://user:hunter2@127.0.0.1:1", "PRESENCE_SEGMENTS": ""}
    result = run(args, env)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: MongoDB at mongodb://127.0.0.1:1 ")
    assert "hunter2" not in result.output and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.stack
def test_newest_segment_rows_older_than_the_global_rows(mongo_uri, unique_name):
    """/segments and /zones look from the newest global row first: when the segment rows
    stop earlier (e.g. every later ping unlocated), they still find the newest ones."""
    from pymongo import MongoClient

    client = MongoClient(mongo_uri)
    db = client[unique_name]
    db.report_summary.insert_many(known_rows(200))  # up to 07:19
    db.segment_summary.insert_many([seg_doc("h3:8", {"h3": CELLS[0]}, 8, 2, 1),
                                    seg_doc("h3:8", {"h3": CELLS[1]}, 9, 3, 2)])
    app = create_app(settings(mongo_uri=mongo_uri, mongo_db=unique_name,
                              kafka_brokers=NO_KAFKA, segments="h3:8"), kafka_timeout=0.2)
    try:
        with TestClient(app) as api:
            body = api.get("/zones").json()
            assert body["timeBucket"] == "2018-01-01T04:09:00Z"
            assert [f["id"] for f in body["features"]] == [CELLS[1]]
            body = api.get("/segments").json()
            assert (body["from"], body["to"]) == ("2018-01-01T03:09:00Z", "2018-01-01T04:09:00Z")
            assert [v["key"]["h3"] for v in body["segments"][0]["values"]] == [CELLS[1], CELLS[0]]
    finally:
        client.drop_database(unique_name)
        client.close()


# ------------------------------------------------------------------ the readers themselves


def test_segment_totals_reads_the_status_document_defensively():
    from presence.io.mongo import segment_totals

    assert segment_totals({}) == {"unlocated": 0, "segments": {}}
    assert segment_totals({"unlocated": 3, "segments": {
        "h3:8": {"otherPings": 2}, "city": "damaged"}}) == {
        "unlocated": 3, "segments": {"h3:8": {"otherPings": 2, "rowsWritten": 0,
                                              "overflowRows": 0}}}


@pytest.mark.stack
def test_readers_bound_what_they_read(seeded):
    from pymongo import MongoClient

    from presence.io.mongo import (
        latest_segment_bucket, recorded_segments, segment_cells, segment_rows, segment_values,
    )

    uri, name = seeded
    with MongoClient(uri) as client:
        db = client[name]
        rows = segment_rows(db, "city,vehicle_type", {"city": "Hong Kong", "vehicle_type": "van"},
                            {"timeBucket": {"$gte": bucket(2)}}, limit=3, newest=True)
        assert [r.time for r in rows] == [bucket(9), bucket(8), bucket(7)]
        values, cut = segment_values(db, "city,vehicle_type", {}, most_rows=5)
        assert cut and 1 <= len(values) <= 5
        values, cut = segment_values(db, "city,vehicle_type", {})
        assert not cut and len(values) == 4  # Paris/car too: no range
        cells, cut = segment_cells(db, "h3:8", bucket(9), most=2)
        assert cut and len(cells) == 2
        cells, cut = segment_cells(db, "h3:8", bucket(9))
        assert not cut and sorted(c.key["h3"] for c in cells) == [*CELLS, "other"]
        assert latest_segment_bucket(db) == bucket(9)
        assert latest_segment_bucket(db, "city,vehicle_type", at_most=bucket(-1)) == bucket(-120)
        assert latest_segment_bucket(db, "vehicle_type") is None
        assert recorded_segments(db) == ("city,vehicle_type;h3:8", 60)
