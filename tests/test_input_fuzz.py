"""No message can stop the dataflow (SPEC "Input"): fuzzing the *reader*.

Whatever a message holds (arbitrary bytes, adversarial JSON: nesting far
deeper than 64 levels in any field, numbers beyond every parser's range,
lone surrogates, duplicate keys, every JSON type in every field, no value at
all), :meth:`PartitionReader.read` never raises and gives exactly one
outcome per message: a counted (or late) ping, or one dead letter; and that
outcome is what the exhaustive checks (:func:`parse_ping_checked`, judged
against the message's own Kafka timestamp) say, so the reader's inlined
fast path agrees with them.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence.core import partition as partition_module
from presence.core import pings as pings_module
from presence.core.partition import PartitionReader, RawMessage, message_time
from presence.core.pings import MAX_DEPTH, Rejection, parse_ping, parse_ping_checked, too_deep
from presence.core.windows import WindowSpec
from tests.constants import NOW

pytestmark = pytest.mark.usefixtures("both_readers")  # each reader: Python, compiled

SPEC = WindowSpec(bucket_s=60, window_s=300, lateness_s=30, horizon_s=3600, idle_s=10, shards=4)
BASE = 1_799_990_000  # event times near NOW, so future_timestamp is in play


# --- JSON fragments, written by hand (no encoder could write most of them) -----------

def _nest(inner: str, depth: int, kind: str) -> str:
    if kind == "array":
        return "[" * depth + inner + "]" * depth
    return '{"a":' * depth + inner + "}" * depth


NUMBERS = st.one_of(
    st.integers(-5, 3).map(str),
    st.integers(0, 2**70).map(str),
    st.integers(BASE - 4000, BASE + 20_000).map(str),
    st.integers((BASE - 4000) * 1000, (BASE + 20_000) * 1000).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from([
        "1e400", "-1e400", "1e-400", "1E+309", "1180591620717411303424", "18446744073709551616",
        "-0", "0.0", "1.0", "1e0", "1514779230", "1514779230123", "946684799", "NaN", "Infinity",
        "-Infinity", "01", "1.", ".5", "+1", "0x10",
    ]),
    st.sampled_from([400, 4001, 5000]).map(lambda n: "9" * n),  # beyond every parser's ints
    st.sampled_from([400, 5000]).map(lambda n: "-1" + "0" * n),
)
STRINGS = st.one_of(
    st.text(max_size=8).map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"')
                            .encode("utf-8", "surrogatepass").decode("utf-8", "replace")
                            .replace("\n", "\\n") + '"'),
    st.sampled_from([
        '""', '"x"', '"\\ud800"', '"\\udc00"',
        '"a\\ud83d\\ude00"', '"\\u0000"', '"2018-01-01T04:00:30"', '"2026-12-01T00:00:00Z"',
        '"0001-01-01T00:00:00+01:00"', '"9999-12-31T23:59:59-23:59"', '"yes"', '"true"',
        '"\\"[[[[["', '"{{{{{{{{{{"', '"\\\\"', '"unterminated', '"caf\u00e9 S\u00e3o"',
    ]),
    st.sampled_from([128, 129]).map(lambda n: '"' + "x" * n + '"'),
)
SCALARS = st.one_of(st.sampled_from(["null", "true", "false"]), NUMBERS, STRINGS)
FRAGMENTS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(STRINGS, inner), max_size=3).map(
            lambda kvs: "{" + ",".join(f"{k}:{v}" for k, v in kvs) + "}"),
    ),
    max_leaves=6,
)


@st.composite
def deep(draw) -> str:
    """A fragment nested around the 64-level limit, or far beyond it."""
    depth = draw(st.sampled_from([MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1,
                                  255, 1000, 20_000]))
    return _nest(draw(SCALARS), depth, draw(st.sampled_from(["array", "object"])))


ANY_FRAGMENT = st.one_of(FRAGMENTS, deep())
GOOD = {
    "driver_id": st.one_of(st.integers(0, 50).map(str), st.sampled_from(['"d-1"', '"7"'])),
    "timestamp": st.integers(BASE, BASE + 9000).map(str),
    "on_duty": st.sampled_from(["0", "1", "true", "false"]),
}


@st.composite
def adversarial_json(draw) -> bytes:
    """An object whose fields are good, bad, missing, repeated or wrapped in deep nesting."""
    members = []
    for name, good in GOOD.items():
        choice = draw(st.sampled_from(["good"] * 4 + ["any", "missing", "twice"]))
        if choice == "missing":
            continue
        value = draw(good) if choice != "any" else draw(ANY_FRAGMENT)
        members.append(f'"{name}":{value}')
        if choice == "twice":
            members.append(f'"{name}":{draw(ANY_FRAGMENT)}')
    for _ in range(draw(st.integers(0, 2))):  # ignored fields
        members.append(f'"{draw(st.sampled_from(["x", "lat", "city", "driver"]))}":{draw(ANY_FRAGMENT)}')
    members = draw(st.permutations(members))
    text = "{" + ",".join(members) + "}"
    how = draw(st.sampled_from(["plain"] * 6 + ["wrapped", "truncated", "garbage", "bom"]))
    if how == "wrapped":
        text = _nest(text, draw(st.sampled_from([1, MAX_DEPTH, 500])), "array")
    data = text.encode("utf-8", "surrogatepass")
    if how == "truncated":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "garbage":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\x00", b"\xc3"])) + data[at:]
    elif how == "bom":
        data = b"\xef\xbb\xbf" + data
    return data


STAMPS = st.one_of(st.none(), st.integers((BASE - 600) * 1000, (BASE + 9000) * 1000),
                   st.sampled_from([0, 1, 2**62]))


def check_reader(values: list[bytes | None], stamps: list[int | None], cut: int) -> int:
    """Read the messages in two batches; every message has exactly its checked outcome."""
    messages = [RawMessage(i, v, s) for i, (v, s) in enumerate(zip(values, stamps))]
    reader = PartitionReader("t", 0, 1, SPEC, NOW)
    batches = [reader.read(messages[:cut], NOW), reader.read(messages[cut:], NOW)]
    dead = {d.offset: d for b in batches for d in b.dead_letters}
    assert len(dead) == sum(len(b.dead_letters) for b in batches), "one dead letter per message"
    assert reader.valid + reader.invalid + reader.too_late == len(messages)
    assert reader.invalid + reader.too_late == len(dead)
    assert sum(reader.rejected.values()) == reader.invalid
    counted = {d for b in batches for shard in b.shards for sets in shard.values() for d in sets[0]}
    for message in messages:
        own = message_time(message, NOW) + SPEC.max_future_skew_s
        expected = parse_ping_checked(message.value(), own)
        letter = dead.get(message.offset())
        if isinstance(expected, Rejection):
            assert letter is not None and (letter.reason, letter.detail) == (
                expected.reason, expected.detail), (message, expected, letter)
        else:
            assert letter is None or letter.reason == "too_late", (message, expected, letter)
            if letter is None:
                assert expected[0] in counted
    return len(messages)


ADVERSARIAL_EXAMPLES = 600
BYTES_EXAMPLES = 800
AGREEMENT_EXAMPLES = 1000


@settings(max_examples=ADVERSARIAL_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(st.one_of(adversarial_json(), st.none(), st.just(b"")), STAMPS),
                min_size=1, max_size=8), st.integers(0, 8))
def test_reader_survives_adversarial_json(items, cut) -> None:
    values, stamps = zip(*items)
    check_reader(list(values), list(stamps), cut)


@settings(max_examples=BYTES_EXAMPLES, deadline=None)
@given(st.lists(st.tuples(st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=80).map(lambda b: b'{"driver_id": 1, "timestamp": ' + b),
    st.binary(max_size=80).map(lambda b: b'{"driver_id": 1, "timestamp": 1799999000, "on_duty": ' + b),
), STAMPS), min_size=1, max_size=8), st.integers(0, 8))
def test_reader_survives_arbitrary_bytes(items, cut) -> None:
    values, stamps = zip(*items)
    check_reader(list(values), list(stamps), cut)


@settings(max_examples=AGREEMENT_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(adversarial_json(), st.integers(BASE, BASE + 9000))
def test_fast_path_agrees_with_the_checked_path(value: bytes, latest: int) -> None:
    assert parse_ping(value, latest) == parse_ping_checked(value, latest)


# --- the cases of issue 9, one by one ---------------------------------------------------

PING = b'{"driver_id":7,"timestamp":1799999000,"on_duty":1'


@pytest.mark.parametrize("value, reason", [
    (PING + b',"x":' + b"[" * 1000 + b"]" * 1000 + b"}", "invalid_json"),  # killed the flow
    (b'{"driver_id":7,"timestamp":1799999000,"on_duty":' + b"[" * 255 + b"]" * 255 + b"}",
     "invalid_json"),  # killed it through the detail formatter
    (b'{"driver_id":7,"timestamp":1799999000,"on_duty":' + b"[" * 60 + b"]" * 60 + b"}",
     "invalid_field"),  # within 64 levels: a bad on_duty, shown briefly
    (PING + b',"x":' + b"[" * 63 + b"]" * 63 + b"}", None),  # 64 levels in all: valid
    (PING + b',"x":' + b"[" * 64 + b"]" * 64 + b"}", "invalid_json"),  # 65: too deep
    (PING + b',"x":"' + b"[" * 5000 + b'"}', None),  # brackets inside a string are text
    (b"[" * 65537, "too_large"),
    (b"[" * 65000, "invalid_json"),
    (PING + b',"x":1e400}', None),  # a valid number orjson cannot read, in an ignored field
    (b'{"driver_id":7,"timestamp":1e400,"on_duty":1}', "invalid_field"),
    (b'{"driver_id":7,"timestamp":' + b"1" * 400 + b',"on_duty":1}', "invalid_field"),
    (b'{"driver_id":7,"timestamp":' + b"1" * 6000 + b',"on_duty":1}', "invalid_field"),
    (b'{"driver_id":7,"timestamp":1799999000,"on_duty":' + b"1" * 6000 + b"}", "invalid_field"),
    (b'{"driver_id":-' + b"1" * 6000 + b',"timestamp":1799999000,"on_duty":1}', "invalid_field"),
    (b'{"driver_id":"\\ud800","timestamp":1799999000,"on_duty":1}', "invalid_json"),
    (PING + b',"x":1e400,"y":"\\udc00"}', "invalid_json"),  # the exact reader sees it too
    (b'{"driver_id":7,"timestamp":NaN,"on_duty":1}', "invalid_json"),
    (None, "invalid_json"),
    (b"", "invalid_json"),
])
def test_hostile_values(value: bytes | None, reason: str | None) -> None:
    result = parse_ping_checked(value, NOW + 300)
    assert parse_ping(value, NOW + 300) == result
    if reason is None:
        assert result == ("7", 1799999000.0, True)
    else:
        assert isinstance(result, Rejection) and result.reason == reason, result
        assert result.detail and len(result.detail) < 300


@pytest.mark.parametrize("digits", ["1180591620717411303424", "9" * 4500])
def test_integers_of_any_size_are_driver_ids(digits: str) -> None:
    value = b'{"driver_id":%s,"timestamp":1799999000,"on_duty":0}' % digits.encode()
    assert parse_ping(value, NOW) == (digits, 1799999000.0, False)
    same = b'{"driver_id":"%s","timestamp":1799999000,"on_duty":0}' % digits.encode()
    if len(digits) <= 128:
        assert parse_ping(same, NOW)[0] == digits  # 42 and "42" are one driver


def test_nesting_is_refused_before_any_parser_sees_it(monkeypatch) -> None:
    def boom(*_args, **_kwargs):
        raise AssertionError("a recursive parser saw a value nested too deep")

    for module, name in ((pings_module, "_loads"), (pings_module, "_decode_shape"),
                         (pings_module.json, "loads"), (partition_module, "decode_shape")):
        monkeypatch.setattr(module, name, boom)
    values = [PING + b',"x":' + b"[" * 65 + b"]" * 65 + b"}",
              b"{" + b'"a":{' * 70 + b"}" * 71,
              b"[" * 40_000 + b"]" * 20_000]
    reader = PartitionReader("t", 0, 1, SPEC, NOW)
    batch = reader.read([RawMessage(i, v) for i, v in enumerate(values)], NOW)
    assert [d.reason for d in batch.dead_letters] == ["invalid_json"] * 3


def test_too_deep_counts_levels_not_brackets() -> None:
    assert not too_deep(b"[" * 64 + b"]" * 64)
    assert too_deep(b"[" * 65 + b"]" * 65)
    assert not too_deep(b"[" + b"[]," * 500 + b"[]]")  # many brackets, depth 2
    assert not too_deep(b'["' + b"{" * 100 + b'"]')  # inside a string
    assert not too_deep(b'["\\"' + b"{" * 100 + b'"]')  # after an escaped quote, still a string
    assert too_deep(b'["\\\\"' + b",[" * 100 + b"]" * 100 + b"]")  # an escaped backslash ends it


def test_an_unexpected_error_is_a_dead_letter_not_a_crash(monkeypatch) -> None:
    """Whatever goes wrong while judging one message, the read goes on."""
    def broken(*_args, **_kwargs):
        raise MemoryError("simulated")

    monkeypatch.setattr(pings_module, "_judge", broken)
    reader = PartitionReader("t", 0, 1, SPEC, NOW)
    values = [PING + b"}", b'{"driver_id":"' + b"x" * 200 + b'","timestamp":1799999000,"on_duty":1}']
    batch = reader.read([RawMessage(i, v) for i, v in enumerate(values)], NOW)
    assert reader.valid == 1  # the usual shape never needs the checked path
    (letter,) = batch.dead_letters
    assert letter.offset == 1 and letter.reason == "invalid_field"
    assert "MemoryError: simulated" in letter.detail
