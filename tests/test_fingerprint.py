"""The fingerprint that binds state and rows to their input (SPEC "Bound to its input"):
the comparison and its one-line refusals, and the recovery directory as start-up reads it."""

from __future__ import annotations

import pickle
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from presence.binding import recovery_differences
from presence.cluster import recovery_directory
from presence.tools.cli import cli
from presence.core.fingerprint import (
    STATE_FORMAT, Fingerprint, differences, how_to_keep, merge_recorded, refusal,
)
from presence.io.recovery import (
    SOURCE_STEP, RecoveryDirError, init_dir, read_dir, reset_dir,
)

REPO = Path(__file__).resolve().parent.parent

BASE = Fingerprint(topic="pings", topic_id="Xq3b9yTQRXWj4xA1n2xYzw", partitions=4, bucket_s=60,
                   window_s=300, segments="", shards=16)


def one_line(found, recorded=BASE) -> str:
    line = refusal("recovery directory rec", found, "`presence recovery reset rec`",
                   how_to_keep(recorded, found))
    assert "\n" not in line
    return line


@pytest.mark.parametrize("change, field, words", [
    ({"topic": "other"}, "topic", ["topic 'pings' recorded, 'other' now (PRESENCE_TOPIC)",
                                   "set PRESENCE_TOPIC=pings"]),
    ({"topic_id": "AAAAAAAAAAAAAAAAAAAAAQ"}, "topic_id",
     ["topic 'pings' was deleted and created again", "Xq3b9yTQRXWj4xA1n2xYzw"]),
    ({"partitions": 3}, "partitions", ["has 3 partitions, 4 recorded"]),
    ({"bucket_s": 30, "window_s": 300}, "bucket_s", ["bucket 60 s recorded, 30 s now (PRESENCE_BUCKET_SECONDS)",
                                               "set PRESENCE_BUCKET_SECONDS=60"]),
    ({"window_s": 60}, "window_s", ["window 5 min recorded, 1 min now (PRESENCE_WINDOW_MINUTES)",
                                "set PRESENCE_WINDOW_MINUTES=5"]),
    ({"segments": "city"}, "segments", ["segments 'none' recorded, 'city' now (PRESENCE_SEGMENTS)"]),
    ({"shards": 32}, "shards", ["16 shards recorded, 32 now"]),
    ({"format": STATE_FORMAT + 1}, "format", [f"state format {STATE_FORMAT} recorded"]),
])
def test_each_field_that_differs_is_named_in_one_line(change, field, words) -> None:
    current = replace(BASE, **change)
    found = differences(BASE, current)
    assert [d.field for d in found] == [field]
    line = one_line(found)
    assert line.startswith("recovery directory rec was made for another input or settings: ")
    assert "To start afresh: `presence recovery reset rec`" in line
    for w in words:
        assert w in line


def test_no_setting_brings_back_a_recreated_topic() -> None:
    found = differences(BASE, replace(BASE, topic_id="other"))
    assert how_to_keep(BASE, found) == ""
    assert "to go on with it" not in one_line(found)


def test_more_partitions_are_fine_fewer_are_not() -> None:
    assert differences(BASE, replace(BASE, partitions=5)) == []
    assert differences(BASE, replace(BASE, partitions=400)) == []
    assert [d.field for d in differences(BASE, replace(BASE, partitions=1))] == ["partitions"]


def test_a_missing_topic_id_is_not_compared() -> None:
    assert differences(replace(BASE, topic_id=""), BASE) == []
    assert differences(BASE, replace(BASE, topic_id="")) == []


def test_another_topic_is_said_once_not_as_a_topic_id_too() -> None:
    found = differences(BASE, replace(BASE, topic="b", topic_id="other", partitions=1))
    assert [d.field for d in found] == ["topic"]


def test_several_differences_in_one_line() -> None:
    found = differences(BASE, replace(BASE, topic="b", window_s=60))
    assert [d.field for d in found] == ["topic", "window_s"]
    line = one_line(found)
    assert "set PRESENCE_TOPIC=pings PRESENCE_WINDOW_MINUTES=5" in line


fingerprints = st.builds(
    Fingerprint, topic=st.sampled_from(["a", "b"]), topic_id=st.sampled_from(["", "x", "y"]),
    partitions=st.integers(1, 8), bucket_s=st.sampled_from([30, 60]),
    window_s=st.sampled_from([60, 300]), segments=st.sampled_from(["", "city"]),
    shards=st.sampled_from([16, 32]), format=st.sampled_from([1, 2]),
)


@given(fingerprints, fingerprints)
def test_match_means_same_input_and_settings(recorded: Fingerprint, current: Fingerprint) -> None:
    same = (
        recorded.topic == current.topic
        and (not recorded.topic_id or not current.topic_id or recorded.topic_id == current.topic_id)
        and current.partitions >= recorded.partitions
        and (recorded.bucket_s, recorded.window_s, recorded.segments, recorded.shards, recorded.format)
        == (current.bucket_s, current.window_s, current.segments, current.shards, current.format)
    )
    assert (differences(recorded, current) == []) == same
    assert Fingerprint.from_dict(recorded.to_dict()) == recorded
    assert Fingerprint.from_doc(recorded.to_doc()) == recorded


