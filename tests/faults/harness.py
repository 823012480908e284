"""The fault suite's parts: a real ``counters serve`` process, a load driver that records every
response, and an oracle that checks the record against the Postgres ledger afterwards.

The driver sends only keyed requests (every request its own ``Idempotency-Key``), so each ledger
row names the request that made it (``ledger.idem``). The oracle then holds, for the users of one
run: every acknowledged change is in the ledger exactly once, with the amount the API answered;
nothing unacknowledged is in it twice; each user's seq runs 1..n without gap or duplicate; daily
limits and caps hold in the ledger itself; totals equal the ledger's sums; a keyed retry of an
acknowledged request is a replay of the first answer; and ``counters reconcile`` exits 0.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx2
from click.testing import CliRunner

from counters.cli.embedded import RedisServer, free_port
from counters.cli.main import main
from counters.rules import ExpRules, load_rules
from tests.support.core import SERVICE_KEY

# The shipped rules with a lower cap for levels 1-2, so the load reaches it (a chat and two
# characters make 80 EXP a day).
LEVEL_ONE_CAP = 60


def fault_rules(directory: Path) -> Path:
    """A rules file: the shipped one with the level 1-2 daily cap at ``LEVEL_ONE_CAP``."""
    shipped = Path(__file__).parents[2] / "counters" / "rules" / "default_rules.toml"
    text = shipped.read_text().replace("cap = 150", f"cap = {LEVEL_ONE_CAP}", 1)
    path = directory / "fault_rules.toml"
    path.write_text(text)
    return path


class Serve:
    """``counters serve`` (one worker) as a child process on a free port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        data = tempfile.mkdtemp(prefix="serve-", dir=log.parent)  # one serve per data dir
        self.env = {**os.environ, **env, "COUNTERS_PORT": str(self.port), "COUNTERS_DATA_DIR": data}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Spawn and wait until /healthz answers."""
        counters = Path(sys.executable).with_name("counters")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(counters), "serve"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx2.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"serve did not answer: {self.log.read_text()[-2000:]}")

    def spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        """Another ``counters`` command with this process's environment (e.g. ``flush``)."""
        counters = Path(sys.executable).with_name("counters")
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [str(counters), *args], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        """SIGKILL: no lifespan shutdown, no flusher drain."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 10 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


async def paused(server: RedisServer, seconds: float) -> tuple[float, float]:
    """Stall ``server`` (SIGSTOP: its connections stay open, nothing answers) for ``seconds``,
    then resume it, even if the wait is cancelled; the monotonic times it stopped and resumed.
    Its process must be running: a pid of 0 would stop this test's own process group."""
    assert server._proc is not None, "the server is not running"
    pid = server._proc.pid
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)
    return stopped_at, time.monotonic()


def counters_command(args: list[str], env: dict[str, str]) -> int:
    """Run ``counters <args>`` in this process (no interpreter start-up to pay); its exit code.
    Call it from a worker thread: the command runs its own event loop."""
    result = CliRunner().invoke(main, args, env=env)
    if result.exit_code:
        sys.stderr.write(result.output)
    return result.exit_code


@dataclass(slots=True)
class Call:
    """One request the driver made and what came back (status None: no answer at all)."""

    user: str
    path: str
    body: dict[str, Any]
    key: str
    headers: dict[str, str]
    status: int | None = None
    reply: Any = None
    retry_after: str | None = None
    replayed: bool = False
    elapsed: float = 0.0
    sent_at: float = 0.0  # time.monotonic() when sent
    error: str | None = None

    @property
    def change(self) -> int | None:
        """The EXP change this answer acknowledged (None: not acknowledged)."""
        if self.status != 200:
            return None
        if self.path.endswith("/adjust"):
            return int(self.reply["applied_delta"])
        return int(self.reply["exp_added"])


