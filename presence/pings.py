"""Parsing and validation of one driver ping (a Kafka message value).

Pure functions, no I/O. The hot path is :func:`parse_ping`: it returns a
plain ``(driver_id, event_time, on_duty)`` tuple (the fields of :class:`Ping`)
for a valid ping and a :class:`Rejection` otherwise, so that the batch loop in
:mod:`presence.partition` can tell them apart with one ``type() is tuple``
check and no exception handling.

The checks and their order are those of the SPEC ("Input"):
``too_large``, ``invalid_json``, ``missing_field``, ``invalid_field``,
``future_timestamp``. ``too_late`` is judged later, against the ping's own
partition watermark (see :mod:`presence.partition`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Literal, NamedTuple, Union

import msgspec
import orjson

MAX_VALUE_BYTES = 64 * 1024
"""Values larger than this are rejected as ``too_large``."""

MAX_DRIVER_ID_CHARS = 128
EPOCH_MS_THRESHOLD = 1e11
"""A numeric timestamp at or above this is read as epoch milliseconds."""

MIN_EVENT_TIME = 946_684_800.0
"""2000-01-01T00:00:00Z: earlier timestamps are ``invalid_field``."""

TIME_BUCKET_FORMAT = "%Y-%m-%d %H:%M:%S"
"""How ``timeBucket`` (and every instant in logs and dead letters) is written, UTC."""

RAW_KEEP_BYTES = 4 * 1024
"""How much of a rejected value a dead letter keeps, as text."""

REASONS = (
    "too_large",
    "invalid_json",
    "missing_field",
    "invalid_field",
    "future_timestamp",
    "too_late",
)


class Ping(NamedTuple):
    """A valid ping: a normalised driver id, a UTC epoch-seconds event time, and duty."""

    driver_id: str
    time: float
    on_duty: bool


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message is not a valid ping: a SPEC reason code and a human detail."""

    reason: str
    detail: str


Parsed = Union[tuple, Rejection]
"""A ``(driver_id, time, on_duty)`` tuple (see :class:`Ping`) or a rejection."""

_FIELDS = ("driver_id", "timestamp", "on_duty")
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
_isfinite = math.isfinite


class _Shape(msgspec.Struct):
    """The usual shape of a valid ping, decoded and checked in C by msgspec.

    Anything it refuses (ISO-8601 text timestamps, out-of-range ids, other
    ``on_duty`` values, bad JSON) goes through :func:`parse_ping_checked`.
    """

    driver_id: Union[
        # msgspec bounds stop at int64; larger ids (up to orjson's u64) take the checked path
        Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)],
        Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_DRIVER_ID_CHARS)],
    ]
    timestamp: Union[int, float]
    on_duty: Union[bool, Literal[0, 1]]


_decode_shape = msgspec.json.Decoder(_Shape).decode
_DecodeError = msgspec.DecodeError  # ValidationError is a subclass


def parse_ping(value: bytes | None, latest_allowed: float) -> Parsed:
    """Parse one message value.

    ``latest_allowed`` is the wall clock at read time plus
    ``max_future_skew``: event times after it are ``future_timestamp``.

    The fast path accepts only what :func:`parse_ping_checked` accepts, with
    the same result; anything else (or anything unusual) goes through that
    slower, exhaustive path, which names the reason.
    """
    if value is None or len(value) > MAX_VALUE_BYTES:
        return parse_ping_checked(value, latest_allowed)
    try:
        shape = _decode_shape(value)
    except _DecodeError:
        return parse_ping_checked(value, latest_allowed)
    driver = shape.driver_id
    if type(driver) is int:
        driver = str(driver)
    stamp = shape.timestamp
    if stamp >= EPOCH_MS_THRESHOLD:
        stamp = stamp / 1000.0
    if MIN_EVENT_TIME <= stamp <= latest_allowed:
        return (driver, stamp + 0.0, shape.on_duty == 1)
    return parse_ping_checked(value, latest_allowed)


