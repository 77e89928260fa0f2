"""Smoke test of the segment state measurement (bench/segment_state.py) at a tiny scale."""

from __future__ import annotations

import json
import sys

from bench import segment_state


def test_segment_state_runs_and_reports_sizes(tmp_path, monkeypatch) -> None:
    out = tmp_path / "figures.json"
    monkeypatch.setattr(sys, "argv", ["segment_state", "--drivers", "640", "--panes", "7",
                                      "--compare-grouped", "--json", str(out)])
    segment_state.main()
    figures = json.loads(out.read_text())
    assert figures["shard_drivers"] > 0 and figures["triples"] > 0
    assert 0 < figures["snapshot_bytes_per_triple"] <= 16
    sizes = figures["alternatives_bytes_per_triple"]
    assert sizes["chosen_hybrid"] <= min(v for k, v in sizes.items() if k != "chosen_hybrid")
    assert set(figures["per_definition"]) == {"city", "city,vehicle_type", "h3:8"}
