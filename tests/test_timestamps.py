"""ISO-8601 timestamps (SPEC "Input"): the fast path decides exactly as the reference.

:func:`presence.core.timestamps.parse_iso_instant` reads the usual layout
(``YYYY-MM-DDTHH:MM:SS[.f{1,6}][Z|+HH:MM|-HH:MM]``) from two caches and
leaves every other string to :func:`parse_iso_instant_reference` (the
parser presence had before: ``datetime.fromisoformat``, no offset = UTC,
``.timestamp()``). These tests hold the two to the same accept/reject
decision and the very same float, on valid strings, near-valid ones (each
field just out of range, other separators, lowercase ``t``/``z``,
non-ASCII digits, offsets up to and beyond 24 h, any number of fraction
digits, truncations, insertions, overlong strings) and random text; and
whole pings (string and numeric timestamps) parse the same with either.
"""

from __future__ import annotations

import math

import json
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence.core import pings as pings_module
from presence.core import timestamps
from presence.core.pings import parse_ping, parse_ping_checked
from presence.core.timestamps import (
    parse_iso_instant,
    parse_iso_instant_reference,
    usual_iso_instant,
)

FAST = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return type(a) is type(b) is float and a == b and math.copysign(1, a) == math.copysign(1, b)


def _check(text: str) -> None:
    expected = parse_iso_instant_reference(text)
    got = parse_iso_instant(text)
    assert _same(got, expected), (text, got, expected)
    # Twice: the second time from the caches.
    assert _same(parse_iso_instant(text), expected), (text, "cached")
    # The fast path alone: the reference's value, or None (not the usual layout),
    # and only for ASCII text (no lone surrogate or other digits reach a value).
    usual = usual_iso_instant(text)
    assert usual is None or (_same(usual, expected) and text.isascii()), (text, usual)


# --- hand-picked cases, with the values they must have ------------------------------

KNOWN = [
    ("2024-01-01T00:00:05.123Z", 1704067205.123),
    ("2024-01-01T02:00:05.123+02:00", 1704067205.123),
    ("2024-01-01T00:00:05.123", 1704067205.123),  # no offset: UTC
    ("2023-12-31T19:00:05.123-05:00", 1704067205.123),
    ("2024-01-01T00:00:05Z", 1704067205.0),
    ("2024-01-01T00:00:05", 1704067205.0),
    ("2024-01-01T00:00:05.1", 1704067205.1),
    ("2024-01-01T00:00:05.123456", 1704067205.123456),
    ("2024-01-01T00:00:05.1234567", 1704067205.123456),  # reference: truncated to µs
    ("2024-02-29T12:00:00Z", 1709208000.0),  # leap year
    ("2000-02-29T00:00:00Z", 951782400.0),  # divisible by 400: leap
    ("2024-01-01T00:00:05+14:00", 1704016805.0),
    ("2024-01-01T00:00:05-12:00", 1704110405.0),
    ("2024-01-01T00:00:05+23:59", 1703980865.0),
    ("2024-01-01T00:00:05-00:00", 1704067205.0),
    ("2024-01-01 00:00:05", 1704067205.0),  # reference only: space separator
    ("2024-01-01", 1704067200.0),  # reference only: a date
    ("2024-01-01T00:00:05.Z", 1704067205.0),  # reference only: an empty fraction
    ("2024-01-01\u00e900:00:05Z", 1704067205.0),  # reference only: any one separator,
    ("2024-01-01\ud80000:00:05", 1704067205.0),  # a lone surrogate too (JSON: invalid)
    ("0001-01-01T00:00:00+01:00", -62135600400.0),
    ("9999-12-31T23:59:59.999999Z", 253402300800.0),  # rounded to the nearest double
]
REJECTED = [
    "2023-02-29T00:00:00Z",  # not a leap year
    "1900-02-29T00:00:00Z",  # divisible by 100, not by 400
    "2024-04-31T00:00:00Z",  # April has 30 days
    "2024-13-01T00:00:00Z",
    "2024-00-10T00:00:00Z",
    "2024-01-00T00:00:00Z",
    "2024-01-01T24:00:00Z",  # Python 3.11 has no 24:00
    "2024-01-01T23:60:00Z",
    "2024-01-01T23:59:60Z",  # no leap seconds
    "2024-01-01T00:00:05+24:00",  # offsets are below 24 h
    "2024-01-01T00:00:05.123ZZ",
    "2024-01-01T00:00:05.123Z\n",
    "2024-01-01T00:00:05.123 ",
    " 2024-01-01T00:00:05.123",
    "٢٠٢٤-01-01T00:00:05Z",  # Arabic-Indic digits
    "2024-01-01T00:00:0５Z",  # a fullwidth digit
    "2024-01-01T00:00:05.123Z" + "0" * 60,  # overlong
    "0000-01-01T00:00:00Z",
    "",
    "2024",
    "not a date at all",
]


