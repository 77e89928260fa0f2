"""Ping parsing and validation (SPEC "Input")."""

from __future__ import annotations

import pytest

from presence.core.pings import Ping, Rejection, format_instant, parse_ping, raw_text
from tests.constants import NOW

LATEST = NOW + 300


def parse(value: bytes | str | None) -> object:
    if isinstance(value, str):
        value = value.encode()
    return parse_ping(value, LATEST)


@pytest.mark.parametrize(
    "value, expected",
    [
        ('{"driver_id": 1042, "timestamp": 1514779230, "on_duty": 1}', Ping("1042", 1514779230.0, True)),
        ('{"driver_id": "1042", "timestamp": 1514779230.5, "on_duty": 0}', Ping("1042", 1514779230.5, False)),
        ('{"driver_id": "d-7", "timestamp": 1514779230123, "on_duty": true}', Ping("d-7", 1514779230.123, True)),
        ('{"driver_id": 0, "timestamp": "2018-01-01T04:00:30", "on_duty": false}', Ping("0", 1514779230.0, False)),
        ('{"driver_id": 5, "timestamp": "2018-01-01T04:00:30Z", "on_duty": 1}', Ping("5", 1514779230.0, True)),
        ('{"driver_id": 5, "timestamp": "2018-01-01T05:00:30+01:00", "on_duty": 1}', Ping("5", 1514779230.0, True)),
        ('{"driver_id": 5, "timestamp": "2018-01-01 04:00:30.250", "on_duty": 1}', Ping("5", 1514779230.25, True)),
        ('{"driver_id": 5, "timestamp": 1514779230, "on_duty": 1, "lat": 1.5, "extra": [1]}', Ping("5", 1514779230.0, True)),
        ('{"driver_id": "' + "x" * 128 + '", "timestamp": 1514779230, "on_duty": 1}', Ping("x" * 128, 1514779230.0, True)),
    ],
)
def test_accepted_shapes(value: str, expected: Ping) -> None:
    assert parse(value) == expected


def test_int_and_string_driver_ids_are_the_same_driver() -> None:
    a = Ping(*parse('{"driver_id": 42, "timestamp": 1514779230, "on_duty": 1}'))
    b = Ping(*parse('{"driver_id": "42", "timestamp": 1514779230, "on_duty": 1}'))
    assert a.driver_id == b.driver_id == "42"


@pytest.mark.parametrize(
    "value, reason",
    [
        (b"x" * (64 * 1024 + 1), "too_large"),
        (b'{"driver_id": 1, "timestamp": 1514779230, "on_duty": 1, "pad": "' + b"x" * 65536 + b'"}', "too_large"),
        (None, "invalid_json"),
        (b"", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b"\xff\xfe{}", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'"a string"', "invalid_json"),
        (b"42", "invalid_json"),
        (b'{"timestamp": 1514779230, "on_duty": 1}', "missing_field"),
        (b'{"driver_id": 1, "on_duty": 1}', "missing_field"),
        (b'{"driver_id": 1, "timestamp": 1514779230}', "missing_field"),
        (b"{}", "missing_field"),
        (b'{"driver_id": true, "timestamp": 1514779230, "on_duty": 1}', "invalid_field"),
        (b'{"driver_id": -1, "timestamp": 1514779230, "on_duty": 1}', "invalid_field"),
        (b'{"driver_id": "", "timestamp": 1514779230, "on_duty": 1}', "invalid_field"),
        (b'{"driver_id": "' + b"x" * 129 + b'", "timestamp": 1514779230, "on_duty": 1}', "invalid_field"),
        (b'{"driver_id": 1.5, "timestamp": 1514779230, "on_duty": 1}', "invalid_field"),
        (b'{"driver_id": null, "timestamp": 1514779230, "on_duty": 1}', "invalid_field"),
        (b'{"driver_id": [1], "timestamp": 1514779230, "on_duty": 1}', "invalid_field"),
        (b'{"driver_id": 1, "timestamp": "1514779230", "on_duty": 1}', "invalid_field"),
        (b'{"driver_id": 1, "timestamp": "yesterday", "on_duty": 1}', "invalid_field"),
        (b'{"driver_id": 1, "timestamp": true, "on_duty": 1}', "invalid_field"),
        (b'{"driver_id": 1, "timestamp": null, "on_duty": 1}', "invalid_field"),
        (b'{"driver_id": 1, "timestamp": 946684799, "on_duty": 1}', "invalid_field"),
        (b'{"driver_id": 1, "timestamp": "1999-12-31T23:59:59Z", "on_duty": 1}', "invalid_field"),
        (b'{"driver_id": 1, "timestamp": -5, "on_duty": 1}', "invalid_field"),
        (b'{"driver_id": 1, "timestamp": 1e400, "on_duty": 1}', "invalid_field"),  # beyond a double
        (b'{"driver_id": 1, "timestamp": 1514779230, "on_duty": 2}', "invalid_field"),
        (b'{"driver_id": 1, "timestamp": 1514779230, "on_duty": "true"}', "invalid_field"),
        (b'{"driver_id": 1, "timestamp": 1514779230, "on_duty": 1.0}', "invalid_field"),
        (b'{"driver_id": 1, "timestamp": 1514779230, "on_duty": null}', "invalid_field"),
        (b'{"driver_id": 1, "timestamp": 1800000301, "on_duty": 1}', "future_timestamp"),
        (b'{"driver_id": 1, "timestamp": 1800000301000, "on_duty": 1}', "future_timestamp"),
    ],
)
def test_rejections(value: bytes | None, reason: str) -> None:
    result = parse(value)
    assert isinstance(result, Rejection), result
    assert result.reason == reason
    assert result.detail


