"""The MongoDB shell's client sharing (no server needed)."""

from __future__ import annotations

import atexit

import pytest

from presence.io import mongo


class FakeClient:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.closed = 0

    def __getitem__(self, db: str) -> str:
        return f"{self.uri}/{db}"

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def unregistered(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(atexit, "unregister", calls.append)
    return calls


@pytest.fixture
def made() -> list[FakeClient]:
    return []


@pytest.fixture
def clients(made) -> mongo.SharedClients:
    return mongo.SharedClients(connect=lambda uri: made.append(FakeClient(uri)) or made[-1])


def test_sinks_of_a_process_share_one_client_closed_by_the_last(clients, made, unregistered):
    prepared: list[str] = []
    first = clients.acquire("mongodb://a", "db1", prepared.append)
    second = clients.acquire("mongodb://a", "db1", prepared.append)
    third = clients.acquire("mongodb://a", "db2", prepared.append)
    other = clients.acquire("mongodb://b", "db1", prepared.append)

    assert first is second is third and other is not first and len(made) == 2
    # Indexes once per database, before any sink of it writes.
    assert prepared == ["mongodb://a/db1", "mongodb://a/db2", "mongodb://b/db1"]
    for _ in range(2):
        clients.release("mongodb://a")
    assert first.closed == 0 and not unregistered
    clients.release("mongodb://a")
    assert first.closed == 1 and not unregistered  # "b" is still open
    clients.release("mongodb://b")
    assert other.closed == 1
    assert clients.open_uris() == []
    # pymongo's exit handler (joining the stopped monitor threads) goes once all are closed.
    import pymongo.synchronous.monitor as monitor

    assert monitor._shutdown_resources in unregistered


def test_a_client_is_made_again_after_the_last_release(clients, made) -> None:
    clients.acquire("mongodb://a", "db", lambda db: None)
    clients.release("mongodb://a")
    prepared: list[str] = []
    again = clients.acquire("mongodb://a", "db", prepared.append)
    assert again is made[1] and made[0].closed == 1 and prepared == ["mongodb://a/db"]


def test_a_failed_prepare_lets_go_of_the_client(clients, made) -> None:
    def refuse(db: str) -> None:
        raise RuntimeError("not authorized")

    with pytest.raises(RuntimeError):
        clients.acquire("mongodb://a", "db", refuse)
    assert made[0].closed == 1 and clients.open_uris() == []
