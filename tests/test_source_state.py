"""The source partition's recovery state as data, and restoring what older versions kept."""

from __future__ import annotations

import base64
import pickle
import sqlite3
from pathlib import Path

import pytest

from presence.core.fingerprint import STATE_FORMAT, Fingerprint
from presence.core.partition import PartitionReader
from presence.core.source_state import SourceState
from presence.core.windows import WindowSpec
from presence.io.memory import MemoryTopic
from presence.io.recovery import SOURCE_STEP, RecoveryDirError, init_dir, read_dir
from presence.io.source import PingSource
from tests.constants import NOW, T0
from tests.oracle import P

SPEC = WindowSpec()

FORMAT_2_DICT = base64.b64decode(
    "gASVLgEAAAAAAAB9lCiMBmZvcm1hdJRLAowLZmluZ2VycHJpbnSUfZQojAV0b3BpY5SMBXBpbmdzlIwIdG9waWNf"
    "aWSUjBZYcTNiOXlUUVJYV2o0eEExbjJ4WXp3lIwKcGFydGl0aW9uc5RLAowGYnVja2V0lEs8jAZ3aW5kb3eUTSwB"
    "jAhzZWdtZW50c5SMAJSMBnNoYXJkc5RLEGgBSwJ1jAtuZXh0X29mZnNldJRN0gSMCW1heF9ldmVudJRHQdaSbNsA"
    "AACMBXZhbGlklE2wBIwHaW52YWxpZJRLFIwIdG9vX2xhdGWUSwSMBGxhdGWUSwqMCHJlamVjdGVklH2UKIwMaW52"
    "YWxpZF9qc29ulEsMjA1iYWRfZHJpdmVyX2lklEsIdYwEZ2Fwc5RdlEsDSweGlGF1Lg=="
)
"""The pickled snapshot of source partition 1 of 2 as presence kept it before the state
was a dataclass (a plain dict, format 2, the fingerprint with ``bucket``/``window``):
made with that code (commit 01945d1) and pinned here byte for byte."""

FORMAT_1_DICT = {"next_offset": 40, "max_event": T0 + 60.0, "valid": 3, "invalid": 1,
                 "too_late": 0, "gaps": []}
"""A snapshot written before fingerprints existed: no ``format``, no ``fingerprint``."""

RECORDED = Fingerprint(topic="pings", topic_id="Xq3b9yTQRXWj4xA1n2xYzw", partitions=2,
                       bucket_s=60, window_s=300, segments="", shards=16)


def reader(resume=None, fingerprint=None) -> PartitionReader:
    return PartitionReader("pings", 1, 2, SPEC, NOW, resume, fingerprint=fingerprint)


def test_a_format_2_dict_of_the_previous_version_restores() -> None:
    saved = pickle.loads(FORMAT_2_DICT)
    assert type(saved) is dict and saved["format"] == 2
    state = SourceState.restore(saved)
    assert (state.format, state.next_offset) == (2, 1234)
    assert state.recorded() == RECORDED  # bucket/window read as bucket_s/window_s
    again = reader(state.reader_resume(), fingerprint=RECORDED.to_dict())
    assert again.resumed_format == 2 and again.resumed_fingerprint == saved["fingerprint"]
    assert (again.next_offset, again.max_event, again.valid, again.invalid) == (1234, T0 + 300.0, 1200, 20)
    assert (again.too_late, again.late, again.gaps) == (4, 10, [(3, 7)])
    assert again.rejected == {"invalid_json": 12, "bad_driver_id": 8}
    # Snapshotted again, it is the new shape with the same content.
    new = SourceState.of_reader(again.snapshot())
    # (this version's reader also counts unlocated pings: 0 for the old state)
    assert new.reader == {**state.reader, "unlocated": 0} and new.next_offset == 1234
    assert new.fingerprint == RECORDED.to_dict() and new.fingerprint["bucket_s"] == 60


def test_a_format_1_dict_restores_without_a_fingerprint() -> None:
    state = SourceState.restore(pickle.loads(pickle.dumps(FORMAT_1_DICT)))
    assert (state.format, state.next_offset, state.fingerprint, state.recorded()) == (1, 40, None, None)
    again = reader(state.reader_resume())
    assert again.resumed_format == 1 and again.resumed_fingerprint is None
    assert (again.next_offset, again.max_event, again.valid, again.invalid) == (40, T0 + 60.0, 3, 1)


def test_the_source_partition_snapshot_is_a_source_state_that_round_trips() -> None:
    topic = MemoryTopic("pings", 1)
    topic.append(0, P(1, T0, True).value(), b"{")
    source = PingSource("pings", 1, topic.feed, SPEC, bounded=True, clock=lambda: NOW,
                        fingerprint=RECORDED.to_dict())
    part = source.build_part("presence.pings", "0", None)
    part.next_batch()
    snap = part.snapshot()
    assert type(snap) is SourceState and snap.format == STATE_FORMAT
    assert (snap.next_offset, snap.fingerprint) == (2, RECORDED.to_dict())
    assert snap.reader["valid"] == 1 and snap.reader["invalid"] == 1
    restored = pickle.loads(pickle.dumps(snap))
    assert restored == snap
    resumed = source.build_part("presence.pings", "0", restored)
    assert resumed.reader.snapshot() == part.reader.snapshot()
    assert resumed.reader.resumed_format == STATE_FORMAT
    # The old dict is accepted where bytewax hands back a resume state, too.
    old = source.build_part("presence.pings", "0", pickle.loads(pickle.dumps(part.reader.snapshot())))
    assert old.reader.snapshot() == part.reader.snapshot()


