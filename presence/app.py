"""Start-up: settings, logging, Kafka and MongoDB wired into the dataflow.

``dataflow.py`` at the repository root calls :func:`dataflow_from_env`, so
``python -m bytewax.run dataflow`` runs the real job.
"""

from __future__ import annotations

import gc
import logging
import sys
from functools import partial

from bytewax.dataflow import Dataflow

from presence.binding import (
    MONGO_START_TIMEOUT_SECONDS, InputMismatch, StoreUnreachable, bind_input, read_recovery,
)
from presence.cluster import recovery_directory, start_process
from presence.core.fingerprint import Fingerprint
from presence.flow import Sinks, build_flow
from presence.io.kafka import KafkaConfigError, KafkaFeed, KafkaUnavailable, partition_count
from presence.io.mongo import DEAD_LETTERS, REPORTS, STATUS, MongoSink
from presence.io.recovery import RecoveryDirError
from presence.settings import SecretFilter, Settings, SettingsError, load_settings, scrub
from presence.io.source import PingSource

log = logging.getLogger("presence")

def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    for handler in root.handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter())
    logging.getLogger("presence").setLevel(level)


class MongoUnavailable(RuntimeError):
    """MongoDB did not answer at start-up (one line, secrets scrubbed)."""


def check_mongo(settings: Settings, timeout: float = MONGO_START_TIMEOUT_SECONDS) -> None:
    """Ping MongoDB once, waiting at most ``timeout``: at start-up an outage is one line, exit 1."""
    from pymongo.errors import PyMongoError

    from presence.tools.reports import mongo_client, store_error

    client = mongo_client(settings, timeout_ms=int(timeout * 1000))
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        raise MongoUnavailable(f"{store_error(settings, exc)} (no answer within {timeout:g} s "
                               "at start-up)") from None
    finally:
        client.close()


def fail(message: str, code: int) -> "SystemExit":
    """One line on stderr (secrets scrubbed); the exit to raise."""
    print(f"presence: {scrub(message)}", file=sys.stderr)
    return SystemExit(code)


def kafka_mongo_flow(settings: Settings, fingerprint: Fingerprint | None = None) -> Dataflow:
    spec = settings.window_spec()
    source = PingSource(
        settings.topic,
        fingerprint.partitions if fingerprint else partition_count(settings),
        partial(KafkaFeed, settings),
        spec,
        bounded=settings.stop_at_end,
        batch_size=settings.kafka_batch_size,
        fingerprint=fingerprint.to_dict() if fingerprint else None,
        reader=settings.reader,
    )
    sinks = Sinks(
        rows=MongoSink(settings, REPORTS),
        dead_letters=MongoSink(settings, DEAD_LETTERS),
        status=MongoSink(settings, STATUS),
    )
    return build_flow(spec, source, sinks, progress_seconds=settings.progress_seconds,
                      reader=settings.reader, snapshots=recovery_directory() is not None)


GC_THRESHOLDS = (50_000, 20, 20)
"""The cyclic garbage collector's thresholds in the dataflow process (CPython's
default is ``(700, 10, 10)``)."""


def tune_gc() -> None:
    """Make CPython's cyclic garbage collector run far less often in the dataflow.

    Presence's state lives in few Python objects (bitmaps, bytes, the compiled
    segment store) and creates no reference cycles per ping, but each batch
    makes many short-lived containers (sets of ids, rows, documents), and with
    the default thresholds a collection every 700 of them traverses the young
    objects and, every 100, everything: measured at 7 % of the CPU of a run with
    segments (py-spy, `gc_collect_main`). Everything alive at start-up (modules,
    settings, clients) is moved out of the collector's sight (``gc.freeze``) and
    the thresholds raised (:data:`GC_THRESHOLDS`): cycles are still collected,
    in fewer, larger passes (at most 50,000 objects wait for one).
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def dataflow_from_env() -> Dataflow:
    """The job as configured by ``PRESENCE_*``; exits with one line on a bad setting."""
    configure_logging()
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise fail(f"bad setting: {exc}", 2) from None
    logging.getLogger("presence").setLevel(settings.log_level)
    log.info("starting: %s", settings.describe())
    if settings.stop_at_end and recovery_directory() is None:
        log.warning(
            "bounded run without a recovery directory (-r): state is not kept, so a "
            "later run starts from the beginning of the topic instead of going on"
        )
    from presence.tools.reports import StoreUnavailable

    # The recovery layout check (a cluster's process reads its directory there), metrics.
    _, state = start_process(settings.metrics_port)
    try:
        # Bound to its input (SPEC): compared with the recovery directory and the
        # database before bytewax opens either; the directory is read once.
        if state is None:
            state = read_recovery(recovery_directory())
        partitions = partition_count(settings)  # Kafka first: its failure is the one reported
        check_mongo(settings)
        fingerprint = bind_input(settings, partitions, state)
        flow = kafka_mongo_flow(settings, fingerprint)
        tune_gc()
        return flow
    except KafkaConfigError as exc:
        raise fail(f"bad setting: {exc}", 2) from None
    except (RecoveryDirError, InputMismatch) as exc:
        raise fail(str(exc), 2) from None
    except (KafkaUnavailable, MongoUnavailable, StoreUnavailable, StoreUnreachable) as exc:
        raise fail(str(exc), 1) from None