def test_first_failing_check_wins() -> None:
    # Missing on_duty AND a bad driver id: missing_field comes first.
    assert parse(b'{"driver_id": -1, "timestamp": 1}').reason == "missing_field"
    # Bad driver id AND a future timestamp: invalid_field comes first.
    assert parse(b'{"driver_id": -1, "timestamp": 1900000000, "on_duty": 1}').reason == "invalid_field"


def test_future_skew_boundary() -> None:
    assert parse_ping(b'{"driver_id": 1, "timestamp": 1800000300, "on_duty": 1}', LATEST) == ("1", 1800000300.0, True)


def test_raw_text_keeps_at_most_4_kib_as_text() -> None:
    assert raw_text(b"\xffabc") == "\ufffdabc"
    assert len(raw_text(b"y" * 10_000)) == 4096
    assert raw_text(None) == ""


def test_format_instant_is_utc() -> None:
    assert format_instant(1514779200) == "2018-01-01 04:00:00"


# --- the fast path agrees with the exhaustive one ------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import orjson  # noqa: E402

from presence.core.pings import parse_ping_checked  # noqa: E402
from tests.constants import NOW

VALUES = st.one_of(
    st.none(), st.booleans(),
    st.integers(-5, 3), st.integers(0, 2**64 + 5), st.integers(946_684_000, 1_800_001_000),
    st.integers(946_684_000_000, 1_800_001_000_000),
    st.floats(allow_nan=False, allow_infinity=False), st.floats(1.5e9, 1.9e9),
    st.text(max_size=3), st.text(min_size=120, max_size=140),
    st.sampled_from(["2018-01-01T04:00:30", "2018-01-01T04:00:30+02:00", "1514779230", "x", ""]),
    st.lists(st.integers(), max_size=2),
)
FIELDS = st.sampled_from(["driver_id", "timestamp", "on_duty", "lat", "driver"])


@settings(max_examples=3000, deadline=None)
@given(st.dictionaries(FIELDS, VALUES, max_size=5))
def test_fast_path_equals_exhaustive_checks(obj: dict) -> None:
    value = orjson.dumps(obj, option=orjson.OPT_PASSTHROUGH_DATACLASS) if _encodable(obj) else b"{}"
    assert parse_ping(value, LATEST) == parse_ping_checked(value, LATEST)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_fast_path_equals_exhaustive_checks_on_bytes(value: bytes) -> None:
    assert parse_ping(value, LATEST) == parse_ping_checked(value, LATEST)


def _encodable(obj: dict) -> bool:
    try:
        orjson.dumps(obj)
    except TypeError:
        return False  # integers beyond 64 bits: orjson cannot write them
    return True


def test_a_time_bucket_reads_back_as_epoch_and_iso() -> None:
    from presence.core.pings import bucket_epoch, bucket_iso

    assert bucket_epoch(format_instant(1_514_779_260)) == 1_514_779_260
    assert bucket_iso("2018-01-01 04:01:00") == "2018-01-01T04:01:00Z"
