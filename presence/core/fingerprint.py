"""What a dataflow's state and output are bound to (SPEC "Guarantees: Bound to its input").

A :class:`Fingerprint` names the input and the settings that shape the
state: the topic and the broker's id of it (a deleted and recreated topic
has the same name and another id), its partition count, the bucket and
window, the segments, the shard count and the format of the state. It is
recorded in every source partition's recovery snapshot (keys
``"fingerprint"`` and ``"format"``) and in the database (collection
``fingerprint``), and compared at start-up: :func:`differences` says what
differs, :func:`refusal` turns that into the one line that stops start-up.

Pure: no I/O (reading the recovery directory is :mod:`presence.io.recovery`,
Kafka and MongoDB :mod:`presence.binding`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

STATE_FORMAT = 2
"""The layout of the recovery state (1: before snapshots carried ``format``).
Raise it when a snapshot's shape changes incompatibly: state of another
format is refused, not misread."""

FORMER_NAMES = {"bucket": "bucket_s", "window": "window_s"}
"""Fields as snapshots written before durations carried their unit name them."""

NO_TOPIC_ID = ""
"""The topic id when the broker gives none (Kafka before 2.8, some services)."""


@dataclass(frozen=True)
class Fingerprint:
    topic: str
    topic_id: str
    """The broker's id of the topic (a UUID as text), or ``""`` if it gives none."""
    partitions: int
    bucket_s: int
    """The bucket length (PRESENCE_BUCKET_SECONDS)."""
    window_s: int
    """The window length (PRESENCE_WINDOW_MINUTES * 60)."""
    segments: str
    """PRESENCE_SEGMENTS as given (``""``: none)."""
    shards: int
    format: int = STATE_FORMAT

    def to_dict(self) -> dict[str, Any]:
        """The shape kept in recovery snapshots (plain values only)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Fingerprint":
        """Raise ``ValueError`` if ``data`` is not a fingerprint.

        Also reads the names snapshots of earlier versions used
        (:data:`FORMER_NAMES`).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a fingerprint is a dict, not {type(data).__name__}")
        data = {FORMER_NAMES.get(k, k): v for k, v in data.items()}
        values = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name == "format":
                    continue
                raise ValueError(f"fingerprint without {f.name!r}")
            value = data[f.name]
            want = str if f.type == "str" else int
            if type(value) is not want:
                raise ValueError(f"fingerprint field {f.name!r} is {value!r}")
            values[f.name] = value
        return cls(**values)

    def to_doc(self) -> dict[str, Any]:
        """The shape kept in MongoDB (camelCase, as the other documents)."""
        return {
            "topic": self.topic,
            "topicId": self.topic_id,
            "partitions": self.partitions,
            "bucketSeconds": self.bucket_s,
            "windowSeconds": self.window_s,
            "segments": self.segments,
            "shards": self.shards,
            "format": self.format,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> "Fingerprint":
        return cls.from_dict({
            "topic": doc.get("topic"),
            "topic_id": doc.get("topicId"),
            "partitions": doc.get("partitions"),
            "bucket_s": doc.get("bucketSeconds"),
            "window_s": doc.get("windowSeconds"),
            "segments": doc.get("segments"),
            "shards": doc.get("shards"),
            "format": doc.get("format"),
        })

    def describe(self) -> str:
        """One phrase for logs and ``presence recovery show``."""
        topic_id = f" (id {self.topic_id})" if self.topic_id else ""
        segments = self.segments or "none"
        return (
            f"topic {self.topic!r}{topic_id}, {self.partitions} partitions, "
            f"bucket {self.bucket_s} s, window {_duration(self.window_s)}, segments {segments}, "
            f"{self.shards} shards, state format {self.format}"
        )


def _duration(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


def _none(segments: str) -> str:
    return segments or "none"


_SETTINGS = (
    ("format", "state format {} recorded, {} now (written by another version of presence)", str),
    ("bucket_s", "bucket {} s recorded, {} s now (PRESENCE_BUCKET_SECONDS)", str),
    ("window_s", "window {} recorded, {} now (PRESENCE_WINDOW_MINUTES)", _duration),
    ("segments", "segments {!r} recorded, {!r} now (PRESENCE_SEGMENTS)", _none),
    ("shards", "{} shards recorded, {} now (presence.core.windows.SHARDS: another version of "
               "presence)", str),
)
"""The fields compared one by one after the topic: (field, the phrase of a difference
with the recorded value and the current one, how a value is said)."""


@dataclass(frozen=True)
class Difference:
    """One way the recorded fingerprint and the current one disagree."""

    field: str
    text: str
    """A phrase naming what differs, the values and the setting behind it."""


def differences(recorded: Fingerprint, current: Fingerprint) -> list[Difference]:
    """What stops ``current`` from going on with state or rows made under ``recorded``.

    Empty when they match. More partitions now than recorded is fine (a
    topic may grow; a new partition starts at its earliest offset); fewer is
    not (a topic cannot shrink: it was recreated). A missing topic id on
    either side (a broker that gives none) is not compared. When the topic
    name differs, that alone is said (its id differs too, of course).
    """
    out: list[Difference] = []
    if recorded.topic != current.topic:
        out.append(Difference(
            "topic",
            f"topic {recorded.topic!r} recorded, {current.topic!r} now (PRESENCE_TOPIC)",
        ))
    elif recorded.topic_id and current.topic_id and recorded.topic_id != current.topic_id:
        out.append(Difference(
            "topic_id",
            f"topic {current.topic!r} was deleted and created again (topic id "
            f"{recorded.topic_id} recorded, {current.topic_id} now)",
        ))
    elif current.partitions < recorded.partitions:
        out.append(Difference(
            "partitions",
            f"topic {current.topic!r} has {current.partitions} partitions, "
            f"{recorded.partitions} recorded (a topic cannot lose partitions: was it recreated?)",
        ))
    for name, template, show in _SETTINGS:
        was, now = getattr(recorded, name), getattr(current, name)
        if was != now:
            out.append(Difference(name, template.format(show(was), show(now))))
    return out


def merge_recorded(fingerprints: list[Fingerprint]) -> Fingerprint | None:
    """One recorded fingerprint from several (one per source partition snapshot).

    Snapshots of one dataflow agree except in the partition count, which may
    have grown between runs: the largest is kept. Disagreeing snapshots (state
    mixed by an older presence) come back as the first one; :func:`differences`
    against each still catches any mismatch.
    """
    if not fingerprints:
        return None
    first = fingerprints[0]
    most = max(f.partitions for f in fingerprints)
    return Fingerprint(**{**first.to_dict(), "partitions": most})


def refusal(where: str, found: list[Difference], afresh: str, keep: str = "") -> str:
    """The one line that stops start-up.

    ``where`` names what holds the recorded fingerprint ("recovery directory
    recovery/"), ``afresh`` how to start afresh, ``keep`` (optional) how to
    go on with what is recorded instead.
    """
    line = f"{where} was made for another input or settings: " + "; ".join(d.text for d in found)
    line += f". To start afresh: {afresh}"
    if keep:
        line += f"; to go on with it: {keep}"
    return line + "."


def how_to_keep(recorded: Fingerprint, found: list[Difference]) -> str:
    """The settings that would match ``recorded`` again, when settings alone can."""
    settings = []
    for d in found:
        if d.field == "topic":
            settings.append(f"PRESENCE_TOPIC={recorded.topic}")
        elif d.field == "bucket_s":
            settings.append(f"PRESENCE_BUCKET_SECONDS={recorded.bucket_s}")
        elif d.field == "window_s":
            if recorded.window_s % 60:
                return ""
            settings.append(f"PRESENCE_WINDOW_MINUTES={recorded.window_s // 60}")
        elif d.field == "segments":
            settings.append(f"PRESENCE_SEGMENTS={recorded.segments}")
        else:
            return ""  # a recreated topic, shards or format: no setting brings it back
    return "set " + " ".join(settings) if settings else ""
