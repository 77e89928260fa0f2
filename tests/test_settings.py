"""Settings from PRESENCE_* variables (SPEC "Configuration")."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hypothesis import given, settings as hsettings, strategies as st

from presence.core.segments import parse_segments
from presence.settings import (
    KAFKA_FORBIDDEN, SettingsError, load_settings, mongo_hosts, scrub, uri_secrets,
)
from tests.stack_helpers import REPO


def test_defaults_are_the_spec_table() -> None:
    s = load_settings({})
    assert (s.kafka_brokers, s.topic, s.mongo_uri, s.mongo_db) == (
        "127.0.0.1:9092", "driver-pings", "mongodb://127.0.0.1:27017", "presence")
    assert (s.window_minutes, s.bucket_seconds, s.allowed_lateness_seconds) == (5, 60, 30)
    assert (s.correction_horizon_minutes, s.idle_seconds, s.max_future_skew_seconds) == (60, 10, 300)
    assert s.stop_at_end is False and s.kafka_extra == {}
    spec = s.window_spec()
    assert (spec.bucket_s, spec.window_s, spec.lateness_s, spec.horizon_s, spec.idle_s) == (60, 300, 30, 3600, 10)


def test_values_are_read() -> None:
    s = load_settings({"PRESENCE_WINDOW_MINUTES": "10", "PRESENCE_BUCKET_SECONDS": "30",
                       "PRESENCE_STOP_AT_END": "1", "PRESENCE_KAFKA_CONFIG": '{"security.protocol": "SSL"}'})
    assert s.window_spec().window_s == 600 and s.window_spec().span == 20
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
    # Non-finite or absurd values (issue 9.4).
    ("PRESENCE_CORRECTION_HORIZON_MINUTES", "inf"),
    ("PRESENCE_CORRECTION_HORIZON_MINUTES", "1e9"),
    ("PRESENCE_ALLOWED_LATENESS_SECONDS", "nan"),
    ("PRESENCE_ALLOWED_LATENESS_SECONDS", "1e12"),
    ("PRESENCE_IDLE_SECONDS", "nan"),
    ("PRESENCE_IDLE_SECONDS", "-inf"),
    ("PRESENCE_IDLE_SECONDS", "1e12"),
    ("PRESENCE_MAX_FUTURE_SKEW_SECONDS", "1e13"),
    ("PRESENCE_MAX_FUTURE_SKEW_SECONDS", "NaN"),
    ("PRESENCE_PROGRESS_SECONDS", "inf"),
    ("PRESENCE_KAFKA_CONFIG", '{"fetch.wait.max.ms": NaN}'),
    # New SPEC settings.
    ("PRESENCE_SEGMENTS", "city;;h3:8"),
    ("PRESENCE_SEGMENTS", "h3:16"),
    ("PRESENCE_SEGMENTS", "h3:7,h3:8"),
    ("PRESENCE_SEGMENTS", "city,city"),
    ("PRESENCE_SEGMENTS", "city;city"),
    ("PRESENCE_SEGMENTS", "country"),
    ("PRESENCE_MAX_SEGMENT_VALUES", "0"),
    ("PRESENCE_MAX_SEGMENT_VALUES", "many"),
    ("PRESENCE_DEAD_LETTER_TTL_DAYS", "0"),
    ("PRESENCE_DEAD_LETTER_TTL_DAYS", "-1"),
    ("PRESENCE_CORS_ORIGINS", "https://a.example/"),
    ("PRESENCE_CORS_ORIGINS", "a.example"),
    ("PRESENCE_CORS_ORIGINS", "*,https://a.example"),
    ("PRESENCE_CORS_ORIGINS", "https://a.example,,https://b.example"),
    ("PRESENCE_CORS_ORIGINS", "https://a.example:99999"),
    ("PRESENCE_METRICS_PORT", "0"),
    ("PRESENCE_METRICS_PORT", "65536"),
    ("PRESENCE_API_TOKEN", "two words"),
    # Set but empty (issue 14.8).
    ("PRESENCE_TOPIC", ""),
    ("PRESENCE_KAFKA_BROKERS", ""),
    ("PRESENCE_MONGO_URI", ""),
    ("PRESENCE_WINDOW_MINUTES", " "),
    ("PRESENCE_KAFKA_CONFIG", ""),
])
def test_a_bad_value_is_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({name: value})
    message = str(err.value)
    assert "\n" not in message and name in message


def test_a_window_of_more_than_1440_buckets_is_refused() -> None:
    assert load_settings({"PRESENCE_WINDOW_MINUTES": "1440"}).window_spec().span == 1440
    with pytest.raises(SettingsError, match="PRESENCE_WINDOW_MINUTES.*1,440"):
        load_settings({"PRESENCE_WINDOW_MINUTES": "25", "PRESENCE_BUCKET_SECONDS": "1"})


def test_bounds_that_are_accepted() -> None:
    s = load_settings({"PRESENCE_MAX_FUTURE_SKEW_SECONDS": "86400",
                       "PRESENCE_CORRECTION_HORIZON_MINUTES": "10080",
                       "PRESENCE_ALLOWED_LATENESS_SECONDS": "0"})
    assert s.max_future_skew_seconds == 86400 and s.correction_horizon_minutes == 10080


@pytest.mark.parametrize("key", sorted(KAFKA_FORBIDDEN))
def test_kafka_keys_that_break_the_guarantees_are_refused(key: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"PRESENCE_KAFKA_CONFIG": json.dumps({key: "SECRETVALUE1"})})
    message = str(err.value)
    assert message.startswith("PRESENCE_KAFKA_CONFIG: ") and repr(key) in message
    assert "SECRETVALUE1" not in message and "\n" not in message


def test_new_spec_settings_defaults_and_values() -> None:
    s = load_settings({})
    assert (s.segments, s.max_segment_values, s.dead_letter_ttl_days) == ("", 50_000, 30)
    assert (s.api_token, s.cors_origins, s.metrics_port) == ("", (), None)
    s = load_settings({"PRESENCE_SEGMENTS": "city; city,vehicle_type ;h3:8",
                       "PRESENCE_MAX_SEGMENT_VALUES": "10", "PRESENCE_DEAD_LETTER_TTL_DAYS": "7",
                       "PRESENCE_API_TOKEN": "s3cr3t-t0ken", "PRESENCE_METRICS_PORT": "9100",
                       "PRESENCE_CORS_ORIGINS": "https://a.example, http://localhost:3000"})
    assert tuple(d.dimensions for d in s.segment_definitions) == (
        ("city",), ("city", "vehicle_type"), ("h3:8",))
    assert (s.max_segment_values, s.dead_letter_ttl_days, s.metrics_port) == (10, 7, 9100)
    assert s.cors_origins == ("https://a.example", "http://localhost:3000")
    assert load_settings({"PRESENCE_CORS_ORIGINS": "*"}).cors_origins == ("*",)
    assert "s3cr3t-t0ken" not in s.describe()


def test_empty_means_off_only_for_the_settings_that_default_to_off() -> None:
    s = load_settings({"PRESENCE_SEGMENTS": "", "PRESENCE_API_TOKEN": "",
                       "PRESENCE_CORS_ORIGINS": "", "PRESENCE_METRICS_PORT": ""})
    assert (s.segments, s.api_token, s.cors_origins, s.metrics_port) == ("", "", (), None)
    with pytest.raises(SettingsError) as err:
        load_settings({"PRESENCE_TOPIC": ""})
    assert str(err.value).startswith("PRESENCE_TOPIC is set but empty")


def test_segment_syntax() -> None:
    """PRESENCE_SEGMENTS is checked by the one parser of the core."""
    assert parse_segments("") == ()
    assert [d.dimensions for d in parse_segments("h3:0;h3:15,city")] == [("h3:0",), ("h3:15", "city")]
    assert load_settings({"PRESENCE_SEGMENTS": "h3:0;h3:15,city"}).segments == "h3:0;h3:15,city"
    for bad in ("h3", "h3:x", "h3:-1", "city,", ";", "vehicle_type;vehicle_type"):
        with pytest.raises(ValueError):
            parse_segments(bad)
        with pytest.raises(SettingsError, match="PRESENCE_SEGMENTS"):
            load_settings({"PRESENCE_SEGMENTS": bad})


def test_setting_values_cross_the_cli_round_trip() -> None:
    s = load_settings({"PRESENCE_CORS_ORIGINS": "https://a.example"})
    again = type(s).model_validate(s.model_dump())
    assert again == s


# ------------------------------------------------------------------ secrets


URIS = [
    # (uri, secrets that must never show, hosts shown)
    ("mongodb://app:pa#ss@db1:27017,db2:27018/presence?replicaSet=rs0",
     ["pa#ss"], "mongodb://db1:27017,db2:27018"),
    ("mongodb://app:p%40ss%2Fw%3Fd@db1/?tls=true&tlsCertificateKeyFilePassword=KEYPW99",
     ["p%40ss%2Fw%3Fd", "p@ss/w?d", "KEYPW99"], "mongodb://db1"),
    ("mongodb://h:1/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:TOK987",
     ["TOK987"], "mongodb://h:1"),
    ("mongodb+srv://app:srvpass55@cluster0.example.net/db?retryWrites=true",
     ["srvpass55"], "mongodb+srv://cluster0.example.net"),
]


@pytest.mark.parametrize("uri, secrets, hosts", URIS)
def test_a_uri_is_shown_as_its_hosts_only(uri: str, secrets: list[str], hosts: str) -> None:
    s = load_settings({"PRESENCE_MONGO_URI": uri})
    assert mongo_hosts(uri) == hosts
    line = s.describe()
    assert f"mongo {hosts} db" in line and "app" not in line
    for secret in secrets:
        assert secret not in line
        assert scrub(f"pymongo said {secret}!", uri_secrets(uri)) == "pymongo said ***!"


@pytest.mark.parametrize("uri", [
    "mongodb://app:pa/ss99@db:27017",  # unescaped '/'
    "mongodb://app:12/ss99@db:27017",  # unescaped '/' after digits: "app:12" looks like a host
    "mongodb://app:pa?ss99@db:27017",  # unescaped '?'
    "mongodb://app:p@ss99@db:27017",  # unescaped '@'
    "mongodb://app:p%zss99@db:27017",  # stray '%'
    "mongo://app:pass99@db",
    "mongodb://db/?tls=pass99maybe",
    "mongodb://db/?authMechanismProperties=pass99",
])
def test_an_unusable_uri_is_refused_without_echoing_it(uri: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings({"PRESENCE_MONGO_URI": uri})
    message = str(err.value)
    assert message.startswith("PRESENCE_MONGO_URI: ") and "\n" not in message
    assert "ss99" not in message and "pass99" not in message


def test_kafka_settings_are_shown_through_an_allow_list() -> None:
    config = {"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER",
              "sasl.password": "KPASS1", "sasl.username": "KUSER2",
              "sasl.oauthbearer.config": "clientSecret=KOAUTH3 scope=presence",
              "sasl.kerberos.kinit.cmd": "kinit -k -t KKINIT4", "ssl.key.password": "KKEYPW5",
              "ssl.keystore.password": "KSTORE6", "ssl.key.pem": "-----BEGIN KPEM7-----",
              "fetch.wait.max.ms": 50}
    s = load_settings({"PRESENCE_KAFKA_CONFIG": json.dumps(config)})
    shown = s.kafka_shown()
    assert shown["security.protocol"] == "SASL_SSL" and shown["fetch.wait.max.ms"] == 50
    assert shown["sasl.password"] == "***" and shown["sasl.username"] == "***"
    line = s.describe()
    for secret in ("KPASS1", "KUSER2", "KOAUTH3", "KKINIT4", "KKEYPW5", "KSTORE6", "KPEM7"):
        assert secret not in line
    for key, value in config.items():
        if key not in ("security.protocol", "sasl.mechanism", "fetch.wait.max.ms",
                       "sasl.username"):  # a name: hidden when shown, not scrubbed
            said = s.scrub(f'librdkafka: Invalid value "{value}" for "{key}"')
            assert str(value) not in said and "***" in said


@hsettings(max_examples=200, deadline=None)
@given(password=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)),
                        min_size=3, max_size=30))
def test_any_password_is_hidden_or_refused(password: str) -> None:
    """Whatever the password's characters, the start-up line never shows it."""
    uri = f"mongodb://app:{password}@db.example:27017/presence"
    try:
        s = load_settings({"PRESENCE_MONGO_URI": uri})
    except SettingsError as exc:
        assert password not in str(exc)
        return
    line = s.describe()
    # The mongo part of the line (the whole line if the password itself held the
    # separator: describe() masks every occurrence of it, separators included).
    mongo = next((part for part in line.split(" | ") if part.startswith("mongo ")), line)
    assert password not in mongo


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


def test_the_local_stacks_variables_have_their_own_prefix(caplog) -> None:
    """STACK_* (stack/stack.sh) is no business of the dataflow's; the former
    PRESENCE_KAFKA_PORT & co. are now unknown PRESENCE_* names and get the warning."""
    with caplog.at_level("WARNING", logger="presence.settings"):
        load_settings({"STACK_KAFKA_PORT": "19092", "STACK_STATE": "/tmp/x", "PRESENCE_DEBUG": "1",
                       "PRESENCE_TEST_SEED": "3"})
    assert not caplog.records
    with caplog.at_level("WARNING", logger="presence.settings"):
        load_settings({"PRESENCE_KAFKA_PORT": "19092", "PRESENCE_STACK_STATE": "/tmp/x"})
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "PRESENCE_KAFKA_PORT is not a presence setting" in warned
    assert "PRESENCE_STACK_STATE is not a presence setting" in warned
