"""The ``presence`` command: help, argument errors, runtime errors, report and plot."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from presence.tools.cli import cli, format_table
from presence.tools.reports import ReportRow
from tests.known_docs import seed_database

PRESENCE = Path(sys.executable).parent / "presence"
SUBCOMMANDS = ["simulate", "report", "plot", "zones", "serve", "stack"]


def run(args, env=None):
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def run_installed(args, **env):
    """The installed console script, in a child process (what a user runs)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    full_env.update(env)
    return subprocess.run([str(PRESENCE), *args], capture_output=True, text=True,
                          env=full_env, timeout=60)


# ------------------------------------------------------------------ help


def test_console_script_is_installed_and_lists_every_subcommand():
    result = run_installed(["--help"])
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_every_subcommand_has_help(name, flag):
    result = run([name, flag])
    assert result.exit_code == 0
    assert f"Usage: presence {name}" in result.stdout
    assert "--help" in result.stdout


def test_help_names_the_documented_options():
    text = run(["simulate", "--help"]).stdout
    for option in ["--drivers", "--minutes", "--start", "--rate", "--fast", "--late-fraction",
                   "--bad-fraction", "--partitions", "--seed", "--topic"]:
        assert option in text
    for name in ["report", "plot"]:
        text = run([name, "--help"]).stdout
        assert "--from" in text and "--to" in text
    assert "table|json|csv" in run(["report", "--help"]).stdout
    assert "--output" in run(["plot", "--help"]).stdout
    text = run(["serve", "--help"]).stdout
    assert "--host" in text and "--port" in text
    assert "up|down|status" in run(["stack", "--help"]).stdout


def test_version():
    result = run(["--version"])
    assert result.exit_code == 0 and "presence" in result.stdout


# ------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize("args, words", [
    (["nonsense"], "No such command"),
    (["simulate", "--drivers", "0"], "--drivers"),
    (["simulate", "--drivers", "many"], "--drivers"),
    (["simulate", "--minutes", "-3"], "--minutes"),
    (["simulate", "--fast", "--rate", "10"], "mutually exclusive"),
    (["simulate", "--late-fraction", "1.5"], "--late-fraction"),
    (["simulate", "--late-fraction", "0.6", "--bad-fraction", "0.6"], "must not exceed 1"),
    (["simulate", "--start", "soon"], "--start"),
    (["simulate", "--partitions", "0"], "--partitions"),
    (["report", "--from", "yesterday"], "--from"),
    (["report", "--to", "2018-13-45"], "--to"),
    (["report", "--from", "2018-01-02", "--to", "2018-01-01"], "after"),
    (["report", "--format", "xml"], "--format"),
    (["plot"], "--output"),
    (["plot", "-o", "chart.gif"], "png or .svg"),
    (["plot", "-o", "c.png", "--from", "noon"], "--from"),
    (["serve", "--port", "99999"], "--port"),
    (["stack", "sideways"], "up"),
    (["stack"], "Missing argument"),
])
def test_bad_arguments_are_usage_errors(args, words):
    result = run(args)
    assert result.exit_code == 2, result.output
    assert "Error" in result.stderr and words in result.stderr
    assert "Traceback" not in result.output


def test_bad_setting_is_one_line_naming_the_variable():
    result = run_installed(["report"], PRESENCE_WINDOW_MINUTES="seven")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "PRESENCE_WINDOW_MINUTES" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["report"], ["report", "--format", "json"],
                                  ["plot", "-o", "never.png"]])
