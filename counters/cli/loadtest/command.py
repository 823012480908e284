"""``counters loadtest URL``: drive a running deployment and report what it did.

Loopback targets only unless ``--allow-remote``, so a typo cannot load someone else's server.
See README "Load testing a deployment" for the options and the report.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import click
import uvloop
from tqdm import tqdm  # type: ignore[import-untyped]

from counters.auth import issue_token
from counters.cli.commands import CommandError
from counters.cli.loadtest.driver import Plan, Prepared, Recorder, drive
from counters.cli.loadtest.mixes import Mix, MixError, Request, load_mix, requests_for
from counters.cli.loadtest.population import Population
from counters.cli.loadtest.report import render, summary, write_chart
from counters.errors import shown
from counters.ids import TARGET_ID, USER_ID, USER_ID_RULE, is_whole
from counters.logs import escape

_POOL = 100_000  # distinct prepared requests a timed run cycles through, at most


class Positive(click.FloatRange):
    """A finite number above 0 (``--duration``, ``--rate``, ``--timeout``). click's
    ``FloatRange(0, min_open=True)`` takes ``nan`` (every comparison with it is false) and
    ``inf`` (no upper bound): ``--duration nan`` or ``inf`` ran forever, ``--timeout nan`` never
    timed a request out (reviewer helper-66). Refused as any bad value is, exit 2."""

    def __init__(self) -> None:
        super().__init__(0, min_open=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds or requests/s", param, ctx)
        return number


def check_target(url: str) -> str:
    """The base URL to load (no trailing slash), or ``click.BadParameter`` (one line, exit 2)
    for one the driver could only fail on request by request: not ``http(s)://host[:port]``
    (a bad port, a query, a path: the routes are appended to it, so ``.../api`` sent every
    request to ``/api/api/...``, a 404 each, reviewer helper-66), credentials in it (aiohttp
    refuses them beside the Authorization header; give --service-key or --jwt-secret), or an
    IPv4 address written in a legacy short form (``127.1``, ``2130706433``: the system resolves
    it, aiohttp refuses to connect)."""
    base = url.rstrip("/")
    try:
        parts = urlsplit(base)
        if parts.username is not None or parts.password is not None:  # before echoing the URL
            raise click.BadParameter(
                "credentials in the URL: give --service-key or --jwt-secret instead",
                param_hint="URL",
            )
        parts.port  # noqa: B018 - reading it checks it
    except ValueError as exc:
        raise click.BadParameter(f"{url!r}: {exc}", param_hint="URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{url!r} is not http(s)://host[:port]", param_hint="URL")
    if parts.query or parts.fragment:
        raise click.BadParameter(f"{url!r}: a base URL has no query or fragment", param_hint="URL")
    if parts.path:  # "" or "/" (stripped above) only
        raise click.BadParameter(
            f"{url!r}: a base URL has no path (give http(s)://host[:port])", param_hint="URL"
        )
    host = parts.hostname
    try:
        socket.inet_aton(host)  # what the system would read as an IPv4 address
    except OSError:
        return base
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise click.BadParameter(
            f"{host} is not a canonical IPv4 address (write all four parts, as 127.0.0.1)",
            param_hint="URL",
        ) from None
    return base


def check_user_prefix(population: Population, mix: Mix, pool: int) -> None:
    """``click.BadParameter`` (exit 2, before any request) for a ``--user-prefix`` that makes ids
    the service refuses: user ids ``<prefix><n>`` (``counters.ids.USER_ID``) and, for a mix that
    names entities, their ids ``<prefix>c<n>``, ``<prefix>new-<kind>-<n>`` (``TARGET_ID``).
    Those shapes are the service's code, not the deployment's rules, so they are checked here;
    before, setup sent every request and failed with a 422 each (reviewer helper-66). The
    longest id of each kind is checked too, as both shapes bound the length. ``--tier`` is not
    checked here: the tiers are the deployment's rules, which only the service knows (its
    refusal is shown, see ``refusal_reason``)."""
    prefix = population.prefix
    users = (population.user(0), population.user(population.users - 1))
    if not all(is_whole(USER_ID, user) for user in users):
        raise click.BadParameter(
            f"{shown(repr(prefix))}<n> is not a user id: {USER_ID_RULE}", param_hint="--user-prefix"
        )
    entities = []
    if mix.creator_awards:
        entities += [f"{prefix}c{population.characters - 1}", f"{prefix}s{population.scenes - 1}"]
    for operation, _ in mix.weights:
        if operation.startswith("gain:create_"):
            entities.append(f"{prefix}new-{operation.removeprefix('gain:create_')}-{pool - 1}")
    if not all(is_whole(TARGET_ID, entity) for entity in entities):
        raise click.BadParameter(
            f"{shown(repr(prefix))} makes entity ids the service refuses: they are "
            "1-128 letters, digits and _.- characters, starting with a letter or digit",
            param_hint="--user-prefix",
        )


def is_loopback(url: str) -> bool:
    """Whether every address ``url``'s host resolves to is a loopback address."""
    host = urlsplit(url).hostname
    if not host:
        raise click.BadParameter(f"{url!r} names no host", param_hint="URL")
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        raise click.BadParameter(f"cannot resolve {host}: {exc}", param_hint="URL") from exc
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