@dataclass
class Load:
    """Keyed requests for ``users`` against ``url``, every answer recorded in ``calls``."""

    url: str
    users: list[str]
    seed: int = 0
    calls: list[Call] = field(default_factory=list)
    retries: list[Call] = field(default_factory=list)
    timeout: float = 5.0  # a request this slow counts as a hang
    _n: int = 0

    def _next(self, rng: random.Random) -> Call:
        self._n += 1
        user = rng.choice(self.users)
        key = f"{user}-{self._n}"
        service = {"Authorization": f"Bearer {SERVICE_KEY}", "Idempotency-Key": key}
        roll = rng.random()
        if roll < 0.4:
            body = {"user_id": user, "delta": rng.choice([5, 10, 15, -4]), "reason": "fault run"}
            return Call(user, "/api/admin/exp/adjust", body, key, service)
        action = "daily_chat" if roll < 0.7 else "create_character"
        return Call(user, "/api/exp/gain", {"action": action}, key, {**service, "X-User-Id": user})

    async def send(self, http: httpx2.AsyncClient, call: Call) -> Call:
        """Send ``call`` once and record the outcome in it."""
        started = call.sent_at = time.monotonic()
        try:
            response = await http.post(call.path, json=call.body, headers=call.headers)
        except httpx2.HTTPError as exc:
            call.error = f"{type(exc).__name__}: {exc}"
        else:
            call.status = response.status_code
            call.reply = response.json()
            call.retry_after = response.headers.get("retry-after")
            call.replayed = response.headers.get("idempotent-replayed") == "true"
        call.elapsed = time.monotonic() - started
        return call

    async def run(self, seconds: float, concurrency: int = 8) -> None:
        """Send requests from ``concurrency`` callers for ``seconds``."""
        rng = random.Random(self.seed)
        deadline = time.monotonic() + seconds
        async with httpx2.AsyncClient(base_url=self.url, timeout=self.timeout) as http:

            async def caller() -> None:
                while time.monotonic() < deadline:
                    call = self._next(rng)
                    self.calls.append(await self.send(http, call))
                    if call.status is None or call.status >= 500:
                        await asyncio.sleep(0.05)  # a client backing off

            await asyncio.gather(*(caller() for _ in range(concurrency)))

    async def warm(self, expect: int | None = 200) -> None:
        """One adjust per user first, so every user exists in Redis and Postgres."""
        async with httpx2.AsyncClient(base_url=self.url, timeout=self.timeout) as http:
            for user in self.users:
                self._n += 1
                key = f"{user}-{self._n}"
                headers = {"Authorization": f"Bearer {SERVICE_KEY}", "Idempotency-Key": key}
                body = {"user_id": user, "delta": 1, "reason": "warm up"}
                call = await self.send(
                    http, Call(user, "/api/admin/exp/adjust", body, key, headers)
                )
                assert expect is None or call.status == expect, (call.status, call.reply)
                self.calls.append(call)

    async def retry_all(self, concurrency: int = 8) -> None:
        """Send every request once more with its key (until it gets an answer that is not 503);
        ``retries[i]`` is the retry of ``calls[i]``."""
        gate = asyncio.Semaphore(concurrency)
        async with httpx2.AsyncClient(base_url=self.url, timeout=self.timeout) as http:

            async def retry(first: Call) -> Call:
                async with gate:
                    for _ in range(50):
                        again = Call(first.user, first.path, first.body, first.key, first.headers)
                        await self.send(http, again)
                        if again.status is not None and again.status < 500:
                            break
                        await asyncio.sleep(0.1)
                    return again

            self.retries = list(await asyncio.gather(*(retry(call) for call in self.calls)))


@dataclass
class Verdict:
    acknowledged: int
    ledgered: int
    refused: int  # 503 and no answer: not acknowledged
    slowest: float


def lost_in_window(call: Call, retry: Call, loss_at: float | None) -> bool:
    """A request sent before Redis lost its data (``loss_at``, no AOF) whose retry is no
    replay: its change was inside the durability window and its retry is a new request."""
    return loss_at is not None and call.sent_at < loss_at and not retry.replayed


