"""``make bench``: every target measured in one run, side by side, on this machine.

Throwaway servers only (an embedded Redis without persistence, an embedded Postgres), all on
127.0.0.1 and free ports; every HTTP target runs under the same uvicorn settings (the service as
``counters serve`` runs it, its HTTP protocol included: bench/serve.py) and is driven by the same
load generator (bench/load.py) from a process of its own. Each target starts from the
same Redis state: emptied, with the entities that likes and forks go to already owned.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import cpu, direct, flush, scenarios
from bench.ablations import ways_there
from bench.baselines import pg_award
from bench.load import LoadSpec, run_load
from bench.measured import Measured, median_run
from bench.options import Options, parse
from bench.progress import Progress
from bench.report import Report, Row, render, write_json
from bench.servers import BARE_APP, FLOOR_APP, GAIN_APP, PG_APP, Server, uvicorn_server
from counters.cli.cluster import LocalCluster
from counters.cli.embedded import PostgresServer, RedisServer
from counters.errors import ConfigError, StorageError
from counters.metrics import prepare_multiprocess_dir
from counters.settings import Settings
from persistence.migrate import migrate_url

XP_DEBIT = "/api/v1/xp/debit"
XP_TIER = "pixel_rookie"  # the lowest tier that allows EDIT_IMAGE


class Bench:
    def __init__(self, options: Options, tmp: Path) -> None:
        self.options = options
        self.tmp = tmp
        self.report = Report()
        self.redis = RedisServer(tmp / "redis", persistent=False)
        self.postgres: PostgresServer | None = PostgresServer(tmp / "postgres")
        self.gain_awards = scenarios.gain_awards()
        self.gain_requests = scenarios.gain_requests(self.gain_awards)
        self.bare_requests = scenarios.gain_requests(self.gain_awards, path="/")
        self.seeded: list[tuple[bytes, bytes]] = []
        self.progress = Progress(options, self.wanted)

    # -- plumbing -------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        """The service's environment; with metrics on (the default), a fresh directory for
        prometheus-client's multiprocess files, as ``counters serve --workers N`` makes."""
        env = {
            "COUNTERS_REDIS_URL": self.redis.url,
            "COUNTERS_SERVICE_KEYS": scenarios.SERVICE_KEY,
            "COUNTERS_JWT_SECRET": scenarios.JWT_SECRET,
            "COUNTERS_DATA_DIR": str(self.tmp / "data"),
            **extra,
        }
        if env.get("COUNTERS_METRICS_ENABLED", "1") not in {"0", "false", "no"}:
            env |= prepare_multiprocess_dir(self.tmp / "metrics")
        return env

    def fresh_redis(self, seeded: bool = True) -> None:
        """Redis as every target starts: empty, plus the entities that exist before a run."""
        direct.restore(self.redis.url, self.seeded if seeded else [])

    def with_services(self, work: Callable[[Any], Any], url: str | None = None) -> Any:
        """Run ``work(services)`` against the bench's Redis (or ``url``), with the service's
        own code."""

        async def run() -> Any:
            # Seeding sends thousands of scripts at once through one process: bulk work, which
            # may take longer than a request's Redis timeout on a busy machine.
            settings = direct.bench_settings(url or self.redis.url)
            settings = replace(settings, redis_timeout_seconds=30.0)
            async with direct.services(settings) as svc:
                return await work(svc)

        return asyncio.run(run())

    def http(
        self,
        factory: str,
        requests: list[bytes],
        *,
        prepare: Callable[[], None] | None = None,
        ablation: bool = False,
        **options: Any,
    ) -> Measured:
        """``_http_once`` repeated (ablations run once), each run after ``prepare()`` (which
        puts the store back as every run starts); the median run."""
        runs = []
        for _ in range(1 if ablation else self.options.repeat):
            if prepare is not None:
                prepare()
            self.progress.run_starts()
            try:
                runs.append(self._http_once(factory, requests, ablation=ablation, **options))
            finally:
                self.progress.run_ends()
        return median_run(runs, open_loop=options.get("rate") is not None)

    def _http_once(
        self,
        factory: str,
        requests: list[bytes],
        *,
        env: dict[str, str] | None = None,
        probe: str = "/api/levels",
        workers: int | None = None,
        loop: str = "uvloop",
        http: str = "httptools",
        ablation: bool = False,
        db: Callable[[], float] | None = None,
        **spec: Any,
    ) -> Measured:
        """Serve ``factory`` as ``counters serve`` would and drive ``requests`` at it."""
        options = self.options
        spec.setdefault("connections", options.connections)
        duration = options.ablation_duration if ablation else options.duration
        with uvicorn_server(
            factory,
            self.env() if env is None else env,
            workers=workers or options.workers,
            probe_path=probe,
            loop=loop,
            http=http,
        ) as server:
            window = cpu.CpuWindow(self._meters(server, factory, db))
            load = LoadSpec(server.port, requests, warmup=options.warmup, duration=duration, **spec)
            result = run_load(load, window)
        usage = window.per_request_us(result.requests)
        if result.requests:
            usage["load"] = round(result.cpu_seconds / result.requests * 1e6, 1)
        return Measured(result, usage, window.others_percent(result.cpu_seconds))

    def _meters(
        self, server: Server, factory: str, db: Callable[[], float] | None
    ) -> dict[str, Callable[[], float]]:
        meters: dict[str, Callable[[], float]] = {"server": lambda: cpu.tree_cpu(server.pid)}
        if db is None and factory in (GAIN_APP, FLOOR_APP):
            db = lambda: cpu.redis_cpu(self.redis.url)  # noqa: E731
        if db is not None:
            meters["db"] = db
        return meters

    def postgres_cpu(self) -> float:
        assert self.postgres is not None
        pid = int((self.postgres.data_dir / "postmaster.pid").read_text().split()[0])
        return cpu.tree_cpu(pid)

    def row(
        self, key: str, name: str, measured: Measured, note: str = "", unit: str = "req/s"
    ) -> Row:
        result = measured.result
        rate = result.items_per_second if unit == "awards/s" else result.rps
        statuses = " ".join(f"{code}:{n}" for code, n in result.statuses.items())
        note = f"{note} [{statuses}]".strip() if statuses else note
        if result.errors:
            note += f" ({result.errors} connections lost)"
        if measured.spread:
            note += f" (median of {self.options.repeat}: {measured.spread})"
        if cpu.disturbed(measured.machine) >= cpu.NOISY_PERCENT:
            note += f" NOISY: other processes {measured.machine['others']:.0f}%"
            note += f", stolen {measured.machine['steal']:.0f}% of the CPU"
        detail = dataclasses.asdict(result) | {"machine_cpu_percent": measured.machine}
        return Row(
            key, name, rate, unit, result.p50_ms, result.p99_ms, note, detail, measured.cpu_us,
        )  # fmt: skip

    # -- the targets ----------------------------------------------------------------------

    def run(self) -> Report:
        with self._servers():
            self.with_services(direct.seed_owners)
            self.seeded = direct.snapshot(self.redis.url)
            if self.wanted("1"):
                self.progress.at_row("1: bare Starlette")
                self.bare()
            if self.wanted("2", "flusher"):  # the flusher runs at row 2's peak rate
                self.progress.at_row("2: POST /api/exp/gain")
                peak = self.gain()
                self.gain_half_peak(peak)
            if self.wanted("3"):
                self.progress.at_row("3: POST /api/v1/xp/debit")
                self.xp_debit()
            if self.wanted("4"):
                self.progress.at_row("4: Postgres-only gain")
                self.postgres_only()
            if self.wanted("5"):
                self.progress.at_row("5: award_exp.lua alone")
                self.lua_ceiling()
            if self.wanted("6"):
                self.progress.at_row("6: POST /api/exp/gain/batch")
                self.batch()
            if self.wanted("cluster"):
                self.progress.at_row("2c: POST /api/exp/gain on a 3-master Redis Cluster")
                self.cluster_gain()
            if self.wanted("durable") and self.postgres is not None:
                self.progress.at_row("2p, 2n: gain with Postgres attached")
                self.durable_gain()
            if self.wanted("memory"):
                self.progress.at_row("memory per user-day")
                self.memory()
            if self.wanted("creator"):
                self.creator_cost()
            if self.wanted("flusher"):
                self.progress.at_row("flusher")
                self.flusher(peak)
            if self.wanted("metrics"):
                self.metrics_cost()
            if self.options.ablations and not self.options.only:
                self.progress.at_row("ways there")
                ways_there(self)
        return self.report

    def wanted(self, *keys: str) -> bool:
        only = self.options.only
        return not only or any(key in only for key in keys)

    @contextmanager
    def _servers(self) -> Iterator[None]:
        self.redis.start()
        try:
            try:
                assert self.postgres is not None
                self.postgres.start()
                asyncio.run(migrate_url(self.postgres.url))
            except (ConfigError, StorageError, OSError) as exc:
                self.report.notes.append(f"Postgres unavailable, its rows are skipped: {exc}")
                self.postgres = None
            yield
        finally:
            if self.postgres is not None:
                self.postgres.stop()
            self.redis.stop()

    def bare(self) -> None:
        measured = self.http(BARE_APP, self.bare_requests, env={}, probe="/")
        name = "bare Starlette, fixed JSON (HTTP ceiling)"
        self.report.rows.append(self.row("1", name, measured))
        # The machine's own latency floor, to read the service's half-peak p99 against.
        rate = measured.result.rps / 2
        measured = self.http(BARE_APP, self.bare_requests, env={}, probe="/", rate=rate)
        name = f"  the same, open loop at half of peak ({rate:,.0f}/s)"
        self.report.rows.append(self.row("1h", name, measured))

    def gain(self) -> float:
        measured = self.http(GAIN_APP, self.gain_requests, prepare=self.fresh_redis)
        name = "POST /api/exp/gain, mixed actions, 100k users"
        self.report.rows.append(self.row("2", name, measured, "service key"))
        return measured.result.rps

    def durable_gain(self) -> None:
        """Row 2 as users run it: Postgres attached, the flusher in the workers, with users Redis
        holds (2p) and with brand-new users (2n; the buckets are complete from the first start
        on an empty ledger, persistence/restore.py). Issue #11's targets, reported, not
        asserted: 2p >= 0.8 x row 2, 2n >= 0.6 x row 2."""
        assert self.postgres is not None
        url = self.postgres.url
        env = self.env(COUNTERS_DATABASE_URL=url)
        buckets = Settings.from_env(env).key_buckets
        users = sorted({award.user_id for award in self.gain_awards})

        def both_cpu() -> float:
            return cpu.redis_cpu(self.redis.url) + self.postgres_cpu()

        def brand_new() -> None:
            self.fresh_redis()
            asyncio.run(flush.empty_ledger(url))

        def known() -> None:
            brand_new()
            direct.seed_known_users(self.redis.url, users, buckets)

        for key, prepare, who in (("2p", known, "known"), ("2n", brand_new, "brand-new")):
            measured = self.http(
                GAIN_APP, self.gain_requests, env=env, db=both_cpu, prepare=prepare
            )
            name = f"POST /api/exp/gain with Postgres + flusher in the workers, {who} users"
            self.report.rows.append(self.row(key, name, measured, "service key"))

    def cluster_gain(self) -> None:
        """Row 2 on a local Redis Cluster of 3 masters (each with a replica) on this machine
        (issue #12): the same requests, its Redis CPU summed over the masters and replicas."""
        cluster = LocalCluster(self.tmp / "cluster")
        cluster.start()
        try:
            nodes = [
                f"redis://:{cluster.password}@127.0.0.1:{server.port}/0"
                for server in cluster.servers
            ]

            def prepare() -> None:
                cluster.flushall()
                self.with_services(direct.seed_owners, cluster.url)

            measured = self.http(
                GAIN_APP, self.gain_requests, env=self.env(COUNTERS_REDIS_URL=cluster.url),
                db=lambda: sum(cpu.redis_cpu(node) for node in nodes), prepare=prepare,
            )  # fmt: skip
            name = "POST /api/exp/gain, mixed actions, 100k users, 3-master Redis Cluster"
            self.report.rows.append(self.row("2c", name, measured, "service key"))
        finally:
            cluster.stop()

    def metrics_cost(self) -> None:
        """Row 2 with metrics on (as served) and off, runs alternated; the ratio as a note."""
        on: list[Measured] = []
        off: list[Measured] = []
        for _ in range(self.options.repeat):
            for runs, enabled in ((on, "1"), (off, "0")):
                self.fresh_redis()
                env = self.env(COUNTERS_METRICS_ENABLED=enabled)
                runs.append(self._http_once(GAIN_APP, self.gain_requests, env=env))
        measured_on, measured_off = median_run(on, False), median_run(off, False)
        name = "POST /api/exp/gain, metrics {} (COUNTERS_METRICS_ENABLED={})"
        self.report.rows.append(self.row("m1", name.format("on", 1), measured_on))
        self.report.rows.append(self.row("m0", name.format("off", 0), measured_off))
        rps_on, rps_off = measured_on.result.rps, measured_off.result.rps
        cpu_on, cpu_off = measured_on.cpu_us.get("server"), measured_off.cpu_us.get("server")
        cost = f"metrics cost: throughput on/off = {rps_on / rps_off:.3f}"
        if cpu_on and cpu_off:
            cost += f", server CPU per request on/off = {cpu_on / cpu_off:.3f} (target <= 1.05)"
        self.report.notes.append(cost)

    def gain_half_peak(self, peak: float) -> None:
        measured = self.http(GAIN_APP, self.gain_requests, prepare=self.fresh_redis, rate=peak / 2)
        name = f"  the same, open loop at half of peak ({peak / 2:,.0f}/s)"
        self.report.rows.append(self.row("2h", name, measured))

    def xp_debit(self) -> None:
        try:
            from api.routes import xp  # noqa: F401  (the XP credits issue's routes)
        except ImportError:
            self.report.rows.append(Row("3", "POST /api/v1/xp/debit", None, note="not available"))
            return
        users = [scenarios.user_id(n) for n in range(self.options.debit_users)]
        self.fresh_redis(seeded=False)
        self.with_services(lambda svc: direct.subscribe(svc, users, XP_TIER, 10_000_000))
        body = b'{"generation_type":"EDIT_IMAGE"}'
        requests = [
            scenarios.http_request("POST", XP_DEBIT, scenarios.service_headers(user), body)
            for user in users
        ]
        measured = self.http(GAIN_APP, requests)
        name = f"POST /api/v1/xp/debit, EDIT_IMAGE, {len(users) // 1000}k users"
        self.report.rows.append(self.row("3", name, measured, "service key"))

    def postgres_only(self) -> None:
        if self.postgres is None:
            self.report.rows.append(Row("4", "Postgres-only gain", None, note="not available"))
            return
        url = self.postgres.url
        env = {"COUNTERS_DATABASE_URL": url, "COUNTERS_SERVICE_KEYS": scenarios.SERVICE_KEY}

        def fresh_tables() -> None:
            asyncio.run(pg_award.prepare(url, scenarios.owned_entities()))

        measured = self.http(
            PG_APP, self.gain_requests, prepare=fresh_tables, env=env, probe="/",
            db=self.postgres_cpu,
        )  # fmt: skip
        name = "Postgres-only gain, SELECT ... FOR UPDATE"
        self.report.rows.append(self.row("4", name, measured, "synchronous_commit=on"))

    def lua_ceiling(self) -> None:
        self.progress.step("pipelined FCALL")
        self.fresh_redis()
        awards = scenarios.gain_awards(prefix="l")

        async def measure(svc: Any) -> direct.CeilingResult:
            calls = await direct.award_calls(svc, awards)
            return await direct.lua_ceiling(self.redis.url, calls)

        result: direct.CeilingResult = self.with_services(measure)
        note = f"redis-py pipelines of {result.batch}, {result.connections} in flight"
        name = "award_exp.lua alone: pipelined FCALL, same mix"
        detail = dataclasses.asdict(result)
        row = Row("5", name, result.per_second, "awards/s", note=note, detail=detail)
        self.report.rows.append(row)

    def batch(self) -> None:
        self.fresh_redis()
        size = self.options.batch_size
        requests = scenarios.batch_requests(scenarios.gain_awards(prefix="b"), size)
        connections = self.options.batch_connections
        measured = self.http(
            GAIN_APP, requests, prepare=self.fresh_redis, connections=connections,
            items_per_request=size,
        )  # fmt: skip
        name = f"POST /api/exp/gain/batch, {size} awards a request"
        note = f"{measured.result.rps:,.0f} req/s, {connections} connections"
        self.report.rows.append(self.row("6", name, measured, note, unit="awards/s"))

    def memory(self) -> None:
        self.progress.step("awards, then MEMORY USAGE")
        self.fresh_redis()
        users = self.options.memory_users
        result: direct.MemoryResult = self.with_services(
            lambda svc: direct.memory_per_user_day(self.redis.url, svc, users)
        )
        self.report.extras["redis_memory_per_active_user_day"] = {
            "users": result.users,
            "awards": result.awards,
            "bytes": round(result.bytes_per_user_day),
            "bytes_once_flushed": round(result.bytes_per_user_day_without_streams),
        }

    def creator_cost(self) -> None:
        """What a creator-targeted award costs beside an award to oneself (issue #10)."""
        self.fresh_redis()
        results: list[direct.AwardCost] = self.with_services(direct.creator_cost)
        self.report.extras["creator_award_cost"] = {
            r.kind: {
                "awards_per_second": round(r.per_second),
                "mean_ms": round(r.mean_ms, 3),
                "redis_calls_per_award": round(r.redis_calls_per_award, 2),
            }
            for r in results
        }

    def flusher(self, peak: float) -> None:
        if self.postgres is None:
            self.report.notes.append("flusher not measured: no Postgres")
            return
        self.progress.step("drain, then awards at the peak rate")
        url = self.postgres.url
        buckets = direct.bench_settings(self.redis.url).key_buckets
        # Capacity: the memory scenario's events, drained flat out by one flusher.
        asyncio.run(flush.empty_ledger(url))
        postgres_from, redis_from = self.postgres_cpu(), cpu.redis_cpu(self.redis.url)
        drained = asyncio.run(flush.drain(self.redis.url, url, buckets))
        # The drain's pool closed as it ended: let its backends exit and be reaped, or their CPU
        # is in neither the children read nor the postmaster's (seen: 0.0 us/event some runs).
        time.sleep(1.0)
        postgres_cpu = self.postgres_cpu() - postgres_from
        redis_cpu = cpu.redis_cpu(self.redis.url) - redis_from
        per_event = 1e6 / max(drained.events, 1)
        self.report.extras["flusher_capacity"] = {
            "events": drained.events,
            "rows_per_second": round(drained.rows_per_second),
            # CPU per ledgered event, flat out: the flusher's process, Postgres, Redis (µs)
            "cpu_us_per_event": {
                "flusher": round(drained.cpu_seconds * per_event, 1),
                "postgres": round(postgres_cpu * per_event, 1),
                "redis": round(redis_cpu * per_event, 1),
                "total": round((drained.cpu_seconds + postgres_cpu + redis_cpu) * per_event, 1),
            },
        }
        # At the peak award rate: awards produced for `duration` seconds while one flusher runs.
        self.fresh_redis()
        asyncio.run(flush.empty_ledger(url))
        count = min(int(peak * self.options.duration), scenarios.USERS)
        awards = scenarios.gain_awards(count=count, prefix="f")

        async def measure(svc: Any) -> flush.RateResult:
            calls = await direct.award_calls(svc, awards)
            return await flush.at_rate(
                self.redis.url, url, buckets, calls, peak, meters={"postgres": self.postgres_cpu}
            )

        result: flush.RateResult = self.with_services(measure)
        self.report.extras["flusher_at_peak"] = {
            k: round(v, 2) if isinstance(v, float) else v
            for k, v in dataclasses.asdict(result).items()
        }
        quarantined = asyncio.run(flush.quarantined(url))
        if quarantined:
            reasons = "; ".join(f"{n} x {reason}" for reason, n in list(quarantined.items())[:5])
            self.report.notes.append(f"the flusher quarantined events: {reasons}")


def main(argv: list[str] | None = None) -> int:
    from bench.micro import measure

    options = parse(argv, __doc__ or "")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="counters-bench-") as tmp:
        report = Bench(options, Path(tmp)).run()
    report.extras["micro_us"] = measure()
    print(render(report))
    path = write_json(report, dataclasses.asdict(options))
    print(f"\nresults: {path} ({time.monotonic() - started:.0f} s)")
    return 0
