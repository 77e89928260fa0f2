"""Parsing and validation of one driver ping (a Kafka message value).

Pure functions, no I/O. The hot path is :func:`parse_ping`: it returns a
plain ``(driver_id, event_time, on_duty)`` tuple (the fields of :class:`Ping`)
for a valid ping and a :class:`Rejection` otherwise, so that the batch loop in
:mod:`presence.core.partition` can tell them apart with one ``type() is tuple``
check and no exception handling.

The checks and their order are those of the SPEC ("Input"):
``too_large``, ``invalid_json``, ``missing_field``, ``invalid_field``,
``future_timestamp``. ``too_late`` is judged later, against the ping's own
partition watermark (see :mod:`presence.core.partition`).

No value, whatever its bytes, makes these functions raise: nesting deeper
than :data:`MAX_DEPTH` is refused before any recursive parser sees it,
numbers beyond what orjson reads (integers past 64 bits, ``1e400``) are read
again exactly by the standard library, and anything unexpected while judging
one value becomes a rejection naming the error.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from itertools import accumulate
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, NamedTuple, Union

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

MAX_DEPTH = 64
"""JSON nested deeper than this (arrays and objects, anywhere) is ``invalid_json``."""

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


class _Shape(msgspec.Struct, gc=False):
    """The usual shape of a valid ping, decoded and checked in C by msgspec.

    Anything it refuses (ISO-8601 text timestamps, out-of-range ids, other
    ``on_duty`` values, bad JSON) goes through :func:`parse_ping_checked`.
    ``gc=False``: it holds only scalars (no cycles), and not tracking it
    makes the decode about a third faster.
    """

    driver_id: Union[
        # msgspec bounds stop at int64; larger ids (any size) take the checked path
        Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)],
        Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_DRIVER_ID_CHARS)],
    ]
    timestamp: Union[int, float, str]
    on_duty: Union[bool, Literal[0, 1]]


_decode_shape = msgspec.json.Decoder(_Shape).decode
decode_shape = _decode_shape
"""msgspec's decoder of the usual ping shape (the reader inlines the fast path with it)."""
_DecodeError = msgspec.DecodeError  # ValidationError is a subclass


class _SegmentShape(_Shape, gc=False):
    """:class:`_Shape` with the optional segment fields (SPEC "Input").

    Typed ``Any``: a bad optional field (a number for ``city``, text for
    ``lat``) neither rejects the ping nor sends it off the fast path; its
    value is judged by :class:`presence.core.segments.ValueExtractor`. Used
    only when segments are configured: without them the reader decodes
    :class:`_Shape`, which skips these fields.
    """

    city: Any = None
    vehicle_type: Any = None
    lat: Any = None
    lng: Any = None


decode_segment_shape = msgspec.json.Decoder(_SegmentShape).decode
"""msgspec's decoder of the usual ping shape with the optional segment fields."""


def ping_object(value: bytes | None) -> dict:
    """The JSON object of a value already judged valid (the checked path's
    reading of it), for its optional fields; ``{}`` if there is none."""
    try:
        obj = _decode(value)
    except Exception:  # noqa: BLE001 - a valid ping always decodes; belt and braces
        return {}
    return obj if type(obj) is dict else {}


def parse_ping(value: bytes | None, latest_allowed: float) -> Parsed:
    """Parse one message value.

    ``latest_allowed`` is the message's Kafka timestamp plus
    ``max_future_skew``: event times after it are ``future_timestamp``.

    The fast path accepts only what :func:`parse_ping_checked` accepts, with
    the same result; anything else (or anything unusual) goes through that
    slower, exhaustive path, which names the reason.
    """
    if value is None:
        return parse_ping_checked(value, latest_allowed)
    size = len(value)
    # A text nested deeper than MAX_DEPTH needs two bytes per level, so
    # shorter values are safe for msgspec (it fails on them or sees <= 64 levels).
    # msgspec does not check the UTF-8 of what it skips (other fields): non-ASCII
    # values must be valid UTF-8 first.
    if (
        size > MAX_VALUE_BYTES
        or (size >= SHALLOW_BYTES and too_deep(value))
        or not (value.isascii() or _is_utf8(value))
    ):
        return parse_ping_checked(value, latest_allowed)
    try:
        shape = _decode_shape(value)
        driver = shape.driver_id
        if type(driver) is int:
            driver = str(driver)
        stamp = shape.timestamp
        if type(stamp) is str:
            stamp = usual_iso_instant(stamp)  # None (unusual layout): the checked path
        elif stamp >= EPOCH_MS_THRESHOLD:
            stamp = stamp / 1000.0
        if MIN_EVENT_TIME <= stamp <= latest_allowed:
            return (driver, stamp + 0.0, shape.on_duty == 1)
    except Exception:  # noqa: BLE001 - any surprise: the checked path judges it
        pass
    return parse_ping_checked(value, latest_allowed)