@pytest.mark.parametrize("bad", [None, [], {}, {**BASE.to_dict(), "partitions": "4"},
                                 {**BASE.to_dict(), "topic": 7}, {**BASE.to_dict(), "bucket_s": True}])
def test_a_damaged_fingerprint_is_a_value_error(bad) -> None:
    with pytest.raises(ValueError):
        Fingerprint.from_dict(bad)


def test_snapshots_merge_to_the_largest_partition_count() -> None:
    assert merge_recorded([]) is None
    assert merge_recorded([BASE, replace(BASE, partitions=6)]).partitions == 6


@pytest.mark.parametrize("argv, env, want", [
    (["dataflow", "-r", "rec"], {}, "rec"),
    (["dataflow", "-rrec"], {}, "rec"),
    (["dataflow", "--recovery-directory", "rec"], {}, "rec"),
    (["dataflow", "--recovery-directory=rec"], {}, "rec"),
    (["dataflow", "--recovery-dir", "rec"], {}, "rec"),
    (["dataflow", "-w", "2"], {"BYTEWAX_RECOVERY_DIRECTORY": "env"}, "env"),
    (["dataflow", "-r", "rec"], {"BYTEWAX_RECOVERY_DIRECTORY": "env"}, "rec"),
    (["dataflow", "-w", "2", "-s", "5"], {}, None),
])
def test_the_recovery_directory_is_read_as_bytewax_reads_it(argv, env, want) -> None:
    got = recovery_directory(argv, env)
    assert (str(got) if got else None) == want


# ---------------------------------------------------------------- the recovery directory


def write_snapshot(part: Path, key: str, state, epoch: int = 1, step: str = SOURCE_STEP) -> None:
    con = sqlite3.connect(part)
    blob = state if isinstance(state, bytes) else pickle.dumps(state)
    con.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) VALUES (?,?,?,?)",
                (step, key, epoch, blob))
    con.commit()
    con.close()


def source_state(fp: Fingerprint | None, offset: int = 10) -> dict:
    state = {"next_offset": offset, "max_event": 1.0, "valid": 1, "invalid": 0, "too_late": 0,
             "gaps": []}
    if fp is not None:
        state.update(fingerprint=fp.to_dict(), format=fp.format)
    return state


def test_recovery_state_is_compared_per_partition(tmp_path) -> None:
    rec = tmp_path / "rec"
    init_dir(rec, 2)
    write_snapshot(rec / "part-0.sqlite3", "0", source_state(BASE), epoch=1)
    write_snapshot(rec / "part-0.sqlite3", "0", source_state(replace(BASE, window_s=60)), epoch=2)
    write_snapshot(rec / "part-1.sqlite3", "1", source_state(BASE), epoch=2)
    state = read_dir(rec)
    assert state.source_states()["0"].epoch == 2  # the latest snapshot
    found, recorded, bare = recovery_differences(state, BASE)
    assert [d.field for d in found] == ["window_s"] and bare == []
    # Partition 1 still has the 5-minute state: no window matches both.
    found, _, _ = recovery_differences(state, replace(BASE, window_s=60))
    assert [d.text for d in found] == [
        "window 5 min recorded, 1 min now (PRESENCE_WINDOW_MINUTES)"]


def test_old_state_without_a_fingerprint_is_adopted_but_its_partitions_count(tmp_path) -> None:
    rec = tmp_path / "rec"
    init_dir(rec, 1)
    for key in "0123":
        write_snapshot(rec / "part-0.sqlite3", key, source_state(None))
    found, recorded, bare = recovery_differences(read_dir(rec), BASE)
    assert found == [] and recorded is None and bare == ["0", "1", "2", "3"]
    found, _, _ = recovery_differences(read_dir(rec), replace(BASE, partitions=2))
    assert [d.field for d in found] == ["partitions"]


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.write_bytes(b"this is not a database, just garbage " * 200), "not a Bytewax recovery partition"),
    (lambda p: p.write_bytes(b""), "no table 'parts'"),
    (lambda p: write_snapshot(p, "0", b"\x80\x04garbage"), "cannot be read"),
    (lambda p: write_snapshot(p, "0", pickle.dumps(Path("/etc/passwd"))), "cannot be read"),
    (lambda p: write_snapshot(p, "0", {"fingerprint": {"topic": 1}}), "damaged fingerprint"),
])
def test_a_damaged_recovery_file_is_one_line(tmp_path, damage, words) -> None:
    rec = tmp_path / "rec"
    init_dir(rec, 2)
    damage(rec / "part-0.sqlite3")
    with pytest.raises(RecoveryDirError) as err:
        recovery_differences(read_dir(rec), BASE)
    message = str(err.value)
    assert words in message and "\n" not in message
    assert f"presence recovery reset {rec}" in message


def test_a_missing_or_empty_directory_says_what_to_run(tmp_path) -> None:
    for path in (tmp_path / "missing", tmp_path):
        with pytest.raises(RecoveryDirError, match=f"presence recovery init {path}"):
            read_dir(path)


