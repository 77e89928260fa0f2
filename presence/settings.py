"""Settings from ``PRESENCE_*`` environment variables (SPEC "Configuration").

Validated once at start-up; a bad value raises :class:`SettingsError` whose
message is one line naming the variable (and never echoing a secret).

Secrets (the MongoDB URI's password and secret options, every Kafka setting
outside :data:`KAFKA_SHOWN`, ``PRESENCE_API_TOKEN``) are never formatted into
a message by presence itself: a URI is shown as its host list only
(:func:`mongo_hosts`), Kafka settings through an allow-list
(:meth:`Settings.describe`). Texts that come from libraries (pymongo,
librdkafka, pydantic) go through :func:`scrub`, which replaces every secret
string presence knows of with ``***``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from typing import Any, Iterable, Mapping
from urllib.parse import unquote, unquote_plus

from pydantic import (
    BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator,
)

from presence.core.partition import reader_in_use
from presence.core.segments import SegmentDefinition, parse_segments
from presence.core.windows import WindowSpec

log = logging.getLogger("presence.settings")

PREFIX = "PRESENCE_"

MAX_WINDOW_BUCKETS = 1440
"""Most buckets in one window (a day of one-minute buckets): bounds the panes per row."""
MAX_FUTURE_SKEW = 24 * 3600.0
"""``PRESENCE_MAX_FUTURE_SKEW_SECONDS`` at most one day (see README, "Settings")."""

# ------------------------------------------------------------------ Kafka settings

KAFKA_FORBIDDEN = {
    "bootstrap.servers": "set PRESENCE_KAFKA_BROKERS instead",
    "metadata.broker.list": "set PRESENCE_KAFKA_BROKERS instead",
    "group.id": "presence keeps its offsets in the recovery snapshot, never in a consumer group",
    "group.instance.id": "presence never joins a consumer group",
    "enable.auto.commit": "offsets are kept in the recovery snapshot, never committed",
    "auto.commit.enable": "offsets are kept in the recovery snapshot, never committed",
    "enable.auto.offset.store": "offsets are kept in the recovery snapshot, never stored",
    "auto.offset.reset": "a purged offset must resume at the earliest retained one, never the end",
    "enable.partition.eof": "bounded runs detect the end of a partition themselves",
    "isolation.level": "presence reads committed messages only (read_committed)",
    "logger": "librdkafka's log lines go through presence's logging",
    "log_cb": "librdkafka's log lines go through presence's logging",
    "error_cb": "set by presence",
}
"""Keys ``PRESENCE_KAFKA_CONFIG`` may not set: they would break the SPEC's guarantees."""

KAFKA_SHOWN = frozenset({
    "client.id", "client.rack", "security.protocol", "sasl.mechanism", "sasl.mechanisms",
    "sasl.kerberos.service.name", "sasl.oauthbearer.method", "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification", "ssl.ca.location", "ssl.certificate.location",
    "ssl.key.location", "ssl.keystore.location", "ssl.crl.location", "ssl.providers",
    "ssl.cipher.suites", "ssl.curves.list", "ssl.sigalgs.list", "api.version.request",
    "broker.version.fallback", "fetch.wait.max.ms", "fetch.min.bytes", "fetch.max.bytes",
    "fetch.queue.backoff.ms", "fetch.error.backoff.ms", "max.partition.fetch.bytes",
    "fetch.message.max.bytes", "queued.min.messages", "queued.max.messages.kbytes",
    "receive.message.max.bytes", "message.max.bytes", "socket.timeout.ms",
    "socket.connection.setup.timeout.ms", "socket.keepalive.enable", "socket.nagle.disable",
    "socket.send.buffer.bytes", "socket.receive.buffer.bytes", "reconnect.backoff.ms",
    "reconnect.backoff.max.ms", "retry.backoff.ms", "retry.backoff.max.ms",
    "topic.metadata.refresh.interval.ms", "metadata.max.age.ms", "request.timeout.ms",
    "check.crcs", "client.dns.lookup", "broker.address.family", "statistics.interval.ms",
    "log_level", "debug", "compression.type", "compression.codec", "linger.ms", "batch.size",
    "batch.num.messages", "message.timeout.ms", "queue.buffering.max.messages",
    "queue.buffering.max.kbytes", "queue.buffering.max.ms", "acks", "enable.idempotence",
})
"""Kafka settings harmless enough to show with their value; any other is shown as ``***``."""

