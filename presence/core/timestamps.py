"""ISO-8601 timestamps of pings to epoch seconds, fast on the usual layout.

:func:`parse_iso_instant` is what :mod:`presence.core.pings` uses for a
string ``timestamp`` (SPEC "Input": an ISO-8601 string, no offset = UTC).
Its rules are those of :func:`parse_iso_instant_reference`: Python's
``datetime.fromisoformat`` (3.11), naive means UTC, then ``.timestamp()``.

The fast path reads only the layout producers write almost always:
``YYYY-MM-DDTHH:MM:SS``, then an optional fraction of 1 to 6 digits, then
an optional ``Z`` or ``+HH:MM`` / ``-HH:MM`` offset; ASCII digits, every
field in its ordinary range (hours 00-23, seconds 00-59, offsets 00:00 to
23:59). It splits a string after the seconds and looks both parts up in
two small caches (a stream's pings share a few seconds, fractions and
offsets): the date-time part gives epoch seconds, the rest gives the
fraction minus the offset, in microseconds. A part seen for the first time
is checked with a regular expression. Anything else, accepted by the
reference or not (week or ordinal dates, ``24:00``, a space or ``t``
separator, 7 or more fraction digits, non-ASCII digits, offsets with
seconds, ...), goes to the reference parser, so the two give the same
answer for every string (``tests/test_timestamps.py`` checks it with
hypothesis).

The value is computed as the reference computes it: whole microseconds
since the epoch divided by 10**6 (``timedelta.total_seconds()`` divides
integers exactly, correctly rounded), so the float is the very same.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone

_UTC = timezone.utc
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

_HEAD = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])",
    re.ASCII,
)
_TAIL = re.compile(
    r"(?:\.([0-9]{1,6}))?(?:(Z)|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))?", re.ASCII
)
_SCALE = (0, 100_000, 10_000, 1_000, 100, 10, 1)
"""Microseconds per unit of a fraction of 1 to 6 digits."""

_HEADS: dict[str, int | None] = {}
"""``YYYY-MM-DDTHH:MM:SS`` -> its epoch seconds (UTC); None: not of the fast layout."""
_TAILS: dict[str, int | None] = {}
"""What follows the seconds -> fraction minus offset in microseconds; None: not fast."""
CACHE_MAX = 8192
"""Entries per cache; a full cache is emptied (memory stays under ~2 MB)."""


def _head_seconds(head: str) -> int | None:
    """Epoch seconds of a ``YYYY-MM-DDTHH:MM:SS`` (UTC), or None if not one."""
    match = _HEAD.fullmatch(head)
    if match is None:
        return None
    year, month, day, hour, minute, second = map(int, match.groups())
    try:
        days = date(year, month, day).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None
    return days * 86_400 + hour * 3_600 + minute * 60 + second


def _tail_micros(tail: str) -> int | None:
    """Fraction minus offset, in microseconds, of what follows the seconds; or None."""
    match = _TAIL.fullmatch(tail)
    if match is None:
        return None
    fraction, _zulu, sign, hours, minutes = match.groups()
    micros = int(fraction) * _SCALE[len(fraction)] if fraction is not None else 0
    if sign is not None:
        offset = (int(hours) * 3_600 + int(minutes) * 60) * 1_000_000
        micros = micros - offset if sign == "+" else micros + offset
    return micros


def usual_iso_instant(text: str) -> float | None:
    """Epoch seconds of a date-time of the usual layout; None for any other string.

    None does not mean invalid: the string may still be one that
    :func:`parse_iso_instant_reference` accepts. For a caller that has a
    slower, exhaustive path of its own to fall back on.
    """
    head = text[:19]
    seconds = _HEADS.get(head, _HEADS)
    if seconds is _HEADS:
        if len(_HEADS) >= CACHE_MAX:
            _HEADS.clear()
        seconds = _HEADS[head] = _head_seconds(head)
    if seconds is None:
        return None
    tail = text[19:]
    micros = _TAILS.get(tail, _TAILS)
    if micros is _TAILS:
        if len(_TAILS) >= CACHE_MAX:
            _TAILS.clear()
        micros = _TAILS[tail] = _tail_micros(tail)
    if micros is None:
        return None
    return (seconds * 1_000_000 + micros) / 1_000_000


def parse_iso_instant(text: str) -> float | None:
    """Epoch seconds of an ISO-8601 date-time; no offset means UTC; None if not one.

    The same result as :func:`parse_iso_instant_reference` for every string.
    """
    seconds = usual_iso_instant(text)
    if seconds is None:
        return parse_iso_instant_reference(text)
    return seconds


def parse_iso_instant_reference(text: str) -> float | None:
    """The exhaustive parser (the SPEC's rules), for every string the fast path leaves."""
    if not 10 <= len(text) <= 64 or not text[:4].isdigit():
        return None
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=_UTC)
        return moment.timestamp()
    except (ValueError, OverflowError, OSError):
        return None
