"""Start-up: settings, logging, Kafka and MongoDB wired into the dataflow.

``dataflow.py`` at the repository root calls :func:`dataflow_from_env`, so
``python -m bytewax.run dataflow`` runs the real job.
"""

from __future__ import annotations

import logging
import os
import sys
from functools import partial

from bytewax.dataflow import Dataflow

from presence.cluster import start_process
from presence.flow import Sinks, build_flow
from presence.kafka import KafkaConfigError, KafkaFeed, KafkaUnavailable, partition_count
from presence.mongo import DEAD_LETTERS, REPORTS, STATUS, MongoSink
from presence.settings import Settings, SettingsError, load_settings
from presence.source import PingSource

log = logging.getLogger("presence")


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    logging.getLogger("presence").setLevel(level)


def recovery_configured(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return bool(os.environ.get("BYTEWAX_RECOVERY_DIRECTORY")) or any(
        a in ("-r", "--recovery-directory") or a.startswith("--recovery-directory=")
        for a in argv
    )


def kafka_mongo_flow(settings: Settings) -> Dataflow:
    spec = settings.window_spec()
    source = PingSource(
        settings.topic,
        partition_count(settings),
        partial(KafkaFeed, settings),
        spec,
        bounded=settings.stop_at_end,
        batch_size=settings.kafka_batch_size,
    )
    sinks = Sinks(
        rows=MongoSink(settings, REPORTS),
        dead_letters=MongoSink(settings, DEAD_LETTERS),
        status=MongoSink(settings, STATUS),
    )
    return build_flow(spec, source, sinks, progress_seconds=settings.progress_seconds)


def dataflow_from_env() -> Dataflow:
    """The job as configured by ``PRESENCE_*``; exits with one line on a bad setting."""
    configure_logging()
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"presence: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.getLogger("presence").setLevel(settings.log_level)
    log.info("starting: %s", settings.describe())
    if settings.stop_at_end and not recovery_configured():
        log.warning(
            "bounded run without a recovery directory (-r): state is not kept, so a "
            "later run starts from the beginning of the topic instead of going on"
        )
    start_process(settings.metrics_port)  # recovery layout check, per-process metrics
    try:
        return kafka_mongo_flow(settings)
    except KafkaConfigError as exc:
        print(f"presence: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KafkaUnavailable as exc:
        print(f"presence: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