_KAFKA_NAMES = frozenset({"sasl.username", "sasl.oauthbearer.client.id",
                          "sasl.kerberos.principal", "ssl.keystore.location"})
"""Hidden when settings are shown, but names, not secrets: not scrubbed from other texts
(a user name such as ``presence`` would garble every line)."""

_SECRET_WORDS = ("password", "secret", "token", "key", "credential", "jaas", "cmd", "config", "pem")

# ------------------------------------------------------------------ CORS

_ORIGIN = re.compile(
    r"https?://(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{1,5}))?"
)


def parse_origins(value: Any) -> tuple[str, ...]:
    """``https://a.example,http://localhost:3000`` or ``*``; empty = same origin only."""
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        text = str(value).strip()
        if not text:
            return ()
        items = text.split(",")
    origins = tuple(item.strip() for item in items)
    if any(not origin for origin in origins):
        raise ValueError("an origin in the list is empty (a stray ',')")
    if "*" in origins:
        if len(origins) > 1:
            raise ValueError("'*' allows every origin: give it alone")
        return origins
    for origin in origins:
        match = _ORIGIN.fullmatch(origin)
        if not match or (match["port"] is not None and not 0 < int(match["port"]) <= 65535):
            raise ValueError(f"{origin[:80]!r} is not an origin like https://host or "
                             "http://host:port (no path, no trailing '/')")
    return origins


# ------------------------------------------------------------------ MongoDB URIs

_SCHEMES = ("mongodb://", "mongodb+srv://")
_HOST = re.compile(
    r"(?:\[[0-9A-Fa-f:.%a-zA-Z]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|"
    r"[^/?#@\[\]:,]+\.sock)(?::\d{1,5})?"
)
_URI_SECRET_OPTIONS = ("tlscertificatekeyfilepassword", "sslpemkeypassword",
                       "sslclientcertificatekeypassword", "authmechanismproperties", "password")


def _split_uri(uri: str) -> tuple[str, str, str, str, str] | None:
    """(scheme, userinfo, hosts, database, options) the way pymongo reads a URI."""
    scheme = next((s for s in _SCHEMES if uri.startswith(s)), None)
    if scheme is None:
        return None
    rest = uri[len(scheme):]
    host_plus_db, _, opts = rest.partition("?")
    host_part, _, dbase = host_plus_db.partition("/")
    userinfo, _, hosts = host_part.rpartition("@")
    return scheme, userinfo, hosts, dbase, opts


def mongo_hosts(uri: str) -> str:
    """A MongoDB URI shown as its scheme and host list only: never user, password or options."""
    parts = _split_uri(uri)
    if parts is None:
        return "<MongoDB URI>"
    scheme, _, hosts, _, _ = parts
    if not hosts or not all(_HOST.fullmatch(h) for h in hosts.split(",")):
        return f"{scheme}<hosts not shown>"
    return scheme + hosts