def parse_ping_checked(value: bytes | None, latest_allowed: float) -> Parsed:
    """Every check of the SPEC, in its order; the reason of the first that fails."""
    if value is None:
        return Rejection("invalid_json", "empty message (no value)")
    if len(value) > MAX_VALUE_BYTES:
        return Rejection(
            "too_large", f"value is {len(value)} bytes, more than {MAX_VALUE_BYTES}"
        )
    try:
        obj = _loads(value)
    except _JSONDecodeError as exc:
        return Rejection("invalid_json", f"not UTF-8 JSON: {exc}")
    if type(obj) is not dict:
        return Rejection(
            "invalid_json", f"JSON {type(obj).__name__} is not an object"
        )
    try:
        driver = obj["driver_id"]
        stamp = obj["timestamp"]
        duty = obj["on_duty"]
    except KeyError:
        missing = [f for f in _FIELDS if f not in obj]
        return Rejection("missing_field", f"missing field {missing[0]!r}")

    # driver_id: non-empty string of at most 128 characters, or int >= 0.
    kind = type(driver)
    if kind is str:
        if not driver or len(driver) > MAX_DRIVER_ID_CHARS:
            return Rejection(
                "invalid_field",
                f"driver_id must have 1 to {MAX_DRIVER_ID_CHARS} characters",
            )
    elif kind is int:
        if driver < 0:
            return Rejection("invalid_field", "driver_id must not be negative")
        driver = str(driver)
    else:
        return Rejection(
            "invalid_field",
            f"driver_id must be a string or an integer, not {_json_type(driver)}",
        )

    # timestamp: epoch s, epoch ms, or ISO-8601 text (no offset = UTC).
    kind = type(stamp)
    if kind is int or kind is float:
        if not _isfinite(stamp):
            return Rejection("invalid_field", "timestamp is not a finite number")
        if stamp >= EPOCH_MS_THRESHOLD:
            stamp = stamp / 1000.0
    elif kind is str:
        stamp = parse_iso_instant(stamp)
        if stamp is None:
            return Rejection(
                "invalid_field", "timestamp string is not an ISO-8601 date-time"
            )
    else:
        return Rejection(
            "invalid_field",
            f"timestamp must be a number or an ISO-8601 string, not {_json_type(stamp)}",
        )
    if stamp < MIN_EVENT_TIME:
        return Rejection("invalid_field", "timestamp is before 2000-01-01")

    # on_duty: exactly 0, 1, true or false.
    if duty is True or duty is False:
        pass
    elif type(duty) is int and (duty == 0 or duty == 1):
        duty = duty == 1
    else:
        return Rejection(
            "invalid_field", f"on_duty must be 0, 1, true or false, not {_short(duty)}"
        )

    if stamp > latest_allowed:
        return Rejection(
            "future_timestamp",
            f"timestamp {format_instant(stamp)} is ahead of the wall clock "
            "by more than the allowed skew",
        )
    return (driver, float(stamp), duty)


def parse_iso_instant(text: str) -> float | None:
    """Epoch seconds of an ISO-8601 date-time; no offset means UTC."""
    if not 10 <= len(text) <= 64 or not text[:4].isdigit():
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def format_instant(epoch_seconds: float) -> str:
    """``YYYY-MM-DD HH:MM:SS`` in UTC, the SPEC's ``timeBucket`` format.

    Instants beyond year 9999 (possible in a rejected ping) show as epoch seconds.
    """
    try:
        moment = datetime.fromtimestamp(epoch_seconds, timezone.utc)
    except (ValueError, OverflowError, OSError):
        return f"{epoch_seconds:.0f} (epoch seconds)"
    return moment.strftime(TIME_BUCKET_FORMAT)


def raw_text(value: bytes | None) -> str:
    """At most 4 KiB of a rejected value, as text (undecodable bytes replaced)."""
    if value is None:
        return ""
    return value[:RAW_KEEP_BYTES].decode("utf-8", errors="replace")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _short(value: object) -> str:
    text = orjson.dumps(value).decode() if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
