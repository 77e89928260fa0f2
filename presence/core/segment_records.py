"""Segment pings as packed bytes: how the compiled reader hands them to the
compiled segment store (``native/src/segment_store.rs``).

The pure-Python path passes ``(driver, on_duty, values)`` tuples
(:meth:`presence.core.segment_panes.SegmentPanes.add_pings`); the compiled
path passes, per shard and pane, one ``bytes`` of *records*, one per counted
ping, so no Python object is made per ping. Either store takes either form
(:func:`decode_records` turns records back into tuples), so a cluster whose
processes run different readers still counts the same.

Layout (little-endian), for definitions ``d_1 .. d_D`` (their order in
``PRESENCE_SEGMENTS``)::

    record := flags:u8  driver_len:u16  driver:utf8[driver_len]  value(d_1) .. value(d_D)
    flags  := bit 0 set when the ping is on duty (available)
    value  := 0x00                      no value: a located definition, ping unlocated
            | 0x01 key                  the value, as its key below
    key    := dim(1) .. dim(k)          the definition's dimensions in order
    dim    := len:u16 text:utf8[len]    city, vehicle_type (surrogates as "surrogatepass")
            | cell:u64                  h3:R (the H3 cell as an integer)

The *key* bytes of a value identify it (equal keys, equal values). The
overflow value :data:`presence.core.segments.OTHER` (``("other",)``) has the
key of a single string ``"other"`` (:data:`OTHER_KEY`) in every definition,
so in a definition of one string dimension a real ``"other"`` is the same
value, exactly as ``("other",) == OTHER`` in Python; in any other definition
no real key has that length-and-bytes.
"""

from __future__ import annotations

import struct
from typing import Iterable, Sequence

from presence.core.segments import OTHER, SegmentDefinition

ON_DUTY = 1
NO_VALUE = 0
HAS_VALUE = 1
STRING = 0
CELL = 1

_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")


def dimension_kinds(definitions: Sequence[SegmentDefinition]) -> tuple[tuple[int, ...], ...]:
    """Per definition, per dimension: :data:`STRING` or :data:`CELL`."""
    return tuple(
        tuple(CELL if d.startswith("h3:") else STRING for d in definition.dimensions)
        for definition in definitions
    )


def _text(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def encode_key(value: tuple, kinds: tuple[int, ...]) -> bytes:
    """The key bytes of one value of a definition with these dimension kinds."""
    if value == OTHER:
        data = _text(OTHER[0])
        return _U16.pack(len(data)) + data
    out = bytearray()
    for part, kind in zip(value, kinds):
        if kind == CELL:
            out += _U64.pack(part)
        else:
            data = _text(part)
            out += _U16.pack(len(data))
            out += data
    return bytes(out)


def decode_key(key: bytes, kinds: tuple[int, ...]) -> tuple:
    """The value of key bytes (:func:`encode_key`'s inverse)."""
    if key == OTHER_KEY:
        return OTHER
    value, at = _read_key(memoryview(key), 0, kinds)
    if at != len(key):
        raise ValueError("segment key has trailing bytes")
    return value


def _read_key(data: memoryview, at: int, kinds: tuple[int, ...]) -> tuple[tuple, int]:
    parts = []
    for kind in kinds:
        if kind == CELL:
            (cell,) = _U64.unpack_from(data, at)
            parts.append(cell)
            at += 8
        else:
            (size,) = _U16.unpack_from(data, at)
            at += 2
            parts.append(bytes(data[at:at + size]).decode("utf-8", "surrogatepass"))
            at += size
    return tuple(parts), at


def partial_key(number: int, value: tuple, kinds: Sequence[tuple[int, ...]]) -> bytes:
    """The *partial key* of definition ``number``'s value: the number as two bytes,
    then the value's key bytes (how shards and the row book name a value)."""
    return number.to_bytes(2, "little") + encode_key(value, kinds[number])


def split_partial_key(key: bytes, kinds: Sequence[tuple[int, ...]]) -> tuple[int, tuple]:
    """``(definition number, value)`` of a partial key."""
    number = key[0] | key[1] << 8
    return number, decode_key(key[2:], kinds[number])


def encode_record(driver: str, on_duty: bool, values: Sequence[tuple | None],
                  kinds: Sequence[tuple[int, ...]]) -> bytes:
    """One ping's record (``values`` as ``ValueExtractor.values`` gives them: real
    values; :data:`OTHER` only as a real ``"other"`` of a one-string definition)."""
    data = _text(driver)
    out = bytearray((ON_DUTY if on_duty else 0,))
    out += _U16.pack(len(data))
    out += data
    return bytes(out) + encode_values(values, kinds)


def encode_values(values: Sequence[tuple | None], kinds: Sequence[tuple[int, ...]]) -> bytes:
    """The value part of a record (after the driver)."""
    out = bytearray()
    for value, dims in zip(values, kinds):
        if value is None:
            out.append(NO_VALUE)
        else:
            out.append(HAS_VALUE)
            out += encode_key(value, dims)
    return bytes(out)


def record_values_of(extractor, kinds: Sequence[tuple[int, ...]]):
    """``f(city, vehicle_type, lat, lng) -> (value part, unlocated)`` with
    ``extractor`` (a :class:`presence.core.segments.ValueExtractor`): what the
    compiled reader asks of Python for a ping it handed back."""
    values_of = extractor.values
    located = extractor.located

    def record_values(city=None, vehicle_type=None, lat=None, lng=None) -> tuple[bytes, bool]:
        values = values_of(city, vehicle_type, lat, lng)
        return encode_values(values, kinds), located and None in values

    return record_values


def encode_records(pings: Iterable[tuple[str, bool, Sequence]],
                   kinds: Sequence[tuple[int, ...]]) -> bytes:
    """The records of ``(driver, on_duty, values)`` pings, in order."""
    return b"".join(encode_record(d, o, v, kinds) for d, o, v in pings)


def decode_records(blob: bytes, kinds: Sequence[tuple[int, ...]]) -> list[tuple[str, bool, tuple]]:
    """``(driver, on_duty, values)`` of each record (:func:`encode_records`' inverse)."""
    data = memoryview(blob)
    out = []
    at = 0
    end = len(data)
    while at < end:
        flags = data[at]
        (size,) = _U16.unpack_from(data, at + 1)
        at += 3
        driver = bytes(data[at:at + size]).decode("utf-8", "surrogatepass")
        at += size
        values = []
        for dims in kinds:
            present = data[at]
            at += 1
            if present == NO_VALUE:
                values.append(None)
                continue
            value, at = _read_key(data, at, dims)
            values.append(OTHER if value == OTHER else value)
        out.append((driver, bool(flags & ON_DUTY), tuple(values)))
    return out


OTHER_KEY = _U16.pack(len(OTHER[0])) + OTHER[0].encode()
"""The key bytes of :data:`OTHER` in every definition."""