def _check_mongo_uri(uri: str) -> None:
    """Raise ValueError (a message that never contains any part of the URI) if unusable."""
    parts = _split_uri(uri)
    if parts is None:
        raise ValueError("must start with mongodb:// or mongodb+srv://")
    scheme, userinfo, hosts, dbase, opts = parts
    encode = ("percent-encode any ':', '/', '?', '#', '[', ']', '@' or '%' in the user name "
              "and password (urllib.parse.quote_plus); the value is not shown")
    if userinfo and ("@" in userinfo or userinfo.count(":") > 1
                     or re.search(r"%(?![0-9A-Fa-f]{2})", userinfo)):
        raise ValueError(f"cannot read its user name and password: {encode}")
    if not hosts or not all(_HOST.fullmatch(h) for h in hosts.split(",")) or "@" in dbase:
        raise ValueError(f"cannot read its host list: {encode}")
    if scheme == "mongodb+srv://" and ("," in hosts or ":" in hosts):
        raise ValueError("a mongodb+srv:// URI names exactly one host, without a port")
    if opts:
        from pymongo import common

        known = {k.lower() for k in common.URI_OPTIONS_VALIDATOR_MAP}
        known |= {k.lower() for k in getattr(common, "URI_OPTIONS_ALIAS_MAP", {})}
        known |= {k.lower() for k in getattr(common, "URI_OPTIONS_DEPRECATION_MAP", {})}
        for number, option in enumerate(re.split(r"[&;]", opts), 1):
            key, eq, _ = option.partition("=")
            if not eq or not key:
                raise ValueError(f"option {number} is not key=value ({encode})")
            if key.lower() not in known:
                shown = repr(key) if re.fullmatch(r"[A-Za-z]{1,40}", key) else f"number {number}"
                raise ValueError(f"unknown option {shown} (see pymongo's connection string options)")
    try:
        try:
            from pymongo.uri_parser_shared import _validate_uri
        except ImportError:  # pragma: no cover - older pymongo
            _validate_uri = None
        if _validate_uri is not None:
            _validate_uri(uri, validate=True, warn=False)
        elif scheme == "mongodb://":  # pragma: no cover
            from pymongo.uri_parser import parse_uri

            parse_uri(uri, validate=True, warn=False)
    except Exception as exc:  # noqa: BLE001 - pymongo's message, without secrets
        text = " ".join(str(exc).split())[:200]
        raise ValueError(f"pymongo cannot use it: {scrub(text, uri_secrets(uri))}") from None


def uri_secrets(uri: str) -> set[str]:
    """Every string of a MongoDB URI that could be a secret (for :func:`scrub`).

    Generous on purpose: whatever ``@`` ends the user information (an
    unescaped ``@``, ``/``, ``?`` or ``#`` in a password moves it), each
    candidate password is included, decoded and as written, and so are the
    values of secret options (``tlsCertificateKeyFilePassword``,
    ``authMechanismProperties``...).
    """
    out: set[str] = set()
    scheme = next((s for s in _SCHEMES if uri.startswith(s)), None)
    rest = uri[len(scheme):] if scheme else uri
    colon = rest.find(":")
    if colon >= 0:
        for at in (m.start() for m in re.finditer("@", rest)):
            if at > colon + 1:
                out.add(rest[colon + 1:at])
    for question in (m.start() for m in re.finditer(r"\?", rest)):
        for option in re.split(r"[&;]", rest[question + 1:]):
            key, _, value = option.partition("=")
            if value and (key.lower() in _URI_SECRET_OPTIONS
                          or any(w in key.lower() for w in ("password", "secret", "token", "key"))):
                if key.lower() == "tlscertificatekeyfile":
                    continue  # a file name, not a secret
                out.add(value)
                for item in re.split(r"[,]", unquote(value)):
                    out.add(item.partition(":")[2])
    return _with_encodings(out)


def kafka_secrets(config: Mapping[str, Any] | str) -> set[str]:
    """The values of every Kafka setting not in :data:`KAFKA_SHOWN` that could be secret."""
    if isinstance(config, str):
        try:
            parsed = json.loads(config)
        except ValueError:
            # Unparsable: every string literal in it may be a secret.
            return _with_encodings({m for m in re.findall(r'"((?:[^"\\]|\\.)*)"', config)}
                                   | {config})
        if not isinstance(parsed, dict):
            return _with_encodings({config})
        config = parsed
    out: set[str] = set()
    for key, value in config.items():
        if (str(key) in KAFKA_SHOWN or str(key) in _KAFKA_NAMES or isinstance(value, bool)
                or value is None):
            continue
        if isinstance(value, (int, float)) and not any(w in str(key).lower() for w in _SECRET_WORDS):
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        out.add(text)
        # sasl.oauthbearer.config and friends: "clientSecret=... scope=...";
        # commands (sasl.kerberos.kinit.cmd) and PEM blocks: their longer words.
        for piece in re.split(r"[\s,;]+", text):
            if "=" in piece:
                out.add(piece.partition("=")[2].strip("\"'"))
            word = piece.strip("-\"'")
            if len(word) >= 6 and not word.isalpha():
                out.add(word)
    return _with_encodings(out)