@pytest.mark.parametrize("text,value", KNOWN)
def test_known_values(text: str, value: float) -> None:
    assert parse_iso_instant_reference(text) == value
    assert parse_iso_instant(text) == value
    assert parse_iso_instant(text) == value


@pytest.mark.parametrize("text", REJECTED)
def test_known_rejections(text: str) -> None:
    assert parse_iso_instant_reference(text) is None
    assert parse_iso_instant(text) is None


def test_usual_layout_never_calls_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the fast path: the shapes producers write skip fromisoformat."""

    def boom(text: str) -> None:
        raise AssertionError(f"reference parser called for {text!r}")

    monkeypatch.setattr(timestamps, "parse_iso_instant_reference", boom)
    monkeypatch.setattr(timestamps, "_HEADS", {})
    monkeypatch.setattr(timestamps, "_TAILS", {})
    for text in ("2024-03-01T10:20:30Z", "2024-03-01T10:20:30.5+05:30",
                 "2024-03-01T10:20:30.123456-08:00", "2024-03-01T10:20:30.120"):
        assert parse_iso_instant(text) is not None
    assert parse_iso_instant("2024-03-01T10:20:30.123456-08:00") == 1709317230.123456


def test_caches_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timestamps, "_HEADS", {})
    monkeypatch.setattr(timestamps, "_TAILS", {})
    monkeypatch.setattr(timestamps, "CACHE_MAX", 16)
    for i in range(200):
        text = f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}.{i:03d}+01:00"
        assert _same(parse_iso_instant(text), parse_iso_instant_reference(text))
        assert len(timestamps._HEADS) <= 16 and len(timestamps._TAILS) <= 16


# --- generated strings ----------------------------------------------------------------

ODD_DIGITS = "٠١٢٣٤٥٦٧٨٩０５²۳߃"  # Arabic-Indic, fullwidth, superscript, Persian, NKo


def _digits(value: int, width: int) -> str:
    return str(value).zfill(width)


@st.composite
def near_iso(draw: st.DrawFn) -> str:
    """Valid date-times, and each part just out of range or of another form."""
    year = draw(st.sampled_from([0, 1, 1899, 1900, 1970, 1999, 2000, 2023, 2024, 2100, 9999])
                | st.integers(0, 9999))
    month = draw(st.integers(0, 13))
    day = draw(st.sampled_from([0, 1, 28, 29, 30, 31, 32]) | st.integers(1, 28))
    hour = draw(st.sampled_from([0, 23, 24, 25]) | st.integers(0, 23))
    minute = draw(st.sampled_from([0, 59, 60]) | st.integers(0, 59))
    second = draw(st.sampled_from([0, 59, 60, 61]) | st.integers(0, 59))
    text = f"{_digits(year, 4)}-{_digits(month, 2)}-{_digits(day, 2)}"
    sep = draw(st.sampled_from(["T", "T", "T", "t", " ", "_", ""]))
    form = draw(st.sampled_from(["hms", "hms", "hms", "hm", "h", "compact", "none"]))
    if form == "none":
        return text
    if form == "h":
        text += f"{sep}{_digits(hour, 2)}"
    elif form == "hm":
        text += f"{sep}{_digits(hour, 2)}:{_digits(minute, 2)}"
    elif form == "compact":
        text += f"{sep}{_digits(hour, 2)}{_digits(minute, 2)}{_digits(second, 2)}"
    else:
        text += f"{sep}{_digits(hour, 2)}:{_digits(minute, 2)}:{_digits(second, 2)}"
    if draw(st.booleans()):
        mark = draw(st.sampled_from([".", ".", ",", ":"]))
        text += mark + draw(st.text("0123456789", min_size=0, max_size=12))
    zone = draw(st.sampled_from(["", "Z", "z", "+", "-", "+", "-", "UTC", " Z"]))
    if zone in ("+", "-"):
        oh = draw(st.sampled_from([0, 1, 12, 14, 15, 23, 24, 25, 99]) | st.integers(0, 30))
        om = draw(st.sampled_from([0, 30, 45, 59, 60, 99]))
        layout = draw(st.sampled_from(["hh:mm", "hh:mm", "hhmm", "hh", "hh:mm:ss", "hh:mm:ss.f"]))
        zone += _digits(oh, 2)
        if layout in ("hh:mm", "hh:mm:ss", "hh:mm:ss.f"):
            zone += ":" + _digits(om, 2)
        elif layout == "hhmm":
            zone += _digits(om, 2)
        if layout.startswith("hh:mm:ss"):
            zone += ":" + _digits(draw(st.integers(0, 61)), 2)
            if layout == "hh:mm:ss.f":
                zone += "." + draw(st.text("0123456789", min_size=1, max_size=7))
    text += zone
    return text


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A near-ISO string with a character replaced, inserted or removed, or cut."""
    text = draw(near_iso())
    alphabet = "0123456789-:T.+Z ,tzW\n\x00" + ODD_DIGITS
    for _ in range(draw(st.integers(1, 3))):
        if not text:
            break
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["replace", "insert", "delete", "cut", "append"]))
        char = draw(st.sampled_from(alphabet))
        if kind == "replace" and at < len(text):
            text = text[:at] + char + text[at + 1:]
        elif kind == "insert":
            text = text[:at] + char + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + 1:]
        elif kind == "cut":
            text = text[:at]
        else:
            text += draw(st.text(alphabet, max_size=70))
    return text


