"""Secrets never leak (issue 9.5, SPEC "Configuration").

A distinct secret is planted in every secret-bearing place of the settings
(both MongoDB URIs' passwords, with the characters that broke the old
redaction, their secret options, every secret Kafka key, the API token).
Then every log line of a dataflow start-up (Kafka down, MongoDB down, bad
settings), every HTTP body of the API (MongoDB down, Kafka down, bad
parameters) and every CLI error (bad parameters, servers down) is searched
for each of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from presence.tools.api import create_app
from presence.settings import load_settings
from tests.stack_helpers import REPO, closed_port, create_topic, delete_topic

PRESENCE = Path(sys.executable).parent / "presence"


DOWN_PORT = closed_port()

# Every secret, distinct, named by where it is planted.
SECRETS = {
    "mongo password with an unescaped #": "zqMpw1#hash",
    "mongo password percent-encoded (@ / ? inside)": "zqMpw2@/?enc",
    "mongo tlsCertificateKeyFilePassword": "zqMtls3",
    "mongo authMechanismProperties AWS_SESSION_TOKEN": "zqMaws4",
    "mongo password with unescaped / ? @ (refused URI)": "zqM5/?@raw",
    "kafka sasl.password": "zqKsasl6",
    "kafka sasl.oauthbearer.config clientSecret": "zqKoauth7",
    "kafka sasl.kerberos.kinit.cmd": "zqKkinit8",
    "kafka ssl.key.password": "zqKkeypw9",
    "kafka ssl.keystore.password": "zqKstore10",
    "kafka sasl.oauthbearer.client.secret": "zqKclient11",
    "kafka ssl.key.pem": "zqKpem12",
    "kafka sasl.username": "zqKuser13",
    "PRESENCE_API_TOKEN": "zqToken14",
}
S = list(SECRETS.values())

URI_AWS = (f"mongodb://AKIAZQ:{S[0]}@127.0.0.1:{DOWN_PORT}/presence?tls=true"
           f"&tlsCertificateKeyFilePassword={S[2]}&authMechanism=MONGODB-AWS"
           f"&authMechanismProperties=AWS_SESSION_TOKEN:{S[3]}")
URI_ENCODED = (f"mongodb://app:{S[1].replace('@', '%40').replace('/', '%2F').replace('?', '%3F')}"
               f"@127.0.0.1:{DOWN_PORT}/presence?appname=zz")
URI_REFUSED = f"mongodb://app:{S[4]}@127.0.0.1:{DOWN_PORT}/presence"
KAFKA_OK = json.dumps({
    "sasl.username": S[12], "sasl.password": S[5],
    "sasl.oauthbearer.config": f"clientSecret={S[6]} principal=presence",
    "sasl.kerberos.kinit.cmd": f"kinit -R -t {S[7]} -k presence",
    "ssl.key.password": S[8], "ssl.keystore.password": S[9],
    "sasl.oauthbearer.client.secret": S[10],
})
KAFKA_REFUSED = json.dumps({  # librdkafka refuses the key: the error must not echo it
    "security.protocol": "SSL", "ssl.key.password": S[8],
    "ssl.key.pem": f"-----BEGIN PRIVATE KEY-----\n{S[11]}\n-----END PRIVATE KEY-----",
})


def secret_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    env.update(PRESENCE_MONGO_URI=URI_AWS, PRESENCE_KAFKA_CONFIG=KAFKA_OK,
               PRESENCE_API_TOKEN=S[13], PRESENCE_KAFKA_BROKERS=f"127.0.0.1:{DOWN_PORT}",
               PRESENCE_LOG_LEVEL="DEBUG")
    env.update(overrides)
    return env


CHECKED: list[tuple[str, str]] = []
"""(what, text) of every output searched; its size is reported by the last test."""


def assert_no_secret(what: str, text: str) -> None:
    CHECKED.append((what, text))
    for where, secret in SECRETS.items():
        for form in {secret, secret.replace("@", "%40").replace("/", "%2F").replace("?", "%3F")}:
            assert form not in text, f"{where} ({form!r}) leaked in {what}:\n{text}"


def run(args: list[str], env: dict[str, str], cwd: Path = REPO, timeout: float = 120):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


DATAFLOW = [sys.executable, "-m", "presence.run", "dataflow"]


# ------------------------------------------------------------------ dataflow start-up


@pytest.mark.parametrize("case, overrides, code", [
    ("kafka down", {}, 1),
    ("kafka refuses its settings", {"PRESENCE_KAFKA_CONFIG": KAFKA_REFUSED}, 2),
    ("mongo uri refused", {"PRESENCE_MONGO_URI": URI_REFUSED}, 2),
    ("bad other setting", {"PRESENCE_WINDOW_MINUTES": "five"}, 2),
    ("forbidden kafka key", {"PRESENCE_KAFKA_CONFIG": json.dumps({"group.id": S[5]})}, 2),
    ("bad token", {"PRESENCE_API_TOKEN": f"{S[13]} x"}, 2),
])
def test_dataflow_start_up_failures_show_no_secret(case, overrides, code):
    done = run(DATAFLOW, secret_env(**overrides))
    assert done.returncode == code, done.stderr
    assert_no_secret(f"dataflow start-up, {case}", done.stdout + done.stderr)


@pytest.mark.stack
@pytest.mark.parametrize("uri", [URI_AWS, URI_ENCODED], ids=["aws-uri", "encoded-uri"])
def test_dataflow_mongo_down_shows_no_secret(kafka_brokers, unique_name, uri):
    create_topic(kafka_brokers, unique_name, 1)
    try:
        done = run(DATAFLOW, secret_env(PRESENCE_KAFKA_BROKERS=kafka_brokers,
                                        PRESENCE_TOPIC=unique_name, PRESENCE_MONGO_URI=uri))
    finally:
        delete_topic(kafka_brokers, unique_name)
    assert done.returncode == 1, done.stderr
    assert "MongoDB at mongodb://127.0.0.1:" in done.stderr
    assert_no_secret("dataflow start-up, mongo down", done.stdout + done.stderr)


# ------------------------------------------------------------------ the API


PATHS = ["/healthz", "/status", "/metrics", "/reports", "/reports?from=banana",
         "/reports?from=2018-01-02&to=2018-01-01", "/reports?revision=maybe", "/nowhere",
         "/openapi.json", "/segments", "/zones", "/reports?segment=city&city=Paris"]


def api_bodies(settings) -> list[tuple[str, str]]:
    client = TestClient(create_app(settings, kafka_timeout=1.0), raise_server_exceptions=False)
    out = []
    with client:
        for path in PATHS:
            for headers in ({}, {"Authorization": f"Bearer {S[13]}"}):
                response = client.get(path, headers=headers)
                out.append((f"GET {path} -> {response.status_code}",
                            response.text + json.dumps(dict(response.headers))))
    return out


def test_api_with_mongo_and_kafka_down_shows_no_secret():
    for uri in (URI_AWS, URI_ENCODED):
        settings = load_settings({"PRESENCE_MONGO_URI": uri, "PRESENCE_KAFKA_CONFIG": KAFKA_OK,
                                  "PRESENCE_API_TOKEN": S[13],
                                  "PRESENCE_KAFKA_BROKERS": f"127.0.0.1:{DOWN_PORT}"})
        for what, body in api_bodies(settings):
            assert_no_secret(f"API (mongo down) {what}", body)


@pytest.mark.stack
@pytest.mark.parametrize("kafka_config", [KAFKA_OK, KAFKA_REFUSED], ids=["kafka-down", "kafka-refused"])
def test_api_with_kafka_down_shows_no_secret(mongo_uri, unique_name, kafka_config):
    settings = load_settings({"PRESENCE_MONGO_URI": mongo_uri, "PRESENCE_MONGO_DB": unique_name,
                              "PRESENCE_KAFKA_CONFIG": kafka_config, "PRESENCE_API_TOKEN": S[13],
                              "PRESENCE_KAFKA_BROKERS": f"127.0.0.1:{DOWN_PORT}"})
    for what, body in api_bodies(settings):
        assert_no_secret(f"API (kafka down) {what}", body)


# ------------------------------------------------------------------ the CLI


CLI_CASES = [
    ("report, mongo down", ["report"], {}, 1),
    ("report json, mongo down (encoded uri)", ["report", "--format", "json"],
     {"PRESENCE_MONGO_URI": URI_ENCODED}, 1),
    ("plot, mongo down", ["plot", "-o", "never.png"], {}, 1),
    ("report --segment, mongo down", ["report", "--segment", "city=Paris"], {}, 1),
    ("zones, mongo down", ["zones"], {}, 1),
    ("report, bad --from", ["report", "--from", "banana"], {}, 2),
    ("report, refused uri", ["report"], {"PRESENCE_MONGO_URI": URI_REFUSED}, 2),
    ("report, bad setting", ["report"], {"PRESENCE_BUCKET_SECONDS": "7"}, 2),
    ("simulate, kafka down", ["simulate", "--drivers", "3", "--minutes", "1", "--fast",
                              "--no-progress"], {}, 1),
    ("simulate, kafka refuses its settings", ["simulate", "--drivers", "3", "--minutes", "1",
                                               "--fast", "--no-progress"],
     {"PRESENCE_KAFKA_CONFIG": KAFKA_REFUSED}, 2),
    ("simulate, bad --topic", ["simulate", "--topic", "bad topic"], {}, 2),
    ("serve, mongo down, bad port", ["serve", "--port", "99999"], {}, 2),
]


@pytest.mark.parametrize("case, args, overrides, code", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_errors_show_no_secret(case, args, overrides, code, tmp_path):
    done = run([str(PRESENCE), *args], secret_env(**overrides), cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    assert_no_secret(f"CLI {case}", done.stdout + done.stderr)


def test_zz_figures():
    """Prints the figures the README quotes (placements, outputs searched)."""
    print(f"\nsecret placements: {len(SECRETS)}; outputs searched: {len(CHECKED)}; "
          f"string checks: {len(CHECKED) * len(SECRETS)}")
    assert len(SECRETS) >= 10