@dataclass(frozen=True, slots=True)
class Credentials:
    """A service key (acts for any user via X-User-Id) and/or the JWT secret (a token per user)."""

    service_key: str | None
    jwt_secret: str | None

    @classmethod
    def find(cls, service_key: str | None, jwt_secret: str | None) -> Credentials:
        """The options (or their env), else the service's own COUNTERS_SERVICE_KEYS /
        COUNTERS_JWT_SECRET, else the dev credentials ``make run`` generated."""
        key = service_key or (os.environ.get("COUNTERS_SERVICE_KEYS", "").split(",")[0] or None)
        secret = jwt_secret or os.environ.get("COUNTERS_JWT_SECRET") or None
        if key is None and secret is None:
            data_dir = Path(os.environ.get("COUNTERS_DATA_DIR", ".counters"))
            stored = data_dir / "dev-credentials.json"
            if stored.exists():
                creds = json.loads(stored.read_text())
                key, secret = creds["service_key"], creds["jwt_secret"]
        if key is None and secret is None:
            raise click.UsageError(
                "no credentials: give --service-key or --jwt-secret (or their env variables), "
                "or run against `make run`, whose dev credentials are used"
            )
        return cls(key, secret)

    def headers(self, user: str, as_user: bool, tokens: dict[str, str]) -> dict[str, str]:
        """Headers acting for ``user``: its own JWT (``as_user``), else the service key."""
        if as_user:
            assert self.jwt_secret is not None
            token = tokens.get(user)
            if token is None:
                token = tokens[user] = issue_token(self.jwt_secret, user, ttl_seconds=7 * 86_400)
            return {"Authorization": f"Bearer {token}"}
        assert self.service_key is not None
        return {"Authorization": f"Bearer {self.service_key}", "X-User-Id": user}


def prepare(
    base: str, requests: list[Request], creds: Credentials, as_user: bool
) -> list[Prepared]:
    """Each request with its URL and headers, ready to send."""
    tokens: dict[str, str] = {}
    out: list[Prepared] = []
    for request in requests:
        headers = creds.headers(request.user, as_user, tokens)
        if request.body is not None:
            headers = {**headers, "Content-Type": "application/json"}
        out.append((request.method, base + request.path, headers, request.body, request.operation))
    return out


