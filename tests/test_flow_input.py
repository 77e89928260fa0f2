"""The real bytewax flow: hostile messages never stop it, and every ping total is
the same whatever the workers, processes, batching or crashes (SPEC "Input",
``pipeline_status``)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from presence.io.memory import ABORT, MemoryTopic
from presence.core.model import Totals
from presence.core.windows import WindowSpec
from tests.constants import oracle_rules
from tests.flow_helpers import Outputs, init_recovery, memory_topic, run_flow
from tests.flow_procs import SPEC as PROCS_SPEC
from tests.flow_procs import run_processes
from tests.oracle import P, late_pings, oracle
from tests.streams import T0, stream

SPEC = WindowSpec(bucket_s=60, window_s=300, lateness_s=30, horizon_s=1800, idle_s=10)
PING = b'{"driver_id":7,"timestamp":%d,"on_duty":1' % (T0 + 100)

# One message of each class: (value, the reason of its dead letter, or the valid ping it is).
HOSTILE: list[tuple[bytes | None, object]] = [
    (None, "invalid_json"),                                             # tombstone
    (b"", "invalid_json"),
    (b"\x00\x01\xfe\xff binary", "invalid_json"),
    (b'{"driver_id":"\xed\xa0\x80","timestamp":1514779300,"on_duty":1}', "invalid_json"),
    (b'{"driver_id":"\\ud800","timestamp":1514779300,"on_duty":1}', "invalid_json"),
    (PING + b',"x":' + b"[" * 1000 + b"]" * 1000 + b"}", "invalid_json"),  # stopped the flow
    (b'{"driver_id":7,"timestamp":1514779300,"on_duty":' + b"[" * 255 + b"]" * 255 + b"}",
     "invalid_json"),
    (b"[" * 30_000, "invalid_json"),
    (b'{"driver_id":7,"timestamp":1e400,"on_duty":1}', "invalid_field"),
    (b'{"driver_id":7,"timestamp":NaN,"on_duty":1}', "invalid_json"),
    (b'{"driver_id":7,"timestamp":' + b"9" * 5000 + b',"on_duty":1}', "invalid_field"),
    (b'{"driver_id":-' + b"9" * 5000 + b',"timestamp":1514779300,"on_duty":1}', "invalid_field"),
    (b'{"driver_id":7,"timestamp":1514779300,"on_duty":1,"pad":"' + b"x" * 70_000 + b'"}',
     "too_large"),
    (b'{"driver_id":7,"timestamp":1514779300}', "missing_field"),
    (b'{"driver_id":7,"timestamp":4102444800,"on_duty":1}', "future_timestamp"),
    (b'\xef\xbb\xbf{"driver_id":7,"timestamp":1514779300,"on_duty":1}', "invalid_json"),
    (b'{"driver_id":[1],"timestamp":1514779300,"on_duty":1}', "invalid_field"),
    (b'{"driver_id":7,"timestamp":"2018-13-01","on_duty":1}', "invalid_field"),
    # valid, however odd:
    (b'{"driver_id":1180591620717411303424,"timestamp":1514779310,"on_duty":1}',
     P("1180591620717411303424", 1514779310, True)),
    (b'{"driver_id":1,"driver_id":"dup","timestamp":1514779320,"on_duty":0}',
     P("dup", 1514779320, False)),
    (PING + b',"x":1e400,"y":' + b"[" * 63 + b"]" * 63 + b"}", P(7, T0 + 100, True)),  # 64 deep
    (b'{"driver_id":"caf\xc3\xa9","timestamp":"2018-01-01T04:02:00Z","on_duty":true}',
     P("caf\u00e9", T0 + 120, True)),
]


def hostile_topic() -> tuple[MemoryTopic, list[list[object]], dict[str, str]]:
    """Two partitions of valid pings with the hostile messages spread among them."""
    partitions = stream(31, partitions=2, per_partition=120)
    topic = MemoryTopic("pings", 2)
    view: list[list[object]] = [[], []]
    expected: dict[str, str] = {}
    for p, messages in enumerate(partitions):
        for i, m in enumerate(messages):
            topic.append(p, m.value() if isinstance(m, P) else m)
            view[p].append(m)
            if i % 5 == 2:  # a hostile message after every fifth one
                value, outcome = HOSTILE[(i // 5 + p) % len(HOSTILE)]
                topic.append(p, value)
                view[p].append(outcome if isinstance(outcome, P) else b"hostile")
                if not isinstance(outcome, P):
                    expected[f"pings:{p}:{len(view[p]) - 1}"] = outcome
    return topic, view, expected


def check_exact(out: Outputs, view, expected_reasons: dict[str, str]) -> None:
    rows, too_late, invalid = oracle(view, *oracle_rules(SPEC))
    assert out.final_rows() == rows
    dead = out.dead_ids()
    assert {k for k, r in dead.items() if r == "too_late"} == {f"pings:{p}:{o}" for p, o in too_late}
    hostile = {k: r for k, r in dead.items() if r != "too_late"}
    assert {f"pings:{p}:{o}" for p, o in invalid} == set(hostile)
    for key, reason in expected_reasons.items():
        assert hostile[key] == reason, key


def test_no_message_stops_the_flow_and_the_rows_are_exact(tmp_path) -> None:
    topic, view, reasons = hostile_topic()
    assert len(reasons) >= len([h for h in HOSTILE if not isinstance(h[1], P)])
    assert len({r for r in reasons.values()}) == 6 - 1  # every reason but too_late (the stream's)
    recovery = init_recovery(tmp_path / "recovery")
    out = run_flow(topic, SPEC, recovery=recovery, epoch=timedelta(0))
    check_exact(out, view, reasons)
    marks, totals = out.status[-1]
    assert sorted(m.next_offset for m in marks) == sorted(len(p) for p in view)
    # A restart over the same state: nothing read again, nothing changes.
    again = run_flow(topic, SPEC, recovery=recovery, epoch=timedelta(0))
    assert again.dead == [] and again.status[-1][1] == totals
    assert all(out.final_rows()[r.bucket] == (r.online, r.available) for r in again.rows)


def test_a_crash_among_hostile_messages_resumes_exactly(tmp_path) -> None:
    topic, view, reasons = hostile_topic()
    middle = len(topic.partitions[1]) // 2
    topic.partitions[1].insert(middle, ABORT())
    view[1].insert(middle, b"abort marker")  # the abort takes an offset
    shifted = {}
    for key, reason in reasons.items():
        _, p, o = key.split(":")
        o = int(o) + (1 if p == "1" and int(o) >= middle else 0)
        shifted[f"pings:{p}:{o}"] = reason
    recovery = init_recovery(tmp_path / "recovery")
    out = Outputs()
    run_flow(topic, SPEC, out, recovery=recovery, epoch=timedelta(0))
    resumed = run_flow(topic, SPEC, Outputs(), recovery=recovery, epoch=timedelta(0))
    out.rows += resumed.rows
    out.dead += resumed.dead
    rows, _, _ = oracle(view, *oracle_rules(SPEC))
    assert out.final_rows() == rows
    dead = out.dead_ids()
    assert all(dead[k] == r for k, r in shifted.items())


# --- totals: deterministic -----------------------------------------------------------------

def ping_totals(totals: Totals) -> tuple:
    return (totals.valid, totals.invalid, totals.late, totals.too_late, totals.dead_letters,
            totals.dead_letters_by_reason, totals.not_counted)


def test_totals_are_the_same_whatever_workers_processes_batching_and_crashes(tmp_path) -> None:
    """Issue 14.5: correctedLate was 19,689 with 1 worker and 7,991 with -p 2 for the same
    data (it counted pings that reached a shard after its row had closed)."""
    seed = 21
    partitions = stream(seed)
    assert PROCS_SPEC == SPEC
    runs = {
        "1 worker": run_flow(memory_topic(partitions), SPEC, batch_size=7),
        "1 worker, batches of 500": run_flow(memory_topic(partitions), SPEC, batch_size=500),
        "2 workers": run_flow(memory_topic(partitions), SPEC, workers=2, batch_size=3),
        "3 workers": run_flow(memory_topic(partitions), SPEC, workers=3, batch_size=50),
        "2 processes": run_processes(seed, tmp_path / "procs", processes=2, batch_size=7),
    }
    crashed = memory_topic(partitions)
    crashed.partitions[1].insert(len(crashed.partitions[1]) // 2, ABORT())  # no message
    recovery = init_recovery(tmp_path / "recovery")
    first = run_flow(crashed, SPEC, recovery=recovery, epoch=timedelta(0), batch_size=11)
    resumed = run_flow(crashed, SPEC, recovery=recovery, epoch=timedelta(0), batch_size=11)
    runs["crash and resume"] = Outputs(first.rows + resumed.rows, first.dead + resumed.dead,
                                       resumed.status)

    rows, too_late, invalid = oracle(partitions, *oracle_rules(SPEC))
    late = late_pings(partitions, SPEC.lateness_s, SPEC.horizon_s)
    valid = sum(isinstance(m, P) for p in partitions for m in p) - len(too_late)
    by_run = {name: ping_totals(out.status[-1][1]) for name, out in runs.items()}
    expected = by_run["1 worker"]
    assert expected[:5] == (valid, len(invalid), len(late), len(too_late),
                            len(invalid) + len(too_late))
    assert len(late) > 50 and too_late and invalid
    assert by_run == {name: expected for name in by_run}
    for name, out in runs.items():
        assert out.final_rows() == rows, name
    # Writes may differ with batching; they are counted apart.
    totals = runs["1 worker"].status[-1][1]
    assert totals.rows_written >= len(rows) and totals.row_rewrites == totals.rows_written - len(
        {r.bucket for r in runs["1 worker"].rows})


@pytest.mark.parametrize("workers", [1, 2])
def test_status_carries_late_and_dead_letters_by_reason(workers: int) -> None:
    topic, view, reasons = hostile_topic()
    out = run_flow(topic, SPEC, workers=workers)
    _, totals = out.status[-1]
    counted: dict[str, int] = {}
    for letter in out.dead:
        counted[letter.reason] = counted.get(letter.reason, 0) + 1
    assert dict(totals.dead_letters_by_reason) == counted
    assert totals.dead_letters == len(out.dead) == sum(counted.values())
    assert totals.late == totals.corrected_late == len(late_pings(view, SPEC.lateness_s, SPEC.horizon_s))
