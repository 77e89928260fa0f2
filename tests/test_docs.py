"""The repository stands alone: its docs link only inside it, and say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from presence.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _links(path: Path) -> list[str]:
    text = path.read_text()
    # Links inside fenced code blocks are examples, not links.
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return [m.group(1) for m in LINK.finditer(text)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve_inside_the_repository(doc: Path) -> None:
    for link in _links(doc):
        if re.match(r"[a-z]+:", link) or link.startswith("#"):
            continue
        target = (doc.parent / link.split("#", 1)[0]).resolve()
        assert target.is_relative_to(REPO), f"{doc.name}: {link} leaves the repository"
        assert target.exists(), f"{doc.name}: {link} does not exist"


def test_contract_and_origin_are_in_the_repository() -> None:
    readme = (REPO / "README.md").read_text()
    assert "](docs/spec.md)" in readme and "](docs/origin.md)" in readme
    assert "../shared" not in readme


def test_every_setting_is_documented() -> None:
    readme = (REPO / "README.md").read_text()
    spec = (REPO / "docs" / "spec.md").read_text()
    for field in Settings.model_fields:
        name = f"PRESENCE_{field.upper()}"
        assert name in readme, f"{name} is missing from the README's settings"
    for name in re.findall(r"`(PRESENCE_[A-Z_]+)`", spec):
        assert name.lower().removeprefix("presence_") in Settings.model_fields, (
            f"docs/spec.md names {name}, which is not a setting"
        )
