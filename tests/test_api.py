"""The reports API: /reports, /status, /metrics, /healthz and the dashboard's files."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from presence.api import create_app, prometheus_text
from presence.reports import TimeError, TimeRange, parse_range, parse_time
from presence.settings import load_settings
from tests.known_docs import seed_database

DOWN = "mongodb://127.0.0.1:1"
NO_KAFKA = "127.0.0.1:1"


def settings(**values):
    return load_settings({f"PRESENCE_{k.upper()}": str(v) for k, v in values.items()})


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
])
def test_parse_time(text, epoch):
    assert parse_time(text) == epoch


@pytest.mark.parametrize("text", ["yesterday", "2018-13-01", "-5", "nan", "inf", "04:00"])
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
    with TestClient(create_app(settings(mongo_uri=DOWN, kafka_brokers=NO_KAFKA))) as client:
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
])
def test_bad_parameters_are_400_with_a_clear_error(offline, query, word):
    res = offline.get(f"/reports?{query}")
    assert res.status_code == 400
    body = res.json()
    assert set(body) == {"error"} and word in body["error"]


def test_mongodb_down(offline):
    res = offline.get("/reports")
    assert res.status_code == 503
    assert res.json()["error"].startswith(f"MongoDB at {DOWN}")
    assert offline.get("/healthz").status_code == 503
    assert offline.get("/status").status_code == 503
    metrics = offline.get("/metrics")
    assert metrics.status_code == 200 and "presence_mongo_up 0" in metrics.text


def test_prometheus_text_parses():
    parser = pytest.importorskip("prometheus_client.parser")
    status = {
        "watermark": "2018-01-01T04:09:00Z",
        "totals": {"valid": 7, "invalid": 5, "correctedLate": 2, "tooLate": 1, "rowsWritten": 9},
        "partitions": [{"topic": "t", "partition": 0, "nextOffset": 7, "highWatermark": 10,
                        "lag": 3, "gaps": [{"from": 0, "to": 2, "lost": 2}],
                        "maxEventTime": None}],
        "deadLetters": {"total": 3, "byReason": {"invalid_json": 3}},
        "reports": {"count": 10, "first": "2018-01-01 04:00:00", "last": "2018-01-01 04:09:00"},
        "kafka": {"topic": "t", "reachable": True},
    }
    families = {f.name: f for f in parser.text_string_to_metric_families(
        prometheus_text(status, mongo_up=True))}
    sample = lambda name: {tuple(sorted(s.labels.items())): s.value  # noqa: E731
                           for s in families[name].samples}
    assert sample("presence_partition_lag") == {(("partition", "0"), ("topic", "t")): 3}
    assert sample("presence_dead_letters") == {(("reason", "invalid_json"),): 3}
    assert sample("presence_watermark_seconds") == {(): 1514779740}
    assert sample("presence_latest_bucket_seconds") == {(): 1514779740}


# ------------------------------------------------------------------ against MongoDB


@pytest.fixture
def db(mongo_uri, unique_name):  # noqa: F811
    from pymongo import MongoClient

    client = MongoClient(mongo_uri)
    yield client[unique_name]
    client.drop_database(unique_name)
    client.close()


@pytest.fixture
def api(mongo_uri, db):  # noqa: F811
    docs = seed_database(db, topic="pings", rows=10)
    app = create_app(settings(mongo_uri=mongo_uri, mongo_db=db.name, topic="pings",
                              kafka_brokers=NO_KAFKA))
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


@pytest.mark.stack
def test_status_without_kafka(api):
    client, _ = api
    res = client.get("/status")
    assert res.status_code == 200
    status = res.json()
    assert status["kafka"]["reachable"] is False
    assert "127.0.0.1:1" in status["kafka"]["error"]
    assert status["watermark"] == "2018-01-01T04:09:00Z"
    assert status["totals"] == {"valid": 7, "invalid": 5, "correctedLate": 2, "tooLate": 1,
                                "deadLetters": 6, "rowsWritten": 13}
    assert status["deadLetters"] == {
        "total": 6, "byReason": {"invalid_json": 3, "missing_field": 2, "too_late": 1}}
    assert [(p["partition"], p["nextOffset"], p["lag"]) for p in status["partitions"]] == [
        (0, 7, None), (1, 3, None)]
    assert status["partitions"][0]["gaps"] == [{"from": 0, "to": 2, "lost": 2}]
    assert status["gaps"] == {"count": 1, "lostOffsets": 2}
    assert status["reports"] == {"count": 10, "first": "2018-01-01 04:00:00",
                                 "last": "2018-01-01 04:09:00"}
    assert client.get("/healthz").json()["status"] == "ok"


@pytest.mark.stack
def test_status_and_metrics_with_kafka_lag(mongo_uri, kafka_brokers, db, unique_name):  # noqa: F811
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    from presence.simulate import ensure_topic

    topic = unique_name
    seed_database(db, topic=topic, rows=10)  # next offsets: 7 on partition 0, 3 on 1
    ensure_topic(kafka_brokers, topic, 3)
    producer = Producer({"bootstrap.servers": kafka_brokers})
    for partition, count in [(0, 10), (1, 5), (2, 4)]:
        for n in range(count):
            producer.produce(topic, b"{}", partition=partition)
    assert producer.flush(10) == 0
    app = create_app(settings(mongo_uri=mongo_uri, mongo_db=db.name, topic=topic,
                              kafka_brokers=kafka_brokers))
    try:
        with TestClient(app) as client:
            status = client.get("/status").json()
            assert status["kafka"]["reachable"] is True and status["kafka"]["lag"] == 3 + 2 + 4
            parts = {p["partition"]: p for p in status["partitions"]}
            assert (parts[0]["highWatermark"], parts[0]["lag"]) == (10, 3)
            assert (parts[1]["highWatermark"], parts[1]["lag"]) == (5, 2)
            # Partition 2 is not read yet: all of it is lag.
            assert (parts[2]["nextOffset"], parts[2]["state"], parts[2]["lag"]) == (None, "unread", 4)
            text = client.get("/metrics").text
            assert f'presence_partition_lag{{topic="{topic}",partition="0"}} 3' in text
            assert f'presence_partition_high_watermark{{topic="{topic}",partition="1"}} 5' in text
            assert f'presence_kafka_up{{topic="{topic}"}} 1' in text
            assert 'presence_dead_letters{reason="invalid_json"} 3' in text
            assert 'presence_pings_total{outcome="valid"} 7' in text
            assert "presence_mongo_up 1" in text
    finally:
        AdminClient({"bootstrap.servers": kafka_brokers}).delete_topics([topic])
