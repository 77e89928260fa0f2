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
at start-up; :func:`layout_from_argv` reads what ``bytewax.run`` was given
(:func:`run_option` is the one reader of its arguments).

A directory shared by all the processes of one machine (``bytewax.testing
-p N -r dir``) is declared by an empty file named ``SHARED`` in it: then
every process sees every partition and each checks that the set is whole.
(Do not share one over a network filesystem: SQLite's locking is not safe there.)
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from presence.io.recovery import RecoveryDir, RecoveryDirError, read_dir

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


MIN_ABBREVIATION = 3
"""``--r``: the shortest abbreviation of a long option read (argparse takes any unambiguous one)."""


def run_option(argv: Sequence[str], short: str, long: str) -> str | None:
    """The value ``bytewax.run``'s argument parser gives an option (the last one given).

    ``-x v``, ``-xv``, ``--long v``, ``--long=v``, or an abbreviation of
    ``--long`` (``--recovery-dir v``), as argparse allows; nothing after ``--``.
    ``argv`` is the arguments without the program's name.
    """
    value = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        name, eq, given = arg.partition("=")
        if arg == short or (len(name) >= MIN_ABBREVIATION and name.startswith("--")
                            and long.startswith(name)):
            if eq:
                value = given
            elif i + 1 < len(argv):
                value = argv[i + 1]
                i += 1
        elif arg.startswith(short) and not arg.startswith("--"):
            value = arg[len(short):]
        i += 1
    return value


def recovery_directory(argv: Sequence[str] | None = None,
                       env: Mapping[str, str] | None = None) -> Path | None:
    """The ``-r`` directory (else ``BYTEWAX_RECOVERY_DIRECTORY``); ``None``: no recovery.

    ``argv`` defaults to this process's arguments (``sys.argv[1:]``).
    """
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    found = run_option(argv, "-r", "--recovery-directory") or env.get("BYTEWAX_RECOVERY_DIRECTORY")
    return Path(found) if found else None


def addresses(argv: Sequence[str] | None = None,
              env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The ``-a`` addresses (else ``BYTEWAX_ADDRESSES``), split at ``;``."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    given = run_option(argv, "-a", "--addresses") or env.get("BYTEWAX_ADDRESSES") or ""
    return tuple(a.strip() for a in given.split(";") if a.strip())


def cluster_run(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is one of several (``-a host:port;host:port``)."""
    return len(addresses(argv, env)) > 1


def layout_from_argv(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Layout:
    """The process id, process count and recovery directory ``bytewax.run`` sees.

    ``argv`` is the whole command line (``sys.argv``, the program first).
    """
    env = os.environ if env is None else env
    args = argv[1:]
    pid = run_option(args, "-i", "--process-id") or env.get("BYTEWAX_PROCESS_ID")
    if pid is None and "BYTEWAX_POD_NAME" in env and "BYTEWAX_STATEFULSET_NAME" in env:
        pid = env["BYTEWAX_POD_NAME"].removeprefix(env["BYTEWAX_STATEFULSET_NAME"] + "-")
    try:
        process_id = int(pid) if pid is not None else None
    except ValueError:
        raise LayoutError(f"process id -i {pid!r} is not a whole number") from None
    listed = addresses(args, env)
    processes = len(listed) or 1
    if process_id is not None and not 0 <= process_id < processes:
        raise LayoutError(
            f"process id -i {process_id} is not one of the {processes} addresses given with -a "
            f"(ids are 0 to {processes - 1})"
        )
    return Layout(process_id, processes, recovery_directory(args, env), listed)


def _read(directory: Path, who: str) -> RecoveryDir:
    """What the directory holds, whole or not (a process of a cluster may hold none)."""
    try:
        return read_dir(directory, complete=False)
    except RecoveryDirError as exc:
        raise LayoutError(f"{who}{exc}") from None


def check_layout(layout: Layout) -> str | None:
    """Raise :class:`LayoutError` when this process's recovery directory is wrong for it.

    Returns a short description of what was found (for the start-up log),
    or ``None`` without recovery.
    """
    return read_layout(layout)[0]


def read_layout(layout: Layout) -> tuple[str | None, RecoveryDir | None]:
    """:func:`check_layout`, and what the recovery directory holds (read once, for start-up too)."""
    directory = layout.recovery_dir
    if directory is None:
        return None, None
    who = "" if layout.process_id is None else f"process {layout.process_id}: "
    if not directory.is_dir():
        make = (
            f"presence recovery init {directory} --partitions N" if not layout.process_id
            else f"mkdir -p {directory} (left empty)"
        )
        raise LayoutError(f"{who}recovery directory {directory} does not exist; make it with `{make}` ({README})")
    state = _read(directory, who)
    parts = {p.path: (p.part_index, p.part_count) for p in state.parts}
    if layout.process_id and not (directory / SHARED).exists():  # 1, 2, ...: must be empty
        if parts:
            indexes = sorted(index for index, _ in parts.values())
            raise LayoutError(
                f"process {layout.process_id}: recovery directory {directory} holds recovery "
                f"partitions {indexes}, but only process 0's directory may hold them (each partition "
                f"must exist once in the cluster, or state is silently lost): move them to process "
                f"0's directory if it lacks them, otherwise delete them ({README})"
            )
        return (f"{who}recovery directory {directory} is empty, as it must be (process 0 holds "
                "the partitions)", state)
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
    return f"{who}recovery directory {directory} holds all {count} recovery partitions", state


def start_process(metrics_port: int | None, argv: Sequence[str] | None = None
                  ) -> tuple[Layout, RecoveryDir | None]:
    """Start-up of one dataflow process: check its recovery layout, serve its metrics.

    Returns the layout and, for a process of a cluster (``-i``), what its
    recovery directory holds, read for the check (``None``: not read here,
    or no recovery). A wrong layout is one line on stderr and exit 2; a
    metrics port that cannot be bound, one line and exit 1.
    """
    from presence import metrics

    argv = sys.argv if argv is None else argv
    try:
        # Only bytewax.run's arguments say -i/-a/-r (not, say, pytest's -r).
        layout = layout_from_argv(argv if argv and argv[0].endswith("run.py") else [""])
        # A single process (no -i): the directory is checked when it is read
        # (binding.read_recovery), whose refusals name `presence recovery init/reset`.
        found, state = read_layout(layout) if layout.process_id is not None else (None, None)
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
    return layout, state