async def check(
    load: Load, database_url: str, rules: ExpRules, loss_at: float | None = None
) -> Verdict:
    """Hold the record of ``load`` against the ledger (see the module docstring); raises
    AssertionError naming the first broken rule. With ``loss_at`` (Redis emptied then), a
    change acknowledged by a request sent before it may be lost (inside the window); its
    retry, a new request, must then be in the ledger exactly once, as answered."""
    _check_retries(load, loss_at)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT user_id, seq, kind, action, amount, day, idem, (totals->>'level')::int AS level"
            " FROM ledger WHERE user_id = ANY($1::text[]) ORDER BY user_id, seq",
            load.users,
        )
        totals = {
            r["user_id"]: (r["exp"], r["seq"])
            for r in await conn.fetch(
                "SELECT user_id, exp, seq FROM user_totals WHERE user_id = ANY($1::text[])",
                load.users,
            )
        }
        quarantined = await conn.fetchval(
            "SELECT count(*) FROM ledger_quarantine WHERE resolved_at IS NULL"
        )
    finally:
        await conn.close()
    assert quarantined == 0, f"{quarantined} entries in quarantine"
    by_key: dict[str, list[Any]] = defaultdict(list)
    by_user: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_key[row["idem"]].append(row)
        by_user[row["user_id"]].append(row)
    known = {call.key for call in load.calls}
    assert set(by_key) <= known, f"ledger rows of no request: {sorted(set(by_key) - known)[:5]}"
    for key, found in by_key.items():
        assert len(found) == 1, f"request {key} ledgered {len(found)} times"
    acknowledged = 0
    for call, retry in zip(load.calls, load.retries, strict=True):
        change = call.change
        if lost_in_window(call, retry, loss_at):
            call, change = retry, retry.change  # the retry's own answer is what holds now
        if change is None:
            continue
        acknowledged += 1
        found = by_key.get(call.key, [])  # an adjust that changed nothing is ledgered too
        assert len(found) == 1, f"acknowledged {call.key} ({change}) is not in the ledger"
        assert found[0]["amount"] == change, (call.key, change, found[0]["amount"])
    for user, events in by_user.items():
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), f"{user}: seq gap"
        total = sum(e["amount"] for e in events)
        assert totals.get(user) == (total, len(events)), (user, totals.get(user), total)
        _check_limits(user, events, rules)
    refused = sum(1 for c in load.calls if c.status is None or c.status >= 500)
    slowest = max(c.elapsed for c in [*load.calls, *load.retries])
    return Verdict(acknowledged, len(rows), refused, slowest)


def _check_retries(load: Load, loss_at: float | None) -> None:
    for first, again in zip(load.calls, load.retries, strict=True):
        assert again.status is not None and again.status < 500, (again.key, again.status)
        if lost_in_window(first, again, loss_at):
            continue
        if first.status is not None and first.status < 500:
            same = (again.status, _stable(again.reply)) == (first.status, _stable(first.reply))
            assert same, _debug(load, first.key)
            assert again.replayed or first.status >= 400, f"{first.key}: not a replay"


def _stable(reply: Any) -> Any:
    """A reply without what is computed when it is sent: a 429's ``retry_after`` (seconds to
    midnight) differs between the first answer and its replay."""
    if isinstance(reply, dict):
        return {k: v for k, v in reply.items() if k != "retry_after"}
    return reply


def _check_limits(user: str, events: list[Any], rules: ExpRules) -> None:
    """Daily limits and caps, as the ledger shows them: each award's day, action and level."""
    level = 1
    counts: dict[tuple[str, str], int] = defaultdict(int)
    gained: dict[str, int] = defaultdict(int)
    for event in events:
        if event["kind"] == "exp_award":
            day, action = event["day"], event["action"]
            counts[day, action] += 1
            limit = rules.actions[action].daily_limit
            assert limit is None or counts[day, action] <= limit, f"{user}: {action} over limit"
            gained[day] += event["amount"]
            cap = rules.cap_for(level)
            assert gained[day] <= cap, f"{user}: {gained[day]} EXP on {day} over the cap {cap}"
        level = event["level"] or level


def rules_of(path: Path) -> ExpRules:
    return load_rules(path).exp


def _debug(load: Load, key: str) -> str:
    first = next(c for c in load.calls if c.key == key)
    again = next(c for c in load.retries if c.key == key)
    return f"{first}\n{again}"
