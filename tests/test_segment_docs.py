"""The compiled ``segment_summary`` encoder (native/src/segment_docs.rs) against
pymongo's encoding of :func:`presence.io.mongo.segment_doc`, byte for byte, and
the sink's fall-back to the dicts where it does not apply."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import bson
import pytest
from hypothesis import given, settings, strategies as st

from presence.core import partition
from presence.core.model import SegmentRows
from presence.io import mongo
from tests.constants import T0

native = partition._native
pytestmark = pytest.mark.skipif(
    native is None or not hasattr(native, "encode_segment_docs"),
    reason="the compiled module is not built (make install with cargo on PATH)",
)

NAMES = ("city", "city,vehicle_type", "h3:8", "a|b\\c")
FIELDS = (("city",), ("city", "vehicle_type"), ("h3",), ("a|b\\c",))

# any text pymongo can encode: no lone surrogates (UTF-8 only); NUL, '|' and '\\' included
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ["other", "unknown", "Hong Kong", "a|b", "\\", "|", "\x00", "é漢😀"])
counts = st.integers(0, 2**31 - 1) | st.integers(2**31, 2**40) | st.sampled_from([2**31 - 1, 2**31])


@st.composite
def taken_rows(draw) -> tuple:
    number = draw(st.integers(0, len(NAMES) - 1))
    bucket = T0 + 60 * draw(st.integers(-50_000, 50_000))
    key = {name: draw(texts) for name in FIELDS[number]}
    return (bucket, number, key, draw(counts), draw(counts), draw(st.integers(1, 2**33)),
            draw(st.booleans()))


def encoded(batch: SegmentRows, now: datetime) -> bytes:
    return b"".join(bson.encode(mongo.segment_doc(row, now)) for row in batch)


@settings(max_examples=300, deadline=None)
@given(st.lists(taken_rows(), max_size=20), st.integers(0, 10**6), st.sampled_from([(60, 300), (60, 60), (30, 600)]))
def test_compiled_documents_are_pymongos_bytes(taken, micros, sizes) -> None:
    bucket_s, window_s = sizes
    batch = SegmentRows(NAMES, bucket_s, window_s, taken)
    now = datetime.fromtimestamp(T0, timezone.utc) + timedelta(microseconds=micros)
    raws = mongo.raw_segment_docs(batch, taken, now, native.encode_segment_docs)
    assert b"".join(raw.raw for raw in raws) == encoded(batch, now)
    assert len(raws) == len(taken)


def test_a_naive_now_is_taken_as_utc_as_pymongo_does() -> None:
    taken = [(T0, 0, {"city": "Lisbon"}, 3, 2, 1, False)]
    batch = SegmentRows(NAMES, 60, 300, taken)
    now = datetime(2030, 3, 4, 5, 6, 7, 891_234)
    raws = mongo.raw_segment_docs(batch, taken, now, native.encode_segment_docs)
    assert raws[0].raw == encoded(batch, now)


@pytest.mark.parametrize("bad", [
    (T0, 0, {"city": 7}, 3, 2, 1, False),              # a key value that is not text
    (T0, 0, {"city": "x\ud800"}, 3, 2, 1, False),      # not UTF-8
    (T0, 0, {"ci\x00ty": "x"}, 3, 2, 1, False),        # a NUL in a field name
    (T0, 9, {"city": "x"}, 3, 2, 1, False),            # an unknown definition
    (T0, 0, {"city": "x"}, 2**64, 2, 1, False),        # beyond int64
    (T0, 0, {"city": "x"}, 3, 2, 1),                   # not a row
])
def test_what_the_encoder_does_not_expect_raises(bad) -> None:
    with pytest.raises((ValueError, TypeError, OverflowError, UnicodeError)):
        native.encode_segment_docs([bad], list(NAMES), {T0: "t"}, 60, 300, 0)


def test_a_bucket_without_its_text_raises() -> None:
    with pytest.raises(ValueError, match="without its text"):
        native.encode_segment_docs([(T0, 0, {"city": "x"}, 3, 2, 1, False)], list(NAMES), {}, 60, 300, 0)


class FakeCollection:
    """Records what the sink sends (insert_many documents as bytes, upserts as
    dicts); ``existing`` ids clash as duplicate keys."""

    def __init__(self, existing: set[str] = frozenset()) -> None:
        self.inserted: list[bytes] = []
        self.upserted: list[dict] = []
        self.existing = set(existing)

    def insert_many(self, docs, ordered=True):
        from pymongo.errors import BulkWriteError

        errors = []
        for n, doc in enumerate(docs):
            raw = doc.raw if hasattr(doc, "raw") else bson.encode(doc)
            if bson.decode(raw)["_id"] in self.existing:
                errors.append({"index": n, "code": 11000, "errmsg": "E11000 duplicate key"})
            else:
                self.inserted.append(raw)
        if errors:
            raise BulkWriteError({"writeErrors": errors, "writeConcernErrors": [], "nInserted": 0})

    def bulk_write(self, updates, ordered=True):
        for update in updates:
            self.upserted.append(update._doc)
        return None


def test_the_sink_inserts_compiled_documents_and_upserts_rewrites_and_replays() -> None:
    now = datetime.fromtimestamp(T0, timezone.utc)
    taken = [(T0, 0, {"city": f"c{n}"}, 5, 4, 1 if n < 4 else 2, n == 1) for n in range(6)]
    batch = SegmentRows(NAMES, 60, 300, taken)
    replayed = next(iter(SegmentRows(NAMES, 60, 300, taken[2:3]))).doc_id
    compiled, plain = FakeCollection({replayed}), FakeCollection({replayed})
    mongo.write_segment_batch(compiled, batch, now, native.encode_segment_docs)
    mongo.write_segment_batch(plain, batch, now, None)
    assert compiled.inserted == plain.inserted == [encoded(SegmentRows(NAMES, 60, 300, [t]), now)
                                                   for t in taken[:4] if t is not taken[2]]
    assert compiled.upserted == plain.upserted and len(compiled.upserted) == 3  # c2 (a replay), c4, c5


def test_the_sink_falls_back_to_dicts_where_the_encoder_does_not_apply() -> None:
    now = datetime.fromtimestamp(T0, timezone.utc)
    taken = [(T0, 0, {"city": "ok"}, 5, 4, 1, False), (T0, 0, {"city": 7}, 5, 4, 1, False)]
    coll = FakeCollection()
    with pytest.raises(TypeError):  # what the dict path says, as before
        mongo.write_segment_batch(coll, SegmentRows(NAMES, 60, 300, taken[1:]), now,
                                  native.encode_segment_docs)
    mongo.write_segment_batch(coll, SegmentRows(NAMES, 60, 300, taken[:1]), now,
                              native.encode_segment_docs)
    assert coll.inserted == [encoded(SegmentRows(NAMES, 60, 300, taken[:1]), now)]


def test_presence_reader_picks_the_encoder() -> None:
    assert mongo.segment_encoder("python") is None
    assert mongo.segment_encoder("auto") is native.encode_segment_docs
    assert mongo.segment_encoder("native") is native.encode_segment_docs