def _with_encodings(values: Iterable[str]) -> set[str]:
    out = set()
    for value in values:
        for form in (value, unquote(value), unquote_plus(value), json.dumps(value)[1:-1]):
            if len(form) >= MIN_SECRET:
                out.add(form)
    return out


MIN_SECRET = 3
"""Shorter strings are not scrubbed from library texts (they would garble every message)."""

_KNOWN: set[str] = set()
_KNOWN_LOCK = threading.Lock()


def remember_secrets(secrets: Iterable[str]) -> None:
    """Add to the secrets :func:`scrub` always removes (this process's settings)."""
    with _KNOWN_LOCK:
        _KNOWN.update(s for s in secrets if len(s) >= MIN_SECRET)


def env_secrets(env: Mapping[str, str] | None = None) -> set[str]:
    """The secrets in the environment's ``PRESENCE_*`` values, valid or not."""
    source = os.environ if env is None else env
    out = set()
    if source.get("PRESENCE_MONGO_URI"):
        out |= uri_secrets(source["PRESENCE_MONGO_URI"])
    if source.get("PRESENCE_KAFKA_CONFIG"):
        out |= kafka_secrets(source["PRESENCE_KAFKA_CONFIG"])
    if source.get("PRESENCE_API_TOKEN"):
        out |= _with_encodings({source["PRESENCE_API_TOKEN"]})
    return out


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret (and ``secrets``) replaced by ``***``."""
    with _KNOWN_LOCK:
        every = _KNOWN | {s for s in secrets if len(s) >= MIN_SECRET}
    for secret in sorted(every, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


class SecretFilter(logging.Filter):
    """A logging filter that scrubs every record's message (see :func:`scrub`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _KNOWN_LOCK:
            empty = not _KNOWN
        if empty:
            return True
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


# ------------------------------------------------------------------ settings


class SettingsError(ValueError):
    """A bad setting: the message is one line naming the variable."""


