"""Shared fixtures. Tests marked ``stack`` talk to the real local servers
(``make stack-up``: Apache Kafka on 127.0.0.1:9092, FerretDB on 127.0.0.1:27017).
Outside CI they skip, with the reason, when a server is unreachable; with
``CI=true`` they fail instead, so CI never passes without them."""

from __future__ import annotations

import os
import uuid

import pytest

KAFKA = os.environ.get("PRESENCE_TEST_KAFKA", "127.0.0.1:9092")
MONGO = os.environ.get("PRESENCE_TEST_MONGO", "mongodb://127.0.0.1:27017")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(what: str, why: str) -> None:
    message = f"{what} unreachable ({why}); run `make stack-up`"
    if IN_CI:
        pytest.fail(message + " -- integration tests must not be skipped in CI")
    pytest.skip(message)


@pytest.fixture(scope="session")
def kafka_brokers() -> str:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": KAFKA}).list_topics(timeout=10)
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        _unavailable(f"Kafka at {KAFKA}", str(exc))
    return KAFKA


@pytest.fixture(scope="session")
def mongo_uri() -> str:
    from pymongo import MongoClient

    try:
        with MongoClient(MONGO, serverSelectionTimeoutMS=5000) as client:
            client.admin.command("ping")
    except Exception as exc:  # noqa: BLE001
        _unavailable(f"MongoDB at {MONGO}", type(exc).__name__)
    return MONGO


@pytest.fixture
def unique_name() -> str:
    """A fresh lowercase name for a topic or database."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def topic_and_db(kafka_brokers, mongo_uri, unique_name):
    """A unique topic name and database, both removed afterwards."""
    from pymongo import MongoClient

    from presence.io.kafka import delete_topic

    client = MongoClient(mongo_uri)
    yield unique_name, client[unique_name]
    client.drop_database(unique_name)
    client.close()
    delete_topic(kafka_brokers, unique_name)


@pytest.fixture(scope="module", params=["python", "native"])
def both_readers(request):
    """Runs a module's tests with each partition reader (PRESENCE_READER): the pure-Python
    one and the compiled one (skipped where it is not built)."""
    from presence.core import partition

    if request.param == "native" and not partition.native_reader_built():
        pytest.skip("compiled reader not built")
    before = partition.DEFAULT_READER
    partition.DEFAULT_READER = request.param
    yield request.param
    partition.DEFAULT_READER = before
