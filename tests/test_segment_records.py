"""The packed segment records (presence.core.segment_records) round-trip."""

from hypothesis import given, strategies as st

from presence.core.segment_records import (
    OTHER_KEY, decode_key, decode_records, dimension_kinds, encode_key, encode_records,
)
from presence.core.segments import OTHER, parse_segments

DEFS = parse_segments("city;city,vehicle_type;h3:8;vehicle_type,h3:5")
KINDS = dimension_kinds(DEFS)

texts = st.text(max_size=70) | st.sampled_from(["other", ""])  # surrogates included: encoded with surrogatepass
cells = st.integers(min_value=0, max_value=2**64 - 1)


@st.composite
def values(draw):
    city, vt = draw(texts), draw(texts)
    located = draw(st.booleans())
    c8, c5 = draw(cells), draw(cells)
    # A real city "other" is the overflow value OTHER (no other definition meets it in input)
    out = [OTHER if city == "other" else (city,), (city, vt), (c8,) if located else None,
           (vt, c5) if located else None]
    return tuple(out)


@given(st.lists(st.tuples(texts, st.booleans(), values()), max_size=6))
def test_records_round_trip(pings):
    assert decode_records(encode_records(pings, KINDS), KINDS) == [
        (d, o, v) for d, o, v in pings
    ]


def test_other_has_one_key_in_every_definition_and_equals_a_real_other_of_one_string():
    assert {encode_key(OTHER, kinds) for kinds in KINDS} == {OTHER_KEY}
    assert encode_key(("other",), KINDS[0]) == OTHER_KEY
    assert decode_key(OTHER_KEY, KINDS[1]) == OTHER
    assert encode_key(("other", "other"), KINDS[1]) != OTHER_KEY


@given(texts, texts)
def test_keys_of_different_values_differ(a, b):
    assert (encode_key((a, b), KINDS[1]) == encode_key((b, a), KINDS[1])) == (a == b)
