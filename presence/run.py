"""``python -m presence.run dataflow [bytewax.run options]``: the dataflow, stopped cleanly.

The same as ``python -m bytewax.run`` (same arguments), except that Ctrl-C
(SIGINT) ends it with one line and exit code 130 instead of a
``KeyboardInterrupt`` traceback. ``make run`` and ``make run-bounded`` use it.
"""

from __future__ import annotations

import linecache
import os
import re
import runpy
import signal
import sys
import tempfile
import threading
import time

INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT), as shells report it."""


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    sys.argv[0] = "python -m presence.run"
    interrupted: list[float] = []

    def on_sigint(signum, frame):  # noqa: ANN001
        # A KeyboardInterrupt raised inside a step (Python called from
        # Bytewax's Rust loop: a sink write, say) becomes a Rust panic with
        # its own backtrace. Raise it only where the loop itself checks for
        # signals; inside a step, ask again a moment later (for at most
        # INTERRUPT_GRACE seconds).
        now = time.monotonic()
        interrupted.append(now)
        if _inside_a_step(frame) and now - interrupted[0] < INTERRUPT_GRACE:
            threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGINT)).start()
            return
        # Bytewax stops a one-worker run by panicking with the interrupt:
        # Rust prints that panic (and a backtrace) straight to stderr. From
        # here on stderr goes to a file, forwarded without the panic's lines.
        stderr.capture()
        raise KeyboardInterrupt

    stderr = _StderrCapture()
    signal.signal(signal.SIGINT, on_sigint)
    try:
        runpy.run_module("bytewax.run", run_name="__main__", alter_sys=True)
    except BaseException as exc:
        stderr.release()
        if not interrupted and not _caused_by_interrupt(exc):
            raise
        from presence.cluster import recovery_directory

        recovery = recovery_directory(sys.argv[1:]) is not None
        where = ("; a restart with the same recovery directory goes on from its last snapshot"
                 if recovery else "")
        print(f"presence: interrupted{where}", file=sys.stderr, flush=True)
        return INTERRUPTED
    return 0


INTERRUPT_GRACE = 5.0

_RUST_PANIC = re.compile(
    r"^(thread '.*' panicked at .*|Box<dyn Any>|stack backtrace:|\s+\d+: .*|\s+at .*|"
    r"note: .*backtrace.*|\s*)$"
)


class _StderrCapture:
    """Sends file descriptor 2 to a temporary file until :meth:`release`, then forwards it."""

    def __init__(self) -> None:
        self.saved: int | None = None
        self.file = None

    def capture(self) -> None:
        if self.saved is not None:
            return
        try:
            sys.stderr.flush()
            self.file = tempfile.TemporaryFile()
            self.saved = os.dup(2)
            os.dup2(self.file.fileno(), 2)
        except OSError:  # pragma: no cover - then the panic shows, nothing worse
            self.saved = None

    def release(self) -> None:
        if self.saved is None:
            return
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.saved = None
        self.file.seek(0)
        text = self.file.read().decode("utf-8", "replace")
        self.file.close()
        kept = [line for line in text.splitlines() if not _RUST_PANIC.match(line)]
        if kept:
            print("\n".join(kept), file=sys.stderr, flush=True)


def _inside_a_step(frame) -> bool:  # noqa: ANN001
    """Whether ``frame`` runs inside ``cli_main`` (a step), not in the runner's own frame."""
    current = frame
    while current is not None:
        code = current.f_code
        if code.co_name == "<module>" and code.co_filename.endswith(os.path.join("bytewax", "run.py")):
            calling = "cli_main" in linecache.getline(code.co_filename, current.f_lineno)
            return calling and current is not frame
        current = current.f_back
    return False


def _caused_by_interrupt(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 50:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


if __name__ == "__main__":
    sys.exit(main())
