"""Settings from PRESENCE_* variables (SPEC "Configuration")."""

from __future__ import annotations

import subprocess
import sys

import pytest

from presence.settings import SettingsError, load_settings, redact_uri
from tests.stack_helpers import REPO


def test_defaults_are_the_spec_table() -> None:
    s = load_settings({})
    assert (s.kafka_brokers, s.topic, s.mongo_uri, s.mongo_db) == (
        "127.0.0.1:9092", "driver-pings", "mongodb://127.0.0.1:27017", "presence")
    assert (s.window_minutes, s.bucket_seconds, s.allowed_lateness_seconds) == (5, 60, 30)
    assert (s.correction_horizon_minutes, s.idle_seconds, s.max_future_skew_seconds) == (60, 10, 300)
    assert s.stop_at_end is False and s.kafka_extra == {}
    spec = s.window_spec()
    assert (spec.bucket, spec.window, spec.lateness, spec.horizon, spec.idle) == (60, 300, 30, 3600, 10)


def test_values_are_read() -> None:
    s = load_settings({"PRESENCE_WINDOW_MINUTES": "10", "PRESENCE_BUCKET_SECONDS": "30",
                       "PRESENCE_STOP_AT_END": "1", "PRESENCE_KAFKA_CONFIG": '{"security.protocol": "SSL"}'})
    assert s.window_spec().window == 600 and s.window_spec().span == 20
    assert s.stop_at_end is True and s.kafka_extra == {"security.protocol": "SSL"}


@pytest.mark.parametrize("name, value", [
    ("PRESENCE_WINDOW_MINUTES", "abc"),
    ("PRESENCE_WINDOW_MINUTES", "0"),
    ("PRESENCE_BUCKET_SECONDS", "-5"),
    ("PRESENCE_BUCKET_SECONDS", "7"),  # 5 minutes is not a whole number of 7 s buckets
    ("PRESENCE_ALLOWED_LATENESS_SECONDS", "-1"),
    ("PRESENCE_CORRECTION_HORIZON_MINUTES", "x"),
    ("PRESENCE_IDLE_SECONDS", "0"),
    ("PRESENCE_MAX_FUTURE_SKEW_SECONDS", "soon"),
    ("PRESENCE_STOP_AT_END", "maybe"),
    ("PRESENCE_KAFKA_CONFIG", "{not json"),
    ("PRESENCE_KAFKA_CONFIG", "[1]"),
    ("PRESENCE_MONGO_URI", "http://example"),
    ("PRESENCE_MONGO_DB", "a.b"),
    ("PRESENCE_TOPIC", "bad topic"),
])
def test_a_bad_value_is_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({name: value})
    message = str(err.value)
    assert "\n" not in message and name in message


def test_secrets_never_appear() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"PRESENCE_MONGO_URI": "mongo://admin:hunter2@db"})
    assert "hunter2" not in str(err.value)
    s = load_settings({"PRESENCE_MONGO_URI": "mongodb://admin:hunter2@db:27017/x",
                       "PRESENCE_KAFKA_CONFIG": '{"sasl.password": "hunter2", "sasl.username": "u"}'})
    assert "hunter2" not in s.describe() and "admin:***@db" in s.describe()
    assert redact_uri("mongodb://db:27017") == "mongodb://db:27017"


def test_bad_setting_stops_start_up_with_one_line() -> None:
    env = {"PATH": "/usr/bin:/bin", "PRESENCE_WINDOW_MINUTES": "five",
           "PRESENCE_MONGO_URI": "mongodb://u:hunter2@127.0.0.1:1"}
    done = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflow"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == ["presence: bad setting: PRESENCE_WINDOW_MINUTES: Input should be a valid "
                     "integer, unable to parse string as an integer (got 'five')"]
    assert "hunter2" not in done.stderr + done.stdout