async def set_up(
    base: str, mix: Mix, population: Population, creds: Credentials, tier: str, concurrency: int
) -> dict[int, int]:
    """What the mix needs before it runs: owners of the liked and forked entities, and a
    subscription for every user of a mix that spends XP. Statuses seen, by count."""
    calls: list[tuple[str, str, dict[str, str]]] = []
    if mix.creator_awards:
        for kind, entity, owner in population.owned_entities():
            calls.append(("PUT", f"{base}/api/entities/{kind}/{entity}", {"owner_id": owner}))
    if mix.debits:
        for n in range(population.users):
            user = population.user(n)
            calls.append(("PUT", f"{base}/api/v1/subscriptions/{user}", {"tier": tier}))
    if not calls:
        return {}
    if creds.service_key is None:
        raise click.UsageError("this mix needs a service key to set up (owners, subscriptions)")
    headers = {"Authorization": f"Bearer {creds.service_key}"}
    statuses: dict[int, int] = {}
    refused: list[tuple[int, bytes]] = []  # the first refusal: its status and body
    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            with tqdm(
                total=len(calls), desc="setup", unit="req", file=sys.stderr, disable=None
            ) as bar:

                async def one(method: str, url: str, body: dict[str, str]) -> None:
                    async with limit, session.request(method, url, json=body, headers=headers) as r:
                        answer = await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                        if r.status >= 400 and r.status != 409 and not refused:
                            refused.append((r.status, answer))
                    bar.update()

                await asyncio.gather(*(one(*call) for call in calls))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:  # nothing measured yet: stop
        raise CommandError(f"setup could not reach {base}: {exc}") from exc
    bad = {s: n for s, n in statuses.items() if s >= 400 and s != 409}
    if bad:
        raise click.ClickException(f"setup failed: statuses {bad}{refusal_reason(*refused[0])}")
    return statuses


def refusal_reason(status: int, body: bytes) -> str:
    """Why setup was refused, for its one error line: a 401 or 403 asks about the service key;
    any other refusal shows the first one's ``code`` and ``detail`` (README: every error body
    has them). Before, every failed setup asked about the key, also a 422 for an unknown
    ``--tier``, whose key was right (reviewer helper-66)."""
    if status in (401, 403):
        return " (is the service key right?)"
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return f"; the first {status} said: {shown_text(body.decode('utf-8', 'replace'))}"
    code, detail = parsed.get("code"), parsed.get("detail")
    return f"; the first {status} was {shown_text(str(code))}: {shown_text(str(detail))}"


def shown_text(text: str) -> str:
    """``text`` on one line (what is not printable escaped, ``counters.logs.escape``), as long
    as ``shown`` allows."""
    return shown(escape(text))


class _Progress:
    """A tqdm bar of requests (a count) or seconds (a duration), with the current rate."""

    def __init__(self, count: int | None, duration: float | None) -> None:
        self.by_count = count is not None
        total = count if count is not None else duration
        unit = "req" if self.by_count else "s"
        self.bar = tqdm(total=total, unit=unit, file=sys.stderr, disable=None, desc="load")
        self.last = (0.0, 0)

    def tick(self, recorder: Recorder) -> None:
        now = time.perf_counter() - recorder.start
        done = recorder.completed
        then, before = self.last
        rate = (done - before) / (now - then) if now > then else 0.0
        self.last = (now, done)
        position = done if self.by_count else min(now, self.bar.total or now)
        self.bar.update(position - self.bar.n)
        self.bar.set_postfix(rate=f"{rate:,.0f}/s", errors=recorder.errors, r4xx=recorder.rejected)

    def close(self) -> None:
        self.bar.close()


