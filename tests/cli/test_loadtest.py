"""``counters loadtest`` against a real ``counters serve`` (two workers), short and bounded;
and a rules reload (SIGHUP to the supervisor) under that load with no failed request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from counters.cli.embedded import PostgresServer, RedisServer, free_port
from counters.cli.loadtest.command import check_target, loadtest
from counters.rules import parse_rules, rules_version
from tests.support.core import SERVICE_KEY
from tests.support.persistence import migrate_and_truncate
from tests.support.rules import DAILY_CHAT, default_text, edited
from tests.support.serve import Served, get_json, serve

RICHER = (DAILY_CHAT, DAILY_CHAT.replace("exp = 20", "exp = 25"))


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "rules.toml"
    path.write_text(default_text(), "utf-8")
    return path


@pytest.fixture(scope="module")
def served(
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    rules_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    postgres_server.start()
    migrate_and_truncate(postgres_server.url)
    data_dir = tmp_path_factory.mktemp("serve")
    with serve(redis_server.url, postgres_server.url, data_dir, rules_file) as running:
        yield running


def run_loadtest(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        loadtest, list(args), env={"COUNTERS_LOADTEST_SERVICE_KEY": SERVICE_KEY}
    )
    return result.exit_code, result.output


def test_a_closed_loop_run_reports_text_json_and_a_chart(served: Served, tmp_path: Path) -> None:
    report_path, chart_path = tmp_path / "report.json", tmp_path / "chart.png"
    code, output = run_loadtest(
        served.url, "--mix", "mixed", "--users", "200", "--requests", "200",
        "--concurrency", "8", "--json", str(report_path), "--chart", str(chart_path),
    )  # fmt: skip
    assert code == 0, output
    report = json.loads(report_path.read_text())
    assert report["requests"] == 200 and report["errors"] == 0
    assert sum(report["statuses"].values()) == sum(report["codes"].values()) == 200
    assert set(report["statuses"]) <= {"200", "402", "409", "429"}
    assert report["codes"]["ok"] == report["statuses"]["200"]
    assert set(report["latency_ms"]) >= {"p50", "p90", "p99", "p99.9", "max"}
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"] <= report["latency_ms"]["max"]
    assert report["operations"].keys() >= {"gain:daily_chat", "debit:EDIT_IMAGE", "read:balance"}
    assert sum(row["requests"] for row in report["timeline"]) == 200
    assert chart_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "req/s" in output and "p99.9" in output


def test_an_open_loop_run_sends_at_the_rate(served: Served, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    code, output = run_loadtest(
        served.url, "--users", "50", "--rate", "100", "--duration", "1.5",
        "--json", str(report_path), "--auth", "user", "--jwt-secret", "x" * 40,
    )  # fmt: skip
    report = json.loads(report_path.read_text())
    # A token signed with the wrong secret: every request is a 401, counted by its code.
    assert 140 <= report["requests"] <= 150, output
    assert report["statuses"] == {"401": report["requests"]} and code == 0


def test_a_mix_file_and_its_errors(served: Served, tmp_path: Path) -> None:
    mix = tmp_path / "mix.toml"
    mix.write_text('name = "reads"\n[weights]\n"read:levels" = 1\n"read:limits" = 3\n')
    code, output = run_loadtest(served.url, "--mix", str(mix), "--requests", "40", "--users", "5")
    assert code == 0 and "mix reads" in output and "200: 40" in output
    mix.write_text('[weights]\n"delete:everything" = 1\n')
    code, output = run_loadtest(served.url, "--mix", str(mix), "--requests", "1")
    assert code == 2 and "unknown operation(s) ['delete:everything']" in output


def test_a_remote_target_is_refused_unless_allowed() -> None:
    code, output = run_loadtest("http://10.255.255.1:8000", "--requests", "1")
    assert code == 2 and "--allow-remote" in output


def test_a_closed_port_is_one_error_line_and_exit_2() -> None:
    result = CliRunner().invoke(
        loadtest, [f"http://127.0.0.1:{free_port()}", "--requests", "5", "--mix", "debit"],
        env={"COUNTERS_LOADTEST_SERVICE_KEY": SERVICE_KEY},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: setup could not reach http://127.0.0.1:")
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://user:hunter2@127.0.0.1:8731", "credentials in the URL"),
        ("http://127.1:8731", "127.1 is not a canonical IPv4 address"),
        ("http://2130706433:8731", "2130706433 is not a canonical IPv4 address"),
        ("http://127.0.0.1:99999", "Port out of range"),
        ("ftp://127.0.0.1:8731", "is not http(s)://host[:port]"),
        ("http://127.0.0.1:8731/api", "a base URL has no path"),
        ("http://127.0.0.1:8731/api/", "a base URL has no path"),
    ],
)
def test_a_url_the_driver_cannot_use_is_refused_before_any_request(url: str, message: str) -> None:
    """``user@`` was a traceback (aiohttp refuses credentials beside the Authorization header)
    and ``127.1`` (resolved by the system, refused by aiohttp) every request failed."""
    result = CliRunner().invoke(
        loadtest, [url, "--requests", "5", "--no-setup"],
        env={"COUNTERS_LOADTEST_SERVICE_KEY": SERVICE_KEY},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Invalid value for URL: " in result.output and message in result.output
    assert "Traceback" not in result.output and "requests in" not in result.output
    assert "hunter2" not in result.output


def test_a_url_with_a_path_is_refused_and_a_bare_slash_is_the_same_host() -> None:
    """Routes are appended to the base: ``.../api`` sent every setup request to
    ``/api/api/...`` and failed on 120 404s, "is the service key right?" (reviewer helper-66)."""
    assert check_target("http://127.0.0.1:8731/") == "http://127.0.0.1:8731"
    with pytest.raises(click.BadParameter, match="a base URL has no path"):
        check_target("http://127.0.0.1:8731/api")


@pytest.mark.parametrize("option", ["--duration", "--rate", "--timeout"])
@pytest.mark.parametrize("value", ["nan", "inf", "NaN", "infinity"])
def test_every_float_option_refuses_a_number_that_is_not_finite(option: str, value: str) -> None:
    """click's FloatRange(0, min_open=True) took nan (no comparison with it is true) and inf:
    ``--duration nan`` ran forever, ``--timeout nan`` was taken (reviewer helper-66)."""
    result = CliRunner().invoke(
        loadtest, [f"http://127.0.0.1:{free_port()}", option, value, "--requests", "1",
                   "--no-setup"],
        env={"COUNTERS_LOADTEST_SERVICE_KEY": SERVICE_KEY},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert "is not a finite number" in result.output and "requests in" not in result.output


@pytest.mark.parametrize(
    ("prefix", "mix", "message"),
    [
        ("bad\x00", "gain", "<n> is not a user id"),
        ("user:", "debit", "<n> is not a user id"),  # a reserved actor's form
        ("x" * 128, "debit", "<n> is not a user id"),  # x...x0 is 129 characters
        ("a@", "gain", "makes entity ids the service refuses"),  # a@c0: no @ in an entity id
    ],
)
def test_a_user_prefix_that_makes_ids_the_service_refuses_is_refused_before_any_request(
    prefix: str, mix: str, message: str
) -> None:
    """User and entity id shapes are the service's code (``counters.ids``), so they are
    checked before setup, which sent every request and failed on 422s each, asking whether
    the service key was right (reviewer helper-66). Nothing listens at the URL: a request
    would say "setup could not reach"."""
    result = CliRunner().invoke(
        loadtest, [f"http://127.0.0.1:{free_port()}", "--user-prefix", prefix, "--mix", mix,
                   "--requests", "5"],
        env={"COUNTERS_LOADTEST_SERVICE_KEY": SERVICE_KEY},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Invalid value for --user-prefix" in result.output and message in result.output
    assert "could not reach" not in result.output


def test_setup_refused_for_a_reason_other_than_the_key_says_that_reason(served: Served) -> None:
    """A 422 for an unknown --tier asked "is the service key right?" (reviewer helper-66): the
    tiers are the deployment's rules, so the service refuses it, and the line shows its first
    refusal's code and detail. A 401 still asks about the key."""
    code, output = run_loadtest(
        served.url, "--tier", "nope", "--mix", "debit", "--users", "3", "--requests", "5"
    )
    assert code == 1, output
    line = output.strip().splitlines()[-1]
    assert line.startswith("Error: setup failed: statuses {") and "nope" in line, line
    assert "service key" not in line
    result = CliRunner().invoke(
        loadtest, [served.url, "--mix", "debit", "--users", "3", "--requests", "5"],
        env={"COUNTERS_LOADTEST_SERVICE_KEY": "not-the-key"},
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "Error: setup failed: statuses {401: 3} (is the service key right?)"
    )


