"""The Flink SQL peer (``bench/peers/flink``): built once with Maven, its command
line, and the rows and statistics it prints."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from bench.env import BROKERS, REPO
from bench.peers.common import TUNED_FETCH

FLINK_DIR = REPO / "bench" / "peers" / "flink"
M2 = Path(os.environ.get("BENCH_M2", Path.home() / ".cache" / "presence" / "m2"))
"""Maven's local repository for the Flink peer (like the stack's jars, under ~/.cache)."""

FLINK_SYSTEMS = ("flink-exact", "flink-exact-tuned", "flink-natural", "flink-natural-tuned")

FLINK_WATERMARK = {"exact": 660, "natural": 30}
"""Watermark delay (s) of each Flink setting: 11 minutes covers the workload's partition
skew in a backlog read and its 10-minute late pings (exact); 30 s is presence's lateness."""
FLINK_TUNED_JVM = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
"""The fastest whole run of the JVM flags tried (issue 12): serial GC, C1 JIT only."""


def flink_setup(log=None) -> tuple[str | None, str]:
    """(classpath, "") once the Flink peer is built, or (None, why it is skipped).

    Built with Maven on first use (``-C``: strict checksums), offline (``-o``)
    once its dependencies are in :data:`M2`; rebuilt when pom.xml or the
    source is newer than the classpath file."""
    log = log or (lambda _msg: None)
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            return None, f"{tool} not found (the Flink rows need a JDK 17+ and Maven)"
    cp_file = FLINK_DIR / "target" / "classpath.txt"
    sources = [FLINK_DIR / "pom.xml", *sorted((FLINK_DIR / "src").rglob("*.java"))]
    fresh = cp_file.exists() and all(f.stat().st_mtime <= cp_file.stat().st_mtime
                                     for f in sources)
    if not fresh:
        base = ["mvn", "-B", "-q", "-C", f"-Dmaven.repo.local={M2}", "compile"]
        offline = M2.is_dir() and any(M2.iterdir())
        log(f"flink: building bench/peers/flink with Maven"
            f"{' (offline)' if offline else ' (first time: downloads Flink, a few minutes)'}")
        began = time.perf_counter()
        done = subprocess.run(base[:1] + ["-o"] + base[1:] if offline else base,
                              cwd=FLINK_DIR, capture_output=True, text=True)
        if done.returncode != 0 and offline:  # a dependency not yet in the cache
            done = subprocess.run(base, cwd=FLINK_DIR, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            return None, "Maven build failed: " + " | ".join(tail)
        cp_file.touch()  # Maven leaves an unchanged classpath file as it was
        log(f"flink: built in {time.perf_counter() - began:.0f} s")
    classpath = cp_file.read_text().strip()
    return str(FLINK_DIR / "target" / "classes") + os.pathsep + classpath, ""


def flink_command(system: str, topic: str, classpath: str) -> list[str]:
    """The JVM command of a ``flink-*`` system: the same job, two watermark delays,
    the JVM's default flags or the tuned ones."""
    setting = system.split("-")[1]
    jvm = FLINK_TUNED_JVM if system.endswith("-tuned") else []
    return ["java", *jvm, "-cp", classpath, "presence.bench.FlinkPeer",
            "--topic", topic, "--brokers", BROKERS,
            "--watermark-seconds", str(FLINK_WATERMARK[setting]),
            "--kafka", f"max.partition.fetch.bytes={TUNED_FETCH['max.partition.fetch.bytes']}"]


FLINK_STATS = re.compile(r"^flink-stats (\{.*\})$", re.M)
FLINK_ROW = re.compile(r'^\{"row":(\d+),"online":(\d+),"available":(\d+)\}$', re.M)


def flink_rows(output: str) -> dict[int, tuple[int, int]]:
    """The rows a Flink run printed (its JSON lines), keyed like the oracle."""
    return {int(r): (int(on), int(av)) for r, on, av in FLINK_ROW.findall(output)}


def java_version() -> str:
    """The JVM the Flink rows run on (Flink 2.2.1, flink-sql-connector-kafka 5.0.0-2.2)."""
    if shutil.which("java") is None:
        return "not installed"
    out = subprocess.run(["java", "-version"], capture_output=True, text=True)
    return (out.stderr.splitlines() or ["?"])[0]