@FAST
@given(near_iso())
def test_near_iso_strings_same_as_reference(text: str) -> None:
    _check(text)


@FAST
@given(mutated())
def test_mutated_strings_same_as_reference(text: str) -> None:
    _check(text)


@FAST
@given(st.datetimes(), st.integers(-23 * 60 - 59, 23 * 60 + 59), st.integers(0, 6),
       st.sampled_from(["Z", "offset", "none"]))
def test_every_valid_instant_same_as_reference(moment, offset_minutes, digits, zone) -> None:
    """Every date-time of years 1-9999 in the usual layout, any offset below 24 h."""
    text = (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
            f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}")
    if digits:
        text += "." + f"{moment.microsecond:06d}"[:digits]
    if zone == "Z":
        text += "Z"
    elif zone == "offset":
        sign = "-" if offset_minutes < 0 else "+"
        text += f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
    _check(text)
    assert usual_iso_instant(text) is not None


@FAST
@given(st.text(max_size=80))
def test_random_text_same_as_reference(text: str) -> None:
    _check(text)


@FAST
@given(st.text(st.characters(blacklist_categories=()), max_size=40)
       | st.builds(lambda a, c, b: a + c + b, near_iso(), st.characters(blacklist_categories=()),
                   st.text(max_size=3)))
def test_any_code_point_even_surrogates_same_as_reference(text: str) -> None:
    _check(text)


@FAST
@given(st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
                     r"(Z|[+-][0-9]{2}:[0-9]{2})?", fullmatch=True))
def test_layout_with_any_digits_same_as_reference(text: str) -> None:
    _check(text)


# --- whole pings: string and numeric timestamps ------------------------------------

TIMESTAMPS = st.one_of(
    near_iso(),
    mutated(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=9e8, max_value=2e9),
    st.integers(-(2**70), 2**70),
    st.integers(946_684_800, 2_000_000_000),
    st.integers(10**11, 2 * 10**12),
)


@FAST
@given(TIMESTAMPS, st.floats(min_value=9e8, max_value=3e11))
def test_pings_parse_the_same_with_the_reference(stamp, latest_allowed: float) -> None:
    """parse_ping and parse_ping_checked give the same outcome with either ISO parser."""
    value = json.dumps({"driver_id": "d-1", "timestamp": stamp, "on_duty": 1}).encode()
    fast = (parse_ping(value, latest_allowed), parse_ping_checked(value, latest_allowed))
    original = pings_module.parse_iso_instant
    pings_module.parse_iso_instant = parse_iso_instant_reference
    try:
        reference = (parse_ping(value, latest_allowed), parse_ping_checked(value, latest_allowed))
    finally:
        pings_module.parse_iso_instant = original
    assert fast == reference
    if isinstance(stamp, str) and type(fast[0]) is tuple:
        assert fast[0][1] == parse_iso_instant_reference(stamp)


def test_pings_use_the_fast_parser() -> None:
    assert pings_module.parse_iso_instant is parse_iso_instant
    value = b'{"driver_id":"d-1","timestamp":"2024-01-01T02:00:05.123+02:00","on_duty":true}'
    assert parse_ping(value, 2e9) == ("d-1", 1704067205.123, True)