def test_failed_requests_are_reported_then_one_error_line(tmp_path: Path) -> None:
    """Nothing listens (no setup needed): every request is a connection error, measured."""
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        loadtest, [url, "--requests", "5", "--no-setup"],
        env={"COUNTERS_LOADTEST_SERVICE_KEY": SERVICE_KEY},
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "5 requests in" in result.output and "5 errors" in result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == "Error: 5 of 5 requests failed (connection errors, timeouts, 5xx)"
    assert "Traceback" not in result.output


def test_reload_under_load_fails_no_request(
    served: Served, rules_file: Path, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    env = {**os.environ, "COUNTERS_LOADTEST_SERVICE_KEY": SERVICE_KEY}
    argv = [sys.executable, "-c", "from counters.cli.main import main; main()", "loadtest",
            served.url, "--users", "300", "--duration", "3", "--concurrency", "8",
            "--user-prefix", "reload-", "--json", str(report_path)]  # fmt: skip
    richer = rules_version(parse_rules(edited(RICHER)))
    load = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.5)
        rules_file.write_text(edited(RICHER), "utf-8")
        os.kill(served.pid, signal.SIGHUP)  # the supervisor forwards it to both workers
        # Both took it before the file changes again (a worker reads the file when it handles
        # the signal: a fixed sleep here let a busy worker read the broken file instead)
        settled(served, lambda ready: ready["rules_version"] == richer)
        rules_file.write_text("[exp]\nlevels = 'not a table'\n", "utf-8")
        os.kill(served.pid, signal.SIGHUP)  # refused: the richer rules stay
        output, _ = load.communicate(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
    report = json.loads(report_path.read_text())
    assert report["errors"] == 0, output
    assert set(report["statuses"]) <= {"200", "409", "429"}
    settled(served, lambda ready: "exp.levels" in str(ready.get("rules_reload_error")))
    assert all(get_json(served.url + "/readyz")["rules_version"] == richer for _ in range(6))
    # Fixed again: the next SIGHUP takes it and the error goes away.
    rules_file.write_text(edited(RICHER), "utf-8")
    os.kill(served.pid, signal.SIGHUP)
    settled(served, lambda ready: "rules_reload_error" not in ready)
    assert all(get_json(served.url + "/readyz")["rules_version"] == richer for _ in range(6))


def settled(
    served: Served, holds: Callable[[dict[str, object]], bool], timeout: float = 30.0
) -> None:
    """Wait until ``holds`` is true of six ``/readyz`` answers in a row, each on a new
    connection (so both workers answer), or fail after ``timeout`` seconds: a reload is
    handled when each worker's loop gets to it, later on a busy machine."""
    deadline, last = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        answers = [get_json(served.url + "/readyz") for _ in range(6)]
        if all(holds(ready) for ready in answers):
            return
        last = next(ready for ready in answers if not holds(ready))
        time.sleep(0.1)
    raise AssertionError(f"/readyz did not settle within {timeout} s; last: {last}")