def test_an_incomplete_set_is_one_line(tmp_path) -> None:
    rec = tmp_path / "rec"
    init_dir(rec, 3)
    (rec / "part-1.sqlite3").unlink()
    with pytest.raises(RecoveryDirError, match="lacks partition"):
        read_dir(rec)


def test_reset_deletes_only_partition_files_and_makes_fresh_ones(tmp_path) -> None:
    rec = tmp_path / "rec"
    init_dir(rec, 3)
    write_snapshot(rec / "part-0.sqlite3", "0", source_state(BASE))
    (rec / "notes.txt").write_text("mine")
    removed, count = reset_dir(rec)
    assert len(removed) == 3 and count == 3
    assert (rec / "notes.txt").read_text() == "mine"
    assert read_dir(rec).empty
    # A damaged directory can be reset too (that is what the refusals advise).
    (rec / "part-0.sqlite3").write_bytes(b"garbage" * 100)
    assert reset_dir(rec, 2)[1] == 2 and read_dir(rec).part_count == 2


# ---------------------------------------------------------------- presence recovery


def test_recovery_init_twice_is_fine_and_bytewax_init_twice_is_not(tmp_path) -> None:
    rec = tmp_path / "new" / "rec"
    runner = CliRunner()
    first = runner.invoke(cli, ["recovery", "init", str(rec)])
    assert first.exit_code == 0, first.output
    assert "4 recovery partitions made" in first.output
    second = runner.invoke(cli, ["recovery", "init", str(rec)])
    assert second.exit_code == 0, second.output
    assert "initialised already (4 recovery partitions); nothing changed" in second.output
    assert len(list(rec.glob("*.sqlite3"))) == 4
    # The trap the command removes: bytewax's own init on an initialised directory.
    bytewax = subprocess.run([sys.executable, "-m", "bytewax.recovery", str(rec), "4"],
                             capture_output=True, text=True)
    assert bytewax.returncode != 0 and "UNIQUE constraint failed" in bytewax.stderr
    other = runner.invoke(cli, ["recovery", "init", str(rec), "--partitions", "2"])
    assert other.exit_code == 2
    assert f"presence recovery reset {rec} --partitions 2" in other.output


def test_recovery_show_and_reset(tmp_path) -> None:
    rec = tmp_path / "rec"
    runner = CliRunner()
    assert runner.invoke(cli, ["recovery", "init", str(rec), "--partitions", "2"]).exit_code == 0
    shown = runner.invoke(cli, ["recovery", "show", str(rec)])
    assert shown.exit_code == 0 and "2 recovery partitions" in shown.output
    assert "state: none yet" in shown.output
    write_snapshot(rec / "part-1.sqlite3", "0", source_state(BASE, offset=42), epoch=7)
    shown = runner.invoke(cli, ["recovery", "show", str(rec)])
    assert "latest snapshot epoch 7" in shown.output
    assert "made for: topic 'pings'" in shown.output
    assert "Kafka partition 0: next offset 42 (epoch 7)" in shown.output
    reset = runner.invoke(cli, ["recovery", "reset", str(rec)])
    assert reset.exit_code == 0, reset.output
    assert "2 recovery partition file(s) deleted, 2 fresh partitions made" in reset.output
    assert "state: none yet" in runner.invoke(cli, ["recovery", "show", str(rec)]).output


def test_recovery_show_of_a_damaged_directory_is_one_line_exit_2(tmp_path) -> None:
    rec = tmp_path / "rec"
    init_dir(rec, 1)
    (rec / "part-0.sqlite3").write_bytes(b"garbage" * 100)
    result = subprocess.run([sys.executable, "-m", "presence.tools.cli", "recovery", "show", str(rec)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("presence: recovery file ")


def test_the_source_step_read_at_start_up_is_the_flows() -> None:
    from bytewax.testing import TestingSink, TestingSource

    from presence.flow import Sinks, build_flow
    from presence.core.windows import WindowSpec

    sink = TestingSink([])
    flow = build_flow(WindowSpec(), TestingSource([]), Sinks(sink, sink, sink))
    assert flow.substeps[0].step_id == SOURCE_STEP


def test_one_process_of_a_cluster_may_hold_some_partitions_or_none(tmp_path) -> None:
    from presence.binding import read_recovery
    from presence.cluster import cluster_run

    rec = tmp_path / "rec"
    init_dir(rec, 3)
    (rec / "part-2.sqlite3").unlink()
    assert cluster_run(["dataflow", "-i", "0", "-a", "h0:2101;h1:2101"], {})
    assert cluster_run(["dataflow", "--addresses=h0:2101;h1:2101"], {})
    assert not cluster_run(["dataflow", "-a", "h0:2101"], {})
    assert not cluster_run(["dataflow", "-w", "2"], {})
    assert [p.part_index for p in read_recovery(rec, complete=False).parts] == [0, 1]
    with pytest.raises(RecoveryDirError, match="lacks partition"):
        read_recovery(rec, complete=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert read_recovery(empty, complete=False).parts == []
    with pytest.raises(RecoveryDirError, match="does not exist"):
        read_recovery(tmp_path / "missing", complete=False)
