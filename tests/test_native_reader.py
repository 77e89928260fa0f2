"""The optional compiled reader (``native/``, ``presence._native``) is the Python reader.

:meth:`PartitionReader._read_native` runs the hot loop in Rust and hands
every message it is not sure of back to Python. These tests hold it to the
pure-Python reader's outcome (every :class:`PartitionBatch`: grouped sets,
dead letters in order, counts, late/too-late, max event, mark; and the
reader's snapshot) over random and adversarial batches read in several
successive batches, and its two parsers to their Python counterparts on
their own. They are skipped only where the compiled reader is not built,
and :func:`test_built_when_cargo_is_there` fails if cargo is on PATH but the
module is missing (a broken build must not pass as "skipped").
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence.core import partition as partition_module
from presence.core.model import PartitionBatch
from presence.core.partition import PartitionReader, RawMessage, native_reader_built, reader_in_use
from presence.core.pings import parse_ping
from presence.core.segment_records import decode_records, dimension_kinds
from presence.core.segments import parse_segments
from presence.core.timestamps import usual_iso_instant
from presence.core.windows import WindowSpec
from tests.constants import NOW
from tests.test_input_fuzz import FRAGMENTS, NUMBERS, SCALARS, STRINGS, adversarial_json
from tests.test_timestamps import mutated, near_iso

ROOT = Path(__file__).resolve().parent.parent
built = pytest.mark.skipif(not native_reader_built(), reason="compiled reader not built")
BASE = 1_799_990_000  # event times near NOW
EXAMPLES = int(os.environ.get("PRESENCE_TEST_NATIVE_EXAMPLES", "400"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_built_when_cargo_is_there() -> None:
    """`make install` builds it wherever cargo is on PATH (here and in CI)."""
    if shutil.which("cargo") is None and not (Path.home() / ".cargo/bin/cargo").exists():
        pytest.skip("no cargo on this machine: the pure-Python reader only")
    assert native_reader_built(), "cargo is here but presence/_native*.so is not: run make install"


# --- values: valid pings of every timestamp shape, and everything near them ---------

def _iso(seconds: float, digits: int, zone: str) -> str:
    whole = math.floor(seconds)
    micros = f"{round((seconds - whole) * 1e6):06d}"[:6]
    from datetime import datetime, timedelta, timezone

    moment = datetime.fromtimestamp(whole, timezone.utc)
    if zone not in ("Z", ""):
        sign = 1 if zone[0] == "+" else -1
        moment += sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + micros[:digits]
    return text + zone


@st.composite
def stamp_text(draw) -> str:
    """The JSON text of a ``timestamp``: every shape the SPEC accepts, and near misses."""
    seconds = draw(st.floats(BASE - 8000, BASE + 12_000, allow_nan=False))
    shape = draw(st.sampled_from(
        ["int", "float", "float", "ms", "ms_float", "iso", "iso", "iso", "exp", "near",
         "odd_iso", "number", "token", "threshold"]))
    if shape == "int":
        return str(int(seconds))
    if shape == "float":
        return draw(st.sampled_from([repr(seconds), f"{seconds:.3f}", f"{seconds:.1f}",
                                     f"{seconds:.9f}", f"{seconds:.20f}"]))
    if shape == "ms":
        return str(int(seconds * 1000))
    if shape == "ms_float":
        return f"{seconds * 1000:.{draw(st.integers(0, 4))}f}"
    if shape == "exp":
        mantissa = f"{seconds / 1e9:.{draw(st.integers(1, 20))}f}"
        return draw(st.sampled_from([f"{mantissa}e9", f"{mantissa}E+9", f"{mantissa}e09",
                                     f"{seconds * 1e3:.3f}e-3", f"{int(seconds)}e0"]))
    if shape == "iso":
        zone = draw(st.sampled_from(["Z", "", "+00:00", "-00:00", "+02:00", "-05:30",
                                     "+23:59", "-23:59", "+14:00"]))
        return '"' + _iso(seconds, draw(st.integers(0, 6)), zone) + '"'
    if shape == "near":
        return '"' + draw(near_iso()) + '"'
    if shape == "odd_iso":
        text = draw(mutated())
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") \
            .replace("\x00", "\\u0000") + '"'
    if shape == "threshold":
        return draw(st.sampled_from([
            "99999999999", "100000000000", "1e11", "99999999999.999", "100000000000.0",
            "99999999999.99999", "946684800", "946684799", "946684799.999", "946684800000",
            "946684799999", "9007199254740993", "9007199254740992", "999999999999999999",
            "1000000000000000000", "9223372036854775808", "1e308", "1e400", "NaN",
            "Infinity", "-Infinity", "-1799990000", "1799990000.", ".5", "01799990000",
            "1799990000.0e0", "17999900000e-1", "0.17999900000000000001e10", "1799990000.1234567890123456789",
            str(BASE + 300 + 9000), str((BASE + 9300) * 1000), str(2**53 + 1) + "e-6",
        ]))
    if shape == "number":
        return draw(NUMBERS)
    return draw(st.one_of(STRINGS, st.sampled_from(["null", "true", "false", "[]", "{}"])))


@st.composite
def driver_text(draw) -> str:
    return draw(st.one_of(
        st.integers(0, 40).map(str),
        st.integers(0, 40).map(lambda n: f'"d-{n}"'),
        st.integers(0, 40).map(lambda n: f'"{n}"'),  # the same driver as the integer
        st.sampled_from([
            '"d\\u002d1"', '"d-\\u00e9"', '"caf\u00e9"', '"S\u00e3o"', '""', '"' + "x" * 128 + '"',
            '"' + "x" * 129 + '"', "999999999999999999", "9223372036854775807",
            "9223372036854775808", "123456789012345678901234567890", "-1", "-0", "1.0", "1e3",
            "null", "true", "[]", '"a\\"b"', '"tab\there"', '"\U0001F600"', "007",
        ]),
        NUMBERS, STRINGS,
    ))


# Other keys than the three the fast path reads: the SPEC's optional fields with good
# and bad values, keys near the required ones, escaped and non-ASCII keys; values
# the compiled path may skip (plain scalars) and every other JSON (nested, escapes,
# non-ASCII, numbers beyond every parser, near-JSON tokens).
EXTRA_KEYS = st.one_of(
    st.sampled_from(['"city"', '"vehicle_type"', '"lat"', '"lng"'] * 3 + [
        '"x"', '""', '" "', '"driver_id "', '"Driver_id"', '"on_duty\\u0000"',
        '"driver\\u005fid"', '"timestamp\\/"', '"on\\u005fduty"', '"caf\u00e9"',
        '"\u00e9"', '"ci\\"ty"', '"{[{["', '"a\x7fb"', '"tab\there"', '"\\\\"',
    ]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e, exclude_characters='"\\'),
            max_size=12).map(lambda t: f'"{t}"'),
    STRINGS,
)
EXTRA_VALUES = st.one_of(
    st.sampled_from([  # the simulator's values and field faults
        '"Jakarta"', '"Ho Chi Minh City"', '"car"', '"motorbike"', '""', '"' + "x" * 65 + '"',
        '"22.3193"', "null", "true", "false", "42", "200.0", "-512.5", "-6.208812",
        "106.845612", "0", "-0", "-0.0", "1.5e1", "-1E-3", "1e300", "1e301", "-1e-300",
        "1e-301", "1e400", "-1e400", "1" * 40, "1" * 41, "-" + "1" * 39, "-" + "1" * 40,
        "9" * 400, "0." + "1" * 38, "1.5e+0300", "1e00000000000000000001",
        "NaN", "-Infinity", "Infinity", "01", "-01", "1.", ".5", "+1", "-", "--1", "1e",
        "1e+", "0x10", "tru", "nul", "truex", "nullnull", "True", "None", "1.5.5", "1e5e5",
        '"S\\u00e3o Paulo"', '"S\u00e3o Paulo"', '"\\ud800"', '"a\\nb"', '"a\\"b"', '"\\/"',
        '"\\u0000"', '"tab\there"', '"\x01"', '"unterminated', '"a\x7fb"', "[]", "{}",
        '[1,2]', '{"city":"x"}', '{"driver_id":1}', "[" * 70 + "]" * 70,
    ]),
    st.floats(-180, 180).map(lambda f: f"{f:.6f}"),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-2**70, 2**70).map(str),
    SCALARS, FRAGMENTS,
)


@st.composite
def extra_member(draw) -> str:
    """One ``"key":value`` member beside the three required ones."""
    return f"{draw(EXTRA_KEYS)}:{draw(EXTRA_VALUES)}"


@st.composite
def ping_value(draw) -> bytes | None:
    """A ping-like value: usually valid, often a little odd, sometimes anything."""
    kind = draw(st.sampled_from(["ping"] * 8 + ["adversarial", "none", "bytes"]))
    if kind == "none":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "adversarial":
        return draw(adversarial_json())
    fields = {
        "driver_id": draw(driver_text()) if draw(st.integers(0, 5)) == 0
        else str(draw(st.integers(0, 40))),
        "timestamp": draw(stamp_text()),
        "on_duty": draw(st.sampled_from(["0", "1", "true", "false"] * 4 + [
            "2", "1.0", '"1"', "null", "-0", "01", "tru", "1e0"])),
    }
    members = [f'"{k}":{v}' for k, v in fields.items()
               if draw(st.integers(0, 30)) != 0]  # a field missing now and then
    if draw(st.integers(0, 10)) == 0:  # a field twice
        name = draw(st.sampled_from(list(fields)))
        members.append(f'"{name}":{draw(st.sampled_from(list(fields.values())))}')
    if draw(st.integers(0, 10)) == 0:  # an other field
        members.append(draw(st.sampled_from(['"city":"x"', '"lat":1.5', '"x":null',
                                             '"driver\\u005fid":"q"', '"on_duty ":1'])))
    if draw(st.integers(0, 2)) == 0:  # other keys (the SPEC's optional fields, and any)
        members.extend(draw(st.lists(extra_member(), max_size=6)))
    members = draw(st.permutations(members))
    space = draw(st.sampled_from(["", "", "", " ", "\n", "\t", "\r\n ", "\x0b"]))
    text = "{" + space + ("," + space).join(
        m.replace(":", space + ":" + space, 1) for m in members) + space + "}"
    text = draw(st.sampled_from(["", "", "", " ", "\n"])) + text + draw(
        st.sampled_from(["", "", "", " ", "\n", "x", ",", "}", "\x00"]))
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 15)) == 0:
        data = data[: draw(st.integers(0, len(data)))]  # truncated
    return data


KAFKA_MS = st.one_of(
    st.integers((BASE - 600) * 1000, (BASE + 9000) * 1000),
    st.integers((BASE - 600) * 1000, (BASE + 9000) * 1000),
    st.integers((BASE - 600) * 1000, (BASE + 9000) * 1000),
    st.none(), st.sampled_from([0, 2**62]),
)

SPECS = st.builds(
    lambda bucket, span, lateness, horizon, shards: WindowSpec(
        bucket_s=bucket, window_s=bucket * span, lateness_s=lateness, horizon_s=horizon,
        shards=shards),
    st.sampled_from([1, 7, 60, 3600]), st.integers(1, 5), st.sampled_from([0, 0.5, 30, 600]),
    st.sampled_from([0, 120, 3600]), st.sampled_from([1, 3, 16]),
)


def _types(batch: PartitionBatch) -> list:
    """What ``==`` cannot see: key and value types (60 == 60.0, True == 1)."""
    return [
        type(batch.mark.max_event),
        [[(type(k), type(v[0]), type(v[1]), type(v[2]), sorted(map(type, v[0]), key=str))
          for k, v in shard.items()] for shard in batch.shards],
        [list(shard) for shard in batch.shards],  # bucket order as well
    ]


def read_all(kind: str, spec: WindowSpec, batches: list[list[RawMessage]],
             resume_at: int | None = None) -> tuple[list[PartitionBatch], dict]:
    reader = PartitionReader("t", 0, 1, spec, NOW, reader=kind)
    out = []
    for i, batch in enumerate(batches):
        if i == resume_at:  # a restart from the snapshot: state carried over
            reader = PartitionReader("t", 0, 1, spec, NOW, reader.snapshot(), reader=kind)
        out.append(reader.read(batch, NOW + i))
    return out, reader.snapshot()


def assert_same(spec: WindowSpec, batches: list[list[RawMessage]],
                resume_at: int | None = None) -> None:
    expected = read_all("python", spec, batches, resume_at)
    got = read_all("native", spec, batches, resume_at)
    assert got == expected
    assert [_types(b) for b in got[0]] == [_types(b) for b in expected[0]]


def _sane(stamps: list, sane: bool) -> list:
    """With ``sane``, Kafka timestamps after the pings' times (near the top of the
    generated range): none that sends a whole batch to the Python loop (none, 0,
    2**62) or makes most of a batch beyond its earliest one's bound, so the compiled
    loop itself reads most pings."""
    if not sane:
        return stamps
    return [max(s, (BASE + 11_000) * 1000) if s is not None and 0 < s < 2**62
            else (BASE + 12_000) * 1000 for s in stamps]


def _batches(values: list, stamps: list, cuts: list[int]) -> list[list[RawMessage]]:
    messages = [RawMessage(i, v, s) for i, (v, s) in enumerate(zip(values, stamps))]
    edges = sorted({0, len(messages), *(c % (len(messages) + 1) for c in cuts)})
    return [messages[a:b] for a, b in zip(edges, edges[1:])] + [[]]


@built
@SETTINGS
@given(SPECS, st.lists(st.tuples(ping_value(), KAFKA_MS), min_size=1, max_size=40),
       st.lists(st.integers(0, 40), max_size=3), st.one_of(st.none(), st.integers(0, 3)),
       st.booleans())
def test_native_reader_is_the_python_reader(spec, items, cuts, resume_at, sane) -> None:
    values = [v for v, _ in items]
    stamps = _sane([s for _, s in items], sane)
    assert_same(spec, _batches(values, stamps, cuts), resume_at)


@built
@SETTINGS
@given(SPECS, st.lists(st.tuples(st.integers(0, 200), st.floats(-7300, 600),
                                 st.sampled_from(["float", "ms", "iso", "int", "isooff"]),
                                 st.booleans()), min_size=1, max_size=300),
       st.lists(st.integers(0, 300), max_size=4))
def test_native_reader_on_valid_streams_with_late_pings(spec, pings, cuts) -> None:
    """Valid pings only, many drivers, event times going back and forth (late, too late)."""
    values, stamps = [], []
    for driver, delta, shape, duty in pings:
        seconds = BASE + 5000 + delta
        stamp = {"float": f"{seconds:.3f}", "ms": str(int(seconds * 1000)),
                 "int": str(int(seconds)), "iso": '"' + _iso(seconds, 3, "Z") + '"',
                 "isooff": '"' + _iso(seconds, 6, "+05:30") + '"'}[shape]
        values.append(b'{"driver_id":%d,"timestamp":%s,"on_duty":%d}'
                      % (driver, stamp.encode(), duty))
        stamps.append((BASE + 5000) * 1000)
    assert_same(spec, _batches(values, stamps, cuts))


@built
@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(st.one_of(ping_value().filter(lambda v: v is not None), st.binary(max_size=60)),
       st.sampled_from([BASE + 9300.0, BASE + 100.0, float(BASE), 1e15]))
def test_fast_path_gives_what_parse_ping_gives(value: bytes, latest: float) -> None:
    """Whatever the compiled fast path reads, it reads as parse_ping does (or leaves it)."""
    fast = partition_module._native.parse_fast_py(value, latest)
    if fast is not None:
        expected = parse_ping(value, latest)
        assert fast == expected and type(fast[1]) is float and type(fast[2]) is bool
        assert math.copysign(1, fast[1]) == math.copysign(1, expected[1])


# Members the compiled path skips for certain: plain ASCII keys other than the three,
# plain scalar values (no escapes, numbers of JSON's grammar within its bounds).
PLAIN_KEYS = st.one_of(
    st.sampled_from(["city", "vehicle_type", "lat", "lng", "", "driver_id ", "Timestamp"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7f, exclude_characters='"\\'),
            max_size=10).filter(lambda k: k not in ("driver_id", "timestamp", "on_duty")),
).map(lambda k: f'"{k}"')
PLAIN_VALUES = st.one_of(
    st.sampled_from(["null", "true", "false", "0", "-0", "-0.0", "1e300", "-1E-300", "1" * 40,
                     "-" + "1" * 39, "2.5E+3", '""', '"x"', '"' + "y" * 200 + '"']),
    st.floats(-1e6, 1e6).filter(lambda f: f == 0 or abs(f) > 1e-300).map(repr),
    st.floats(-180, 180).map(lambda f: f"{f:.6f}"),
    st.integers(-10**30, 10**30).map(str),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7f, exclude_characters='"\\'),
            max_size=30).map(lambda t: f'"{t}"'),
    # any text as raw UTF-8 (a driver's name, an app's locale string)
    st.text(st.characters(exclude_categories=("Cs", "Cc"), exclude_characters='"\\'),
            max_size=30).map(lambda t: f'"{t}"'),
)


@built
@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(st.integers(0, 10**6), st.floats(BASE - 100, BASE + 100),
       st.sampled_from(["%.3f", "%d", "ms", "iso"]), st.booleans(),
       st.lists(st.tuples(PLAIN_KEYS, PLAIN_VALUES), max_size=8), st.randoms(use_true_random=False),
       st.sampled_from(["", " ", "\n\t "]))
def test_plain_extra_keys_stay_on_the_fast_path(driver, seconds, shape, duty, extras, rnd,
                                                space) -> None:
    """A valid ping with other keys holding plain scalars (the SPEC's optional fields among
    them, duplicates too) is read by the compiled fast path, as parse_ping reads it."""
    stamp = {"ms": str(int(seconds * 1000)), "iso": '"' + _iso(seconds, 3, "Z") + '"'}.get(
        shape) or shape % seconds
    members = [f'"driver_id":{driver}', f'"timestamp":{stamp}', f'"on_duty":{int(duty)}']
    members += [f"{k}{space}:{space}{v}" for k, v in extras]
    rnd.shuffle(members)
    value = ("{" + space + ("," + space).join(members) + space + "}").encode()
    fast = partition_module._native.parse_fast_py(value, BASE + 9300.0)
    expected = parse_ping(value, BASE + 9300.0)
    assert fast is not None and type(expected) is tuple
    assert fast == expected and type(fast[1]) is float and type(fast[2]) is bool


@built
def test_pings_with_the_optional_fields_never_reach_python(monkeypatch) -> None:
    """The simulator's pings (``city``, ``vehicle_type``, ``lat``, ``lng``, with each of
    its field faults) stay in the compiled loop without segments, raw UTF-8 text too;
    odd optional values (nested, escaped, beyond a double) go to Python, with the
    same outcome."""
    import orjson

    from presence.tools.simulate import FIELD_FAULTS

    spec = WindowSpec(shards=4)
    values = []
    for i in range(60):
        ping = {"driver_id": i % 9, "timestamp": round(BASE + i + 0.125, 3), "on_duty": i % 2,
                "city": "Ho Chi Minh City", "vehicle_type": "motorbike",
                "lat": round(10.8231 + i / 1e4, 6), "lng": round(-106.6297 - i / 1e4, 6)}
        if i % 3 == 0:
            FIELD_FAULTS[i // 3 % len(FIELD_FAULTS)][1](ping)
        values.append(orjson.dumps(ping))
    values.append(b'{"driver_id":1,"timestamp":%d,"on_duty":1,"city":"x",'
                  b'"vehicle_type":"car","lat":-6.208812,"lng":106.845612}' % (BASE + 1))
    values.append(b'{"driver_id":1,"timestamp":%d,"on_duty":1,"city":%s}'
                  % (BASE + 1, '"S\u00e3o Paulo"'.encode()))
    odd = [b'"S\\u00e3o Paulo"', b'[1]', b'{"a":1}', b'1e400',
           b'"a\\"b"', b"1" * 41]
    bad = [b"null ]", b'"a\tb"', b'"\x01"', b"NaN", b"01", b"1.", b"-", b"tru", b"nul",
           b'"\xed\xa0\x80"', b'"\xff"', b"1e", b"--1", b".5", b"+1", b'"x', b"truex"]
    values += [b'{"driver_id":2,"timestamp":%d,"on_duty":0,"city":%s}' % (BASE + 2, v)
               for v in odd + bad]
    messages = [RawMessage(i, v, (BASE + 100) * 1000) for i, v in enumerate(values)]
    reader = PartitionReader("t", 0, 1, spec, NOW, reader="native")
    judged = []
    original = reader._judge
    monkeypatch.setattr(reader, "_judge", lambda m, *a: judged.append(m.offset()) or original(m, *a))
    batch = reader.read(messages, NOW)
    assert judged == list(range(62, 62 + len(odd) + len(bad)))
    assert [d.offset for d in batch.dead_letters] == list(range(62 + len(odd), len(values)))
    assert batch == PartitionReader("t", 0, 1, spec, NOW, reader="python").read(messages, NOW)


@built
def test_values_beyond_64_kib_are_too_large_on_either_reader() -> None:
    """A well-formed ping padded (an other key's long text, or whitespace) past 64 KiB is
    ``too_large``: the compiled fast path leaves it to Python; at 64 KiB it reads it."""
    head = b'{"driver_id":1,"timestamp":%d,"on_duty":1,"pad":"' % (BASE + 1)
    values = []
    for size in (64 * 1024, 64 * 1024 + 1):
        values.append(head + b"x" * (size - len(head) - 2) + b'"}')
        values.append(head + b'x"' + b" " * (size - len(head) - 3) + b"}")
    assert [len(v) for v in values] == [65536, 65536, 65537, 65537]
    fast = [partition_module._native.parse_fast_py(v, BASE + 9300.0) for v in values]
    assert fast[:2] == [("1", BASE + 1.0, True)] * 2 and fast[2:] == [None, None]
    messages = [RawMessage(i, v, (BASE + 100) * 1000) for i, v in enumerate(values)]
    assert_same(WindowSpec(), [messages])
    batch = PartitionReader("t", 0, 1, WindowSpec(), NOW, reader="native").read(messages, NOW)
    assert [(d.offset, d.reason) for d in batch.dead_letters] == [(2, "too_large"),
                                                                 (3, "too_large")]


@built
@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(st.one_of(near_iso(), mutated(), st.builds(
    lambda s, d, z: _iso(s, d, z), st.floats(-62135596800 + 86400 * 2, 253402300799 - 86400 * 2),
    st.integers(0, 6), st.sampled_from(["Z", "", "+23:59", "-23:59", "+01:30"]))))
def test_compiled_iso_parser_is_usual_iso_instant(text: str) -> None:
    got = partition_module._native.usual_iso_instant_py(text)
    expected = usual_iso_instant(text)
    if got is not None:
        assert got == expected and type(expected) is float
    else:  # it may leave a string to Python only beyond 2**53 microseconds (year 2255)
        assert expected is None or abs(expected) >= 2**53 / 1e6


@built
def test_fast_values_never_reach_python(monkeypatch) -> None:
    """The usual shapes are read in the compiled loop: no per-ping Python judgement."""
    spec = WindowSpec(shards=4)

    def stamp(i: int) -> str:
        t = BASE + i + 0.25
        return [f"{t:.3f}", str(int(t * 1000)), str(int(t)), f'"{_iso(t, 3, "Z")}"',
                f'"{_iso(t, 0, "+02:00")}"', f'"{_iso(t, 6, "")}"', f"{t * 1000:.1f}"][i % 7]

    messages = [RawMessage(i, b'{"driver_id":%d,"timestamp":%s,"on_duty":%d}'
                           % (i % 7, stamp(i).encode(), i % 2),
                           (BASE + 100) * 1000) for i in range(60)]
    messages.append(RawMessage(60, b'{"driver_id":"x","timestamp":1,"on_duty":1}',
                               (BASE + 100) * 1000))
    reader = PartitionReader("t", 0, 1, spec, NOW, reader="native")
    judged = []
    original = reader._judge
    monkeypatch.setattr(reader, "_judge", lambda m, *a: judged.append(m.offset()) or original(m, *a))
    batch = reader.read(messages, NOW)
    assert judged == [60]  # only the one it is not sure of (timestamp before 2000)
    assert [d.offset for d in batch.dead_letters] == [60]
    assert reader.valid == 60 and sum(p[2] for s in batch.shards for p in s.values()) == 60


@built
def test_the_driver_cache_emptied_between_batches_changes_nothing(monkeypatch) -> None:
    monkeypatch.setattr(partition_module, "_NATIVE_DRIVERS_MAX", 3)
    good = b'{"driver_id":%d,"timestamp":%d,"on_duty":%d}'
    values = [good % (i % 11, BASE + i, i % 3 == 0) for i in range(200)]
    batches = _batches(values, [(BASE + 500) * 1000] * 200, [17, 60, 61, 150])
    assert_same(WindowSpec(shards=3), batches)
    reader = PartitionReader("t", 0, 1, WindowSpec(), NOW, reader="native")
    for batch in batches:
        reader.read(batch, NOW)
        assert len(reader._native_drivers) <= 11


@built
def test_dead_letters_keep_offset_order() -> None:
    """Rejections (judged in Python) and too-late pings (found in the loop) interleaved."""
    spec = WindowSpec(lateness_s=30, horizon_s=60)
    good = b'{"driver_id":1,"timestamp":%d,"on_duty":1}'
    values = [good % (BASE + 1000), b"{bad", good % (BASE + 100), b"null", good % BASE,
              good % (BASE + 950), None, good % (BASE + 10)]
    messages = [RawMessage(i, v, (BASE + 2000) * 1000) for i, v in enumerate(values)]
    native = PartitionReader("t", 0, 1, spec, NOW, reader="native").read(messages, NOW)
    python = PartitionReader("t", 0, 1, spec, NOW, reader="python").read(messages, NOW)
    assert native == python
    assert [(d.offset, d.reason) for d in native.dead_letters] == [
        (1, "invalid_json"), (2, "too_late"), (3, "invalid_json"), (4, "too_late"),
        (6, "invalid_json"), (7, "too_late")]
    assert native.mark.late == 1  # BASE + 950


# --- with segments: the optional fields read on the compiled path ---------------------

SEGMENT_TEXTS = st.sampled_from(["city", "city;city,vehicle_type;h3:8", "vehicle_type,h3:7;h3:5",
                                 "h3:9"])
FIELD_VALUES = st.one_of(
    st.sampled_from(['"Jakarta"', '"Ho Chi Minh City"', '"car"', '"bicycle"', '""', "null",
                     "true", "false", "0", "-0", "-0.0", "90", "-90.0", "180", "-180.5", "1e1",
                     "-6.2088", "106.8456", '"' + "x" * 64 + '"', '"' + "x" * 65 + '"',
                     '"' + "v" * 33 + '"', "1" * 19, "-" + "1" * 18, "12345678901234567890.5",
                     "0.1e-30", "4.5e22", "4.5e23", "1e400", '"S\\u00e3o"', '"S\u00e3o"',
                     "[1]", '{"x":1}', '"22.3193"',
                     # raw UTF-8 (stays compiled): limits in characters, not bytes; a lone
                     # surrogate's bytes (not UTF-8); a raw character beside an escape
                     '"Bogot\u00e1"', '"\u5317\u4eac"', '"\U0001f697"', '"' + "\u00e9" * 64 + '"',
                     '"' + "\u00e9" * 65 + '"', '"' + "\u00e9" * 32 + '"', '"' + "\u00e9" * 33 + '"',
                     '"' + "\U0001f600" * 16 + '"', '"' + "\u4eac" * 22 + '"', '"\ud800"',
                     '"a\udfffb"', '"S\u00e3o\\n"', '"\u00e9\u0301"']),
    st.floats(-200, 200).map(lambda f: f"{f:.6f}"),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-200, 200).map(str),
    EXTRA_VALUES,
)


@st.composite
def segment_ping_value(draw) -> bytes | None:
    """A ping with the optional fields (good, bad, odd, missing, twice) or any ping_value."""
    if draw(st.integers(0, 2)) == 0:
        return draw(ping_value())
    seconds = draw(st.one_of(st.floats(BASE + 5000, BASE + 5600),
                             st.floats(BASE - 8000, BASE + 12_000, allow_nan=False)))
    members = [f'"driver_id":{draw(st.integers(0, 40))}',
               f'"timestamp":{draw(st.sampled_from([f"{seconds:.3f}", str(int(seconds))]))}',
               f'"on_duty":{draw(st.sampled_from(["0", "1", "true", "false"]))}']
    for key in ("city", "vehicle_type", "lat", "lng"):
        for _ in range(draw(st.sampled_from([1, 1, 1, 1, 1, 0, 2]))):
            members.append(f'"{key}":{draw(FIELD_VALUES)}')
    members += draw(st.lists(extra_member(), max_size=2))
    members = draw(st.permutations(members))
    return ("{" + ",".join(members) + "}").encode("utf-8", "surrogatepass")


def _decoded(batches: list[PartitionBatch], spec: WindowSpec) -> list[PartitionBatch]:
    """The compiled reader's batches with their packed segment records read back
    into ``(driver, on_duty, values)`` lists, as the Python reader gives them (a
    batch it hands to the Python loop whole, such as one with odd Kafka
    timestamps, has the lists already)."""
    kinds = dimension_kinds(spec.segments)
    out = []
    for batch in batches:
        out.append(dataclasses.replace(batch, segments=[
            {pane: decode_records(blob, kinds) if type(blob) is bytes else blob
             for pane, blob in shard.items()}
            for shard in batch.segments]))
    return out


def _segment_types(batch: PartitionBatch) -> list:
    return [[(type(k), [(type(d), type(o), type(v), [type(x) for x in v]) for d, o, v in pings])
             for k, pings in shard.items()] for shard in batch.segments or []]


@built
@SETTINGS
@given(SPECS, SEGMENT_TEXTS,
       st.lists(st.tuples(segment_ping_value(), KAFKA_MS), min_size=1, max_size=40),
       st.lists(st.integers(0, 40), max_size=3), st.one_of(st.none(), st.integers(0, 3)),
       st.booleans())
def test_native_reader_with_segments_is_the_python_reader(spec, text, items, cuts,
                                                          resume_at, sane) -> None:
    """With segments the compiled reader gives the same batches (segment lists of
    ``(driver, on_duty, values)`` per shard and bucket too), unlocated count and snapshot."""
    spec = dataclasses.replace(spec, segments=parse_segments(text))
    batches = _batches([v for v, _ in items], _sane([s for _, s in items], sane), cuts)
    expected = read_all("python", spec, batches, resume_at)
    # the segment values computed in the compiled loop and sent as packed records
    got_batches, got_snapshot = read_all("native", spec, batches, resume_at)
    assert all(type(blob) is bytes for b in got_batches
               for shard in b.segments for blob in shard.values()) or not sane
    assert all(b.segments is not None for b in got_batches)
    got = (_decoded(got_batches, spec), got_snapshot)
    assert got == expected
    assert [_types(b) for b in got[0]] == [_types(b) for b in expected[0]]
    assert [_segment_types(b) for b in got[0]] == [_segment_types(b) for b in expected[0]]


@built
def test_segment_pings_stay_on_the_compiled_path(monkeypatch) -> None:
    """With segments, the simulator's pings (with its field faults) are read in the
    compiled loop; the batch, segment values and unlocated count are the Python reader's."""
    import orjson

    from presence.tools.simulate import FIELD_FAULTS

    spec = WindowSpec(shards=4, segments=parse_segments("city;city,vehicle_type;h3:8"))
    values = []
    for i in range(60):
        ping = {"driver_id": i % 9, "timestamp": round(BASE + i + 0.125, 3), "on_duty": i % 2,
                "city": "Ho Chi Minh City", "vehicle_type": "motorbike",
                "lat": round(-6.2088 - i / 1e4, 6), "lng": round(106.8456 - i / 1e4, 6)}
        if i % 3 == 0:
            FIELD_FAULTS[i // 3 % len(FIELD_FAULTS)][1](ping)
        values.append(orjson.dumps(ping))
    values.append(b'{"driver_id":3,"timestamp":%d,"on_duty":1,"city":"S\\u00e3o"}' % BASE)
    messages = [RawMessage(i, v, (BASE + 100) * 1000) for i, v in enumerate(values)]
    reader = PartitionReader("t", 0, 1, spec, NOW, reader="native")
    assert reader.reader == "native"
    judged = []
    original = reader._judge
    monkeypatch.setattr(reader, "_judge", lambda m, *a: judged.append(m.offset()) or original(m, *a))
    monkeypatch.setattr(reader, "_fast_segment_ping",
                        lambda v, t: judged.append(-1) or PartitionReader._fast_segment_ping(v, t))
    (batch,) = _decoded([reader.read(messages, NOW)], spec)
    python = PartitionReader("t", 0, 1, spec, NOW, reader="python")
    assert batch == python.read(messages, NOW)
    assert judged == [-1]  # only the escaped city, read by the Python fast path
    assert reader.unlocated == python.unlocated > 0
    assert sum(len(p) for s in batch.segments for p in s.values()) == 61


# Decimal tokens with more digits than a double holds (what most serializers
# print for a GPS coordinate or a float timestamp), and the hard cases of
# correct rounding: halfway between two doubles, the largest and the smallest.
HARD_NUMBERS = ["9007199254740993", "9007199254740993.0", "22.302711299999998",
                "114.17712345678901234567890", "0.1000000000000000055511151231257827",
                "1.7976931348623157e308", "2.2250738585072011e-308", "4.9e-324", "1e-400",
                "1e400", "179769313486231580793728971405303415079934132710037826936173778980444968"
                "29057458963565148300000000000.0", "2.5e-324", "13.767756000000000000000001"]


@st.composite
def long_number(draw) -> str:
    """A JSON number with up to 30 significant digits and an exponent, or a hard case."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(HARD_NUMBERS))
    whole = str(draw(st.integers(0, 10**draw(st.integers(0, 12)))))
    frac = "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=1, max_size=25)))
    exp = draw(st.sampled_from(["", "", "", f"e{draw(st.integers(-30, 30))}",
                                f"E+{draw(st.integers(0, 9))}"]))
    sign = draw(st.sampled_from(["", "", "-"]))
    return f"{sign}{whole}.{frac}{exp}"


@built
@SETTINGS
@given(st.lists(st.tuples(long_number(), long_number(), st.floats(BASE - 100, BASE + 100),
                          st.integers(0, 9)), min_size=1, max_size=30),
       st.sampled_from(["h3:8", "city;h3:5", "h3:15"]))
def test_long_numbers_read_as_python_reads_them(items, text) -> None:
    """Coordinates and timestamps with more digits than a double holds: the
    compiled reader's own (correctly rounded) parse gives Python's floats, so the
    same cells, times and rows."""
    spec = WindowSpec(shards=4, segments=parse_segments(text))
    values = [(f'{{"driver_id":{n},"timestamp":{seconds!r},"on_duty":1,"city":"Lima",'
               f'"lat":{lat},"lng":{lng}}}').encode() for lat, lng, seconds, n in items]
    values += [(f'{{"driver_id":1,"timestamp":{BASE}.{lat.lstrip("-").replace(".", "")[:25]},'
                f'"on_duty":0}}').encode() for lat, _, _, _ in items]
    batches = [[RawMessage(i, v, (BASE + 100) * 1000) for i, v in enumerate(values)]]
    expected = read_all("python", spec, batches)
    got_batches, got_snapshot = read_all("native", spec, batches)
    assert (_decoded(got_batches, spec), got_snapshot) == expected


def read_compiled_only(spec: WindowSpec, values: list[bytes], monkeypatch) -> PartitionBatch:
    """One batch of ``values`` through the compiled reader, asserting that none of
    them was handed to Python and that the batch is the Python reader's."""
    messages = [RawMessage(i, v, (BASE + 100) * 1000) for i, v in enumerate(values)]
    reader = PartitionReader("t", 0, 1, spec, NOW, reader="native")
    judged = []
    monkeypatch.setattr(reader, "_fast_segment_ping",
                        lambda v, t: judged.append(v) or PartitionReader._fast_segment_ping(v, t))
    (batch,) = _decoded([reader.read(messages, NOW)], spec)
    assert judged == []
    assert batch == PartitionReader("t", 0, 1, spec, NOW, reader="python").read(messages, NOW)
    return batch


@built
def test_full_precision_coordinates_stay_on_the_compiled_path(monkeypatch) -> None:
    """Pings whose lat/lng carry all 17 digits (orjson's, Java's, JavaScript's
    print of a double) are read in the compiled loop, not handed to Python."""
    import orjson

    spec = WindowSpec(shards=4, segments=parse_segments("city;city,vehicle_type;h3:8"))
    values = [orjson.dumps({"driver_id": i, "timestamp": BASE + i / 7, "on_duty": i % 2,
                            "city": "Bangkok", "vehicle_type": "car",
                            "lat": 13.7 + i / 977, "lng": 100.5 + i / 1013}) for i in range(1, 81)]
    assert sum(len(v) > 120 for v in values) > 70  # 16-17 significant digits
    read_compiled_only(spec, values, monkeypatch)


@built
def test_cities_beyond_ascii_stay_on_the_compiled_path(monkeypatch) -> None:
    """Raw UTF-8 cities and vehicle types (how orjson, Jackson or JSON.stringify
    write `São Paulo` or `北京`) are read in the compiled loop, with the Python
    reader's values: limits counted in characters, not bytes."""
    import orjson

    spec = WindowSpec(shards=4, segments=parse_segments("city;city,vehicle_type"))
    cities = ["São Paulo", "Bogotá", "北京", "Zürich", "é" * 64, "é" * 65, "🚗" * 3]
    values = [orjson.dumps({"driver_id": i, "timestamp": BASE + i, "on_duty": 1,
                            "city": cities[i % len(cities)], "vehicle_type": "ü" * (31 + i % 3)})
              for i in range(70)]
    batch = read_compiled_only(spec, values, monkeypatch)
    seen = {v[0][0] for shard in batch.segments for pings in shard.values() for _, _, v in pings}
    assert seen == set(cities[:5] + cities[6:]) | {"unknown"}


def test_reader_choice() -> None:
    assert reader_in_use("python") == "python"
    assert reader_in_use("auto") == ("native" if native_reader_built() else "python")
    assert reader_in_use("auto", WindowSpec(segments=parse_segments("city"))) == (
        "native" if native_reader_built() else "python")  # segments or not
    with pytest.raises(ValueError, match="must be auto, python or native"):
        reader_in_use("rust")


def test_native_setting_without_the_build_is_one_line_exit_2(monkeypatch) -> None:
    from presence.settings import SettingsError, load_settings

    monkeypatch.setattr(partition_module, "_native", None)
    with pytest.raises(SettingsError) as error:
        load_settings({"PRESENCE_READER": "native"})
    assert str(error.value).startswith("PRESENCE_READER:") and "\n" not in str(error.value)
    assert load_settings({"PRESENCE_READER": "auto"}).reader == "auto"
    with pytest.raises(SettingsError, match="PRESENCE_READER"):
        load_settings({"PRESENCE_READER": "fast"})


def test_the_start_up_line_says_which_reader_runs(monkeypatch) -> None:
    from presence.settings import load_settings

    built_here = "native" if native_reader_built() else "python"
    assert load_settings({}).describe().endswith(f" | reader {built_here}")
    assert load_settings({"PRESENCE_READER": "python"}).describe().endswith(" | reader python")
    assert load_settings({"PRESENCE_SEGMENTS": "city"}).describe().endswith(
        f" | reader {built_here}")
    monkeypatch.setattr(partition_module, "_native", None)
    assert load_settings({}).describe().endswith(" | reader python")


def test_make_install_without_cargo_goes_on_with_python(tmp_path) -> None:
    """scripts/build_native.sh with no cargo on PATH: one line, exit 0, nothing built."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NATIVE_OUT": str(tmp_path / "out.so")}
    done = subprocess.run(["bash", str(ROOT / "scripts/build_native.sh")], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1 and "pure-Python reader" in lines[0] and "cargo" in lines[0]
    assert not (tmp_path / "out.so").exists()


def test_make_install_itself_without_cargo(tmp_path) -> None:
    """`make install` on a machine without Rust: the one line, exit 0 (the venv as it is)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NATIVE_OUT": str(tmp_path / "out.so")}
    if not shutil.which("make", path=env["PATH"]):
        pytest.skip("no make in /usr/bin")
    if subprocess.run(["make", "-q", ".venv/.installed"], cwd=ROOT, env=env).returncode != 0:
        pytest.skip("the venv is older than pyproject.toml or the lock files: run make install")
    done = subprocess.run(["make", "--no-print-directory", "install"], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines() == [
        "native reader: not built (no cargo on PATH: install Rust to build it); "
        "presence uses the pure-Python reader"]
    assert not (tmp_path / "out.so").exists()


def test_make_install_skip_knob(tmp_path) -> None:
    """NATIVE=0 skips the build even with cargo there (the same one line)."""
    env = dict(os.environ, NATIVE="0", NATIVE_OUT=str(tmp_path / "out.so"))
    done = subprocess.run(["bash", str(ROOT / "scripts/build_native.sh")], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and "pure-Python reader" in done.stdout
    assert not (tmp_path / "out.so").exists()
    assert sys.executable  # the suite's interpreter is untouched


# --- end to end: bytewax in-process, then the real dataflow on the local stack ------

@built
def test_bytewax_flow_gives_the_same_rows_with_either_reader(monkeypatch) -> None:
    from tests.flow_helpers import memory_topic, run_flow
    from tests.streams import stream

    spec = WindowSpec(bucket_s=60, window_s=300, lateness_s=30, horizon_s=1800, idle_s=10)
    partitions = stream(5)
    outs = {}
    for kind in ("python", "native"):
        monkeypatch.setattr(partition_module, "DEFAULT_READER", kind)
        out = run_flow(memory_topic(partitions), spec, workers=2)
        totals = out.status[-1][1]
        # (rows_written and row_rewrites depend on how the two workers interleave)
        outs[kind] = (out.final_rows(), out.dead_ids(), totals.valid, totals.invalid,
                      totals.late, totals.too_late, totals.watermark,
                      totals.dead_letters_by_reason)
    assert outs["native"] == outs["python"]
    assert outs["native"][0] and all(outs["native"][3:6])


@built
@pytest.mark.stack
def test_dataflow_with_presence_reader_native_writes_the_rows_python_writes(
        kafka_brokers, mongo_uri, topic_and_db, tmp_path) -> None:
    from pymongo import MongoClient

    from tests.stack_helpers import dataflow_env, new_topic, run_dataflow, stored_rows
    from tests.streams import stream

    topic, db = topic_and_db
    partitions = stream(31, partitions=2, per_partition=600, horizon=1800)
    new_topic(kafka_brokers, topic, partitions)
    client = MongoClient(mongo_uri)
    other = topic + "py"
    try:
        seen = {}
        for kind, name in (("native", topic), ("python", other)):
            env = dataflow_env(kafka_brokers, mongo_uri, topic, name, PRESENCE_READER=kind,
                               PRESENCE_CORRECTION_HORIZON_MINUTES="30")
            out = run_dataflow(env)
            assert f"| reader {kind}" in out, out[-2000:]
            store = client[name]
            totals = store.pipeline_status.find_one({"_id": "totals"})
            seen[kind] = (
                stored_rows(store),
                sorted((d["_id"], d["reason"]) for d in store.dead_letters.find()),
                {k: totals[k] for k in ("valid", "invalid", "tooLate", "correctedLate")},
            )
        assert seen["native"] == seen["python"]
        assert seen["native"][0] and seen["native"][1]
    finally:
        client.drop_database(other)
        client.close()


@built
@settings(max_examples=EXAMPLES * 5, deadline=None)
@given(st.one_of(st.floats(946_684_800, 1e15, allow_nan=False),
                 st.integers(946_684_800 // 60, 10**13).map(lambda n: n * 60.0),
                 st.integers(946_684_800, 10**15).map(lambda n: float(n) - 2**-20)),
       st.sampled_from([1, 7, 60, 3600, 86_400]), st.sampled_from([-2, -1, 0, 1, 2]))
def test_bucket_numbers_are_pythons_floor_division(time: float, bucket: int, ulps: int) -> None:
    time = math.nextafter(time, math.inf) if ulps > 0 else time
    time = math.nextafter(time, 0) if ulps < 0 else time
    time = min(max(time, 946_684_800.0), 1e15 - 1)
    assert partition_module._native.floor_div_py(time, float(bucket)) == time // bucket



# --- H3 in the compiled reader: h3-py's own C function, through its capsule -----------

EDGE_DEGREES = [0.0, -0.0, 90.0, -90.0, 180.0, -180.0, 89.999999, -179.999999, 1e-300, -1e-300,
                45.0, 22.3193, 114.1694, -6.2088, 106.8456, 51.5074, -0.1278]


@built
def test_the_compiled_reader_calls_h3s_c_function() -> None:
    """The capsule of h3-py's latlng_to_cell is found and used (not the Python call)."""
    assert type(partition_module.native_cell_of()).__name__ == "PyCapsule"


@built
@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.floats(-90, 90), st.sampled_from([d for d in EDGE_DEGREES if abs(d) <= 90])),
       st.one_of(st.floats(-180, 180), st.sampled_from(EDGE_DEGREES)),
       st.integers(0, 15))
def test_compiled_h3_cells_are_h3s(lat, lng, resolution) -> None:
    """The compiled reader's H3 cell of a valid location is h3-py's (every
    resolution, the poles, the antimeridian, signed zeros, subnormals)."""
    import h3.api.basic_int as h3int

    cell = partition_module._native.h3_cell_py(partition_module.native_cell_of(), lat, lng,
                                               resolution)
    assert cell == h3int.latlng_to_cell(lat, lng, resolution)


@built
@settings(max_examples=200, deadline=None)
@given(st.floats(-60, 60), st.floats(-179, 179), st.integers(0, 15))
def test_compiled_h3_cells_at_cell_vertices(lat, lng, resolution) -> None:
    """Points at and a hair from a cell's vertices fall in h3-py's cell too."""
    import h3.api.basic_int as h3int

    native, capsule = partition_module._native, partition_module.native_cell_of()
    for vlat, vlng in h3int.cell_to_boundary(h3int.latlng_to_cell(lat, lng, resolution)):
        for dlat in (-1e-12, 0.0, 1e-12):
            for dlng in (-1e-12, 0.0, 1e-12):
                p, q = vlat + dlat, vlng + dlng
                if -90 <= p <= 90 and -180 <= q <= 180:
                    assert native.h3_cell_py(capsule, p, q, resolution) == \
                        h3int.latlng_to_cell(p, q, resolution)


@built
def test_compiled_h3_errors_are_no_cell() -> None:
    """Where h3 raises (a resolution beyond 15), the compiled call gives no cell
    and leaves no exception behind, as ValueExtractor takes it."""
    capsule = partition_module.native_cell_of()
    assert partition_module._native.h3_cell_py(capsule, 22.3, 114.17, 16) is None
    assert partition_module._native.h3_cell_py(capsule, 22.3, 114.17, 8) is not None