@pytest.mark.parametrize("bad, words", [
    (42, "a source snapshot is a int"),
    ([1, 2], "is a list"),
    ({"next_offset": "12"}, "next offset '12'"),
    ({"next_offset": -1}, "next offset -1"),
    ({"format": "2"}, "format '2'"),
    ({"fingerprint": [1]}, r"fingerprint \[1\]"),
])
def test_something_else_is_a_value_error(bad, words) -> None:
    with pytest.raises(ValueError, match=words):
        SourceState.restore(bad)


def _write(part, key: str, blob: bytes, epoch: int = 1) -> None:
    con = sqlite3.connect(part)
    con.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?,?,?,?)",
                (SOURCE_STEP, key, epoch, blob))
    con.commit()
    con.close()


def _delete(part, key: str) -> None:
    con = sqlite3.connect(part)
    con.execute("DELETE FROM snaps WHERE state_key = ?", (key,))
    con.commit()
    con.close()


def test_the_recovery_directory_reads_both_shapes_and_admits_no_other_class(tmp_path) -> None:
    rec = tmp_path / "rec"
    init_dir(rec, 1)
    state = SourceState.of_reader(reader(fingerprint=RECORDED.to_dict()).snapshot())
    _write(rec / "part-0.sqlite3", "0", pickle.dumps(state))
    _write(rec / "part-0.sqlite3", "1", FORMAT_2_DICT)
    _write(rec / "part-0.sqlite3", "2", pickle.dumps(FORMAT_1_DICT))
    found = read_dir(rec).source_states()
    assert found["0"].state == state
    assert found["1"].state.next_offset == 1234 and found["1"].state.recorded() == RECORDED
    assert found["2"].state.format == 1 and found["2"].state.recorded() is None
    for key, planted in (("3", Planted(5)), ("4", SourceState(5, reader={"x": Path("/etc")}))):
        _write(rec / "part-0.sqlite3", key, pickle.dumps(planted))
        with pytest.raises(RecoveryDirError, match="cannot be read .*unexpected object"):
            read_dir(rec)
        _delete(rec / "part-0.sqlite3", key)


class Planted(SourceState):
    """Another class of the same shape: not admitted."""


def test_fingerprint_names_carry_units_and_its_document_keys_stay() -> None:
    old = pickle.loads(FORMAT_2_DICT)["fingerprint"]
    assert {"bucket", "window"} <= set(old)
    assert Fingerprint.from_dict(old) == RECORDED
    assert set(RECORDED.to_dict()) == {"topic", "topic_id", "partitions", "bucket_s", "window_s",
                                       "segments", "shards", "format"}
    assert RECORDED.to_doc() == {
        "topic": "pings", "topicId": "Xq3b9yTQRXWj4xA1n2xYzw", "partitions": 2,
        "bucketSeconds": 60, "windowSeconds": 300, "segments": "", "shards": 16,
        "format": STATE_FORMAT,
    }
    assert Fingerprint.from_doc(RECORDED.to_doc()) == RECORDED


def test_a_bounded_run_goes_on_from_snapshots_of_the_previous_shape(tmp_path) -> None:
    """State a previous presence left (source snapshots as plain dicts), resumed by Bytewax."""
    from tests.flow_helpers import bounded_in_two, init_recovery, memory_topic, run_flow
    from tests.streams import stream

    partitions = stream(4)
    whole = run_flow(memory_topic(partitions), SPEC)
    recovery = init_recovery(tmp_path / "recovery")
    rewritten = []
    out = bounded_in_two(partitions, SPEC, recovery, between=lambda: rewritten.extend(
        as_previous_shape(recovery)))
    assert len(rewritten) >= len(partitions)
    assert out.final_rows() == whole.final_rows()
    assert len(out.dead) == len(out.dead_ids())  # nothing read twice


def as_previous_shape(recovery) -> list[str]:
    """Rewrite every source snapshot as the dict a previous presence kept; the keys rewritten."""
    rewritten = []
    for part in recovery.glob("*.sqlite3"):
        con = sqlite3.connect(part)
        rows = con.execute("SELECT state_key, snap_epoch, ser_change FROM snaps WHERE step_id = ? "
                           "AND ser_change IS NOT NULL", (SOURCE_STEP,)).fetchall()
        for key, epoch, blob in rows:
            state = pickle.loads(blob)
            assert type(state) is SourceState
            con.execute("UPDATE snaps SET ser_change = ? WHERE step_id = ? AND state_key = ? AND "
                        "snap_epoch = ?", (pickle.dumps(state.reader_resume()), SOURCE_STEP, key, epoch))
            rewritten.append(key)
        con.commit()
        con.close()
    assert all(type(s.state) is SourceState for s in read_dir(recovery).source_states().values())
    return rewritten
