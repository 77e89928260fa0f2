"""Supply chain and generated docs: lock files with hashes, pinned Kafka jars, the
vendored dashboard library, Docker images by digest, and the README's demo sample
(make docs-assets). All offline; none needs the stack."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ["requirements.lock", "requirements-test.lock", "bench/requirements-quix.lock",
         "scripts/uv-requirements.txt"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


check_lock = load_script("check_lock")
docs_assets = load_script("docs_assets")


def lock_entries(text: str) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, hashes)}, read independently of scripts/check_lock.py."""
    entries: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = block.split("\n", 1)[0]
        if not head or head.startswith("#"):
            continue
        m = re.match(r"([A-Za-z0-9._-]+)==(\S+?)\s*(?:\\|$)", head)
        assert m, f"not an exact pin: {head!r}"
        entries[canonicalize_name(m.group(1))] = (m.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return entries


# ---------------------------------------------------------------- Python lock files

def test_every_pyproject_requirement_is_pinned_in_the_locks():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = pyproject["project"]["dependencies"] + pyproject["build-system"]["requires"]
    extras = [r for extra in ("test", "bench") for r in pyproject["project"]["optional-dependencies"][extra]]
    assert any(r.startswith("prometheus-client") for r in runtime)
    locks = {name: lock_entries((ROOT / name).read_text())
             for name in ("requirements.lock", "requirements-test.lock")}
    for lock, reqs in (("requirements.lock", runtime), ("requirements-test.lock", runtime + extras)):
        for text in reqs:
            req = Requirement(text)
            name = canonicalize_name(req.name)
            assert name in locks[lock], f"{req.name} missing from {lock}: run make lock"
            assert req.specifier.contains(locks[lock][name][0], prereleases=True), (lock, text)
    # The runtime lock is the test lock's subset, at the same versions.
    for name, (version, _) in locks["requirements.lock"].items():
        assert locks["requirements-test.lock"][name][0] == version, name
    assert check_lock.problems(ROOT) == []


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_carries_hashes(lock):
    entries = lock_entries((ROOT / lock).read_text())
    assert len(entries) >= 1
    for name, (version, hashes) in entries.items():
        assert hashes, f"{lock}: {name}=={version} has no --hash"


def _copy_project(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "requirements.lock", "requirements-test.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_check_lock_fails_on_a_forgotten_relock(tmp_path, capsys):
    root = _copy_project(tmp_path)
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    assert check_lock.main(["--root", str(root)]) == 0

    pyproject.write_text(text.replace("dependencies = [\n", 'dependencies = [\n    "left-pad>=1",\n', 1))
    found = check_lock.problems(root)
    assert any("left-pad" in p and "not pinned" in p for p in found)
    assert check_lock.main(["--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run `make lock`" in err and "left-pad" in err

    pyproject.write_text(text.replace('"bytewax==0.21.1"', '"bytewax==0.21.0"'))
    assert any("bytewax==0.21.1 does not satisfy" in p for p in check_lock.problems(root))

    pyproject.write_text(text)
    lock = root / "requirements-test.lock"
    lock.write_text(re.sub(r"(orjson==\S+) \\\n(\s+--hash=sha256:[0-9a-f]{64} \\\n)*\s+--hash=sha256:[0-9a-f]{64}\n",
                           r"\1\n", lock.read_text()))
    assert any("orjson" in p and "no sha256 hash" in p for p in check_lock.problems(root))


def test_install_and_docker_use_only_the_locks():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "--require-hashes -r requirements-test.lock" in recipe
    assert "--no-deps --no-build-isolation -e ." in recipe
    assert "scripts/check_lock.py" in recipe
    assert re.search(r"^lock:", makefile, re.M) and "scripts/lock.sh" in makefile
    assert "--require-hashes -r bench/requirements-quix.lock" in makefile
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --require-hashes -r requirements.lock" in dockerfile
    assert "pip install --no-deps --no-build-isolation ." in dockerfile
    assert re.search(r"^RUN pip install \.", dockerfile, re.M) is None


# ---------------------------------------------------------------- Kafka jars (Maven)

def _jar_sums() -> dict[str, str]:
    sums = {}
    for line in (ROOT / "stack/kafka/jars.sha256").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(None, 1)
            assert re.fullmatch(r"[0-9a-f]{64}", digest)
            sums[name.lstrip("*")] = digest
    return sums


def test_kafka_jars_are_pinned_for_the_pom_versions():
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    props = ET.parse(ROOT / "stack/kafka/pom.xml").getroot().find("m:properties", ns)
    kafka = props.find("m:kafka.version", ns).text
    log4j = props.find("m:log4j.version", ns).text
    sums = _jar_sums()
    assert len(sums) >= 40
    # A version bump in the pom without `stack.sh pin-kafka-jars` fails here.
    assert f"kafka_2.13-{kafka}.jar" in sums and f"kafka-clients-{kafka}.jar" in sums
    assert f"log4j-slf4j-impl-{log4j}.jar" in sums
    stack = (ROOT / "stack/stack.sh").read_text()
    assert re.search(r"mvn -q -B --strict-checksums -f .*pom\.xml.* dependency:copy-dependencies", stack)


def _kafka_libs_match(sums: Path, libs: Path) -> int:
    env = {"PATH": os.environ["PATH"], "HOME": str(libs.parent)}
    return subprocess.run(["bash", "-c", 'source "$1" && KAFKA_SUMS="$2" && kafka_libs_match "$3"',
                           "test", str(ROOT / "stack/stack.sh"), str(sums), str(libs)], env=env,
                          capture_output=True).returncode


def test_stack_rejects_jars_that_differ_from_the_pinned_list(tmp_path):
    libs = tmp_path / "libs"
    libs.mkdir()
    for name in ("a-1.0.jar", "b-2.0.jar"):
        (libs / name).write_bytes(name.encode() * 100)
    sums = tmp_path / "jars.sha256"
    sums.write_text("# comment\n" + "".join(
        f"{hashlib.sha256((libs / n).read_bytes()).hexdigest()}  {n}\n" for n in ("a-1.0.jar", "b-2.0.jar")))
    assert _kafka_libs_match(sums, libs) == 0
    (libs / "extra-1.0.jar").write_bytes(b"x")  # an unlisted jar would be on the classpath
    assert _kafka_libs_match(sums, libs) != 0
    (libs / "extra-1.0.jar").unlink()
    (libs / "b-2.0.jar").write_bytes(b"tampered")
    assert _kafka_libs_match(sums, libs) != 0
    (libs / "b-2.0.jar").unlink()
    assert _kafka_libs_match(sums, libs) != 0


def test_cached_kafka_jars_match_the_pinned_list():
    cache = Path(os.environ.get("STACK_CACHE", Path.home() / ".cache" / "presence")) / "kafka-libs"
    if not cache.is_dir():
        pytest.skip(f"no fetched Kafka jars in {cache} (make stack-up fetches them)")
    sums = _jar_sums()
    assert sorted(p.name for p in cache.glob("*.jar")) == sorted(sums)
    for name, digest in sums.items():
        assert hashlib.sha256((cache / name).read_bytes()).hexdigest() == digest, name


# ---------------------------------------------------------------- vendored uPlot

def test_vendored_dashboard_library_matches_its_recorded_hashes():
    vendor = ROOT / "presence/tools/web/vendor"
    text = (vendor / "SHA256SUMS").read_text()
    recorded = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split()
            recorded[name] = digest
    on_disk = {p.name for p in vendor.iterdir() if p.name not in ("SHA256SUMS", "README.md")}
    assert set(recorded) == on_disk, "a vendored file without a recorded hash (or a stale entry)"
    for name, digest in recorded.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    version = re.search(r"uPlot (\d+\.\d+\.\d+)", text).group(1)
    assert f"uPlot {version}" in (vendor / "README.md").read_text()
    assert f"uplot@{version}" in text and "sha512-" in text


# ---------------------------------------------------------------- Docker images

def test_docker_images_are_pinned_by_exact_tag_and_digest():
    refs = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    refs += re.findall(r"^\s*image:\s*(\S+)", (ROOT / "docker-compose.yml").read_text(), re.M)
    assert len(refs) >= 3
    for ref in refs:
        assert re.fullmatch(r"[a-z0-9./-]+:\d+\.\d+\.\d+[a-z0-9.-]*@sha256:[0-9a-f]{64}", ref), ref


# ---------------------------------------------------------------- README demo sample

def _sample(readme: str) -> str:
    assert readme.count(docs_assets.START_MARK) == 1 and readme.count(docs_assets.END_MARK) == 1
    block = readme.split(docs_assets.START_MARK)[1].split(docs_assets.END_MARK)[0]
    assert block.strip().startswith("```") and block.strip().endswith("```")
    return block.strip().strip("`").strip()


def test_readme_demo_sample_is_generated_and_shows_only_stable_figures():
    sample = _sample((ROOT / "README.md").read_text())
    assert "==> " in sample and "dead letters by reason" in sample
    header = next(line for line in sample.splitlines() if line.startswith("time bucket"))
    assert "online" in header and "available" in header and "revision" not in header
    assert "(late-corrected)" not in sample
    assert not re.search(r"\bin \d[\d.,]*\s?(ms|s)\b|[\d,]+/s\b", sample), "a timing or rate in the sample"
    assert "make docs-assets" in (ROOT / "README.md").read_text()
    for png in ("dashboard.png", "demo-chart.png"):
        assert (ROOT / "docs" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


RUN_1 = """\x1b[1m==> Fresh start: database presence_demo dropped\x1b[0m

\x1b[1m==> Simulating 30 minutes of pings (topic demo-pings recreated)\x1b[0m
sent 78,964 pings to demo-pings in 2.7 s (28,829/s): 1,615 late, 378 malformed
dataflow finished in 3 s

\x1b[1m==> Report (presence report)\x1b[0m
time bucket (UTC)   | online | available | revision
--------------------+--------+-----------+---------
2026-11-28 08:00:00 |  1,343 |     1,081 |        1
2026-11-28 08:01:00 |  1,359 |     1,140 |        3  (late-corrected)
34 buckets, 14 corrected by late pings
valid 82,665 | corrected late 4,526 | rows written 62 | watermark 2026-12-01T15:57:36.792000Z
only in the first run
wrote demo-output/chart.png (34 buckets, 14 late-corrected)

Done in 25 s. The stack is still running.
  Dashboard: ...
"""
RUN_2 = (RUN_1.replace("2.7 s (28,829/s)", "0.4 s (10,520/s)").replace("in 3 s", "in 4 s")
         .replace("4,526", "4,542").replace("15:57:36.792000", "15:58:05.286000")
         .replace("only in the first run\n", ""))


def test_docs_assets_keeps_what_two_runs_print_alike():
    merged = docs_assets.merge_runs(docs_assets.sanitize(RUN_1), docs_assets.sanitize(RUN_2))
    assert merged == """==> Simulating 30 minutes of pings (topic demo-pings recreated)
sent 78,964 pings to demo-pings: 1,615 late, 378 malformed
dataflow finished

==> Report (presence report)
time bucket (UTC)   | online | available
--------------------+--------+-----------
2026-11-28 08:00:00 |  1,343 |     1,081
2026-11-28 08:01:00 |  1,359 |     1,140
34 buckets, [varies] corrected by late pings
valid 82,665 | corrected late [varies] | rows written [varies] | watermark [varies]
wrote demo-output/chart.png (34 buckets, [varies] late-corrected)"""


def test_docs_assets_help_dry_run_and_splice(tmp_path):
    script = [sys.executable, str(ROOT / "scripts" / "docs_assets.py")]
    out = subprocess.run(script + ["--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "make docs-assets" in out.stdout and "--dry-run" in out.stdout

    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    before = readme.read_text()
    out = subprocess.run(script + ["--dry-run", "--readme", str(readme), "--docs", str(tmp_path / "docs")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "nothing changed" in out.stdout and readme.read_text() == before
    assert not (tmp_path / "docs").exists()

    logs = [tmp_path / "run1.log", tmp_path / "run2.log"]
    logs[0].write_text(RUN_1)
    logs[1].write_text(RUN_2)
    out = subprocess.run(script + ["--from-log", *map(str, logs), "--readme", str(readme)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    sample = _sample(readme.read_text())
    assert sample.startswith("==> Simulating") and "rows written [varies]" in sample
    after = readme.read_text()
    assert after.split(docs_assets.START_MARK)[0] == before.split(docs_assets.START_MARK)[0]
    assert after.split(docs_assets.END_MARK)[1] == before.split(docs_assets.END_MARK)[1]

    readme.write_text("no markers here\n")
    out = subprocess.run(script + ["--dry-run", "--readme", str(readme)], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "demo-output:start" in out.stderr
