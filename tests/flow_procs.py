"""presence's flow over an in-memory topic, for runs of several processes.

``python -m bytewax.run tests.flow_procs:flow -i <id> -a "host:port;host:port"``
builds, in every process, the same seeded topic (``PRESENCE_TEST_SEED``,
:func:`tests.streams.stream`) and writes every output item, pickled, to a
file per worker under ``PRESENCE_TEST_OUT``; :func:`run_processes` starts
the processes on free ports and reads the files back as
:class:`tests.flow_helpers.Outputs`.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from presence.flow import Sinks, build_flow
from presence.io.source import PingSource
from presence.core.windows import WindowSpec

REPO = Path(__file__).resolve().parent.parent


class _FilePartition(StatelessSinkPartition):
    def __init__(self, path: Path) -> None:
        self.file = open(path, "ab")  # noqa: SIM115 - closed in close()

    def write_batch(self, items: list) -> None:
        for item in items:
            pickle.dump(item, self.file)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class FileSink(DynamicSink):
    def __init__(self, out: Path, kind: str) -> None:
        self.out = out
        self.kind = kind

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FilePartition:
        return _FilePartition(self.out / f"{self.kind}-{worker_index}.pickle")


def read_items(out: Path, kind: str) -> list:
    items = []
    for path in sorted(out.glob(f"{kind}-*.pickle")):
        with open(path, "rb") as file:
            while True:
                try:
                    items.append(pickle.load(file))
                except EOFError:
                    break
    return items


SPEC = WindowSpec(bucket_s=60, window_s=300, lateness_s=30, horizon_s=1800, idle_s=10)


def spec_with(segments: str) -> WindowSpec:
    """:data:`SPEC` with these segments (``""``: none)."""
    from dataclasses import replace

    from presence.core.segments import parse_segments

    return replace(SPEC, segments=parse_segments(segments))


def _flow():
    from tests.flow_helpers import memory_topic
    from tests.streams import segment_stream, stream

    out = Path(os.environ["PRESENCE_TEST_OUT"])
    seed = int(os.environ["PRESENCE_TEST_SEED"])
    segments = os.environ.get("PRESENCE_TEST_SEGMENTS", "")
    spec = spec_with(segments)
    topic = memory_topic(segment_stream(seed) if segments else stream(seed))
    source = PingSource(topic.name, len(topic.partitions), topic.feed, spec, bounded=True,
                        batch_size=int(os.environ.get("PRESENCE_TEST_BATCH", "7")))
    return build_flow(spec, source, Sinks(FileSink(out, "rows"), FileSink(out, "dead"),
                                          FileSink(out, "status")))


if os.environ.get("PRESENCE_TEST_OUT"):
    flow = _flow()


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_processes(seed: int, out: Path, processes: int = 2, batch_size: int = 7,
                  timeout: float = 300, segments: str = ""):
    """Run the flow in ``processes`` processes (one worker each); the outputs.

    With ``segments``, over :func:`tests.streams.segment_stream` and those segments."""
    from tests.flow_helpers import Outputs, RowList

    out.mkdir(parents=True, exist_ok=True)
    addresses = ";".join(f"127.0.0.1:{p}" for p in _free_ports(processes))
    env = {**os.environ, "PRESENCE_TEST_OUT": str(out), "PRESENCE_TEST_SEED": str(seed),
           "PRESENCE_TEST_BATCH": str(batch_size), "PRESENCE_TEST_SEGMENTS": segments}
    procs = [
        subprocess.Popen([sys.executable, "-m", "bytewax.run", "tests.flow_procs:flow",
                          "-i", str(i), "-a", addresses], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(processes)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, f"process exited {proc.returncode}:\n{log[-3000:]}"
    rows = RowList()
    rows += read_items(out, "rows")
    return Outputs(rows, read_items(out, "dead"), read_items(out, "status"))
