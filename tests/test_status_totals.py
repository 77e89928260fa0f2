"""The pipeline_status documents written from the totals (no server needed)."""

from __future__ import annotations

from datetime import datetime, timezone

from presence.io.mongo import status_updates
from presence.core.model import PartitionMark, Totals

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)


def test_totals_document_carries_late_rewrites_and_dead_letters_by_reason() -> None:
    mark = PartitionMark("t", 0, 1, 1_514_779_200.0, 0.0, "live", 10, 7, 2, 1, (), 3,
                         (("invalid_json", 2),))
    totals = Totals(valid=7, invalid=2, late=3, too_late=1, watermark=1_514_779_170.0,
                    not_counted=0, rows_written=9, row_rewrites=4, dead_letters=3,
                    dead_letters_by_reason=(("invalid_json", 2), ("too_late", 1)))
    partition, doc = status_updates([mark], totals, NOW)
    fields = doc._doc["$max"]
    assert fields["late"] == fields["correctedLate"] == 3  # correctedLate: the former name
    assert (fields["rowsWritten"], fields["rowRewrites"]) == (9, 4)
    assert fields["deadLetters"] == 3
    # One field per reason, each through $max (a replayed older status never lowers one).
    assert fields["deadLettersByReason.invalid_json"] == 2
    assert fields["deadLettersByReason.too_late"] == 1
    assert "deadLettersByReason" not in fields
    assert partition._doc["$max"]["late"] == 3
