"""Running one system as a subprocess and measuring it: wall, CPU, peak RSS.

CPU is ``resource.getrusage(RUSAGE_CHILDREN)`` before and after the run
(user + sys of the process and of every descendant it reaped, so the
children of ``bytewax.testing -p 2`` count). Peak RSS is the greatest sum of
RSS over the process tree, sampled every 50 ms with psutil (``ru_maxrss``
only knows one process).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import psutil


@dataclass
class Measured:
    wall: float
    cpu: float
    user: float
    sys: float
    peak_rss: int
    returncode: int
    output: str
    load_before: tuple = ()
    load_after: tuple = ()
    extra: dict = field(default_factory=dict)


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class Sampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.05):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.every = every
        self.peak = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.peak = max(self.peak, _tree_rss(self.proc))
            self.stop_event.wait(self.every)


def run_measured(cmd: list[str], env: dict, cwd: str, timeout: float = 1800,
                 on_start=None) -> Measured:
    """Run ``cmd`` to completion (or kill it after ``timeout``) and measure it."""
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    if on_start is not None:
        on_start(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out += f"\n[bench] killed after {timeout:.0f} s"
    wall = time.perf_counter() - began
    sampler.stop_event.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user = after.ru_utime - before.ru_utime
    sys_ = after.ru_stime - before.ru_stime
    return Measured(wall, user + sys_, user, sys_, sampler.peak, proc.returncode, out,
                    load_before, os.getloadavg())