@click.command()
@click.argument("url")
@click.option(
    "--mix",
    "mix_spec",
    default="gain",
    show_default=True,
    help="gain, debit, mixed, or a .toml/.json mix file (see README)",
)
@click.option(
    "--users",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="distinct users the requests act for",
)
@click.option(
    "--user-prefix",
    default="load-",
    show_default=True,
    help="user ids are <prefix><n> (entity ids too)",
)
@click.option(
    "--duration",
    type=Positive(),
    default=None,
    help="seconds to run [10 unless --requests]",
)
@click.option(
    "--requests",
    "count",
    type=click.IntRange(1),
    default=None,
    help="stop after this many requests",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="connections (closed loop: requests in flight)",
)
@click.option(
    "--rate",
    type=Positive(),
    default=None,
    help="open loop: requests/s (latency from the scheduled time)",
)
@click.option(
    "--service-key",
    envvar="COUNTERS_LOADTEST_SERVICE_KEY",
    default=None,
    help="act for users with this service key [env COUNTERS_LOADTEST_SERVICE_KEY]",
)
@click.option(
    "--jwt-secret",
    envvar="COUNTERS_LOADTEST_JWT_SECRET",
    default=None,
    help="sign a token per user [env COUNTERS_LOADTEST_JWT_SECRET]",
)
@click.option(
    "--auth",
    type=click.Choice(["service", "user"]),
    default=None,
    help="send the service key or each user's token [service when a key is known]",
)
@click.option(
    "--tier",
    default="game_master",
    show_default=True,
    help="subscription given to every user of a mix that spends XP",
)
@click.option("--no-setup", is_flag=True, help="skip assigning owners and subscriptions")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write the report as JSON here",
)
@click.option(
    "--chart",
    "chart_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write a PNG of throughput and latency over time (matplotlib)",
)
@click.option(
    "--timeout",
    type=Positive(),
    default=10.0,
    show_default=True,
    help="seconds before a request counts as an error",
)
@click.option("--seed", type=int, default=5, show_default=True)
@click.option("--allow-remote", is_flag=True, help="allow a target that is not this machine")
def loadtest(
    url: str, mix_spec: str, users: int, user_prefix: str, duration: float | None,
    count: int | None, concurrency: int, rate: float | None, service_key: str | None,
    jwt_secret: str | None, auth: str | None, tier: str, no_setup: bool,
    json_path: Path | None, chart_path: Path | None, timeout: float, seed: int,
    allow_remote: bool,
) -> None:  # fmt: skip
    """Drive a running deployment at URL with a mix of requests; report rates, latency
    percentiles and outcomes. Exit 1 when any request failed (transport error, timeout, 5xx)."""
    base = check_target(url)
    if not allow_remote and not is_loopback(base):
        raise click.UsageError(f"{base} is not this machine; pass --allow-remote to load it")
    try:
        mix = load_mix(mix_spec)
    except MixError as exc:
        raise click.BadParameter(str(exc), param_hint="--mix") from exc
    if duration is None and count is None:
        duration = 10.0
    creds = Credentials.find(service_key, jwt_secret)
    as_user = auth == "user" or (auth is None and creds.service_key is None)
    if as_user and creds.jwt_secret is None:
        raise click.UsageError("--auth user needs --jwt-secret")
    population = Population(
        user_prefix, users, max(users // 10, 1), max(users // 50, 1), entity_prefix=user_prefix
    )
    pool = min(count or max(users * 2, 10_000), _POOL)
    check_user_prefix(population, mix, pool)
    if chart_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            raise click.UsageError(
                "--chart needs matplotlib: pip install 'counters[chart]'"
            ) from exc
    setup = {} if no_setup else asyncio.run(
        set_up(base, mix, population, creds, tier, concurrency)
    )  # fmt: skip
    requests = prepare(base, requests_for(mix, population, pool, seed), creds, as_user)
    plan = Plan(requests, concurrency, rate, duration, count, timeout)
    progress = _Progress(count, duration)
    try:
        recorder = uvloop.run(drive(plan, progress.tick))  # uvloop: less CPU per request
    finally:
        progress.close()
    described: dict[str, Any] = {
        "target": base, "mix": mix.name, "weights": dict(mix.weights), "users": users,
        "auth": "user" if as_user else "service", "concurrency": concurrency, "rate": rate,
        "duration": duration, "count": count, "setup_statuses": setup,
    }  # fmt: skip
    report = summary(recorder, described)
    click.echo(render(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"report: {json_path}")
    if chart_path is not None:
        write_chart(report, chart_path)
        click.echo(f"chart: {chart_path}")
    if recorder.errors:  # the report above says what was measured; one line says it failed
        click.echo(
            f"Error: {recorder.errors} of {recorder.completed} requests failed "
            "(connection errors, timeouts, 5xx)",
            err=True,
        )
        sys.exit(1)
