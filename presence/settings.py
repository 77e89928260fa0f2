"""Settings from ``PRESENCE_*`` environment variables (SPEC "Configuration").

Validated once at start-up; a bad value raises :class:`SettingsError` whose
message is one line naming the variable (and never echoing a secret).
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from presence.windows import WindowSpec

log = logging.getLogger("presence.settings")

PREFIX = "PRESENCE_"
SECRET_WORDS = ("password", "secret", "token", "key", "credential", "jaas")


class SettingsError(ValueError):
    """A bad setting: the message is one line naming the variable."""


class Settings(BaseModel):
    """Every setting, with the SPEC's defaults (field ``x`` is ``PRESENCE_X``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kafka_brokers: str = Field("127.0.0.1:9092", min_length=1)
    topic: str = Field("driver-pings", min_length=1, max_length=249)
    kafka_config: str = "{}"
    """JSON object of extra librdkafka settings (SASL, TLS...)."""
    mongo_uri: str = "mongodb://127.0.0.1:27017"
    mongo_db: str = Field("presence", min_length=1, max_length=63)
    window_minutes: int = Field(5, gt=0, le=24 * 60)
    bucket_seconds: int = Field(60, gt=0, le=24 * 3600)
    allowed_lateness_seconds: float = Field(30, ge=0)
    correction_horizon_minutes: float = Field(60, ge=0)
    idle_seconds: float = Field(10, gt=0)
    max_future_skew_seconds: float = Field(300, ge=0)
    stop_at_end: bool = False
    # Not in the SPEC table; documented in the README.
    log_rows: bool = True
    """One INFO line per row written (turn off at high volume)."""
    log_level: str = "INFO"
    progress_seconds: float = Field(10, gt=0)
    kafka_batch_size: int = Field(5000, gt=0, le=1_000_000)
    metrics_port: int | None = None

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
            parsed = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("must be a JSON object (it is not valid JSON)") from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object")
        for key, val in parsed.items():
            if not isinstance(val, (str, int, float, bool)):
                raise ValueError(f"value of {key!r} must be a string, number or boolean")
        return value

    @field_validator("mongo_uri")
    @classmethod
    def _mongo_scheme(cls, value: str) -> str:
        if not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return value

    @field_validator("mongo_db")
    @classmethod
    def _db_name(cls, value: str) -> str:
        if re.search(r'[/\\. "$\x00]', value):
            raise ValueError("must not contain / \\ . space \" $")
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
        return self

    @property
    def kafka_extra(self) -> dict[str, Any]:
        return json.loads(self.kafka_config)

    def window_spec(self) -> WindowSpec:
        return WindowSpec(
            bucket=self.bucket_seconds,
            window=self.window_minutes * 60,
            lateness=self.allowed_lateness_seconds,
            horizon=self.correction_horizon_minutes * 60,
            idle=self.idle_seconds,
            max_future_skew=self.max_future_skew_seconds,
        )

    def describe(self) -> str:
        """One line for the start-up log, secrets masked."""
        extra = {
            k: ("***" if any(w in k.lower() for w in SECRET_WORDS) else v)
            for k, v in self.kafka_extra.items()
        }
        return (
            f"kafka {self.kafka_brokers} topic {self.topic}"
            + (f" config {json.dumps(extra)}" if extra else "")
            + f" | mongo {redact_uri(self.mongo_uri)} db {self.mongo_db}"
            + f" | window {self.window_minutes} min, bucket {self.bucket_seconds} s,"
            f" lateness {self.allowed_lateness_seconds:g} s,"
            f" horizon {self.correction_horizon_minutes:g} min,"
            f" idle {self.idle_seconds:g} s"
            + (" | bounded (stop at end)" if self.stop_at_end else " | live")
        )


def redact_uri(uri: str) -> str:
    """The URI with any password replaced by ``***``."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparsable URI>"
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


NOT_SETTINGS = ("PRESENCE_CACHE", "PRESENCE_KAFKA_PORT", "PRESENCE_KAFKA_CONTROLLER_PORT",
                "PRESENCE_MONGO_PORT", "PRESENCE_KAFKA_HEAP_OPTS", "PRESENCE_PYTHON",
                "PRESENCE_DEBUG")
NOT_SETTINGS_PREFIXES = ("PRESENCE_STACK_", "PRESENCE_FERRETDB_", "PRESENCE_TEST_",
                         "PRESENCE_BENCH_")
"""``PRESENCE_*`` variables read by other tools (stack scripts, CLI, tests), not the dataflow."""

SECRET_FIELDS = ("mongo_uri", "kafka_config")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the settings; raise :class:`SettingsError` on the first bad one.

    Empty variables count as unset. An unknown ``PRESENCE_*`` variable gets
    a warning: a typo must not silently fall back to a default.
    """
    source = os.environ if env is None else env
    values = {}
    for name, value in source.items():
        if (not name.startswith(PREFIX) or value == "" or name in NOT_SETTINGS
                or name.startswith(NOT_SETTINGS_PREFIXES)):
            continue
        field = name[len(PREFIX):].lower()
        if field not in Settings.model_fields:
            log.warning("%s is not a presence setting; ignored (see README, 'Settings')", name)
            continue
        values[field] = value
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    loc = error.get("loc") or ()
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if not loc:
        # Model-level check: the message already names the variable.
        return message
    field = str(loc[0])
    line = f"{PREFIX}{field.upper()}: {message}"
    if field not in SECRET_FIELDS and isinstance(error.get("input"), str):
        line += f" (got {error['input']!r})"
    return line
