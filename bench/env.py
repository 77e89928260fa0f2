"""Where the benchmark runs: the stack's addresses, the environment of a system's
process, MongoDB, and the progress log every bench module prints to stderr."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
QUIX_PY = REPO / "bench" / ".quix-venv" / "bin" / "python"
BROKERS = os.environ.get("BENCH_BROKERS", "127.0.0.1:9092")
MONGO_URI = os.environ.get("BENCH_MONGO_URI", "mongodb://127.0.0.1:27017")
PY = sys.executable


def log(msg: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PRESENCE_", "BENCH_", "BYTEWAX_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["BENCH_BROKERS"] = BROKERS
    env["BENCH_MONGO_URI"] = MONGO_URI
    return env


def presence_env(topic: str, db: str, bounded: bool = True, **extra: str) -> dict[str, str]:
    env = base_env()
    env.update({
        "PRESENCE_KAFKA_BROKERS": BROKERS,
        "PRESENCE_TOPIC": topic,
        "PRESENCE_MONGO_URI": MONGO_URI,
        "PRESENCE_MONGO_DB": db,
        "PRESENCE_LOG_ROWS": "0",
    })
    if bounded:
        env["PRESENCE_STOP_AT_END"] = "1"
    env.update(extra)
    return env


def mongo():
    from pymongo import MongoClient

    return MongoClient(MONGO_URI, tz_aware=True, serverSelectionTimeoutMS=5000)
