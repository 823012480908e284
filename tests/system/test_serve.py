"""`counters` as an operator runs it: real subprocesses, their exit codes, files and signals."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from bench import scenarios
from counters.cli.devcreds import DevCredentials
from counters.cli.embedded import _claim_pidfile, free_port
from counters.cli.main import main
from counters.errors import ConfigError, StorageError
from counters.settings import Settings
from tests.support.core import JWT_SECRET

COUNTERS = [sys.executable, "-c", "from counters.cli.main import main; main()"]


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERS_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["COUNTERS_DATA_DIR"] = str(tmp_path / "data")
    return env | settings


@pytest.fixture
def outside_pytest_tmp() -> Iterator[Path]:
    """A directory under /tmp for an embedded Postgres that runs as another user (as root).
    Not under pytest's tmp_path: any pytest session of the same user starting meanwhile resets
    /tmp/pytest-of-<user> to 0700, and that user could no longer reach its data."""
    path = Path(tempfile.mkdtemp(prefix="counters-serve-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COUNTERS, *args], cwd=tmp_path, env=_env(tmp_path, **settings),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no traceback
    for needle in needles:
        assert needle in lines[0]


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert re.fullmatch(r"counters, version \d+\.\d+\.\d+\S*\n", result.stdout)


def test_a_typo_in_a_boolean_exits_2_naming_the_variable(tmp_path: Path) -> None:
    done = _run(tmp_path, "serve", COUNTERS_FLUSHER_ENABLED="ture", COUNTERS_DEV_MODE="1")
    _one_line_error(done, "COUNTERS_FLUSHER_ENABLED='ture'", "not a boolean")
    assert not (tmp_path / "data").exists()  # nothing was started


@pytest.mark.parametrize("command", ["serve", "reconcile", "flush", "migrate"])
def test_every_command_reports_a_bad_setting_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """In-process (the same code path as the subprocess tests above, without their start-up)."""
    monkeypatch.setenv("COUNTERS_KEY_BUCKETS", "0")
    monkeypatch.setenv("COUNTERS_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(main, [command])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: COUNTERS_KEY_BUCKETS=0: out of range (must be >= 1 and <= 16384)"
    ]


def test_a_clock_offset_past_ten_years_stops_serve_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reviewer's finding: COUNTERS_CLOCK_OFFSET_SECONDS=1e308 started, and then every award
    and progress read answered 500 ("cannot convert float infinity to integer")."""
    monkeypatch.setenv("COUNTERS_CLOCK_OFFSET_SECONDS", "1e308")
    monkeypatch.setenv("COUNTERS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COUNTERS_JWT_SECRET", JWT_SECRET)
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "Error: COUNTERS_CLOCK_OFFSET_SECONDS=1e+308: out of range"
        " (must be >= -315576000 and <= 315576000)"
    ]
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("command", ["serve", "reconcile"])
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("COUNTERS_REDIS_URL", "garbage", "COUNTERS_REDIS_URL: not a URL of redis://"),
        ("COUNTERS_REDIS_URL", "redis://:hunter2@h:abc/0", "COUNTERS_REDIS_URL: Port could not"),
        ("COUNTERS_DATABASE_URL", "mysql://u:hunter2@h/db", "COUNTERS_DATABASE_URL: not a URL"),
        ("COUNTERS_CORS_ORIGINS", "not a url", "COUNTERS_CORS_ORIGINS: not an origin"),
        ("COUNTERS_CORS_ORIGINS", "https://a.example/", "'https://a.example/'"),  # never sent
        ("COUNTERS_WEBHOOK_URLS", "http://", "COUNTERS_WEBHOOK_URLS: not an http(s)://host"),
        ("COUNTERS_WEBHOOK_URLS", "http://127.0.0.1:99999/x", "port '99999' is not a number"),
    ],
)
def test_a_bad_url_or_origin_is_one_line_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, variable: str, value: str,
    message: str,
) -> None:  # fmt: skip
    """A Redis URL of no known scheme was a traceback and exit 1 (from the first connection);
    an origin no browser sends was accepted, and every call from that page refused; a webhook
    URL without a host or with a port over 65535 was served, and every delivery failed."""
    monkeypatch.setenv(variable, value)
    monkeypatch.setenv("COUNTERS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COUNTERS_JWT_SECRET", JWT_SECRET)
    result = CliRunner().invoke(main, [command])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: COUNTERS_"), result.output
    assert message in lines[0]
    assert "hunter2" not in result.output  # a URL's password is never repeated
    assert not (tmp_path / "data").exists()


