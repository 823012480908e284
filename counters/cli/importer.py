"""``counters import FILE``: adopt the service with users' EXP, subscriptions and top-ups.

Every line is parsed and validated first (counters/bulkimport/records.py): one bad line and the
command stops before writing anything, naming each bad line. Then each line is one atomic
``import_user.lua`` step, applied at most once (its import id is recorded with it, and looked up
in the ledger for users Redis forgot), so running the same file twice changes nothing, and an
interrupted import is finished by running it again. Safe while the service serves: the steps
are the same kind of atomic script as any request, and their events are ledgered by the
flusher (the command drains the streams itself at the end unless ``--no-flush``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from pathlib import Path

import click
from tqdm import tqdm  # type: ignore[import-untyped]

from counters.bulkimport.records import ExpLine, Record, TopupLine, read_records
from counters.bulkimport.service import OUTCOMES, ImportOutcome, ImportService
from counters.cli.commands import CommandError, apply_migrations, load_settings, with_servers
from counters.errors import CountersError, RulesError
from counters.redis.codes import XpOutcome
from counters.rules import Rules, load_rules
from counters.runtime.durability import make_flusher
from counters.runtime.layout import settle_buckets
from counters.runtime.services import Services, connect_redis
from counters.settings import Settings
from persistence.recovery import PostgresHydrator
from persistence.restore import EvictionCheck
from persistence.store import Store

_SHOWN_ERRORS = 50
_PARALLEL_USERS = 16


def plan_summary(records: list[Record], already: set[str]) -> str:
    """What the file holds and what applying it would change."""
    kinds = Counter(type(r.line).__name__.removesuffix("Line").lower() for r in records)
    pending = [r for r in records if r.import_id not in already]
    exp = sum(r.line.exp for r in pending if isinstance(r.line, ExpLine))
    xp = sum(r.line.xp_amount for r in pending if isinstance(r.line, TopupLine))
    users = len({r.line.user_id for r in records})
    by_kind = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    return (
        f"{len(records)} lines ({by_kind}) for {users} users: {len(pending)} to apply, "
        f"{len(records) - len(pending)} already imported; {exp} EXP and {xp} XP of top-ups to add"
    )


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--dry-run", is_flag=True, help="Validate and report what would change; write nothing."
)
@click.option("--no-flush", is_flag=True, help="Leave the events for the service's flusher.")
def import_command(file: Path, dry_run: bool, no_flush: bool) -> None:
    """Import users' EXP, subscriptions and top-ups from CSV or JSON Lines (see README)."""
    settings = load_settings()
    try:
        rules = load_rules(settings.rules)
    except RulesError as exc:
        raise CommandError(str(exc)) from exc
    now = time.time() + settings.clock_offset_seconds
    records, errors = read_records(file, rules, now)
    if errors:
        for error in errors[:_SHOWN_ERRORS]:
            click.echo(str(error), err=True)
        if len(errors) > _SHOWN_ERRORS:
            click.echo(f"... and {len(errors) - _SHOWN_ERRORS} more", err=True)
        raise CommandError(f"{len(errors)} bad line(s) in {file}: nothing was imported")
    with ExitStack() as stack:
        settings = with_servers(settings, stack)
        assert settings.database_url is not None
        apply_migrations(settings.database_url)
        try:
            outcomes = asyncio.run(_run(settings, rules, records, dry_run, not no_flush))
        except CountersError as exc:
            raise CommandError(f"{exc} (lines applied so far stay applied; run it again)") from exc
    if not dry_run:
        done = ", ".join(f"{n} {OUTCOMES[outcome]}" for outcome, n in outcomes.items())
        click.echo(f"imported {file}: {done or 'nothing to do'}")


async def _run(
    settings: Settings, rules: Rules, records: list[Record], dry_run: bool, flush: bool
) -> Counter[ImportOutcome]:
    assert settings.database_url is not None
    store = await Store.open(settings.database_url, max_connections=4)
    assert settings.redis_url is not None
    redis = connect_redis(settings.redis_url, 1)
    try:
        settings = await settle_buckets(settings, redis, store)  # the recorded bucket count
    except BaseException:
        await store.close()
        raise
    finally:
        await redis.aclose()
    services = Services.build(settings, rules=rules, store=store)
    try:
        hydrator = PostgresHydrator(
            store, services.scripts, services.clock, buckets=settings.key_buckets,
            window=services.exp.window,
        )  # fmt: skip
        # Once, as the service's loop does: a complete bucket speaks for a missing user only
        # while Redis evicts nothing (else each user is read from Postgres first)
        await EvictionCheck(
            services.redis, services.scripts, [hydrator], buckets=settings.key_buckets
        ).check()
        importer = ImportService(
            rules, services.scripts, services.redis, hydrator, services.clock,
            buckets=settings.key_buckets,
        )  # fmt: skip
        ids = [r.import_id for r in records]
        already = await importer.applied(records) | await store.imported(ids)
        click.echo(plan_summary(records, already))
        outcomes: Counter[ImportOutcome] = Counter()
        outcomes[XpOutcome.UNCHANGED] = len(already & set(ids))
        if dry_run:
            return outcomes
        await _apply([r for r in records if r.import_id not in already], importer, outcomes)
        if flush:
            await _flush(settings, services, store)
        return +outcomes
    finally:
        await services.close()
        await store.close()


async def _apply(
    records: list[Record], importer: ImportService, outcomes: Counter[ImportOutcome]
) -> None:
    """Each user's lines in file order; up to _PARALLEL_USERS users at a time."""
    by_user: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_user[record.line.user_id].append(record)
    limit = asyncio.Semaphore(_PARALLEL_USERS)
    with tqdm(total=len(records), unit="line", file=sys.stderr, disable=None) as bar:

        async def user_lines(lines: list[Record]) -> None:
            async with limit:
                for record in lines:
                    outcome = await importer.apply(record)
                    outcomes[outcome] += 1
                    if OUTCOMES[outcome].startswith("skipped"):
                        tqdm.write(f"line {record.line_number}: {OUTCOMES[outcome]}")
                    bar.update()

        await asyncio.gather(*(user_lines(lines) for lines in by_user.values()))


async def _flush(settings: Settings, services: Services, store: Store) -> None:
    """Drain the event streams into the ledger (one more consumer beside the service's)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    flusher = make_flusher(settings, services.redis, store)
    await flusher.run(stop, burst=True, max_failures=20)
