"""The row book's segment tally: the compiled one (``native/src/segment_tally.rs``)
is the pure-Python :class:`presence.core.segment_tally.SegmentTally`."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings, strategies as st

from presence.core import partition
from presence.core.segment_panes import pack_partial
from presence.core.segment_tally import (
    SegmentTally, decode_row, key_fields, pack_partials, tally_class, unpack_partials,
)
from presence.core.segments import parse_segments

NATIVE = getattr(partition._native, "SegmentTally", None)
built = pytest.mark.skipif(NATIVE is None, reason="compiled tally not built")

ROWS = st.sampled_from([0, 60, 120, 180, 240])
FIELDS = key_fields(parse_segments("city;city,vehicle_type;h3:8"))
KEYS = st.sampled_from([b"\x00\x00\x05\x00other", b"\x00\x00\x02\x00HK", b"\x02\x00" + bytes(8),
                        b"\x02\x00" + b"\xff" * 8, b"\x01\x00\x02\x00HK\x03\x00van",
                        b"\x01\x00\x05\x00other", b"\x02\x00\x05\x00other",
                        b"\x00\x00\x03\x00\xed\xa0\x80",  # a lone surrogate (surrogatepass)
                        b"\x00\x00\x02\x00\xc3\xa3",
                        # 15 and 16 bytes (the compiled tally keeps keys of up to 15 as a
                        # word), zero bytes, and two keys alike but for a trailing zero
                        b"\x00\x00\x0b\x00Kowloon Bay", b"\x00\x00\x0c\x00Kowloon Bays",
                        b"\x00\x00\x01\x00A", b"\x00\x00\x02\x00A\x00", b"\x00\x00\x02\x00\x00\x00"])
PACKED = st.builds(pack_partial, st.integers(0, 40), st.integers(0, 40), st.booleans())
PARTIALS = st.dictionaries(ROWS, st.dictionaries(KEYS, PACKED, max_size=5), max_size=3)
OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 3), PARTIALS, st.booleans()),
    st.tuples(st.just("take"), st.lists(ROWS, unique=True)),
    st.tuples(st.just("forget"), ROWS),
    st.tuples(st.just("restore"), st.booleans()),
), max_size=25)


def _plain(tally) -> dict:
    return {row: decode_row(blob) for row, blob in tally.snapshot().items()}


@built
@settings(max_examples=300, deadline=None)
@given(OPS)
def test_compiled_tally_is_the_python_tally(ops) -> None:
    """The same reports (as dicts or packed), takes, clean-ups and restores (across
    the two kinds) give the same rows, pending rows and state."""
    python, native = SegmentTally(FIELDS), NATIVE(FIELDS)
    for op in ops:
        if op[0] == "add":
            _, slot, partials, packed = op
            partials = {r: p for r, p in partials.items() if p}
            for tally in (python, native):
                if packed:
                    tally.add_packed(slot, pack_partials(partials))
                else:
                    tally.add_dict(slot, partials)
        elif op[0] == "take":
            assert python.take(op[1]) == native.take(op[1])
        elif op[0] == "forget":
            assert python.forget_before(op[1]) == native.forget_before(op[1])
        else:  # each restores the other's snapshot (through pickle)
            a = pickle.loads(pickle.dumps(native.snapshot()))
            b = pickle.loads(pickle.dumps(python.snapshot()))
            assert a == b  # the very same bytes
            python, native = SegmentTally.restore(FIELDS, a), NATIVE.restore(FIELDS, b)
            if op[1]:
                python, native = SegmentTally.restore(FIELDS, b), NATIVE.restore(FIELDS, a)
        assert sorted(python.pending_rows()) == sorted(native.pending_rows())
        assert python.has_pending() == native.has_pending()
        assert _plain(python) == _plain(native)
    assert python.take([0, 60, 120, 180, 240]) == native.take([0, 60, 120, 180, 240])


def test_snapshot_rows_round_trip() -> None:
    from presence.core.segment_tally import encode_row

    entries = [(b"\x00\x00\x02\x00HK", (3, 2, 7), True, ((0, 5), (3, 9))),
               (b"\x02\x00" + bytes(8), None, False, ((2**31 + 5, 2**62),))]
    assert decode_row(encode_row(entries)) == sorted(entries)


def test_packed_partials_round_trip() -> None:
    partials = {60: {b"\x00\x00\x02\x00HK": pack_partial(3, 2, True)}, -120: {b"\x02\x00": 7}}
    assert unpack_partials(pack_partials(partials)) == partials


@built
def test_truncated_packed_partials_are_an_error_not_a_crash() -> None:
    blob = pack_partials({60: {b"\x00\x00\x02\x00HK": 5}})
    for cut in range(1, len(blob)):
        with pytest.raises(ValueError, match="truncated"):
            NATIVE(FIELDS).add_packed(0, blob[:cut])


@pytest.mark.parametrize("tally", [SegmentTally] + ([NATIVE] if NATIVE else []))
def test_key_documents_are_the_definitions_keys(tally) -> None:
    """The documents' ``key`` fields are SegmentDefinition.key of the value."""
    from presence.core.segment_tally import partial_key
    from presence.core.segment_records import dimension_kinds
    from presence.core.segments import OTHER

    definitions = parse_segments("city;city,vehicle_type;h3:8;vehicle_type,h3:5")
    kinds = dimension_kinds(definitions)
    values = [(0, ("Hong Kong",)), (0, OTHER), (1, ("S\u00e3o Paulo", "van")), (1, OTHER),
              (2, (613635013692358655,)), (2, OTHER), (3, ("bike", 600000000000000000)),
              (0, ("\ud800",))]
    t = tally(key_fields(definitions))
    t.add_dict(0, {60: {partial_key(n, v, kinds): pack_partial(1, 1, False) for n, v in values}})
    got = {(n, tuple(sorted(doc.items()))) for _, n, doc, *_ in t.take([60])}
    assert got == {(n, tuple(sorted(definitions[n].key(v).items()))) for n, v in values}


def test_the_python_reader_setting_keeps_the_python_tally() -> None:
    assert tally_class("python") is SegmentTally
    assert tally_class("auto") is (NATIVE or SegmentTally)