class Settings(BaseModel):
    """Every setting, with the SPEC's defaults (field ``x`` is ``PRESENCE_X``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kafka_brokers: str = Field("127.0.0.1:9092", min_length=1)
    topic: str = Field("driver-pings", min_length=1, max_length=249)
    kafka_config: str = "{}"
    """JSON object of extra librdkafka settings (SASL, TLS...)."""
    mongo_uri: str = "mongodb://127.0.0.1:27017"
    mongo_db: str = Field("presence", min_length=1, max_length=63)
    window_minutes: int = Field(5, gt=0, le=24 * 60)
    bucket_seconds: int = Field(60, gt=0, le=24 * 3600)
    allowed_lateness_seconds: float = Field(30, ge=0, le=24 * 3600)
    correction_horizon_minutes: float = Field(60, ge=0, le=7 * 24 * 60)
    idle_seconds: float = Field(10, gt=0, le=24 * 3600)
    max_future_skew_seconds: float = Field(300, ge=0, le=MAX_FUTURE_SKEW)
    stop_at_end: bool = False
    segments: str = ""
    """``;``-separated segment definitions (SPEC "Segments"); empty = global report only."""
    max_segment_values: int = Field(50_000, gt=0, le=10_000_000)
    dead_letter_ttl_days: int = Field(30, gt=0, le=36_500)
    api_token: str = Field("", max_length=4096)
    """Bearer token every HTTP endpoint but /healthz requires; empty = none."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from a browser; ``("*",)`` = any; empty = same origin."""
    metrics_port: int | None = Field(None, ge=1, le=65535)
    """Port of the dataflow's own Prometheus endpoint; None = off."""
    map_tiles: str = Field("", max_length=2048)
    """Tile URL template (``{z}``, ``{x}``, ``{y}``) under the dashboard's zone map; empty = none."""
    # Not in the SPEC table; documented in the README.
    log_rows: bool = True
    """One INFO line per row written (turn off at high volume)."""
    log_level: str = "INFO"
    progress_seconds: float = Field(10, gt=0, le=24 * 3600)
    kafka_batch_size: int = Field(5000, gt=0, le=1_000_000)
    reader: str = "auto"
    """Partition reader: ``auto`` (the compiled one when built), ``python``, ``native``."""

    @field_validator("kafka_brokers")
    @classmethod
    def _brokers(cls, value: str) -> str:
        if any(c.isspace() for c in value) or "@" in value or any(
                not b for b in value.split(",")):
            raise ValueError("must be host:port[,host:port...] without spaces")
        return value

    @field_validator("topic")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", value):
            raise ValueError("use only letters, digits, '.', '_' and '-'")
        return value

    @field_validator("kafka_config")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError, RecursionError):
            raise ValueError("must be a JSON object (it is not valid JSON)") from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object")
        for key, val in parsed.items():
            if key in KAFKA_FORBIDDEN:
                raise ValueError(f"{key!r} may not be set: {KAFKA_FORBIDDEN[key]}")
            if not isinstance(val, (str, int, float, bool)):
                raise ValueError(f"value of {key[:60]!r} must be a string, number or boolean")
        return value

    @field_validator("mongo_uri")
    @classmethod
    def _mongo_uri(cls, value: str) -> str:
        _check_mongo_uri(value)
        return value

    @field_validator("mongo_db")
    @classmethod
    def _db_name(cls, value: str) -> str:
        if re.search(r'[/\\. "$\x00]', value):
            raise ValueError("must not contain / \\ . space \" $")
        return value

    @field_validator("segments")
    @classmethod
    def _segments(cls, value: str) -> str:
        parse_segments(value)
        return value.strip()

    @field_validator("map_tiles")
    @classmethod
    def _map_tiles(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return value
        if not re.fullmatch(r"https?://[^\s/]+/\S*", value) or not all(
                part in value for part in ("{z}", "{x}", "{y}")):
            raise ValueError("must be an http(s) URL template with {z}, {x} and {y}, e.g. "
                             "https://tiles.example.org/{z}/{x}/{y}.png")
        if "@" in value.split("/")[2]:
            raise ValueError("must not carry a user name or password: every browser that "
                             "opens the dashboard gets this URL")
        return value

    @field_validator("api_token")
    @classmethod
    def _token(cls, value: str) -> str:
        if value and not re.fullmatch(r"[\x21-\x7e]+", value):
            raise ValueError("must be printable ASCII without spaces (it goes in an HTTP "
                             "header); the value is not shown")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> tuple[str, ...]:
        return parse_origins(value)

    @field_validator("reader")
    @classmethod
    def _reader(cls, value: str) -> str:
        value = value.strip().lower()
        reader_in_use(value)  # native but not built: a bad setting
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @model_validator(mode="after")
    def _window_is_whole_buckets(self) -> "Settings":
        if (self.window_minutes * 60) % self.bucket_seconds:
            raise ValueError(
                "PRESENCE_WINDOW_MINUTES: the window "
                f"({self.window_minutes} min) must be a whole multiple of "
                f"PRESENCE_BUCKET_SECONDS ({self.bucket_seconds} s)"
            )
        if self.window_minutes * 60 // self.bucket_seconds > MAX_WINDOW_BUCKETS:
            raise ValueError(
                f"PRESENCE_WINDOW_MINUTES: the window ({self.window_minutes} min) holds "
                f"{self.window_minutes * 60 // self.bucket_seconds:,} buckets of "
                f"PRESENCE_BUCKET_SECONDS ({self.bucket_seconds} s); at most "
                f"{MAX_WINDOW_BUCKETS:,}"
            )
        return self

    @property
    def kafka_extra(self) -> dict[str, Any]:
        return json.loads(self.kafka_config)

    @property
    def segment_definitions(self) -> tuple[SegmentDefinition, ...]:
        """:attr:`segments` parsed (:func:`presence.core.segments.parse_segments`)."""
        return parse_segments(self.segments)

    def secrets(self) -> set[str]:
        """Every secret string of these settings (see :func:`scrub`)."""
        out = uri_secrets(self.mongo_uri) | kafka_secrets(self.kafka_extra)
        if self.api_token:
            out |= _with_encodings({self.api_token})
        return out

    def scrub(self, text: str) -> str:
        """``text`` without any of these settings' secrets."""
        return scrub(text, self.secrets())

    def kafka_shown(self) -> dict[str, Any]:
        """``PRESENCE_KAFKA_CONFIG`` as it may be shown: values outside the allow-list hidden."""
        return {k: (v if k in KAFKA_SHOWN else "***") for k, v in self.kafka_extra.items()}

    def window_spec(self) -> WindowSpec:
        return WindowSpec(
            bucket_s=self.bucket_seconds,
            window_s=self.window_minutes * 60,
            lateness_s=self.allowed_lateness_seconds,
            horizon_s=self.correction_horizon_minutes * 60,
            idle_s=self.idle_seconds,
            max_future_skew_s=self.max_future_skew_seconds,
            segments=self.segment_definitions,
            max_segment_values=self.max_segment_values,
        )

    @property
    def reader_in_use(self) -> str:
        """``native`` or ``python``: the partition reader this process runs."""
        return reader_in_use(self.reader, self.window_spec())

    def describe(self) -> str:
        """One line for the start-up log: hosts only, Kafka settings through the allow-list."""
        extra = self.kafka_shown()
        line = (
            f"kafka {self.kafka_brokers} topic {self.topic}"
            + (f" config {json.dumps(extra)}" if extra else "")
            + f" | mongo {mongo_hosts(self.mongo_uri)} db {self.mongo_db}"
            + f" | window {self.window_minutes} min, bucket {self.bucket_seconds} s,"
            f" lateness {self.allowed_lateness_seconds:g} s,"
            f" horizon {self.correction_horizon_minutes:g} min,"
            f" idle {self.idle_seconds:g} s"
            + (f" | segments {self.segments}" if self.segments else "")
            + (" | bounded (stop at end)" if self.stop_at_end else " | live")
            + f" | reader {self.reader_in_use}"
        )
        return self.scrub(line)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


NOT_SETTINGS = ("PRESENCE_DEBUG", "PRESENCE_CHROMIUM")
NOT_SETTINGS_PREFIXES = ("PRESENCE_TEST_", "PRESENCE_BENCH_")
"""``PRESENCE_*`` variables read by presence's own tools (CLI tracebacks, the docs
pictures' browser, tests, bench), not the dataflow. The local stack's have their
own prefix, ``STACK_`` (stack/stack.sh)."""

SECRET_FIELDS = ("mongo_uri", "kafka_config", "api_token")
NOT_ECHOED = ("map_tiles",)
"""Not secrets, but their value is not repeated in an error (a tile URL may carry a key)."""

EMPTY_MEANS_OFF = ("segments", "api_token", "cors_origins", "metrics_port", "map_tiles")
"""Settings whose default is "off": set but empty means off. Any other empty one is an error."""


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the settings; raise :class:`SettingsError` on the first bad one.

    A variable set but empty is an error naming it (``PRESENCE_TOPIC=`` must
    not silently mean the default), except for the settings in
    :data:`EMPTY_MEANS_OFF`. An unknown ``PRESENCE_*`` variable gets a
    warning: a typo must not silently fall back to a default.
    """
    source = os.environ if env is None else env
    secrets = env_secrets(source)
    if env is None:  # this process's own settings: scrubbed from every log line and error
        remember_secrets(secrets)
    values: dict[str, Any] = {}
    for name, value in sorted(source.items()):
        if (not name.startswith(PREFIX) or name in NOT_SETTINGS
                or name.startswith(NOT_SETTINGS_PREFIXES)):
            continue
        field = name[len(PREFIX):].lower()
        if field not in Settings.model_fields:
            log.warning("%s is not a presence setting; ignored (see README, 'Settings')", name)
            continue
        if value.strip() == "":
            if field in EMPTY_MEANS_OFF:
                continue
            raise SettingsError(f"{name} is set but empty: give it a value or unset it "
                                f"(`unset {name}`) to use the default")
        values[field] = value
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(scrub(_one_line(exc), secrets)) from None


def _one_line(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    loc = error.get("loc") or ()
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    message = " ".join(message.split())
    if not loc:
        # Model-level check: the message already names the variable.
        return message
    field = str(loc[0])
    line = f"{PREFIX}{field.upper()}: {message}"
    value = error.get("input")
    if field not in SECRET_FIELDS + NOT_ECHOED and isinstance(value, str) and len(value) <= 200:
        line += f" (got {value!r})"
    return line

