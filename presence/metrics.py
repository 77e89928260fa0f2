"""Per-process dataflow metrics: ``/metrics`` (Prometheus) and ``/healthz`` on ``PRESENCE_METRICS_PORT``.

In a cluster the API server's view of MongoDB is not the health of each
process, so every dataflow process serves its own figures on
``PRESENCE_METRICS_PORT + k``, ``k`` = how many processes listed before it
in ``-a`` have the same host (:meth:`presence.cluster.Layout.port_offset`):
the same port in every Kubernetes pod, consecutive ports for processes
sharing a host (``-a "127.0.0.1:2101;127.0.0.1:2102"``: +0 and +1). The source, the sinks and the stateful
steps call the plain functions below; they update one process-global
``prometheus_client`` registry, :data:`REGISTRY` (not the default one, so a
process that merely imports this module, such as the API server, shows
none of it). The dataflow's start-up calls :func:`publish`, which adds it to
the default registry as well, so Bytewax's own dataflow API
(``BYTEWAX_DATAFLOW_API_ENABLED``) shows the figures too on its ``/metrics``.

``/healthz`` is liveness: 200 while the process's source partitions keep
being polled (a live run polls at least once a second, even when quiet),
503 when none has been polled for :data:`STALL_SECONDS` (a wedged worker;
also a MongoDB outage longer than that, during which the sinks retry), so
an orchestrator restarts it and the run resumes from its last snapshot.
A process that owns no source partition is alive while it serves.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger("presence.metrics")

STALL_SECONDS = 300.0
"""``/healthz`` turns 503 when no owned source partition was polled for this long."""

_PARTITION = ("topic", "partition")

REGISTRY = CollectorRegistry(auto_describe=True)
"""This process's dataflow metrics."""
_SYSTEM = CollectorRegistry()
"""The client's process_*, python_* figures, served beside them (the default registry has its own)."""
ProcessCollector(registry=_SYSTEM)
PlatformCollector(registry=_SYSTEM)
GCCollector(registry=_SYSTEM)

MESSAGES_READ = Counter(
    "presence_dataflow_messages_read", "Kafka messages read, per partition this process owns",
    _PARTITION, registry=REGISTRY)
MESSAGES_REJECTED = Counter(
    "presence_dataflow_messages_rejected",
    "Messages not counted (dead letters: invalid or too late), per partition and reason",
    _PARTITION + ("reason",), registry=REGISTRY)
BATCHES = Counter(
    "presence_dataflow_batches", "Batches read from Kafka (non-empty reads), per partition",
    _PARTITION, registry=REGISTRY)
PARTITION_WATERMARK = Gauge(
    "presence_dataflow_partition_watermark_seconds",
    "A partition's watermark (its greatest valid event time minus the allowed lateness), epoch s",
    _PARTITION, registry=REGISTRY)
NEXT_OFFSET = Gauge(
    "presence_dataflow_partition_next_offset", "Next Kafka offset this process will read",
    _PARTITION, registry=REGISTRY)
MONGO_RETRIES = Counter(
    "presence_dataflow_mongo_write_retries", "MongoDB writes retried after a connection failure", registry=REGISTRY)
ROWS_WRITTEN = Counter(
    "presence_dataflow_rows_written", "Report rows written (upserted) to MongoDB by this process", registry=REGISTRY)
SNAPSHOTS = Counter(
    "presence_dataflow_snapshots",
    "State snapshots taken by Bytewax of this process's stateful steps, per step", ("step",), registry=REGISTRY)
LAST_SNAPSHOT = Gauge(
    "presence_dataflow_last_snapshot_timestamp_seconds", "When this process last snapshotted state", registry=REGISTRY)
WATERMARK = Gauge(
    "presence_dataflow_watermark_seconds",
    "The least watermark of the partitions this process owns (epoch s; NaN before any valid ping)", registry=REGISTRY)
SNAPSHOT_AGE = Gauge(
    "presence_dataflow_snapshot_age_seconds",
    "Seconds since this process last snapshotted state (since start before the first)", registry=REGISTRY)
OWNED = Gauge(
    "presence_dataflow_partitions_owned", "Kafka partitions this process reads", registry=REGISTRY)
