"""The MongoDB shell's client sharing (no server needed)."""

from __future__ import annotations

import atexit

import pytest

from presence import mongo


class FakeClient:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def unregistered(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(atexit, "unregister", calls.append)
    return calls


def test_sinks_of_a_process_share_one_client_closed_by_the_last(unregistered) -> None:
    made: list[FakeClient] = []
    clients = mongo.SharedClients(connect=lambda uri: made.append(FakeClient(uri)) or made[-1])

    first, fresh_first = clients.acquire("mongodb://a")
    second, fresh_second = clients.acquire("mongodb://a")
    other, fresh_other = clients.acquire("mongodb://b")

    assert first is second and other is not first
    assert (fresh_first, fresh_second, fresh_other) == (True, False, True)
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


def test_a_client_is_made_again_after_the_last_release() -> None:
    made: list[FakeClient] = []
    clients = mongo.SharedClients(connect=lambda uri: made.append(FakeClient(uri)) or made[-1])
    clients.acquire("mongodb://a")
    clients.release("mongodb://a")
    again, fresh = clients.acquire("mongodb://a")
    assert fresh and again is made[1] and made[0].closed == 1
