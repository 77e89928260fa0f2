"""The reports API: /reports, /status, /metrics, /healthz, the dashboard's files, and its
guards (API token, Host check, CORS), paging and the cost of /status under load."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from prometheus_client import parser as prom_parser

from presence.tools.api import HELP, StatusCache, ApiError, create_app, loopback_hosts, prometheus_text
from presence.tools.reports import (
    KafkaWatermarks, TimeError, TimeRange, parse_range, parse_time, store_status,
)
from presence.settings import SettingsError, load_settings
from tests.known_docs import known_rows, seed_database
from tests.stack_helpers import follow

DOWN = "mongodb://127.0.0.1:1"
NO_KAFKA = "127.0.0.1:1"
TOKEN = "s3cret-Token-4242"

OLD_METRICS = {
    "presence_mongo_up", "presence_kafka_up", "presence_pings", "presence_corrected_late_pings",
    "presence_rows_written", "presence_watermark_seconds", "presence_partition_next_offset",
    "presence_partition_high_watermark", "presence_partition_lag",
    "presence_partition_gap_offsets", "presence_partition_max_event_time_seconds",
    "presence_dead_letters", "presence_report_rows", "presence_latest_bucket_seconds",
}
"""Families (as the parser names them: counters without ``_total``) scraped before."""
NEW_METRICS = {"presence_late_pings", "presence_row_rewrites", "presence_unlocated_pings",
               "presence_segment_other_pings", "presence_segment_rows_written",
               "presence_segment_overflow_rows"}


def settings(**values):
    return load_settings({f"PRESENCE_{k.upper()}": str(v) for k, v in values.items()})


def families(text: str) -> dict:
    return {f.name: f for f in prom_parser.text_string_to_metric_families(text)}


def samples(fams: dict, name: str) -> dict:
    return {tuple(sorted(s.labels.items())): s.value for s in fams[name].samples}


# ------------------------------------------------------------------ time parsing


@pytest.mark.parametrize("text, epoch", [
    ("2018-01-01T04:00:00Z", 1514779200),
    ("2018-01-01T04:00:00", 1514779200),  # no offset = UTC
    ("2018-01-01 04:00:00", 1514779200),
    ("2018-01-01T05:00:00+01:00", 1514779200),
    ("2018-01-01", 1514764800),
    ("1514779200", 1514779200),
    ("1514779200.5", 1514779200.5),
    ("1514779200000", 1514779200),  # epoch milliseconds
    (" 1514779200 ", 1514779200),
    ("2000-01-01T00:00:00Z", 946684800),
    ("9999-12-31T23:59:59Z", 253402300799),
])
def test_parse_time(text, epoch):
    assert parse_time(text) == epoch


@pytest.mark.parametrize("text", [
    "yesterday", "2018-13-01", "-5", "nan", "inf", "04:00",
    "1e15",  # epoch ms of year 33658: once compared as a string, it matched every row
    "0999-01-01",  # once compared as a string, every row was before it... and after
    "0", "1999-12-31T23:59:59Z", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00",
    "1e300",
])
def test_parse_time_rejects(text):
    with pytest.raises(TimeError, match="from"):
        parse_time(text, "from")


def test_parse_range():
    assert parse_range(None, "") == TimeRange(None, None)
    assert parse_range("2018-01-01T04:00:00.5Z", "1514779260.7").query() == {
        "timeBucket": {"$gte": "2018-01-01 04:00:01", "$lte": "2018-01-01 04:01:00"}}
    with pytest.raises(TimeError, match="after"):
        parse_range("2018-01-02", "2018-01-01")


# ------------------------------------------------------------------ without servers


@pytest.fixture
def offline():
    with TestClient(create_app(settings(mongo_uri=DOWN, kafka_brokers=NO_KAFKA),
                               kafka_timeout=0.2)) as client:
        yield client


def test_dashboard_and_assets_are_served_from_the_package(offline):
    page = offline.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Available vs Online drivers" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    for path in ["/static/dashboard.js", "/static/dashboard.css",
                 "/static/vendor/uPlot.iife.min.js", "/static/vendor/uPlot.min.css",
                 "/static/vendor/uPlot.LICENSE"]:
        res = offline.get(path)
        assert res.status_code == 200 and len(res.content) > 500, path
    assert offline.get("/static/nope.js").status_code == 404


@pytest.mark.parametrize("query, word", [
    ("from=yesterday", "from"),
    ("to=2018-13-01", "to"),
    ("from=2018-01-02&to=2018-01-01", "after"),
    ("revision=maybe", "revision"),
    ("from=1e15", "out of range"),
    ("to=0999-01-01", "out of range"),
    ("from=0", "out of range"),
    ("limit=0", "limit"),
    ("limit=100001", "limit"),
    ("limit=many", "limit"),
    ("newest=perhaps", "newest"),
])
def test_bad_parameters_are_400_with_a_clear_error(offline, query, word):
    res = offline.get(f"/reports?{query}")
    assert res.status_code == 400
    body = res.json()
    assert set(body) == {"error"} and word in body["error"]


def test_mongodb_down(offline):
    res = offline.get("/reports")
    assert res.status_code == 503
    assert res.json()["error"].startswith("MongoDB at ")
    assert offline.get("/healthz").status_code == 503
    assert offline.get("/status").status_code == 503
    metrics = offline.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = families(metrics.text)
    assert samples(fams, "presence_mongo_up") == {(): 0}
    assert set(fams) == {"presence_mongo_up"}


STATUS = {
    "watermark": "2018-01-01T04:09:00Z",
    "totals": {"valid": 7, "invalid": 5, "late": 4, "correctedLate": 2, "tooLate": 1,
               "rowsWritten": 9, "rowRewrites": 3, "deadLetters": 6},
    "partitions": [{"topic": "t", "partition": 0, "nextOffset": 7, "highWatermark": 10,
                    "lag": 3, "gaps": [{"from": 0, "to": 2, "lost": 2}],
                    "maxEventTime": None}],
    "deadLetters": {"total": 6, "byReason": {"invalid_json": 3, "too_late": 1,
                                              "missing_field": 2}},
    "reports": {"count": 10, "first": "2018-01-01 04:00:00", "last": "2018-01-01 04:09:00"},
    "kafka": {"topic": "t", "reachable": True},
}


def test_prometheus_text_parses_with_the_names_users_scrape():
    text = prometheus_text(STATUS, mongo_up=True)
    fams = families(text)
    assert set(fams) == OLD_METRICS | NEW_METRICS
    # The exposed sample names, as a Prometheus server stores them.
    for name in ["presence_pings_total", "presence_corrected_late_pings_total",
                 "presence_rows_written_total", "presence_late_pings_total",
                 "presence_row_rewrites_total"]:
        assert f"\n{name}" in text, name
    assert samples(fams, "presence_pings") == {
        (("outcome", "valid"),): 7, (("outcome", "invalid"),): 5, (("outcome", "too_late"),): 1}
    assert fams["presence_pings"].type == "counter"
    assert samples(fams, "presence_late_pings") == {(): 4}
    assert samples(fams, "presence_corrected_late_pings") == {(): 2}
    assert samples(fams, "presence_rows_written") == {(): 9}
    assert samples(fams, "presence_row_rewrites") == {(): 3}
    assert samples(fams, "presence_partition_lag") == {(("partition", "0"), ("topic", "t")): 3}
    assert samples(fams, "presence_partition_gap_offsets") == {
        (("partition", "0"), ("topic", "t")): 2}
    assert samples(fams, "presence_partition_max_event_time_seconds") == {}
    assert samples(fams, "presence_dead_letters") == {
        (("reason", "invalid_json"),): 3, (("reason", "missing_field"),): 2,
        (("reason", "too_late"),): 1}
    assert samples(fams, "presence_watermark_seconds") == {(): 1514779740}
    assert samples(fams, "presence_latest_bucket_seconds") == {(): 1514779740}
    assert samples(fams, "presence_kafka_up") == {(("topic", "t"),): 1}
    assert samples(fams, "presence_report_rows") == {(): 10}


def test_metric_help_says_what_each_counts():
    fams = families(prometheus_text(STATUS, mongo_up=True))
    for fam in fams.values():
        assert len(fam.documentation) > 40, fam.name
    assert len({f.documentation for f in fams.values()}) == len(fams)
    deterministic = ["presence_pings", "presence_late_pings", "presence_corrected_late_pings",
                     "presence_dead_letters"]
    batching = ["presence_rows_written", "presence_row_rewrites"]
    for name in deterministic:
        assert "Deterministic" in fams[name].documentation, name
    for name in batching:
        assert "batching" in fams[name].documentation and \
            "Deterministic" not in fams[name].documentation, name
    assert "PRESENCE_DEAD_LETTER_TTL_DAYS" in fams["presence_dead_letters"].documentation
    assert set(HELP) == {f"{n}_total" if fams[n].type == "counter" else n for n in fams}


# ------------------------------------------------------------------ guards


def test_api_token_closes_every_endpoint_but_healthz_and_static_files():
    app = create_app(settings(mongo_uri=DOWN, kafka_brokers=NO_KAFKA, api_token=TOKEN),
                     kafka_timeout=0.2)
    with TestClient(app) as client:
        for path in ["/reports", "/reports?from=banana", "/status", "/metrics", "/openapi.json"]:
            res = client.get(path)
            assert res.status_code == 401, path
            assert res.headers["www-authenticate"] == 'Bearer realm="presence"'
            assert "Authorization: Bearer" in res.json()["error"]
            for wrong in [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", TOKEN,
                          f"Basic {TOKEN}"]:
                res = client.get(path, headers={"Authorization": wrong})
                assert res.status_code == 401, (path, wrong)
                assert TOKEN not in res.text
            assert 'error="invalid_token"' in client.get(
                path, headers={"Authorization": "Bearer nope"}).headers["www-authenticate"]
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/reports?from=banana", headers=good).status_code == 400
        assert client.get("/reports", headers={"Authorization": f"bearer {TOKEN}"}
                          ).status_code == 503  # past the guard: MongoDB is down here
        assert client.get("/metrics", headers=good).status_code == 200
        # Open: the health probe and the dashboard's files (they hold no data).
        assert client.get("/healthz").status_code == 503
        assert client.get("/").status_code == 200
        assert client.get("/static/dashboard.js").status_code == 200


def test_api_token_is_a_secret_setting():
    with pytest.raises(SettingsError) as err:
        load_settings({"PRESENCE_API_TOKEN": TOKEN, "PRESENCE_CORS_ORIGINS": "nope"})
    assert "PRESENCE_CORS_ORIGINS" in str(err.value) and TOKEN not in str(err.value)
    assert not load_settings({"PRESENCE_API_TOKEN": ""}).api_token  # empty = off


def test_loopback_hosts():
    assert loopback_hosts("0.0.0.0", 8000) is None
    assert loopback_hosts("192.168.1.5", 8000) is None
    assert loopback_hosts("127.0.0.1", 8000) == {"localhost:8000", "127.0.0.1:8000", "[::1]:8000"}
    assert loopback_hosts("::1", 8000) == loopback_hosts("localhost", 8000)
    assert loopback_hosts("127.0.0.1", 80) >= {"localhost", "127.0.0.1"}


@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:8000", True), ("localhost:8000", True), ("LOCALHOST:8000", True),
    ("[::1]:8000", True),
    ("evil.example:8000", False),  # a DNS-rebinding page
    ("evil.example", False), ("127.0.0.1:8001", False), ("localhost", False), ("", False),
])
def test_host_header_check_on_loopback(host, ok):
    app = create_app(settings(mongo_uri=DOWN, kafka_brokers=NO_KAFKA),
                     allowed_hosts=loopback_hosts("127.0.0.1", 8000))
    with TestClient(app) as client:
        res = client.get("/static/dashboard.css", headers={"Host": host})
        assert (res.status_code == 200) is ok, res.text
        if not ok:
            assert res.status_code == 400 and "Host header" in res.json()["error"]


def preflight(client, origin: str, path: str = "/reports"):
    return client.options(path, headers={
        "Origin": origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})


def test_cors_default_is_same_origin_only(offline):
    res = preflight(offline, "http://old-dashboard.example:8080")
    assert "access-control-allow-origin" not in res.headers
    assert res.status_code != 200
    res = offline.get("/static/dashboard.css", headers={"Origin": "http://elsewhere.example"})
    assert "access-control-allow-origin" not in res.headers


def test_cors_allows_listed_origins_and_refuses_others():
    app = create_app(settings(mongo_uri=DOWN, kafka_brokers=NO_KAFKA, api_token=TOKEN,
                              cors_origins="http://old-dashboard.example:8080, https://ops.example"))
    with TestClient(app) as client:
        res = preflight(client, "http://old-dashboard.example:8080")  # no token in a preflight
        assert res.status_code == 200
        assert res.headers["access-control-allow-origin"] == "http://old-dashboard.example:8080"
        assert "GET" in res.headers["access-control-allow-methods"]
        assert "authorization" in res.headers["access-control-allow-headers"].lower()
        assert preflight(client, "https://ops.example").status_code == 200
        refused = preflight(client, "http://evil.example")
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        # The actual request: CORS headers even on a 401, so the page can read the error.
        res = client.get("/reports", headers={"Origin": "https://ops.example"})
        assert res.status_code == 401
        assert res.headers["access-control-allow-origin"] == "https://ops.example"
        assert "Link" in res.headers["access-control-expose-headers"]
        res = client.get("/reports", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in res.headers


def test_cors_star_allows_any_origin_like_the_old_api():
    app = create_app(settings(mongo_uri=DOWN, kafka_brokers=NO_KAFKA, cors_origins="*"))
    with TestClient(app) as client:
        res = preflight(client, "http://anything.example")
        assert res.status_code == 200 and res.headers["access-control-allow-origin"] == "*"
        res = client.get("/healthz", headers={"Origin": "http://anything.example"})
        assert res.headers["access-control-allow-origin"] == "*"


# ------------------------------------------------------------------ the status cache


def test_status_cache_computes_once_for_concurrent_requests_and_keeps_failures():
    now = [100.0]
    calls = []
    release = threading.Event()

    def compute():
        calls.append(now[0])
        assert release.wait(10)
        if len(calls) == 3:
            raise ApiError(503, "MongoDB down")
        return {"n": len(calls)}

    cache = StatusCache(compute, ttl=1.0, clock=lambda: now[0])

    async def scenario():
        tasks = [asyncio.ensure_future(cache.get()) for _ in range(50)]
        while cache.requests < 50:
            await asyncio.sleep(0)
        release.set()
        first = await asyncio.gather(*tasks)
        assert first == [{"n": 1}] * 50 and len(calls) == 1
        now[0] += 0.5
        assert await cache.get() == {"n": 1} and len(calls) == 1  # still fresh
        now[0] += 0.6
        assert await cache.get() == {"n": 2} and len(calls) == 2
        now[0] += 1.0
        for _ in range(3):  # the failure is kept for the ttl too
            with pytest.raises(ApiError, match="MongoDB down"):
                await cache.get()
        assert len(calls) == 3

    asyncio.run(scenario())


def test_kafka_watermarks_back_off_while_kafka_is_down():
    now = [0.0]
    kafka = KafkaWatermarks(settings(kafka_brokers=NO_KAFKA), timeout=0.3, retry_after=5.0,
                            clock=lambda: now[0])
    try:
        for _ in range(3):
            with pytest.raises(ConnectionError, match="unreachable"):
                kafka.offsets("t")
        assert kafka.queries == 1  # asked once; the failure is reported again meanwhile
        client = kafka._consumer
        now[0] += 5.0
        with pytest.raises(ConnectionError):
            kafka.offsets("t")
        assert kafka.queries == 2 and kafka._consumer is client  # the same client
    finally:
        kafka.close()


# ------------------------------------------------------------------ against MongoDB


@pytest.fixture
def db(mongo_uri, unique_name):  # noqa: F811
    from pymongo import MongoClient

    client = MongoClient(mongo_uri)
    yield client[unique_name]
    client.drop_database(unique_name)
    client.close()


BY_REASON = {"invalid_json": 3, "missing_field": 2, "too_late": 1}


def seed(db, topic="pings", rows=10, new_totals=True):
    docs = seed_database(db, topic=topic, rows=rows)
    if new_totals:  # the totals the dataflow keeps since dead letters have a TTL
        db.pipeline_status.update_one({"_id": "totals"}, {"$set": {
            "late": 4, "rowRewrites": 3, "deadLettersByReason": BY_REASON}})
    return docs


@pytest.fixture
def api(mongo_uri, db):  # noqa: F811
    docs = seed(db)
    app = create_app(settings(mongo_uri=mongo_uri, mongo_db=db.name, topic="pings",
                              kafka_brokers=NO_KAFKA), kafka_timeout=0.5, status_ttl=0)
    with TestClient(app) as client:
        yield client, docs


@pytest.mark.stack
def test_reports_have_the_old_api_shape(api):
    client, docs = api
    res = client.get("/reports")
    assert res.status_code == 200
    assert res.json() == [
        {"time": d["timeBucket"], "available": d["driversAvailableCount"],
         "online": d["driversOnlineCount"]}
        for d in docs
    ]
    assert res.text.startswith('[{"time":"2018-01-01 04:00:00","available":400,"online":500}')
    assert "link" not in res.headers  # the whole range fits one page


@pytest.mark.stack
def test_reports_range_and_revision(api):
    client, docs = api
    rows = client.get("/reports", params={"from": "2018-01-01T04:03:00Z",
                                          "to": "1514779440"}).json()  # to 04:04
    assert [r["time"] for r in rows] == ["2018-01-01 04:03:00", "2018-01-01 04:04:00"]
    rows = client.get("/reports?revision=true&from=2018-01-01 04:03:00").json()
    assert rows[0] == {"time": "2018-01-01 04:03:00", "available": 403, "online": 503,
                       "revision": 2}
    assert client.get("/reports?from=2030-01-01").json() == []
    # Bounds far out (once compared as strings, these returned every row) are refused.
    for query in ["from=1e15", "to=0999-01-01", "from=999999999999999"]:
        res = client.get(f"/reports?{query}")
        assert res.status_code == 400, query
    assert len(client.get("/reports?from=2000-01-01&to=9999-12-31").json()) == 10


@pytest.mark.stack
def test_reports_pages_follow_link_headers(api):
    client, docs = api
    times = [d["timeBucket"] for d in docs]
    res = client.get("/reports?limit=4")
    assert [r["time"] for r in res.json()] == times[:4]
    assert res.headers["x-next-from"] == "2018-01-01T04:04:00Z"
    assert res.headers["link"] == '</reports?limit=4&from=2018-01-01T04%3A04%3A00Z>; rel="next"'
    pages = follow(client, "/reports?limit=4")
    assert [len(p) for p in pages] == [4, 4, 2]
    assert [r["time"] for p in pages for r in p] == times
    # Oldest first within a range: the range's upper bound is kept in the links.
    pages = follow(client, "/reports?limit=3&from=2018-01-01T04:01:00Z&to=2018-01-01T04:07:00Z")
    assert [r["time"] for p in pages for r in p] == times[1:8]
    # The newest rows of the range, still sorted by time; the next page is older.
    res = client.get("/reports?limit=4&newest=true&revision=true")
    assert [r["time"] for r in res.json()] == times[6:]
    assert res.headers["x-next-to"] == "2018-01-01T04:05:00Z"
    pages = follow(client, "/reports?limit=4&newest=true")
    assert [[r["time"] for r in p] for p in pages] == [times[6:], times[2:6], times[:2]]


@pytest.mark.stack
def test_reports_default_page_is_10000_rows(mongo_uri, db):
    docs = known_rows(10_001)
    db.report_summary.insert_many(docs)
    app = create_app(settings(mongo_uri=mongo_uri, mongo_db=db.name, kafka_brokers=NO_KAFKA))
    with TestClient(app) as client:
        res = client.get("/reports")
        rows = res.json()
        assert len(rows) == 10_000 and rows[0]["time"] == docs[0]["timeBucket"]
        assert res.headers["x-next-from"] == docs[-1]["timeBucket"].replace(" ", "T") + "Z"
        newest = client.get("/reports?newest=true&limit=2").json()
        assert [r["time"] for r in newest] == [d["timeBucket"] for d in docs[-2:]]
        assert len(client.get("/reports?limit=100000").json()) == 10_001


@pytest.mark.stack
def test_status_without_kafka(api):
    client, _ = api
    res = client.get("/status")
    assert res.status_code == 200
    status = res.json()
    assert status["kafka"]["reachable"] is False
    assert "127.0.0.1:1" in status["kafka"]["error"]
    assert status["watermark"] == "2018-01-01T04:09:00Z"
    assert status["totals"] == {"valid": 7, "invalid": 5, "late": 4, "correctedLate": 2,
                                "tooLate": 1, "deadLetters": 6, "rowsWritten": 13,
                                "rowRewrites": 3}
    assert status["deadLetters"] == {"total": 6, "byReason": BY_REASON}
    assert [(p["partition"], p["nextOffset"], p["lag"]) for p in status["partitions"]] == [
        (0, 7, None), (1, 3, None)]
    assert status["partitions"][0]["gaps"] == [{"from": 0, "to": 2, "lost": 2}]
    assert status["gaps"] == {"count": 1, "lostOffsets": 2}
    assert status["reports"] == {"count": 10, "first": "2018-01-01 04:00:00",
                                 "last": "2018-01-01 04:09:00"}
    assert client.get("/healthz").json()["status"] == "ok"


def test_status_generated_at_is_utc_whatever_the_local_zone(api, monkeypatch):
    client, _ = api
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        generated = client.get("/status").json()["generatedAt"]
    finally:
        monkeypatch.undo()
        time.tzset()
    assert generated.endswith("+00:00"), generated
    assert abs(datetime.fromisoformat(generated).timestamp() - time.time()) < 3600


@pytest.mark.stack
def test_status_reads_no_collection_scan(mongo_uri, db):
    """Which commands /status sends: none reads dead_letters, none counts or scans
    report_summary (its count from $collStats metadata and two limit-1 finds on the
    unique timeBucket index), so with MongoDB its cost does not grow with the data."""
    from pymongo import MongoClient, monitoring

    seed(db, new_totals=False)  # an older dataflow's totals: no reasons kept
    db.pipeline_status.insert_one({"_id": "fingerprint", "kind": "fingerprint", "topic": "x"})

    class Listener(monitoring.CommandListener):
        def __init__(self):
            self.commands = []

        def started(self, event):
            self.commands.append((event.command_name, dict(event.command)))

        def succeeded(self, event):
            pass

        def failed(self, event):
            pass

    listener = Listener()
    client = MongoClient(mongo_uri, event_listeners=[listener], tz_aware=True)
    try:
        status = store_status(client[db.name])
    finally:
        client.close()
    assert status["deadLetters"] == {"total": 6, "byReason": {}}  # no scan to find reasons
    assert [p["partition"] for p in status["partitions"]] == [0, 1]  # fingerprint left out
    sent = [(name, cmd.get(name), cmd) for name, cmd in listener.commands
            if name not in ("endSessions", "hello", "isMaster", "ismaster")]
    assert all(coll != "dead_letters" for _, coll, _ in sent), sent
    assert not [c for c in sent if c[0] in ("distinct", "mapReduce", "count")]
    finds = [cmd for name, coll, cmd in sent if name == "find" and coll == "report_summary"]
    assert len(finds) == 2 and all(cmd.get("limit") == 1 and cmd.get("sort") for cmd in finds)
    aggregates = [cmd for name, coll, cmd in sent if name == "aggregate"]
    # The row count from the collection's metadata, not by counting.
    assert [a["pipeline"] for a in aggregates] == [[{"$collStats": {"count": {}}}]]
    assert status["reports"]["count"] == 10
    assert [name for name, coll, _ in sent if coll == "pipeline_status"] == ["find"]


@pytest.mark.stack
def test_status_and_metrics_with_kafka_lag(mongo_uri, kafka_brokers, db, unique_name):  # noqa: F811
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    from presence.io.kafka import ensure_topic

    topic = unique_name
    seed(db, topic=topic, rows=10)  # next offsets: 7 on partition 0, 3 on 1
    ensure_topic(kafka_brokers, topic, 3)
    producer = Producer({"bootstrap.servers": kafka_brokers})
    for partition, count in [(0, 10), (1, 5), (2, 4)]:
        for n in range(count):
            producer.produce(topic, b"{}", partition=partition)
    assert producer.flush(10) == 0
    app = create_app(settings(mongo_uri=mongo_uri, mongo_db=db.name, topic=topic,
                              kafka_brokers=kafka_brokers), status_ttl=0)
    try:
        with TestClient(app) as client:
            status = client.get("/status").json()
            consumer = app.state.kafka._consumer
            assert status["kafka"]["reachable"] is True and status["kafka"]["lag"] == 3 + 2 + 4
            parts = {p["partition"]: p for p in status["partitions"]}
            assert (parts[0]["highWatermark"], parts[0]["lag"]) == (10, 3)
            assert (parts[1]["highWatermark"], parts[1]["lag"]) == (5, 2)
            # Partition 2 is not read yet: all of it is lag.
            assert (parts[2]["nextOffset"], parts[2]["state"], parts[2]["lag"]) == (None, "unread", 4)
            res = client.get("/metrics")
            text = res.text
            assert f'presence_partition_lag{{partition="0",topic="{topic}"}} 3.0' in text
            fams = families(text)
            assert samples(fams, "presence_partition_high_watermark")[
                (("partition", "1"), ("topic", topic))] == 5
            assert samples(fams, "presence_kafka_up") == {(("topic", topic),): 1}
            assert samples(fams, "presence_dead_letters")[(("reason", "invalid_json"),)] == 3
            assert samples(fams, "presence_pings")[(("outcome", "valid"),)] == 7
            assert samples(fams, "presence_late_pings") == {(): 4}
            assert samples(fams, "presence_row_rewrites") == {(): 3}
            assert samples(fams, "presence_mongo_up") == {(): 1}
            assert samples(fams, "presence_report_rows") == {(): 10}
            assert set(fams) == OLD_METRICS | NEW_METRICS
            # One Kafka client for the app's life, asked once per refresh.
            assert app.state.kafka.queries == 2 and app.state.kafka._consumer is consumer
    finally:
        AdminClient({"bootstrap.servers": kafka_brokers}).delete_topics([topic])


# ------------------------------------------------------------------ under load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.stack
def test_healthz_answers_within_half_a_second_under_200_concurrent_status_calls(mongo_uri, db):
    """The one timed assertion (issue 9.6): /status with Kafka unreachable takes the
    Kafka timeout (1 s) to compute, yet 200 concurrent calls cost one computation
    and hold no thread, so /healthz still answers at once."""
    import httpx
    import uvicorn

    seed(db)
    app = create_app(settings(mongo_uri=mongo_uri, mongo_db=db.name, topic="pings",
                              kafka_brokers=NO_KAFKA), kafka_timeout=1.0)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    cache = app.state.status_cache
    base = f"http://127.0.0.1:{port}"

    async def scenario():
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
            began = time.perf_counter()
            calls = [asyncio.ensure_future(http.get("/status")) for _ in range(200)]
            while cache.requests < 200:  # every call reached the server and waits
                await asyncio.sleep(0.01)
                assert time.perf_counter() - began < 60
            arrived_s = time.perf_counter() - began
            t0 = time.perf_counter()
            health = await http.get("/healthz")
            health_s = time.perf_counter() - t0
            answers = await asyncio.gather(*calls)
            return health, health_s, answers, arrived_s, time.perf_counter() - began

    try:
        health, health_s, answers, arrived_s, total_s = asyncio.run(scenario())
    finally:
        server.should_exit = True
        thread.join(10)
    print(f"\n/healthz answered in {health_s * 1000:.0f} ms under 200 concurrent /status "
          f"calls (all had reached the server after {arrived_s:.2f} s); all 200 answered "
          f"in {total_s:.2f} s with {cache.computations} computation(s)")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert [a.status_code for a in answers] == [200] * 200
    assert all(a.json()["totals"]["valid"] == 7 for a in answers)
    assert cache.computations <= 3
    assert health_s < 0.5


@pytest.mark.parametrize("args, host, ok", [
    ([], "127.0.0.1:{port}", True),
    ([], "evil.example:{port}", False),
    (["--allowed-host", "presence.local:{port}"], "presence.local:{port}", True),
    (["--allowed-host", "*"], "evil.example:{port}", True),
    (["--host", "0.0.0.0"], "evil.example:{port}", True),  # not loopback: names unknown
])
def test_serve_checks_the_host_header_on_its_loopback_default(monkeypatch, args, host, ok):
    import socket

    import uvicorn
    from click.testing import CliRunner

    from presence.tools.cli import cli

    with socket.socket() as probe:  # a port free now, as `presence serve` would be given
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    served = {}
    monkeypatch.setattr(uvicorn.Server, "run",
                        lambda self, sockets=None: served.update(app=self.config.app))
    env = {"PRESENCE_MONGO_URI": DOWN, "PRESENCE_KAFKA_BROKERS": NO_KAFKA}
    args = [a.format(port=port) for a in args]
    result = CliRunner().invoke(cli, ["serve", "--port", str(port), *args], env=env)
    assert result.exit_code == 0, result.output
    with TestClient(served["app"]) as client:
        res = client.get("/static/dashboard.css", headers={"Host": host.format(port=port)})
        assert (res.status_code == 200) is ok