PROCESS = Gauge(
    "presence_dataflow_process_info", "This process's id in the cluster and the cluster's size",
    ("process_id", "processes"), registry=REGISTRY)

_lock = threading.Lock()
_started = time.time()
_last_snapshot: float | None = None
_polled: dict[tuple[str, int], float] = {}
_watermarks: dict[tuple[str, int], float] = {}


def _least_watermark() -> float:
    with _lock:
        values = list(_watermarks.values())
    return min(values) if values else math.nan


def _snapshot_age() -> float:
    return time.time() - (_last_snapshot if _last_snapshot is not None else _started)


WATERMARK.set_function(_least_watermark)
SNAPSHOT_AGE.set_function(_snapshot_age)
OWNED.set_function(lambda: len(_polled))


# Hooks -------------------------------------------------------------------------------------

def polled(topic: str, partition: int) -> None:
    """A source partition was polled (liveness)."""
    _polled[(topic, partition)] = time.monotonic()


def batch_read(topic: str, partition: int, messages: int, batch: Any, lateness: float) -> None:
    """After a read of ``messages`` messages gave ``batch`` (a :class:`PartitionBatch`)."""
    labels = (topic, str(partition))
    MESSAGES_READ.labels(*labels).inc(messages)
    BATCHES.labels(*labels).inc()
    for letter in batch.dead_letters:
        MESSAGES_REJECTED.labels(*labels, letter.reason).inc()
    mark = batch.mark
    NEXT_OFFSET.labels(*labels).set(mark.next_offset)
    if math.isfinite(mark.max_event):
        watermark = mark.max_event - lateness
        PARTITION_WATERMARK.labels(*labels).set(watermark)
        with _lock:
            _watermarks[(topic, partition)] = watermark


def snapshot(step: str) -> None:
    """Bytewax took a snapshot of a stateful step's state."""
    global _last_snapshot
    SNAPSHOTS.labels(step).inc()
    _last_snapshot = time.time()
    LAST_SNAPSHOT.set(_last_snapshot)


def mongo_retry() -> None:
    MONGO_RETRIES.inc()


def rows_written(count: int) -> None:
    ROWS_WRITTEN.inc(count)


# The endpoint ------------------------------------------------------------------------------

def healthy(now: float | None = None) -> tuple[bool, str]:
    """(alive, why) from the source partitions' last polls."""
    now = time.monotonic() if now is None else now
    if not _polled:
        return True, "ok: no source partition owned yet"
    freshest = now - max(_polled.values())
    if freshest > STALL_SECONDS:
        return False, f"stalled: no source partition polled for {freshest:.0f} s"
    return True, f"ok: polled {freshest:.1f} s ago"


class _Both:
    """Collects :data:`REGISTRY` and the process/platform/GC figures."""

    def collect(self):
        yield from REGISTRY.collect()
        yield from _SYSTEM.collect()


class _Published:
    def collect(self):
        yield from REGISTRY.collect()


_published = False


def publish() -> None:
    """Add :data:`REGISTRY` to prometheus_client's default registry (Bytewax's API serves that)."""
    global _published
    if not _published:
        prometheus_client.REGISTRY.register(_Published())
        _published = True


def app(metrics_app: Callable | None = None) -> Callable:
    """The WSGI application: ``/metrics`` and ``/healthz``."""
    metrics_app = metrics_app or make_wsgi_app(_Both())

    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            ok, why = healthy()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [why.encode() + b"\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics or /healthz\n"]

    return application


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


_server: _Server | None = None


def serve(port: int, host: str = "0.0.0.0", process_id: int | None = None,
          processes: int = 1) -> int:
    """Serve ``/metrics`` and ``/healthz`` on ``port`` from a daemon thread; returns the port.

    Raises ``OSError`` when the port cannot be bound.
    """
    global _server
    if _server is not None:
        return _server.server_address[1]
    PROCESS.labels(str(process_id or 0), str(processes)).set(1)
    server = make_server(host, port, app(), server_class=_Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="presence-metrics", daemon=True).start()
    _server = server
    bound = server.server_address[1]
    log.info("metrics on http://%s:%d/metrics, liveness on /healthz", host, bound)
    return bound