SHALLOW_BYTES = 2 * (MAX_DEPTH + 1)
"""A value shorter than this cannot be valid JSON nested deeper than MAX_DEPTH."""
# A string, or an unterminated one to the end (so no match ever fails and
# rescans: linear on any input).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def too_deep(value: bytes) -> bool:
    """True if arrays and objects nest deeper than :data:`MAX_DEPTH` (strings skipped).

    Iterative and linear (no recursion), so any value up to 64 KiB is safe.
    """
    if value.count(b"[") + value.count(b"{") <= MAX_DEPTH:
        return False
    brackets = _STRING.sub(b"", value).translate(None, _NOT_BRACKETS)
    if len(brackets) <= MAX_DEPTH:
        return False
    return max(accumulate(map(_STEP.__getitem__, brackets))) > MAX_DEPTH


def parse_ping_checked(value: bytes | None, latest_allowed: float) -> Parsed:
    """Every check of the SPEC, in its order; the reason of the first that fails.

    Never raises: an unexpected error while judging a value is a rejection
    (``invalid_json`` while reading the JSON, ``invalid_field`` after) whose
    detail names the error.
    """
    stage = "invalid_json"
    try:
        obj = _decode(value)
        if type(obj) is Rejection:
            return obj
        stage = "invalid_field"
        return _judge(obj, latest_allowed)
    except Exception as exc:  # noqa: BLE001 - one message must never stop the flow
        return Rejection(stage, f"could not be judged: {_error_name(exc)}")