def test_mongodb_unreachable_is_one_line_and_exit_1(args, tmp_path):
    result = subprocess.run(
        [str(PRESENCE), *args], capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PRESENCE_MONGO_URI": "mongodb://127.0.0.1:1"},
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: MongoDB at mongodb://127.0.0.1:1")
    assert result.stdout == ""
    assert not (tmp_path / "never.png").exists()


def test_kafka_unreachable_is_one_line_and_exit_1():
    result = run_installed(["simulate", "--drivers", "5", "--minutes", "1", "--fast",
                            "--no-progress"], PRESENCE_KAFKA_BROKERS="127.0.0.1:1")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Kafka at 127.0.0.1:1" in lines[0] and "Traceback" not in result.stderr


def test_secret_in_uri_is_not_shown():
    result = run_installed(["report"], PRESENCE_MONGO_URI="mongodb://bob:hunter2@127.0.0.1:1")
    assert result.returncode == 1
    assert "hunter2" not in result.stderr and "bob" not in result.stderr
    assert "MongoDB at mongodb://127.0.0.1:1 (PRESENCE_MONGO_URI)" in result.stderr


# ------------------------------------------------------------------ table format


def test_table_reads_like_the_old_console_lines():
    rows = [ReportRow("2018-01-01 04:00:00", 505, 417, 1),
            ReportRow("2018-01-01 04:01:00", 1_506, 1_417, 3)]
    text = format_table(rows)
    lines = text.splitlines()
    assert lines[0].split("|")[0].strip() == "time bucket (UTC)"
    assert [c.strip() for c in lines[0].split("|")] == [
        "time bucket (UTC)", "online", "available", "revision"]
    assert [c.strip() for c in lines[2].split("|")] == ["2018-01-01 04:00:00", "505", "417", "1"]
    assert lines[3].startswith("2018-01-01 04:01:00 |  1,506 |")
    assert "late-corrected" in lines[3]
    assert lines[-1] == "2 buckets, 1 corrected by late pings"
    assert format_table([]) == ""


# ------------------------------------------------------------------ against MongoDB


@pytest.fixture
def seeded(mongo_uri, unique_name):  # noqa: F811
    from pymongo import MongoClient

    client = MongoClient(mongo_uri)
    db = client[unique_name]
    docs = seed_database(db, rows=10)
    env = {"PRESENCE_MONGO_URI": mongo_uri, "PRESENCE_MONGO_DB": unique_name}
    yield env, docs
    client.drop_database(unique_name)
    client.close()


@pytest.mark.stack
def test_report_table(seeded):
    env, docs = seeded
    result = run(["report"], env=env)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    body = lines[2:-1]
    assert len(body) == 10
    assert [line.split(" | ")[0] for line in body] == [d["timeBucket"] for d in docs]
    first = [c.strip() for c in body[0].split("|")]
    assert first == ["2018-01-01 04:00:00", "500", "400", "1"]
    assert "late-corrected" in body[3]
    assert lines[-1] == "10 buckets, 2 corrected by late pings"


@pytest.mark.stack
def test_report_json_and_range(seeded):
    env, docs = seeded
    result = run(["report", "--format", "json", "--from", "2018-01-01T04:02:00Z",
                  "--to", "1514779500"], env=env)  # 04:05:00 as epoch seconds
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows == [
        {"time": d["timeBucket"], "online": d["driversOnlineCount"],
         "available": d["driversAvailableCount"], "revision": d["revision"]}
        for d in docs[2:6]
    ]
    # No offset means UTC; another offset is converted.
    same = run(["report", "--format", "json", "--from", "2018-01-01 05:02:00+01:00",
                "--to", "2018-01-01T04:05:00"], env=env)
    assert json.loads(same.stdout) == rows


@pytest.mark.stack
def test_report_csv(seeded):
    env, docs = seeded
    result = run(["report", "--format", "csv", "--to", "2018-01-01T04:01:00Z"], env=env)
    assert result.exit_code == 0
    assert list(csv.reader(io.StringIO(result.stdout))) == [
        ["time", "online", "available", "revision"],
        ["2018-01-01 04:00:00", "500", "400", "1"],
        ["2018-01-01 04:01:00", "501", "401", "1"],
    ]


@pytest.mark.stack
def test_report_empty_range(seeded):
    env, _ = seeded
    result = run(["report", "--from", "2030-01-01"], env=env)
    assert result.exit_code == 0
    assert result.stdout == "" and "no rows" in result.stderr
    assert json.loads(run(["report", "--format", "json", "--from", "2030-01-01"], env=env)
                      .stdout) == []


@pytest.mark.stack
@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_writes_a_chart(seeded, tmp_path, suffix):
    env, _ = seeded
    out = tmp_path / "sub" / f"chart{suffix}"
    result = run(["plot", "-o", str(out)], env=env)
    assert result.exit_code == 0, result.stderr
    assert "10 buckets, 2 late-corrected" in result.stdout
    if suffix == ".png":
        import matplotlib.image

        with open(out, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(out)
        height, width = pixels.shape[:2]
        assert 800 <= width <= 3000 and 400 <= height <= 2000
        assert pixels.std() > 0.01  # not blank
    else:
        root = ET.parse(out).getroot()
        assert root.tag.endswith("svg")
        assert float(root.get("width").rstrip("pt")) > 400
        assert len(list(root.iter())) > 100


@pytest.mark.stack
def test_plot_with_no_rows_is_an_error(seeded, tmp_path):
    env, _ = seeded
    result = run(["plot", "-o", str(tmp_path / "c.png"), "--from", "2030-01-01"], env=env)
    assert result.exit_code == 1
    assert "nothing to plot" in result.stderr
    assert not (tmp_path / "c.png").exists()


@pytest.mark.stack
def test_stack_status_wraps_the_script(mongo_uri):  # noqa: F811
    result = run_installed(["stack", "status"])
    assert result.returncode == 0, result.stderr
    assert "kafka" in result.stdout and "ferretdb" in result.stdout


# ------------------------------------------------------------------ the demo


@pytest.mark.stack
def test_demo_is_repeatable(mongo_uri, kafka_brokers, unique_name, tmp_path):  # noqa: F811
    """scripts/demo.sh (what `make demo` runs after install and stack-up), twice."""
    import re

    from confluent_kafka.admin import AdminClient
    from pymongo import MongoClient

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PRESENCE_MONGO_URI": mongo_uri, "PRESENCE_KAFKA_BROKERS": kafka_brokers,
           "DEMO_TOPIC": unique_name, "DEMO_DB": unique_name, "DEMO_OUT": str(tmp_path),
           "DEMO_DRIVERS": "200", "DEMO_MINUTES": "8", "DEMO_START": "2018-01-01T04:00:00Z"}
    outputs = []
    try:
        for _ in range(2):
            done = subprocess.run(["bash", str(root / "scripts" / "demo.sh")], env=env,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            outputs.append(done.stdout)
            assert (tmp_path / "chart.png").stat().st_size > 10_000
            assert "segments city;city,vehicle_type;h3:8" in done.stdout
            assert "Report for one city" in done.stdout
            assert (tmp_path / "chart-hong-kong.png").stat().st_size > 10_000
            assert (tmp_path / "zones.png").read_bytes().startswith(b"\x89PNG")
            zones = json.loads((tmp_path / "zones.geojson").read_text())
            assert zones["type"] == "FeatureCollection" and zones["resolution"] == 8
            assert len(zones["features"]) > 50
            assert {"online", "available", "h3"} <= set(zones["features"][0]["properties"])
        for out in outputs:
            number = lambda text: int(text.replace(",", ""))  # noqa: E731
            # Two simulations: the half hour, then the late burst.
            sent = re.findall(r"sent ([\d,]+) pings .*?([\d,]+) malformed", out)
            assert len(sent) == 2
            total, malformed = (sum(number(s[i]) for s in sent) for i in (0, 1))
            valid = re.search(r"valid ([\d,]+) \| invalid ([\d,]+)", out)
            # Every ping counted once: nothing doubled by the second run.
            assert number(valid[1]) == total - malformed
            assert number(valid[2]) == malformed
            assert "2018-01-01 04:00:00 |" in out and "presence serve" in out
        # Same counts both times (revisions may differ: they depend on read batches).
        tables = [
            [line.split(" | ")[:3] for line in
             o.split("Report (presence report)")[1].split("==>")[0].splitlines() if " | " in line]
            for o in outputs
        ]
        assert len(tables[0]) > 8 and tables[0] == tables[1]
    finally:
        AdminClient({"bootstrap.servers": kafka_brokers}).delete_topics([unique_name])
        MongoClient(mongo_uri).drop_database(unique_name)


@pytest.mark.stack
def test_report_on_an_empty_database_says_how_to_get_rows(mongo_uri, unique_name):  # noqa: F811
    result = run(["report"], env={"PRESENCE_MONGO_URI": mongo_uri, "PRESENCE_MONGO_DB": unique_name})
    assert result.exit_code == 0 and result.stdout == ""
    message = result.stderr.strip()
    assert message.startswith(f"no rows yet in database {unique_name}")
    assert "presence simulate" in message and "make run" in message


@pytest.mark.stack
def test_report_outside_the_rows_says_where_they_are(seeded):
    env, docs = seeded
    result = run(["report", "--from", "2030-01-01"], env=env)
    assert result.exit_code == 0
    assert (f"its rows go from {docs[0]['timeBucket']} to {docs[-1]['timeBucket']} (UTC)"
            in result.stderr)
