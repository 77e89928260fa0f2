"""The recovery state of one source partition, as data.

What the input step (:class:`presence.io.source.PingPartition`) keeps in
Bytewax's recovery snapshot of one Kafka partition: the offset to read
next, the :class:`~presence.core.fingerprint.Fingerprint` the state was
made for, and the partition reader's own state (its watermark, counters,
rejections and the offsets lost to retention), with the state format.

>>> state = SourceState.restore({"next_offset": 40, "max_event": 1514779260.0, "valid": 3})
>>> state.format, state.next_offset, state.fingerprint, state.reader["valid"]
(1, 40, None, 3)
>>> state.reader_resume()["next_offset"]
40

:meth:`SourceState.restore` also reads what earlier versions of presence
kept: a plain dict, without ``"format"`` and ``"fingerprint"`` (format 1)
or with them (format 2, before the state was a dataclass). The Python type
says the shape; ``format`` (:data:`~presence.core.fingerprint.STATE_FORMAT`)
says whether the whole dataflow's state is compatible, and is compared at
start-up with the fingerprint.

Pure: no I/O, no Bytewax.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from presence.core.fingerprint import STATE_FORMAT, Fingerprint

FIRST_FORMAT = 1
"""The format of a snapshot that names none (written before fingerprints existed)."""

_OWN_KEYS = ("format", "fingerprint", "next_offset")
"""Keys of the reader's snapshot dict that are fields here; the rest is the reader's."""


@dataclass(frozen=True)
class SourceState:
    """One source partition's snapshot."""

    next_offset: int | None
    """The offset to read next; ``None``: nothing read yet (start at the oldest retained)."""
    fingerprint: dict[str, Any] | None = None
    """:meth:`Fingerprint.to_dict` of what the state was made for; ``None`` in format 1."""
    reader: dict[str, Any] = field(default_factory=dict)
    """The rest of :meth:`presence.core.partition.PartitionReader.snapshot`: the
    latest event time (``max_event``), counters, rejections, gaps (plain values)."""
    format: int = STATE_FORMAT

    @classmethod
    def of_reader(cls, snapshot: Mapping[str, Any]) -> "SourceState":
        """The state of a reader from its :meth:`PartitionReader.snapshot` dict."""
        rest = {k: v for k, v in snapshot.items() if k not in _OWN_KEYS}
        return cls(
            next_offset=snapshot.get("next_offset"),
            fingerprint=snapshot.get("fingerprint"),
            reader=rest,
            format=snapshot.get("format", FIRST_FORMAT),
        )

    @classmethod
    def restore(cls, saved: object) -> "SourceState | None":
        """The state from what a snapshot held: this class, an older dict, or ``None``.

        Raises ``ValueError`` for anything else (one phrase saying what it is).
        """
        if saved is None or isinstance(saved, cls):
            return saved
        if not isinstance(saved, Mapping):
            raise ValueError(f"a source snapshot is a {type(saved).__name__}, not presence's")
        state = cls.of_reader(saved)
        if type(state.format) is not int:
            raise ValueError(f"a source snapshot of format {state.format!r}")
        offset = state.next_offset
        if offset is not None and (type(offset) is not int or offset < 0):
            raise ValueError(f"a source snapshot with next offset {offset!r}")
        if state.fingerprint is not None and not isinstance(state.fingerprint, Mapping):
            raise ValueError(f"a source snapshot with fingerprint {state.fingerprint!r}")
        return state

    def reader_resume(self) -> dict[str, Any]:
        """The ``resume`` dict :class:`~presence.core.partition.PartitionReader` takes."""
        out = dict(self.reader)
        out["next_offset"] = self.next_offset
        out["format"] = self.format
        if self.fingerprint is not None:
            out["fingerprint"] = dict(self.fingerprint)
        return out

    def recorded(self) -> Fingerprint | None:
        """The fingerprint the state was made for (``None`` before format 2).

        Its ``format`` is the state's. Raises ``ValueError`` for a damaged one.
        """
        if self.fingerprint is None:
            return None
        fingerprint = Fingerprint.from_dict(self.fingerprint)
        if fingerprint.format != self.format:
            fingerprint = replace(fingerprint, format=self.format)
        return fingerprint
