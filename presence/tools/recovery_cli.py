"""``presence recovery``: make, empty and look into a recovery directory.

Bytewax's own ``python -m bytewax.recovery DIR N`` dies with a Rust panic
(``UNIQUE constraint failed: parts.part_index``) when DIR is initialised
already; ``presence recovery init`` may be run any number of times.
A directory that cannot be used is one line on stderr and exit 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from presence.io.recovery import DEFAULT_PARTITIONS, RecoveryDirError, init_dir, read_dir, reset_dir

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

DIR = click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
PARTITIONS = click.option(
    "--partitions", type=click.IntRange(min=1, max=1024), default=None,
    help=f"Recovery partitions (SQLite files) to make. Default: {DEFAULT_PARTITIONS} for init, "
         "as many as before for reset.",
)


class UnusableDirectory(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:  # noqa: ANN001 - click's signature
        click.echo(f"presence: {self.format_message()}", err=True)


def _fail(exc: RecoveryDirError) -> UnusableDirectory:
    return UnusableDirectory(str(exc))


@click.group(name="recovery", context_settings=CONTEXT)
def recovery() -> None:
    """Make (init), empty (reset) or look into (show) a recovery directory.

    The dataflow keeps its state there: `python -m bytewax.run dataflow -r DIR`.
    """


@recovery.command(context_settings=CONTEXT)
@DIR
@PARTITIONS
def init(directory: Path, partitions: int | None) -> None:
    """Make DIR and its recovery partitions, unless it has them (then nothing changes)."""
    try:
        made, count = init_dir(directory, partitions)
    except RecoveryDirError as exc:
        raise _fail(exc) from None
    if made:
        click.echo(f"{directory}: {count} recovery partitions made")
    else:
        click.echo(f"{directory}: initialised already ({count} recovery partitions); nothing changed")


@recovery.command(context_settings=CONTEXT)
@DIR
@PARTITIONS
def reset(directory: Path, partitions: int | None) -> None:
    """Delete DIR's state and make fresh partitions: the next run starts from the
    beginning of the topic.

    Deletes only the *.sqlite3 files (bytewax opens each as a partition) and
    their -wal/-shm/-journal files; asks nothing.
    """
    try:
        removed, count = reset_dir(directory, partitions)
    except RecoveryDirError as exc:
        raise _fail(exc) from None
    click.echo(
        f"{directory}: {len(removed)} recovery partition file(s) deleted, {count} fresh "
        "partitions made; the next run starts from the beginning of the topic"
    )


@recovery.command(context_settings=CONTEXT)
@DIR
def show(directory: Path) -> None:
    """Partitions, the input the state was made for, and the latest epoch."""
    try:
        state = read_dir(directory)
    except RecoveryDirError as exc:
        raise _fail(exc) from None
    names = ", ".join(p.path.name for p in state.parts)
    click.echo(f"{directory}: {state.part_count} recovery partitions ({names})")
    if state.empty:
        click.echo("state: none yet (no run has written a snapshot)")
        return
    latest = max(p.latest_epoch for p in state.parts if p.latest_epoch is not None)
    resume = state.resume_epoch()
    click.echo(f"latest snapshot epoch {latest}; a run resumes from epoch {resume}")
    sources = state.source_states()
    inputs = set()
    for key, snap in sources.items():
        try:
            recorded = snap.state.recorded() if snap.state else None
        except ValueError:
            inputs.add("a damaged fingerprint")
        else:
            if recorded is not None:
                inputs.add(recorded.describe())
    for text in sorted(inputs):
        click.echo(f"made for: {text}")
    if not inputs:
        click.echo("made for: unknown (state written before presence recorded its input)")
    for key in sorted(sources, key=lambda k: (len(k), k)):
        snap = sources[key]
        shown = "discarded" if snap.state is None else f"next offset {snap.state.next_offset}"
        click.echo(f"  Kafka partition {key}: {shown} (epoch {snap.epoch})")
