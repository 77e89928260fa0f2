"""docker-compose.yml (not run here: no Docker engine): valid YAML, every port published on
127.0.0.1 only, MongoDB with a user and password that presence's URI uses."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def expand(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` substitution."""
    def one(match: re.Match) -> str:
        name, default = match.group(1), match.group(2) or ""
        return env.get(name) or default
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", one, value)


def test_every_port_is_published_on_localhost_only():
    services = load()["services"]
    published = 0
    for name, service in services.items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):  # long syntax
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)
                assert str(port).count(":") == 2, (name, port)
        assert "network_mode" not in service or service["network_mode"] != "host", name
    assert published >= 3  # kafka, mongo, the API


def test_mongodb_has_a_user_and_password_and_presence_uses_them():
    services = load()["services"]
    mongo_env = services["mongo"]["environment"]
    for env in [{}, {"MONGO_USER": "ops", "MONGO_PASSWORD": "Xk29fjQ0"}]:
        user = expand(mongo_env["MONGO_INITDB_ROOT_USERNAME"], env)
        password = expand(mongo_env["MONGO_INITDB_ROOT_PASSWORD"], env)
        assert user and password
        for name in ["presence", "api", "simulate"]:
            uri = urlsplit(expand(services[name]["environment"]["PRESENCE_MONGO_URI"], env))
            assert (uri.username, uri.password, uri.hostname) == (user, password, "mongo"), name
            assert "authSource=admin" in uri.query
    assert services["api"]["environment"]["PRESENCE_API_TOKEN"].startswith("${PRESENCE_API_TOKEN")
    # The default password is there for a first try only, and says so.
    text = COMPOSE.read_text()
    assert "change-me" in expand(mongo_env["MONGO_INITDB_ROOT_PASSWORD"], {})
    assert "CHANGE THEM" in text and "MONGO_PASSWORD=" in text