def test_reconcile_with_a_broken_rules_file_is_a_setup_error_not_drift(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("[exp\nlevels = ")
    done = _run(tmp_path, "reconcile", COUNTERS_RULES=str(rules))
    _one_line_error(done, str(rules), "not valid TOML")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "command", [("serve",), ("reconcile",), ("import", "--dry-run")], ids=lambda c: c[0]
)
def test_a_rules_file_that_is_not_utf8_stops_serve_reconcile_and_import_in_one_line(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """A decode error escaped as a traceback and exit 1 (for reconcile: "drift left"); now it
    is invalid rules like bad TOML, naming the file and the byte (reviewer helper-66)."""
    rules = tmp_path / "rules.toml"
    rules.write_bytes(b"# ok\n\xff\xfe")
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"kind": "exp", "user_id": "u1", "exp": 1}\n')
    args = (*command, str(lines)) if command[0] == "import" else command
    done = _run(tmp_path, *args, COUNTERS_RULES=str(rules), COUNTERS_PORT=str(free_port()))
    _one_line_error(done, str(rules), "not valid UTF-8 at byte 5")
    assert not (tmp_path / "data").exists()


def test_serve_without_secrets_refuses_outside_development_mode(tmp_path: Path) -> None:
    done = _run(tmp_path, "serve", COUNTERS_PORT=str(free_port()))
    _one_line_error(done, "no secrets", "COUNTERS_JWT_SECRET", "COUNTERS_DEV_MODE")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("dev_mode", ["0", "1"])
def test_serve_refuses_a_jwt_secret_shorter_than_256_bits(tmp_path: Path, dev_mode: str) -> None:
    """RFC 7518 section 3.2: an HS256 key has at least 256 bits; a one-character secret would
    let anyone forge a user's token by trying every character."""
    done = _run(
        tmp_path, "serve", COUNTERS_JWT_SECRET="a", COUNTERS_SERVICE_KEYS="k" * 32,
        COUNTERS_PORT=str(free_port()), COUNTERS_DEV_MODE=dev_mode,
    )  # fmt: skip
    _one_line_error(done, "COUNTERS_JWT_SECRET", "1 bytes", "32", "RFC 7518")
    assert "'a'" not in done.stderr  # the secret itself is never printed
    assert not (tmp_path / "data").exists()


def test_a_jwt_secret_of_32_bytes_is_enough(tmp_path: Path) -> None:
    for secret in ("x" * 32, "é" * 16):  # bytes, not characters
        assert Settings.from_env({"COUNTERS_JWT_SECRET": secret}).jwt_secret == secret
    with pytest.raises(ConfigError, match="31 bytes"):
        Settings.from_env({"COUNTERS_JWT_SECRET": "x" * 31})
    # The suite's, bench's and development mode's own secrets pass.
    dev_secret = DevCredentials.load_or_create(tmp_path).jwt_secret
    for secret in (JWT_SECRET, scenarios.JWT_SECRET, dev_secret):
        Settings.from_env({"COUNTERS_JWT_SECRET": secret})


