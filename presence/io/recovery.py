"""The recovery directory, read directly: what ``presence recovery`` and start-up see.

Bytewax 0.21 keeps a dataflow's state in a directory of SQLite files, its
*partitions* (``part-N.sqlite3``, made by ``bytewax.recovery.init_db_dir``;
every ``*.sqlite3`` file of the directory is opened as one). Each has the
tables of bytewax's ``src/recovery.rs``:

- ``parts(part_index, part_count)``: which partition this file is;
- ``exs(ex_num, worker_count, resume_epoch)`` and
  ``fronts(ex_num, worker_index, worker_frontier)``: executions and progress,
  from which the epoch a run resumes from is computed;
- ``snaps(step_id, state_key, snap_epoch, ser_change)``: state snapshots,
  pickled (``NULL`` when the key was discarded);
- ``commits(part_index, commit_epoch)``.

:func:`read_part` reads one file and :func:`read_dir` a directory, raising
:class:`RecoveryDirError` (one line) for anything bytewax would die on with a
panic or a traceback: no directory, no partitions, a file that is not SQLite,
another schema, an unreadable snapshot, an incomplete set. Only the snapshots
of the source step (``presence.pings``: one small
:class:`~presence.core.source_state.SourceState` per Kafka partition, holding
its offset and the fingerprint; a plain dict from older versions) are
unpickled, with an unpickler that admits plain values and that class only.

:func:`init_dir` and :func:`reset_dir` make and empty a directory.
"""

from __future__ import annotations

import io
import pickle
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presence.core.source_state import SourceState

SOURCE_STEP = "presence.pings"
"""The step id of the Kafka source (flow ``presence``, step ``pings``)."""

DEFAULT_PARTITIONS = 4
"""Recovery partitions made by ``presence recovery init`` unless told."""

PART_SUFFIX = ".sqlite3"
COMPANIONS = ("-wal", "-shm", "-journal")
"""SQLite's own files next to a database, deleted with it."""

SCHEMA = {
    "parts": {"part_index", "part_count"},
    "exs": {"ex_num", "worker_count", "resume_epoch"},
    "fronts": {"ex_num", "worker_index", "worker_frontier"},
    "commits": {"part_index", "commit_epoch"},
    "snaps": {"step_id", "state_key", "snap_epoch", "ser_change"},
}


class RecoveryDirError(ValueError):
    """The recovery directory cannot be used; the message is one line saying what to run."""


@dataclass(frozen=True)
class Snapshot:
    """The latest snapshot of one key of the source step in one file."""

    epoch: int
    state: SourceState | None
    """The unpickled state (restored from an older shape); ``None`` if the key was discarded."""


@dataclass
class PartFile:
    """What one recovery partition file holds (per file, so a process that
    has only some of the files can still use what it has)."""

    path: Path
    part_index: int
    part_count: int
    executions: list[tuple[int, int, int]] = field(default_factory=list)
    """``(ex_num, worker_count, resume_epoch)`` rows of ``exs``."""
    frontiers: list[tuple[int, int, int]] = field(default_factory=list)
    """``(ex_num, worker_index, worker_frontier)`` rows of ``fronts``."""
    latest_epoch: int | None = None
    """Greatest snapshot epoch of any step in this file (``None``: no snapshot yet)."""
    source: dict[str, list[Snapshot]] = field(default_factory=dict)
    """Every snapshot of the source step in this file, per state key, oldest first."""


@dataclass
class RecoveryDir:
    path: Path
    parts: list[PartFile]

    @property
    def part_count(self) -> int:
        return self.parts[0].part_count if self.parts else 0

    @property
    def empty(self) -> bool:
        """Initialised, but no run has snapshotted anything yet."""
        return all(p.latest_epoch is None for p in self.parts)

    def resume_epoch(self) -> int | None:
        """The epoch a run resumes from, computed as bytewax does; ``None`` before any run."""
        executions = [e for p in self.parts for e in p.executions]
        if not executions:
            return None
        ex_num, workers, resume = max(executions)
        frontier = {w: resume for w in range(workers)}
        for p in self.parts:
            for ex, worker, front in p.frontiers:
                if ex == ex_num and front > frontier.get(worker, front - 1):
                    frontier[worker] = front
        return min(frontier.values())

    def source_states(self) -> dict[str, Snapshot]:
        """Per Kafka partition key (``"0"``, ``"1"``...), the snapshot a run resumes from.

        The latest before the resume epoch, as bytewax loads it; if none is
        before it (or no resume epoch is known), the latest there is.
        """
        before = self.resume_epoch()
        out: dict[str, Snapshot] = {}
        candidates: dict[str, list[Snapshot]] = {}
        for p in self.parts:
            for key, snaps in p.source.items():
                candidates.setdefault(key, []).extend(snaps)
        for key, snaps in candidates.items():
            usable = [s for s in snaps if before is None or s.epoch < before] or snaps
            out[key] = max(usable, key=lambda s: s.epoch)
        return out


