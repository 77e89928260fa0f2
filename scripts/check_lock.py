"""Check that the lock files still match pyproject.toml (`make install` runs this).

Every requirement in pyproject.toml ([project].dependencies, the test and bench
extras, [build-system].requires) must be pinned in requirements-test.lock with a
version its specifier allows, the runtime ones (and the build backend) in
requirements.lock too, with the same versions; every pin must carry at least one
sha256 hash. A dependency added to pyproject.toml without `make lock` fails here,
with one line saying what to run.

    python scripts/check_lock.py [--root DIR]      exit 0 if in step, 1 if not
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

RUNTIME_LOCK = "requirements.lock"
TEST_LOCK = "requirements-test.lock"
LOCKED_EXTRAS = ("test", "bench")

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})\b")


def parse_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, [sha256, ...])} of a pip-style lock with hashes."""
    pins: dict[str, tuple[str, list[str]]] = {}
    entry: str | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _PIN.match(line)
        if m:
            entry = canonicalize_name(m.group(1))
            if entry in pins:
                raise ValueError(f"{m.group(1)} is pinned twice")
            pins[entry] = (m.group(2), [])
        elif line[:1].isspace() and entry is not None:
            pass
        else:
            raise ValueError(f"not a pinned requirement: {line.strip()!r}")
        if entry is not None:
            pins[entry][1].extend(_HASH.findall(line))
    return pins


def wanted(pyproject: dict) -> tuple[list[Requirement], list[Requirement]]:
    """(runtime + build requirements, extras requirements) declared in pyproject.toml."""
    project = pyproject["project"]
    runtime = [Requirement(r) for r in project.get("dependencies", [])]
    runtime += [Requirement(r) for r in pyproject.get("build-system", {}).get("requires", [])]
    extras = [Requirement(r) for extra in LOCKED_EXTRAS
              for r in project.get("optional-dependencies", {}).get(extra, [])]
    return runtime, extras


def problems(root: Path) -> list[str]:
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    runtime, extras = wanted(pyproject)
    found: list[str] = []
    locks = {}
    for name in (RUNTIME_LOCK, TEST_LOCK):
        path = root / name
        if not path.is_file():
            return [f"{name} is missing"]
        try:
            locks[name] = parse_lock(path.read_text())
        except ValueError as exc:
            return [f"{name}: {exc}"]
        for pkg, (version, hashes) in locks[name].items():
            if not hashes:
                found.append(f"{name}: {pkg}=={version} has no sha256 hash")
    for lock_name, reqs in ((RUNTIME_LOCK, runtime), (TEST_LOCK, runtime + extras)):
        pins = locks[lock_name]
        for req in reqs:
            if req.marker is not None and not req.marker.evaluate({"python_version": "3.11"}):
                continue
            pin = pins.get(canonicalize_name(req.name))
            if pin is None:
                found.append(f"{lock_name}: {req.name} (pyproject.toml: {req}) is not pinned")
            elif req.specifier and not req.specifier.contains(pin[0], prereleases=True):
                found.append(f"{lock_name}: {req.name}=={pin[0]} does not satisfy pyproject.toml's {req}")
    test_pins = locks[TEST_LOCK]
    for pkg, (version, _) in locks[RUNTIME_LOCK].items():
        other = test_pins.get(pkg)
        if other is None or other[0] != version:
            have = f"=={other[0]}" if other else " missing"
            found.append(f"{RUNTIME_LOCK}: {pkg}=={version} but {TEST_LOCK} has {pkg}{have}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    found = problems(args.root)
    if found:
        print(f"the lock files are out of step with pyproject.toml ({found[0]}"
              f"{f'; and {len(found) - 1} more' if len(found) > 1 else ''}): run `make lock`",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