def test_serve_checks_its_port_before_starting_any_server(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _run(tmp_path, "serve", COUNTERS_PORT=str(port), COUNTERS_DEV_MODE="1")
    _one_line_error(done, f"127.0.0.1:{port}", "COUNTERS_PORT")
    assert not (tmp_path / "data").exists()  # no Redis, no Postgres, no credentials


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, dict(response.headers), response.read()


def _start_serve(tmp_path: Path, port: int, **settings: str) -> subprocess.Popen[bytes]:
    """`counters serve` in development mode on embedded servers (log: serve.log), once
    /healthz answers."""
    env = _env(tmp_path, COUNTERS_PORT=str(port), COUNTERS_DEV_MODE="1", **settings)
    with (tmp_path / "serve.log").open("ab") as out:
        proc = subprocess.Popen(
            [*COUNTERS, "serve"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 90
    while True:
        try:
            _get(f"http://127.0.0.1:{port}/healthz")
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError((tmp_path / "serve.log").read_text()) from None
            time.sleep(0.2)


@pytest.fixture
def serving(outside_pytest_tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """`counters serve --workers 2` in development mode, embedded servers, short read timeout."""
    tmp_path = outside_pytest_tmp
    port = free_port()
    proc = _start_serve(
        tmp_path, port, COUNTERS_WORKERS="2", COUNTERS_REQUEST_READ_TIMEOUT_SECONDS="1",
        COUNTERS_MAX_HEADER_BYTES="4096", COUNTERS_LOG_FORMAT="json", COUNTERS_ACCESS_LOG="yes",
    )  # fmt: skip
    try:
        yield proc, port, tmp_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _http_count(metrics: str, route: str) -> float:
    pattern = rf'counters_http_request_duration_seconds_count{{route="{route}",status="200"}} (\S+)'
    return sum(float(value) for value in re.findall(pattern, metrics))


def test_serve_in_production_shape(serving: tuple[subprocess.Popen[bytes], int, Path]) -> None:
    """One real serve, checked the way an operator would: metrics summed over both workers,
    request ids, locked-down files and servers, the CLI beside it, slow and oversized clients
    cut off, and SIGTERM: drained, embedded servers stopped, exit 0."""
    proc, port, tmp_path = serving
    data = tmp_path / "data"
    base = f"http://127.0.0.1:{port}"

    # Request ids: echoed when sent, made when not, in the access log line of that request.
    _, headers, _ = _get(f"{base}/healthz", {"X-Request-Id": "op-check-1"})
    assert headers["x-request-id"] == "op-check-1"
    _, headers, _ = _get(f"{base}/healthz", {"X-Request-Id": "bad id {forged}"})
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", headers["x-request-id"])  # replaced

    # /metrics counts every worker's requests, whichever worker answers the scrape.
    for _ in range(40):
        _get(f"{base}/api/levels")
    time.sleep(1.2)  # each worker moves its batched counts into the shared files every second
    scrapes = [_get(f"{base}/metrics")[2].decode() for _ in range(6)]
    assert {_http_count(text, "/api/levels") for text in scrapes} == {40.0}
    assert 'counters_rules_version_info{version="' in scrapes[0]
    assert list((data / "metrics").glob("*.db"))  # the per-run multiprocess files

    # Files: credentials and passwords 0600, data directories 0700.
    for name in ("dev-credentials.json", "dev.env", "postgres.password", "serve.json"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((data / "redis" / "password").stat().st_mode) == 0o600
    for directory in ("redis", "postgres"):
        assert stat.S_IMODE((data / directory).stat().st_mode) == 0o700, directory

    # The embedded Redis wants its password.
    redis_pid = int((data / "redis" / "redis.pid").read_text())
    postgres_pid = int((data / "postgres" / "postmaster.pid").read_text().split()[0])
    redis_port = int(re.search(r":(\d+)/0", (data / "serve.json").read_text())[1])  # type: ignore[index]
    with pytest.raises(redis.AuthenticationError), redis.Redis(port=redis_port) as anonymous:
        anonymous.get("x")

    # The CLI beside the running serve finds its servers instead of starting its own.
    flushed = _run(tmp_path, "flush", "--burst")
    assert flushed.returncode == 0, flushed.stderr
    assert "using the redis of the running serve" in flushed.stderr

    # A client that sends nothing, or half a body, is cut off after the read timeout.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
        started = time.monotonic()
        assert idle.recv(64) == b""
        assert time.monotonic() - started < 4
    with socket.create_connection(("127.0.0.1", port), timeout=5) as partial:
        partial.sendall(b"POST /api/exp/gain HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
        assert partial.recv(4096).startswith(b"HTTP/1.1 408 ")  # JSON, code request_timeout
    # A request head over the limit gets a 431.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as large:
        large.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 8192 + b"\r\n\r\n")
        answer = large.recv(4096)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert answer.endswith(
            b'\r\n\r\n{"detail":"Request header fields too large","code":"header_too_large"}'
        )

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert not _alive(redis_pid) and not _alive(postgres_pid)
    assert not (data / "serve.json").exists()
    assert not (data / "metrics").exists()
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log
    access = [line for line in log.splitlines() if '"logger": "counters.access"' in line]
    assert any('"request_id": "op-check-1"' in line for line in access)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_an_embedded_server_that_dies_stops_serve_and_a_restart_works(
    outside_pytest_tmp: Path,
) -> None:
    """Found by an attacker: kill -9 of the embedded postmaster was never noticed (a zombie,
    serve degraded for ever), and starting again failed on its postmaster.pid and socket lock.
    Now serve reaps it, says so on one line and exits 2 (a supervisor starts everything again),
    and the next start clears what the dead postmaster left."""
    tmp_path, port = outside_pytest_tmp, free_port()
    proc = _start_serve(tmp_path, port)
    try:
        pg_data = tmp_path / "data" / "postgres"
        postmaster = int((pg_data / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        assert proc.wait(60) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "serve.log").read_text()
    died = [line for line in log.splitlines() if "embedded Postgres" in line and "SIGKILL" in line]
    assert len(died) == 2, log  # the line logged when it was noticed, and the exit's
    assert died[-1].startswith(f"Error: embedded Postgres (pid {postmaster}, data in ")
    assert not Path(f"/proc/{postmaster}").exists()  # reaped: no zombie
    assert (pg_data / "postmaster.pid").exists()  # what a restart must clear
    restarted = _start_serve(tmp_path, port)
    try:
        status, _, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and b'"postgres":"ok"' in body.replace(b" ", b""), body
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(60) == 0


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_dead_postmasters_pid_and_lock_files_are_dropped_only_when_no_postgres_has_its_pid(
    tmp_path: Path,
) -> None:
    """A pid file whose pid is gone, a zombie, or reused by another program is the dead
    server's: dropped with its socket locks (Postgres's own check refused a reused pid). One
    whose pid is a live postgres is not."""
    fake = tmp_path / "postgres"  # a program whose process name is "postgres"
    shutil.copy("/bin/sleep", fake)
    pidfile, lock = tmp_path / "postmaster.pid", tmp_path / ".s.PGSQL.5999.lock"
    server = subprocess.Popen([str(fake), "30"])
    try:
        for pid, live in ((server.pid, True), (os.getpid(), False), (2**22 + 1, False)):
            pidfile.write_text(f"{pid}\n/data\n")
            lock.write_text(f"{pid}\n/data\n")
            if live:
                with pytest.raises(StorageError, match="already running"):
                    _claim_pidfile(pidfile, "postgres", (lock,))
                assert pidfile.exists() and lock.exists()
            else:
                _claim_pidfile(pidfile, "postgres", (lock,))
                assert not pidfile.exists() and not lock.exists()
        server.kill()
        time.sleep(0.2)  # a zombie now: not reaped
        assert Path(f"/proc/{server.pid}").exists()
        pidfile.write_text(f"{server.pid}\n")
        _claim_pidfile(pidfile, "postgres")
        assert not pidfile.exists()
    finally:
        server.kill()
        server.wait()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat_file.parent.name))
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_stop_when_serve_is_killed(
    serving: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    """Found by an attacker: after kill -9 of `counters serve`, its workers went on serving
    (re-parented to init) and held the port, so a supervisor could not start it again. Each
    worker now gets SIGTERM when its supervisor dies, shuts down and frees the port."""
    proc, port, _ = serving
    workers = [pid for pid in _children(proc.pid) if _alive(pid)]
    cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in workers]
    workers = [pid for pid, cmd in zip(workers, cmdlines, strict=True) if b"spawn_main" in cmd]
    assert len(workers) == 2, cmdlines
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 40  # the graceful shutdown's 30 s at the most
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)
    with pytest.raises(OSError):
        _get(f"http://127.0.0.1:{port}/healthz")
