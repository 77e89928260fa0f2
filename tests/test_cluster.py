"""A real cluster: processes started separately, as on separate hosts, and its layout rules.

Each process is ``python -m bytewax.run <repo>/dataflow.py -i N -a "127.0.0.1:P0;..."``,
started on its own, with its own working directory and its own recovery
directory, against the real local Kafka and MongoDB-compatible server, in
bounded mode. Process 0's directory holds every recovery partition, the
others' are empty (``presence/cluster.py`` says why).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from presence.cluster import Layout, LayoutError, check_layout, layout_from_argv
from presence.io.recovery import read_dir
from tests.constants import DEFAULT_RULES, HORIZON
from tests.oracle import P, oracle
from tests.stack_helpers import (
    REPO, create_topic, dataflow_env, init_recovery, new_topic, produce, stored_rows, wait_for,
)
from tests.streams import stream

DATAFLOW = str(REPO / "dataflow.py")


# -- the layout check, without servers ------------------------------------------------------

def test_layout_is_read_from_bytewax_run_arguments() -> None:
    argv = ["run.py", "dataflow", "-i", "1", "-a", "h0:2101;h1:2101;h2:2101", "-r", "/rec", "-s", "5"]
    layout = layout_from_argv(argv, {})
    assert layout == Layout(1, 3, Path("/rec"), ("h0:2101", "h1:2101", "h2:2101"))
    assert layout.port_offset() == 0  # one process per host: the same metrics port everywhere
    argv = ["run.py", "dataflow", "--process-id=2", "--addresses", "a:1;b:1;a:2", "--recovery-directory=/r"]
    layout = layout_from_argv(argv, {})
    assert (layout.process_id, layout.processes, layout.recovery_dir) == (2, 3, Path("/r"))
    assert layout.port_offset() == 1  # the second process on host a
    assert layout_from_argv(["run.py", "dataflow", "-w", "2"], {}) == Layout(None, 1, None)
    env = {"BYTEWAX_PROCESS_ID": "1", "BYTEWAX_ADDRESSES": "a:1;b:1", "BYTEWAX_RECOVERY_DIRECTORY": "/x"}
    assert layout_from_argv(["run.py", "dataflow"], env) == Layout(1, 2, Path("/x"), ("a:1", "b:1"))
    with pytest.raises(LayoutError, match="not one of the 2 addresses"):
        layout_from_argv(["run.py", "dataflow", "-i", "2", "-a", "a:1;b:1"], {})


def test_layout_reads_options_as_bytewax_run_parses_them() -> None:
    """Abbreviated long options (argparse takes them) and nothing after ``--``."""
    argv = ["run.py", "dataflow", "--process=1", "--addr", "a:1;b:1", "--recovery-dir", "/r"]
    assert layout_from_argv(argv, {}) == Layout(1, 2, Path("/r"), ("a:1", "b:1"))
    argv = ["run.py", "dataflow", "-i1", "-aa:1;b:1", "-r/r", "--", "-r", "/other"]
    assert layout_from_argv(argv, {}) == Layout(1, 2, Path("/r"), ("a:1", "b:1"))


def test_a_cluster_process_reads_its_recovery_directory_once(tmp_path, monkeypatch) -> None:
    from presence.cluster import start_process
    from presence.io import recovery

    whole = init_recovery(tmp_path / "p0", 4)
    reads = []
    real = recovery.read_part
    monkeypatch.setattr(recovery, "read_part", lambda path, *a: reads.append(path) or real(path, *a))
    argv = ["/x/bytewax/run.py", "dataflow", "-i", "0", "-a", "a:1;b:1", "-r", str(whole)]
    layout, state = start_process(None, argv)
    assert layout == Layout(0, 2, whole, ("a:1", "b:1"))
    assert [p.part_index for p in state.parts] == [0, 1, 2, 3]
    assert len(reads) == 4  # each file once; start-up goes on with ``state``
    assert start_process(None, ["/x/bytewax/run.py", "dataflow", "-r", str(whole)])[1] is None


def test_layout_check_accepts_the_rule_and_names_each_mistake(tmp_path) -> None:
    whole = init_recovery(tmp_path / "p0", 4)
    empty = tmp_path / "p1"
    empty.mkdir()
    assert "holds all 4 recovery partitions" in check_layout(Layout(0, 2, whole))
    assert "holds all 4" in check_layout(Layout(None, 1, whole))
    assert "is empty, as it must be" in check_layout(Layout(1, 2, empty))
    assert check_layout(Layout(1, 2, None)) is None

    # The natural mistake: every host initialised its own partitions.
    with pytest.raises(LayoutError, match=r"process 1: .* holds recovery partitions \[0, 1, 2, 3\], but only process 0"):
        check_layout(Layout(1, 2, whole))
    # Process 0 without (some of) them.
    with pytest.raises(LayoutError, match="holds no recovery partitions"):
        check_layout(Layout(0, 2, empty))
    (whole / "part-3.sqlite3").rename(tmp_path / "part-3.sqlite3")
    with pytest.raises(LayoutError, match=r"lacks recovery partitions \[3\] of 4"):
        check_layout(Layout(0, 2, whole))
    # Partitions of two different inits.
    other = init_recovery(tmp_path / "other", 8)
    (other / "part-3.sqlite3").rename(whole / "part-3.sqlite3")
    with pytest.raises(LayoutError, match=r"mixes partitions made for different partition counts \[4, 8\]"):
        check_layout(Layout(0, 2, whole))
    with pytest.raises(LayoutError, match="does not exist"):
        check_layout(Layout(0, 2, tmp_path / "nowhere"))
    (tmp_path / "bogus").mkdir()
    (tmp_path / "bogus" / "part-0.sqlite3").write_bytes(b"not a database at all, really" * 10)
    with pytest.raises(LayoutError, match="process 0: recovery file .* is not a Bytewax recovery partition"):
        check_layout(Layout(0, 1, tmp_path / "bogus"))
    # One machine, one directory for every process: declared with SHARED.
    shared = init_recovery(tmp_path / "shared", 2)
    (shared / "SHARED").touch()
    assert "holds all 2" in check_layout(Layout(1, 2, shared))


def test_wrong_layout_stops_start_up_with_one_line_exit_2(tmp_path) -> None:
    """Process 1 started with a directory of its own partitions: one line, exit 2, before any I/O."""
    recovery = init_recovery(tmp_path / "p1" / "recovery", 4)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRESENCE_", "BYTEWAX_"))}
    env["PRESENCE_KAFKA_BROKERS"] = "127.0.0.1:1"  # never reached: the check comes first
    out = subprocess.run(
        [sys.executable, "-m", "bytewax.run", DATAFLOW, "-i", "1", "-a", "127.0.0.1:1;127.0.0.1:2",
         "-r", str(recovery), "-s", "1", "-b", "0"],
        cwd=tmp_path / "p1", env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("presence:")]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("presence: bad recovery layout: process 1: recovery directory")
    assert "only process 0's directory may hold them" in lines[0]


def test_healthz_turns_503_when_no_owned_partition_is_polled(monkeypatch) -> None:
    from presence import metrics

    monkeypatch.setattr(metrics, "_polled", {})
    assert metrics.healthy() == (True, "ok: no source partition owned yet")
    metrics.polled("t", 0)
    assert metrics.healthy()[0]
    statuses = []
    app = metrics.app(metrics_app=lambda environ, start: [b""])
    monkeypatch.setattr(metrics, "STALL_SECONDS", -1.0)
    body = b"".join(app({"PATH_INFO": "/healthz"}, lambda status, headers: statuses.append(status)))
    assert statuses == ["503 Service Unavailable"] and body.startswith(b"stalled: no source partition polled")


def test_mongo_retries_and_rows_written_are_counted() -> None:
    from pymongo.errors import AutoReconnect

    from presence import metrics
    from presence.io.mongo import with_retry

    def value(name: str) -> float:
        return metrics.REGISTRY.get_sample_value(name) or 0.0

    before = value("presence_dataflow_mongo_write_retries_total")
    attempts = iter([AutoReconnect("down"), AutoReconnect("still down"), None])

    def action():
        error = next(attempts)
        if error:
            raise error
        return "written"

    assert with_retry("writing rows", action, sleep=lambda _: None) == "written"
    assert value("presence_dataflow_mongo_write_retries_total") == before + 2
    rows = value("presence_dataflow_rows_written_total")
    metrics.rows_written(3)
    assert value("presence_dataflow_rows_written_total") == rows + 3


# -- separate processes against the real servers --------------------------------------------

def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def consecutive_free_ports(count: int) -> int:
    """A port p such that p .. p + count - 1 are free (PRESENCE_METRICS_PORT + process id)."""
    for _ in range(100):
        base = free_ports(1)[0]
        if base + count > 65535:
            continue
        try:
            socks = []
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no consecutive free ports")


class Cluster:
    """``n`` processes, each in its own directory ``base/p<i>`` with ``recovery/`` in it."""

    def __init__(self, base: Path, env: dict[str, str], partitions: int = 6) -> None:
        self.base = base
        self.env = env
        self.partitions = partitions
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def home(self, i: int) -> Path:
        home = self.base / f"p{i}"
        recovery = home / "recovery"
        if not recovery.exists():
            if i == 0:
                init_recovery(recovery, self.partitions)
            else:
                recovery.mkdir(parents=True)
        return home

    def start(self, n: int, workers: int = 1, **extra: str) -> None:
        ports = free_ports(n)
        addresses = ";".join(f"127.0.0.1:{p}" for p in ports)
        self.procs, self.logs = [], []
        for i in range(n):
            home = self.home(i)
            log = home / f"run-{len(list(home.glob('run-*.log')))}.log"
            env = dict(self.env, **extra)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "bytewax.run", DATAFLOW, "-i", str(i), "-a", addresses,
                 "-w", str(workers), "-r", "recovery", "-s", "1", "-b", "0"],
                cwd=home, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                start_new_session=True,
            ))
            self.logs.append(log)

    def wait(self, timeout: float = 300) -> list[str]:
        outs = []
        for proc, log in zip(self.procs, self.logs):
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill_all()
                raise AssertionError(f"process did not finish in {timeout} s:\n{log.read_text()[-3000:]}")
            out = log.read_text()
            assert proc.returncode == 0, f"process exited {proc.returncode}:\n{out[-3000:]}"
            outs.append(out)
        return outs

    def run(self, n: int, **extra: str) -> list[str]:
        self.start(n, **extra)
        return self.wait()

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def assert_exact(db, partitions) -> None:
    rows, too_late, invalid = oracle(partitions, *DEFAULT_RULES)
    assert stored_rows(db) == rows
    assert db.dead_letters.count_documents({}) == len(too_late) + len(invalid)
    totals = db.pipeline_status.find_one({"_id": "totals"})
    assert (totals["tooLate"], totals["invalid"]) == (len(too_late), len(invalid))


@pytest.mark.stack
@pytest.mark.parametrize("processes", [2, 3])
def test_separate_processes_give_the_oracle_rows(
        processes, kafka_brokers, mongo_uri, topic_and_db, tmp_path) -> None:
    topic, db = topic_and_db
    partitions = stream(20 + processes, partitions=4, per_partition=1500, horizon=HORIZON)
    new_topic(kafka_brokers, topic, partitions)
    cluster = Cluster(tmp_path, dataflow_env(kafka_brokers, mongo_uri, topic, topic))
    outs = cluster.run(processes)
    assert_exact(db, partitions)
    assert "holds all 6 recovery partitions" in outs[0]
    for i in range(1, processes):
        assert "is empty, as it must be" in outs[i]
        assert not list((tmp_path / f"p{i}" / "recovery").iterdir()), "only process 0 keeps state"


@pytest.mark.stack
def test_kill_9_of_one_process_mid_run_then_cluster_restart_is_exact(
        kafka_brokers, mongo_uri, topic_and_db, tmp_path) -> None:
    topic, db = topic_and_db
    partitions = stream(31, partitions=4, per_partition=16_000, drivers=3000, horizon=HORIZON, pace=0.05)
    new_topic(kafka_brokers, topic, partitions)
    total = sum(len(p) for p in partitions)
    # Small batches: the run lasts long enough to be killed in the middle.
    cluster = Cluster(tmp_path, dataflow_env(kafka_brokers, mongo_uri, topic, topic,
                                             PRESENCE_KAFKA_BATCH_SIZE="20"))
    cluster.start(2)
    # Mid-run: rows and status are being written, and several snapshots were committed.
    wait_for(lambda: (db.pipeline_status.find_one({"_id": "totals"}) or {}).get("valid", 0) > total // 20,
             "5 % of the pings to be counted", timeout=240)
    victim = cluster.procs[1]
    assert victim.poll() is None, "the run ended before it could be killed; make the input larger"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    # The survivor loses its peer: it stops by itself with an error (timely's send thread
    # panics), rather than hanging or reporting success.
    survivor = cluster.procs[0]
    try:
        survivor.wait(timeout=120)
    except subprocess.TimeoutExpired:
        cluster.kill_all()
        raise AssertionError("the survivor kept running after its peer died") from None
    assert survivor.returncode != 0, "a process whose peer died must not report success"
    done = (db.pipeline_status.find_one({"_id": "totals"}) or {}).get("valid", 0)
    assert done < total

    cluster.run(2, PRESENCE_KAFKA_BATCH_SIZE="5000")  # the whole cluster restarted, same directories
    assert_exact(db, partitions)


@pytest.mark.stack
def test_scaling_out_2_to_3_then_back_to_1_resumes_exactly(
        kafka_brokers, mongo_uri, topic_and_db, tmp_path) -> None:
    topic, db = topic_and_db
    whole = stream(41, partitions=4, per_partition=3000, horizon=HORIZON)
    thirds = [[p[: len(p) // 3] for p in whole], [p[len(p) // 3: 2 * len(p) // 3] for p in whole],
              [p[2 * len(p) // 3:] for p in whole]]
    create_topic(kafka_brokers, topic, 4)
    cluster = Cluster(tmp_path, dataflow_env(kafka_brokers, mongo_uri, topic, topic))

    produce(kafka_brokers, topic, thirds[0])
    cluster.run(2)
    assert_exact(db, thirds[0])

    produce(kafka_brokers, topic, thirds[1])
    cluster.run(3)  # process 2 is new: an empty directory
    assert_exact(db, [a + b for a, b in zip(thirds[0], thirds[1])])

    # Late pings of new drivers for rows already written, then back to one process.
    late = [[P(f"late-{p}-{i}", whole[p][0].time + 60 * i, True) for i in range(5)] for p in range(4)]
    more = [t + lt for t, lt in zip(thirds[2], late)]
    produce(kafka_brokers, topic, more)
    cluster.run(1)
    assert_exact(db, [a + b + c for a, b, c in zip(thirds[0], thirds[1], more)])
    assert db.report_summary.count_documents({"revision": {"$gt": 1}}) > 0


# -- per-process metrics ----------------------------------------------------------------------

def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.stack
def test_each_process_serves_its_own_metrics_and_liveness(
        kafka_brokers, mongo_uri, topic_and_db, tmp_path) -> None:
    """A live two-process run: scrape both processes once every ping is counted."""
    topic, db = topic_and_db
    partitions = stream(51, partitions=4, per_partition=1000, horizon=HORIZON)
    new_topic(kafka_brokers, topic, partitions)
    _, too_late, invalid = oracle(partitions, *DEFAULT_RULES)
    total = sum(len(p) for p in partitions)
    base = consecutive_free_ports(2)
    cluster = Cluster(tmp_path, dataflow_env(kafka_brokers, mongo_uri, topic, topic,
                                             PRESENCE_STOP_AT_END="0",
                                             PRESENCE_METRICS_PORT=str(base)))
    cluster.start(2)
    try:
        def read_everything():
            got = {}
            for i in range(2):
                assert cluster.procs[i].poll() is None, cluster.logs[i].read_text()[-3000:]
                try:
                    got[i] = samples(scrape(base + i)[1])
                except OSError:
                    return None  # not serving yet
            read = sum(v for metrics in got.values() for (name, _), v in metrics.items()
                       if name == "presence_dataflow_messages_read_total")
            snapshotted = all(any(name == "presence_dataflow_snapshots_total" for name, _ in m)
                              for m in got.values())
            return got if read == total and snapshotted else None

        per_process = wait_for(read_everything, "every message to be read", timeout=240)
        read = rejected = 0
        owned = []
        for i, metrics in per_process.items():
            assert metrics[("presence_dataflow_process_info", (("process_id", str(i)), ("processes", "2")))] == 1
            mine = {dict(labels)["partition"] for (name, labels) in metrics
                    if name == "presence_dataflow_messages_read_total"}
            owned.append(mine)
            assert metrics[("presence_dataflow_partitions_owned", ())] == len(mine)
            read += sum(v for (name, _), v in metrics.items() if name == "presence_dataflow_messages_read_total")
            rejected += sum(v for (name, _), v in metrics.items()
                            if name == "presence_dataflow_messages_rejected_total")
            assert sum(v for (name, _), v in metrics.items() if name == "presence_dataflow_batches_total") >= len(mine)
            assert metrics[("presence_dataflow_snapshots_total", (("step", "pings"),))] >= 1
            assert 0 <= metrics[("presence_dataflow_snapshot_age_seconds", ())] < 120
            assert metrics[("presence_dataflow_mongo_write_retries_total", ())] == 0
            watermarks = [v for (name, _), v in metrics.items()
                          if name == "presence_dataflow_partition_watermark_seconds"]
            assert metrics[("presence_dataflow_watermark_seconds", ())] == min(watermarks)
            status, body = scrape(base + i, "/healthz")
            assert status == 200 and body.startswith("ok"), body
        assert owned[0] | owned[1] == {"0", "1", "2", "3"} and not owned[0] & owned[1]
        assert read == total
        assert rejected == len(too_late) + len(invalid)
        by_reason = {}
        for metrics in per_process.values():
            for (name, labels), v in metrics.items():
                if name == "presence_dataflow_messages_rejected_total":
                    by_reason[dict(labels)["reason"]] = by_reason.get(dict(labels)["reason"], 0) + v
        assert by_reason["too_late"] == len(too_late)
        wait_for(lambda: sum(samples(scrape(base + i)[1]).get(("presence_dataflow_rows_written_total", ()), 0)
                             for i in range(2)) >= 1, "rows to be written")
        assert scrape(base, "/nothing")[0] == 404
    finally:
        cluster.kill_all()


# -- the Helm chart: rendered, validated, and what each pod runs --------------------------------

CHART = REPO / "deploy" / "helm" / "presence"


@pytest.fixture(scope="session")
def chart_tools() -> tuple[str, str]:
    """helm and the manifest validator, built once per machine (deploy/tools.sh caches them)."""
    out = subprocess.run(["bash", str(REPO / "deploy" / "tools.sh")], capture_output=True, text=True,
                         timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    helm, validate = out.stdout.split()
    return helm, validate


def render(tools: tuple[str, str], *args: str) -> list[dict]:
    helm, validate = tools
    manifest = subprocess.run([helm, "template", "presence", str(CHART), *args],
                              capture_output=True, text=True, timeout=300)
    assert manifest.returncode == 0, manifest.stderr
    checked = subprocess.run([validate], input=manifest.stdout, capture_output=True, text=True,
                             timeout=300)
    assert checked.returncode == 0, checked.stderr
    import json
    return json.loads(checked.stdout)


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, [(d["kind"], d["metadata"]["name"]) for d in docs]
    return found[0]


def run_script(script: str, hostname: str, tmp_path: Path, recovery: Path, real_python: bool) -> list[str]:
    """Run a container's ``sh -c`` script as pod ``hostname`` would; returns ``python``'s argv."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    argv_file = tmp_path / f"argv-{hostname}"
    fake = bindir / "python"
    if real_python:
        fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv_file}\nexec {sys.executable} "$@"\n')
    else:
        fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {argv_file}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOSTNAME": hostname}
    out = subprocess.run(["sh", "-c", script.replace("/recovery", str(recovery))], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return argv_file.read_text().splitlines() if argv_file.exists() else []


@pytest.mark.chart
@pytest.mark.parametrize("replicas", [1, 2, 4])
def test_chart_renders_valid_manifests_and_each_pod_is_its_bytewax_process(
        replicas, chart_tools, tmp_path, monkeypatch) -> None:
    import bytewax.run

    docs = render(chart_tools, "--set", f"replicas={replicas}")
    assert sorted(d["kind"] for d in docs) == [
        "ConfigMap", "Deployment", "Secret", "Service", "Service", "StatefulSet"]
    sts = one(docs, "StatefulSet", "presence")
    spec = sts["spec"]
    assert spec["replicas"] == replicas and spec["serviceName"] == "presence-headless"
    assert spec["podManagementPolicy"] == "Parallel"
    headless = one(docs, "Service", "presence-headless")
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    assert [c["metadata"]["name"] for c in spec["volumeClaimTemplates"]] == ["recovery"]
    pod = spec["template"]["spec"]
    (init,), (container,) = pod["initContainers"], pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["PRESENCE_METRICS_PORT"]) == ports["metrics"] == 9100
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/recovery"}

    # Settings in the ConfigMap, secrets only in the Secret.
    settings = one(docs, "ConfigMap")["data"]
    secret = one(docs, "Secret")["stringData"]
    assert set(secret) == {"PRESENCE_MONGO_URI", "PRESENCE_KAFKA_CONFIG", "PRESENCE_API_TOKEN"}
    assert not set(secret) & set(settings)
    for workload in (sts, one(docs, "Deployment", "presence-api")):
        refs = workload["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": "presence-settings"}} in refs
        assert {"secretRef": {"name": "presence-secrets"}} in refs

    # What each pod runs, parsed by bytewax.run's own argument parser.
    addresses = [f"presence-{k}.presence-headless:2101" for k in range(replicas)]
    recovery_dirs = []
    for k in range(replicas):
        recovery = tmp_path / f"pvc-{k}"
        recovery.mkdir()
        recovery_dirs.append(recovery)
        # The init container, twice (a restarted pod): partitions in pod 0's volume only.
        for _ in range(2):
            run_script(init["command"][2], f"presence-{k}", tmp_path, recovery, real_python=True)
        argv = run_script(container["command"][2], f"presence-{k}", tmp_path, recovery, real_python=False)
        assert argv[:3] == ["-m", "bytewax.run", "dataflow"]
        monkeypatch.setattr(sys, "argv", ["bytewax.run", *argv[2:]])
        for name in ("BYTEWAX_PROCESS_ID", "BYTEWAX_ADDRESSES", "BYTEWAX_POD_NAME", "BYTEWAX_RECOVERY_DIRECTORY"):
            monkeypatch.delenv(name, raising=False)
        args = bytewax.run._parse_args()
        assert args.process_id == k
        assert args.addresses.split(";") == addresses
        assert args.workers_per_process == 1
        assert args.recovery_directory == recovery
        layout = layout_from_argv(["run.py", *argv[2:]], {})
        assert layout.port_offset() == 0, "every pod serves metrics on the probed port"
        assert check_layout(layout)  # the layout check passes for every pod
    assert len(read_dir(recovery_dirs[0]).parts) == 4
    assert all(not list(d.iterdir()) for d in recovery_dirs[1:])


@pytest.mark.chart
def test_chart_validation_rejects_a_broken_manifest(chart_tools) -> None:
    helm, validate = chart_tools
    lint = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=300)
    assert lint.returncode == 0 and "0 chart(s) failed" in lint.stdout, lint.stdout + lint.stderr
    manifest = subprocess.run([helm, "template", "presence", str(CHART), "--set", "resources.requests.memory=lots"],
                              capture_output=True, text=True, timeout=300).stdout
    bad = subprocess.run([validate], input=manifest, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "quantities must match" in bad.stderr, bad.stderr
    good = subprocess.run([helm, "template", "presence", str(CHART)], capture_output=True, text=True,
                          timeout=300).stdout
    assert subprocess.run([validate], input=good, capture_output=True, text=True, timeout=300).returncode == 0
    typo = good.replace("serviceName:", "serviceNmae:")
    bad = subprocess.run([validate], input=typo, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and 'unknown field "serviceNmae"' in bad.stderr, bad.stderr
    nameless = good.replace("serviceName: presence-headless", "serviceName: presence-elsewhere")
    bad = subprocess.run([validate], input=nameless, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "is not a Service here" in bad.stderr, bad.stderr