def _decode(value: bytes | None) -> dict | Rejection:
    """The JSON object of a value, or why there is none."""
    if value is None:
        return Rejection("invalid_json", "empty message (no value)")
    if len(value) > MAX_VALUE_BYTES:
        return Rejection(
            "too_large", f"value is {len(value)} bytes, more than {MAX_VALUE_BYTES}"
        )
    if not value:
        return Rejection("invalid_json", "empty message (no bytes)")
    if too_deep(value):
        return Rejection("invalid_json", f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        obj = _loads(value)
    except _JSONDecodeError as exc:
        # orjson refuses numbers beyond a double (1e400): valid JSON all the same.
        obj = _load_exact(value, f"not UTF-8 JSON: {exc}")
    else:
        if type(obj) is dict and type(obj.get("driver_id")) is float:
            # orjson reads integers past 64 bits as floats; such an id is valid.
            obj = _load_exact(value, "")
    if type(obj) is Rejection:
        return obj
    if type(obj) is not dict:
        return Rejection("invalid_json", f"JSON {_json_type(obj)} is not an object")
    return obj


class _HugeInt:
    """A JSON integer too long for ``int()`` (over 4,000 digits), kept as its text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _exact_int(text: str) -> int | _HugeInt:
    return int(text) if len(text) <= 4000 else _HugeInt(text)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _load_exact(value: bytes, orjson_error: str) -> object:
    """Read with the standard library: every number exactly, none refused.

    Used only when orjson refused a value or read a driver id as a float.
    The depth is checked already (<= 64 levels), so its recursion is safe.
    Strict as orjson otherwise: UTF-8 only, no NaN/Infinity, no lone surrogates.
    """
    try:
        obj = json.loads(
            value.decode("utf-8"), parse_int=_exact_int, parse_constant=_refuse_constant
        )
    except (ValueError, UnicodeDecodeError) as exc:
        return Rejection("invalid_json", orjson_error or f"not UTF-8 JSON: {exc}")
    if _has_lone_surrogate(obj, 0):
        return Rejection(
            "invalid_json", orjson_error or "not UTF-8 JSON: a string has a lone surrogate"
        )
    return obj


def _has_lone_surrogate(obj: object, depth: int) -> bool:
    kind = type(obj)
    if kind is str:
        return _LONE_SURROGATE.search(obj) is not None
    if depth > MAX_DEPTH:  # cannot happen: too_deep() ran first
        return True
    if kind is list:
        return any(_has_lone_surrogate(v, depth + 1) for v in obj)
    if kind is dict:
        return any(
            _LONE_SURROGATE.search(k) is not None or _has_lone_surrogate(v, depth + 1)
            for k, v in obj.items()
        )
    return False


def _judge(obj: dict, latest_allowed: float) -> Parsed:
    """The field checks of the SPEC on a decoded JSON object."""
    try:
        driver = obj["driver_id"]
        stamp = obj["timestamp"]
        duty = obj["on_duty"]
    except KeyError:
        missing = [f for f in _FIELDS if f not in obj]
        return Rejection("missing_field", f"missing field {missing[0]!r}")

    # driver_id: non-empty string of at most 128 characters, or an integer >= 0 of any size.
    kind = type(driver)
    if kind is str:
        if not driver or len(driver) > MAX_DRIVER_ID_CHARS:
            return Rejection(
                "invalid_field",
                f"driver_id must have 1 to {MAX_DRIVER_ID_CHARS} characters",
            )
    elif kind is int or kind is _HugeInt:
        if (driver < 0) if kind is int else driver.text.startswith("-"):
            return Rejection("invalid_field", "driver_id must not be negative")
        driver = str(driver) if kind is int else driver.text
    else:
        return Rejection(
            "invalid_field",
            f"driver_id must be a string or an integer, not {_json_type(driver)}",
        )

    # timestamp: epoch s, epoch ms, or ISO-8601 text (no offset = UTC).
    kind = type(stamp)
    if kind is int or kind is float or kind is _HugeInt:
        if kind is not float:
            stamp = _as_float(stamp)
        if not _isfinite(stamp):
            return Rejection(
                "invalid_field", "timestamp is not a finite number (beyond a double's range)"
            )
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
            f"timestamp {format_instant(stamp)} is ahead of the message's Kafka timestamp "
            "by more than the allowed skew",
        )
    return (driver, float(stamp), duty)


def _as_float(number: int | _HugeInt) -> float:
    """A JSON integer as a float; +-inf beyond a double's range."""
    if type(number) is _HugeInt:
        return -math.inf if number.text.startswith("-") else math.inf
    try:
        return float(number)
    except OverflowError:
        return -math.inf if number < 0 else math.inf


# Epoch seconds of an ISO-8601 date-time (no offset = UTC), None if not one:
# a fast path for the usual layout, the fromisoformat reference for the rest.
from presence.core.timestamps import parse_iso_instant, usual_iso_instant  # noqa: E402


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
    if isinstance(value, (int, float, _HugeInt)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _short(value: object) -> str:
    """At most 40 characters showing a JSON value; never recursive, never raises."""
    try:
        kind = type(value)
        if value is None or kind is bool:
            text = "null" if value is None else ("true" if value else "false")
        elif kind is str:
            text = json.dumps(value[:40])
        elif kind is int:
            text = str(value) if value.bit_length() <= 128 else "a very large integer"
        elif kind is float:
            text = repr(value)
        elif kind is _HugeInt:
            text = f"an integer of {len(value.text)} digits"
        else:
            text = _json_type(value)
    except Exception:  # noqa: BLE001
        text = "a value that cannot be shown"
    return text if len(text) <= 40 else text[:37] + "..."


def _error_name(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001
        text = ""
    name = type(exc).__name__
    return f"{name}: {text[:200]}" if text else name


def bucket_epoch(time_bucket: str) -> float:
    """A ``timeBucket`` text (:func:`format_instant`) back to epoch seconds (UTC)."""
    return (
        datetime.strptime(time_bucket, TIME_BUCKET_FORMAT).replace(tzinfo=timezone.utc).timestamp()
    )


def bucket_iso(time_bucket: str) -> str:
    """A ``timeBucket`` text as an ISO-8601 UTC instant (``2018-01-01T04:00:00Z``)."""
    moment = datetime.fromtimestamp(bucket_epoch(time_bucket), timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