def _afresh(directory: Path) -> str:
    return f"`presence recovery reset {directory}` starts afresh (from the beginning of the topic)"


class _PlainUnpickler(pickle.Unpickler):
    """Plain values (dicts, lists, tuples, text, numbers) and :class:`SourceState`
    only: a snapshot of the source step has nothing else, and a planted class never runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == (SourceState.__module__, SourceState.__qualname__):
            return SourceState
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def _unpickle(data: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(data)).load()


def _connect(path: Path) -> sqlite3.Connection:
    # Never creates a file (mode=rw); only reads. Not mode=ro: a read-only
    # connection cannot open a WAL database whose -shm file is missing.
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=10)


def read_part(path: Path, step_id: str = SOURCE_STEP) -> PartFile:
    """One recovery partition file; :class:`RecoveryDirError` if it is not one."""
    path = Path(path)
    directory = path.parent
    what = f"recovery file {path}"
    try:
        con = _connect(path)
    except sqlite3.Error as exc:
        raise RecoveryDirError(f"{what} cannot be opened ({exc}); {_afresh(directory)}") from None
    try:
        try:
            tables: dict[str, set[str]] = {}
            for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                tables[name] = {row[1] for row in con.execute(f"PRAGMA table_info({name!r})")}
        except sqlite3.DatabaseError as exc:
            raise RecoveryDirError(
                f"{what} is not a Bytewax recovery partition ({exc}); {_afresh(directory)}"
            ) from None
        for table, columns in SCHEMA.items():
            if table not in tables:
                raise RecoveryDirError(
                    f"{what} is not a Bytewax recovery partition (no table {table!r}); "
                    f"{_afresh(directory)}"
                )
            if not columns <= tables[table]:
                missing = ", ".join(sorted(columns - tables[table]))
                raise RecoveryDirError(
                    f"{what} is not a Bytewax 0.21 recovery partition (table {table!r} "
                    f"lacks {missing}); {_afresh(directory)}"
                )
        try:
            rows = con.execute("SELECT part_index, part_count FROM parts").fetchall()
            if len(rows) != 1:
                raise RecoveryDirError(
                    f"{what} is not a usable recovery partition ({len(rows)} partition "
                    f"entries, not 1); {_afresh(directory)}"
                )
            part = PartFile(path, int(rows[0][0]), int(rows[0][1]))
            part.executions = [tuple(map(int, r)) for r in con.execute(
                "SELECT ex_num, worker_count, resume_epoch FROM exs")]
            part.frontiers = [tuple(map(int, r)) for r in con.execute(
                "SELECT ex_num, worker_index, worker_frontier FROM fronts")]
            (latest,) = con.execute("SELECT MAX(snap_epoch) FROM snaps").fetchone()
            part.latest_epoch = None if latest is None else int(latest)
            snaps = con.execute(
                "SELECT state_key, snap_epoch, ser_change FROM snaps WHERE step_id = ? "
                "ORDER BY state_key, snap_epoch", (step_id,)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise RecoveryDirError(f"{what} is damaged ({exc}); {_afresh(directory)}") from None
        except (TypeError, ValueError) as exc:
            raise RecoveryDirError(f"{what} is damaged ({exc}); {_afresh(directory)}") from None
        for key, epoch, blob in snaps:
            state = None
            if blob is not None:
                try:
                    state = SourceState.restore(_unpickle(bytes(blob)))
                except Exception as exc:  # noqa: BLE001 - any failure: the snapshot is unreadable
                    raise RecoveryDirError(
                        f"{what}: the snapshot of {step_id} key {key!r} (epoch {epoch}) cannot "
                        f"be read ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); "
                        f"{_afresh(directory)}"
                    ) from None
            part.source.setdefault(str(key), []).append(Snapshot(int(epoch), state))
        return part
    finally:
        con.close()


def part_files(directory: Path) -> list[Path]:
    """The files bytewax opens as partitions: every ``*.sqlite3`` in the directory."""
    return sorted(
        (p for p in Path(directory).iterdir() if p.suffix == PART_SUFFIX and p.is_file()),
        key=lambda p: (len(p.name), p.name),
    )


def read_dir(directory: Path, step_id: str = SOURCE_STEP, complete: bool = True) -> RecoveryDir:
    """A whole recovery directory; :class:`RecoveryDirError` if a run could not use it.

    ``complete=False`` is for one process of a cluster (``-a`` with several
    addresses): it may hold only some of the partitions, or none, as long as
    the processes together hold all (which only bytewax, seeing all, checks).
    """
    directory = Path(directory)
    if not directory.exists():
        raise RecoveryDirError(
            f"recovery directory {directory} does not exist; make it with "
            f"`presence recovery init {directory}`"
        )
    if not directory.is_dir():
        raise RecoveryDirError(f"recovery directory {directory} is not a directory")
    files = part_files(directory)
    if not files and complete:
        raise RecoveryDirError(
            f"recovery directory {directory} has no recovery partitions; make them with "
            f"`presence recovery init {directory}`"
        )
    parts = [read_part(f, step_id) for f in files]
    if complete:
        check_complete(directory, parts)
    return RecoveryDir(directory, parts)


def check_complete(directory: Path, parts: list[PartFile]) -> None:
    """One file per partition index, one partition count, none missing."""
    counts = {p.part_count for p in parts}
    if len(counts) > 1:
        raise RecoveryDirError(
            f"recovery directory {directory} mixes partitions of different sets "
            f"(counts {sorted(counts)}); {_afresh(directory)}"
        )
    seen: dict[int, Path] = {}
    for p in parts:
        if p.part_index in seen:
            raise RecoveryDirError(
                f"recovery directory {directory}: {seen[p.part_index].name} and {p.path.name} "
                f"are both partition {p.part_index}; {_afresh(directory)}"
            )
        seen[p.part_index] = p.path
    missing = sorted(set(range(counts.pop())) - set(seen))
    if missing:
        raise RecoveryDirError(
            f"recovery directory {directory} lacks partition(s) "
            f"{', '.join(map(str, missing))} of {parts[0].part_count}; restore them, or "
            f"{_afresh(directory)}"
        )


def init_dir(directory: Path, partitions: int | None = None) -> tuple[bool, int]:
    """Make ``directory`` and its recovery partitions unless it has them.

    Returns ``(made, partition count)``. A directory that has them already
    is left as it is (bytewax's own ``init_db_dir`` would die with a panic,
    ``UNIQUE constraint failed: parts.part_index``); asking for another
    count than it has is a :class:`RecoveryDirError`.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise RecoveryDirError(f"recovery directory {directory} is not a directory")
    if directory.is_dir() and part_files(directory):
        existing = read_dir(directory)
        if partitions is not None and partitions != existing.part_count:
            raise RecoveryDirError(
                f"recovery directory {directory} has {existing.part_count} partitions, not "
                f"{partitions}; `presence recovery reset {directory} --partitions {partitions}` "
                "starts afresh with that many"
            )
        return False, existing.part_count
    count = DEFAULT_PARTITIONS if partitions is None else partitions
    if count < 1:
        raise RecoveryDirError("--partitions must be at least 1")
    directory.mkdir(parents=True, exist_ok=True)
    from bytewax.recovery import init_db_dir

    init_db_dir(directory, count)
    return True, count


def reset_dir(directory: Path, partitions: int | None = None) -> tuple[list[Path], int]:
    """Delete the recovery partitions (and SQLite's companions of them), make fresh ones.

    Only ``*.sqlite3`` files (what bytewax opens as partitions) and their
    ``-wal``/``-shm``/``-journal`` files are deleted; anything else in the
    directory stays. The fresh set has ``partitions`` partitions, or as many
    as before (:data:`DEFAULT_PARTITIONS` if that cannot be read).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise RecoveryDirError(f"recovery directory {directory} is not a directory")
    removed: list[Path] = []
    if directory.is_dir():
        files = part_files(directory)
        if partitions is None and files:
            try:
                partitions = read_part(files[0]).part_count
            except RecoveryDirError:
                partitions = None
        for f in files:
            for extra in COMPANIONS:
                companion = f.with_name(f.name + extra)
                if companion.exists():
                    companion.unlink()
            f.unlink()
            removed.append(f)
    _, count = init_dir(directory, partitions)
    return removed, count
