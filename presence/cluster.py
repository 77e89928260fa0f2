"""The recovery layout of a cluster of separately started processes.

What Bytewax needs (``src/recovery.rs``, ``docs/guide/concepts/recovery.md``):
each process lists the ``*.sqlite3`` recovery partitions in *its own* ``-r``
directory; the cluster as a whole must hold every partition ``0..N-1``
exactly once, and no process needs any partition in particular (the one
worker chosen as a partition's primary reads and writes it for everyone).
Bytewax cannot tell a partition that was used from a fresh copy of the same
index: if every host runs ``python -m bytewax.recovery dir N`` in its own
directory, each partition exists once per host, and after a change of
process count the primary of some partitions is a host whose copy is
empty, so their state silently starts from scratch.

presence's rule, which makes a wrong layout visible from each process's own
directory: **process 0 holds all the recovery partitions; every other
process runs with an empty recovery directory.** Scaling out and back never
moves a file (process 0 always exists), and losing process 0's directory is
what losing any partition would be anyway. :func:`check_layout` enforces it
at start-up; :func:`layout_from_argv` reads what ``bytewax.run`` was given.

A directory shared by all the processes of one machine (``bytewax.testing
-p N -r dir``) is declared by an empty file named ``SHARED`` in it: then
every process sees every partition and each checks that the set is whole.
(Do not share one over a network filesystem: SQLite's locking is not safe there.)
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

log = logging.getLogger("presence")

README = "README 'Running as a cluster'"
SHARED = "SHARED"
"""A file of this name declares a directory shared by every process of one machine."""


class LayoutError(ValueError):
    """A recovery directory that does not fit the cluster: the message is one line."""


@dataclass(frozen=True)
class Layout:
    """What a process was started with."""

    process_id: int | None
    """``-i``; ``None`` when started without it (a single process)."""
    processes: int
    """How many addresses ``-a`` lists (1 without ``-a``)."""
    recovery_dir: Path | None
    """``-r``; ``None`` without recovery."""
    addresses: tuple[str, ...] = ()
    """``-a``, split."""

    def port_offset(self) -> int:
        """How many processes listed before this one in ``-a`` share its host.

        ``PRESENCE_METRICS_PORT + port_offset()`` is this process's metrics
        port: the same port on every host when each process has its own
        (Kubernetes pods), consecutive ports for processes of one host.
        """
        if self.process_id is None or not self.addresses:
            return 0
        host = self.addresses[self.process_id].rsplit(":", 1)[0]
        return sum(1 for a in self.addresses[: self.process_id] if a.rsplit(":", 1)[0] == host)


def _option(argv: Sequence[str], short: str, long: str) -> str | None:
    """The value of ``-x v``, ``-xv``, ``--long v`` or ``--long=v`` (the last one given)."""
    value = None
    args = list(argv)
    for i, arg in enumerate(args):
        if arg in (short, long):
            if i + 1 < len(args):
                value = args[i + 1]
        elif arg.startswith(long + "="):
            value = arg[len(long) + 1:]
        elif arg.startswith(short) and len(arg) > len(short) and not arg.startswith("--"):
            value = arg[len(short):]
    return value


def layout_from_argv(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Layout:
    """The process id, process count and recovery directory ``bytewax.run`` sees."""
    env = os.environ if env is None else env
    pid = _option(argv, "-i", "--process-id") or env.get("BYTEWAX_PROCESS_ID")
    if pid is None and "BYTEWAX_POD_NAME" in env and "BYTEWAX_STATEFULSET_NAME" in env:
        pid = env["BYTEWAX_POD_NAME"].removeprefix(env["BYTEWAX_STATEFULSET_NAME"] + "-")
    addresses = _option(argv, "-a", "--addresses") or env.get("BYTEWAX_ADDRESSES")
    recovery = _option(argv, "-r", "--recovery-directory") or env.get("BYTEWAX_RECOVERY_DIRECTORY")
    try:
        process_id = int(pid) if pid is not None else None
    except ValueError:
        raise LayoutError(f"process id -i {pid!r} is not a whole number") from None
    listed = tuple(a.strip() for a in addresses.split(";") if a.strip()) if addresses else ()
    processes = len(listed) or 1
    if process_id is not None and not 0 <= process_id < processes:
        raise LayoutError(
            f"process id -i {process_id} is not one of the {processes} addresses given with -a "
            f"(ids are 0 to {processes - 1})"
        )
    return Layout(process_id, processes, Path(recovery) if recovery else None, listed)


def read_partitions(directory: Path) -> dict[Path, tuple[int, int]]:
    """``{file: (partition index, partition count)}`` of the recovery partitions in ``directory``."""
    found = {}
    for path in sorted(directory.glob("*.sqlite3")):
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
                rows = conn.execute("SELECT part_index, part_count FROM parts").fetchall()
            conn.close()
        except sqlite3.Error as exc:
            raise LayoutError(f"{path} is not a Bytewax recovery partition ({exc})") from None
        if len(rows) != 1:
            raise LayoutError(f"{path} is not a Bytewax recovery partition (it names {len(rows)} partitions)")
        found[path] = (int(rows[0][0]), int(rows[0][1]))
    return found


def check_layout(layout: Layout) -> str | None:
    """Raise :class:`LayoutError` when this process's recovery directory is wrong for it.

    Returns a short description of what was found (for the start-up log),
    or ``None`` without recovery.
    """
    directory = layout.recovery_dir
    if directory is None:
        return None
    who = "" if layout.process_id is None else f"process {layout.process_id}: "
    if not directory.is_dir():
        make = (
            f"presence recovery init {directory} --partitions N" if not layout.process_id
            else f"mkdir -p {directory} (left empty)"
        )
        raise LayoutError(f"{who}recovery directory {directory} does not exist; make it with `{make}` ({README})")
    parts = read_partitions(directory)
    if layout.process_id and not (directory / SHARED).exists():  # 1, 2, ...: must be empty
        if parts:
            indexes = sorted(index for index, _ in parts.values())
            raise LayoutError(
                f"process {layout.process_id}: recovery directory {directory} holds recovery "
                f"partitions {indexes}, but only process 0's directory may hold them (each partition "
                f"must exist once in the cluster, or state is silently lost): move them to process "
                f"0's directory if it lacks them, otherwise delete them ({README})"
            )
        return f"{who}recovery directory {directory} is empty, as it must be (process 0 holds the partitions)"
    if not parts:
        raise LayoutError(
            f"{who}recovery directory {directory} holds no recovery partitions; make them once with "
            f"`presence recovery init {directory} --partitions N` ({README})"
        )
    counts = sorted({count for _, count in parts.values()})
    if len(counts) > 1:
        raise LayoutError(
            f"{who}recovery directory {directory} mixes partitions made for different partition "
            f"counts {counts}; keep the set of one `presence recovery init` run ({README})"
        )
    count = counts[0]
    seen: dict[int, Path] = {}
    for path, (index, _) in parts.items():
        if index in seen:
            raise LayoutError(
                f"{who}recovery directory {directory} holds partition {index} twice "
                f"({seen[index].name} and {path.name}); keep one ({README})"
            )
        seen[index] = path
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise LayoutError(
            f"{who}recovery directory {directory} lacks recovery partitions {missing} of {count}: "
            f"process 0 must hold all of them ({README})"
        )
    return f"{who}recovery directory {directory} holds all {count} recovery partitions"


def start_process(metrics_port: int | None, argv: Sequence[str] | None = None) -> Layout:
    """Start-up of one dataflow process: check its recovery layout, serve its metrics.

    A wrong layout is one line on stderr and exit 2; a metrics port that
    cannot be bound, one line and exit 1.
    """
    from presence import metrics

    argv = sys.argv if argv is None else argv
    try:
        # Only bytewax.run's arguments say -i/-a/-r (not, say, pytest's -r).
        layout = layout_from_argv(argv if argv and argv[0].endswith("run.py") else [""])
        # A single process (no -i): the directory is checked when it is read
        # (binding.read_recovery), whose refusals name `presence recovery init/reset`.
        found = check_layout(layout) if layout.process_id is not None else None
    except LayoutError as exc:
        print(f"presence: bad recovery layout: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if found:
        log.info("%s", found)
    metrics.publish()  # also on Bytewax's own dataflow API, when enabled
    if metrics_port is not None:
        port = metrics_port + layout.port_offset()
        try:
            metrics.serve(port, process_id=layout.process_id, processes=layout.processes)
        except OSError as exc:
            print(f"presence: cannot serve metrics on port {port} (PRESENCE_METRICS_PORT): "
                  f"{exc.strerror or exc}", file=sys.stderr)
            raise SystemExit(1) from None
    return layout
