"""The bench's arithmetic: medians of repeated runs, and the CPU budget behind the 0.6 target."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import httpx2
import pytest
import redis

from bench.load import LoadResult
from bench.measured import Measured, median_run
from bench.options import Options
from bench.progress import ABLATIONS, Progress, planned
from bench.report import Report, Row, gain_budget
from counters.settings import Settings
from tests.support.core import SERVICE_KEY, service_headers, user_headers
from tests.support.http import asgi_client


def _run(rps: float, p99_ms: float) -> Measured:
    result = LoadResult(
        requests=int(rps), seconds=1.0, rps=rps, p50_ms=1.0, p99_ms=p99_ms, p999_ms=p99_ms
    )
    return Measured(result, {"server": 100.0}, {"others": 0.0, "steal": 0.0})


def test_closed_loop_rows_take_the_median_throughput() -> None:
    runs = [_run(9_000, 5.0), _run(4_000, 90.0), _run(10_000, 4.0)]
    chosen = median_run(runs, open_loop=False)
    assert chosen.result.rps == 9_000
    assert chosen.spread == "4,000-10,000 req/s"


def test_open_loop_rows_take_the_median_p99() -> None:
    runs = [_run(5_000, 7.0), _run(5_000, 61.0), _run(5_000, 3.0)]
    chosen = median_run(runs, open_loop=True)
    assert chosen.result.p99_ms == 7.0
    assert chosen.spread == "p99 3.00-61.00 ms"


def test_one_run_is_its_own_median() -> None:
    only = _run(8_000, 6.0)
    assert median_run([only], open_loop=False) is only


def test_the_gain_budget_is_what_bare_over_the_goal_leaves_after_the_floors() -> None:
    report = Report(
        rows=[
            Row("1", "bare", 26_000.0, cpu_us={"server": 56.0, "load": 19.0}),
            Row("2", "gain", 8_900.0, cpu_us={"server": 134.0, "db": 44.0, "load": 31.0}),
        ],
        ablations=[Row("r1", "raw ASGI", 33_000.0, cpu_us={"server": 39.0, "load": 16.0})],
    )
    # (56 + 19) / 0.6 = 125; 125 - 39 - 44 - 31 = 11; the service uses 134 - 39 = 95.
    assert gain_budget(report) == (
        "gain's CPU budget at 0.6 x bare: 125 us/request; uvicorn's floor (r1) 39 + Redis 44 + "
        "generator 31 leave the service's own work 11 us; it uses 95"
    )
    assert gain_budget(Report(rows=report.rows)) is None  # no r1: no floor to take away
    # The hot lane's floor (r2), when measured, is the one gain's requests take
    lane = Row("r2", "lane floor", 40_000.0, cpu_us={"server": 27.0, "db": 2.0, "load": 12.0})
    with_lane = dataclasses.replace(report, ablations=[*report.ablations, lane])
    assert gain_budget(with_lane) == (
        "gain's CPU budget at 0.6 x bare: 125 us/request; the hot lane's floor (r2) 27 + Redis "
        "44 + generator 31 leave the service's own work 23 us; it uses 107"
    )


def test_progress_counts_the_plan_and_estimates_from_runs_so_far() -> None:
    options = Options(repeat=3, warmup=2.0, duration=10.0)
    # rows 1 and 2 (with their half-peak runs), 3, 4, 6 and 2c (cluster), 2p and 2n
    assert planned(options, lambda *keys: True) == (2 * 3 + 2 * 3 + 4 * 3 + 2 * 3 + ABLATIONS, 3)
    only = dataclasses.replace(options, only=frozenset({"1"}), repeat=1)
    wanted = lambda *keys: any(key in only.only for key in keys)  # noqa: E731
    assert planned(only, wanted) == (2, 0)
    progress = Progress(only, wanted)
    assert progress.left() == 2 * (2.0 + 10.0 + 4.0)  # before any run: window + start-up
    progress.done_runs, progress.run_seconds = 1, 30.0  # the first run took 30 s
    assert progress.left() == 30.0


def test_the_micro_rows_run_against_the_current_schemas() -> None:
    """bench/micro.py builds real response bodies: a schema change that breaks it fails here,
    not nine minutes into `make bench`."""
    from bench import micro

    measured = micro.measure()
    assert set(measured) >= {"jwt_verify_us", "msgspec_encode_us", "msgspec_decode_validated_us"}
    assert all(value > 0 for value in measured.values())


@pytest.mark.anyio
async def test_the_postgres_only_baseline_serves_the_current_reply(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row 4's app (bench/baselines/pg_award.py) answers an award and a limit like the service:
    a reply schema change that breaks it fails here, not as "64 connections lost" in row 4."""
    from bench.baselines import pg_award

    await pg_award.prepare(database_url, [("character", "c1", "owner-1")])
    monkeypatch.setenv("COUNTERS_DATABASE_URL", database_url)
    monkeypatch.setenv("COUNTERS_SERVICE_KEYS", SERVICE_KEY)
    app = pg_award.app_from_env()
    headers = {"Authorization": f"Bearer {SERVICE_KEY}", "X-User-Id": "fan-1"}
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        liked = await http.post(
            "/api/exp/gain",
            json={"action": "character_liked", "target_type": "character", "target_id": "c1"},
            headers=headers,
        )
        chat = await http.post("/api/exp/gain", json={"action": "daily_chat"}, headers=headers)
        again = await http.post("/api/exp/gain", json={"action": "daily_chat"}, headers=headers)
    assert liked.status_code == 200, liked.text
    assert liked.json()["awarded_to"] == "owner-1"
    assert chat.status_code == 200 and chat.json()["unlocked_features"] == []
    assert again.status_code == 429 and "Daily limit reached" in again.json()["detail"]


@pytest.mark.anyio
async def test_the_lanes_floor_answers_the_hot_routes_with_one_round_trip_and_nothing_else(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bench.floor``'s middle target (bench/baselines/floor.py): both hot routes answer bare's
    body whoever asks (no authentication, no body read, no script: a gain changes nothing),
    while every other route is the service's own."""
    from api.app import create_app
    from api.routes import exp as exp_routes
    from api.routes import xp as xp_routes
    from bench.baselines import bare, floor

    for route in (exp_routes.hot_gain, xp_routes.hot_debit):
        monkeypatch.setattr(route, "handler", floor.floor)
    app = create_app(settings)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        gain = await http.post("/api/exp/gain", content=b"not json")
        debit = await http.post("/api/v1/xp/debit", json={"generation_type": "EDIT_IMAGE"})
        progress = await http.get("/api/exp/progress", headers=user_headers("floor-user"))
    assert (gain.status_code, gain.content) == (200, bare.BODY)
    assert (debit.status_code, debit.content) == (200, bare.BODY)
    assert progress.status_code == 200 and progress.json()["total_exp"] == 0


async def _owned_and_rewards(
    http: httpx2.AsyncClient, kind: str, entity_id: str, owner: str
) -> dict[str, int]:
    """Record ``owner`` as the entity's owner (as the run's seed does), and return each
    action's EXP reward (``GET /api/exp/limits``)."""
    put = await http.put(
        f"/api/entities/{kind}/{entity_id}", json={"owner_id": owner}, headers=service_headers()
    )
    assert put.status_code == 200, put.text
    rewards: dict[str, int] = (
        await http.get("/api/exp/limits", headers=user_headers("reader"))
    ).json()["exp_rewards"]
    return rewards


@pytest.mark.anyio
async def test_the_floor_with_lua_runs_the_services_own_scripts_and_answers_bare(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bench.floor``'s ``floor-lua`` (bench/baselines/floor_lua.py): the gain route answers
    bare's body, but only after Redis ran the service's own command for the request: a daily
    chat earns its EXP, a like pays the entity's owner (the run's seeded owner), once."""
    from api.app import create_app
    from api.routes import exp as exp_routes
    from bench import scenarios
    from bench.baselines import bare, floor_lua

    monkeypatch.setattr(exp_routes.hot_gain, "handler", floor_lua.floor_lua)
    kind, entity, owner = scenarios.owned_entities()[0]
    like = {"action": f"{kind}_liked", "target_type": kind, "target_id": entity}
    app = create_app(settings)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        rewards = await _owned_and_rewards(http, kind, entity, owner)
        answers = [
            await http.post("/api/exp/gain", json={"action": "daily_chat"},
                            headers=service_headers("fan")),
            await http.post("/api/exp/gain", json=like, headers=service_headers("fan")),
            await http.post("/api/exp/gain", json=like, headers=service_headers("fan")),
        ]  # fmt: skip
        fan = (await http.get("/api/exp/progress", headers=user_headers("fan"))).json()
        paid = (await http.get("/api/exp/progress", headers=user_headers(owner))).json()
    assert [(a.status_code, a.content) for a in answers] == [(200, bare.BODY)] * 3
    assert fan["total_exp"] == rewards["daily_chat"]
    assert paid["total_exp"] == rewards[f"{kind}_liked"]  # once per actor


@pytest.mark.anyio
async def test_the_floor_with_commands_packed_ahead_runs_each_requests_own_commands(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bench.floor --memo`` (bench/baselines/floor_memo.py): a worker's first gain packs every
    request of row 2's cycle; each later one sends its own packed command(s), so a self-award
    earns its EXP, a like pays the entity's seeded owner and a create claims its entity."""
    import msgspec

    from api.app import create_app
    from api.routes import exp as exp_routes
    from bench import scenarios
    from bench.baselines import bare, floor_memo

    monkeypatch.setattr(exp_routes.hot_gain, "handler", floor_memo.floor_memo)
    monkeypatch.setattr(floor_memo, "_MEMO", {})
    monkeypatch.setattr(floor_memo, "_BUILT", [False])
    awards = scenarios.gain_awards()
    own = next(a for a in awards if a.target_id is None)
    like = next(a for a in awards if a.action == "character_liked")
    create = next(a for a in awards if a.action == "create_character" and a.target_id)
    owner = dict(((k, i), o) for k, i, o in scenarios.owned_entities())[
        (str(like.target_type), str(like.target_id))
    ]
    app = create_app(settings)
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        rewards = await _owned_and_rewards(http, str(like.target_type), str(like.target_id), owner)
        first = await http.post(
            "/api/exp/gain", json={"action": "daily_chat"}, headers=service_headers("warm-up")
        )
        assert len(floor_memo._MEMO) == len(awards)  # packed on the first gain
        answers = [
            await http.post(
                "/api/exp/gain",
                content=msgspec.json.encode(a.body()),
                headers={**service_headers(a.user_id), "Content-Type": "application/json"},
            )
            for a in (own, like, create)
        ]
        progress = {
            who: (await http.get("/api/exp/progress", headers=user_headers(who))).json()
            for who in (own.user_id, owner, create.user_id)
        }
        claimed = await http.put(
            f"/api/entities/{create.target_type}/{create.target_id}",
            json={"owner_id": create.user_id}, headers=service_headers(),
        )  # fmt: skip
    assert (first.status_code, first.content) == (200, bare.BODY)
    assert [(a.status_code, a.content) for a in answers] == [(200, bare.BODY)] * 3
    assert progress[own.user_id]["total_exp"] == rewards[own.action]
    assert progress[owner]["total_exp"] == rewards["character_liked"]
    assert progress[create.user_id]["total_exp"] == rewards["create_character"]
    assert claimed.json()["previous_owner_id"] == create.user_id  # the create claimed it


def test_the_probes_python_load_sends_every_token_every_body_then_the_repeats_it_may(
    tmp_path: Path,
) -> None:
    """``bench.wrk_probe --load python``: every token with every body once, then every token
    with the first ``again`` bodies once more, each pass shuffled by a seeded generator, so
    every target of a run (and every run) gets the same requests, each one the rules allow."""
    from bench import wrk_probe

    tokens = tmp_path / "tokens"
    tokens.write_text("tok-a\ntok-b\ntok-c")
    bodies = ['{"action":"create_scene"}', '{"action":"daily_chat"}']
    first = wrk_probe._python_requests("/api/exp/gain", tokens, bodies, again=1)
    assert first == wrk_probe._python_requests("/api/exp/gain", tokens, bodies, again=1)

    def pair(request: bytes) -> tuple[str, str]:
        head, body = request.split(b"\r\n\r\n", 1)
        assert head.startswith(b"POST /api/exp/gain HTTP/1.1\r\n")
        token = next(
            line.split(b" ")[-1]
            for line in head.split(b"\r\n")
            if line.startswith(b"Authorization")
        )
        return token.decode(), body.decode()

    pairs = [pair(request) for request in first]
    every = {(t, b) for t in ("tok-a", "tok-b", "tok-c") for b in bodies}
    assert len(pairs) == 9 and set(pairs[:6]) == every
    assert sorted(pairs[6:]) == [(t, bodies[0]) for t in ("tok-a", "tok-b", "tok-c")]
    assert pairs[:6] != sorted(pairs[:6]) or pairs[6:] != sorted(pairs[6:])  # shuffled


@pytest.mark.anyio
async def test_thin_on_the_lane_awards_by_the_probes_script_and_answers_its_bytes(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bench.wrk_probe``'s thin-lane target (bench/baselines/thin_lane.py): a known token's
    gain runs the shared probe's own award_reply.lua and answers the bytes it built; a repeat is
    its 429; an unknown token a 401; the service's other routes stay its own."""
    from api.app import create_app
    from api.routes import exp as exp_routes
    from bench.baselines import thin, thin_lane

    where = thin.thin_dir()
    if where is None:
        pytest.skip("the shared thin probe (../shared/perf/thin) is not on this machine")
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-0\ntok-1\n")
    handler = thin_lane.ThinOnLane(
        thin_lane.read_tokens(str(tokens)), (where / "award_reply.lua").read_text()
    )
    monkeypatch.setattr(exp_routes.hot_gain, "handler", handler)
    app = create_app(settings)
    chat = b'{"action":"daily_chat"}'
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        first = await http.post(
            "/api/exp/gain", content=chat, headers={"Authorization": "Bearer tok-1"}
        )
        again = await http.post(
            "/api/exp/gain", content=chat, headers={"Authorization": "Bearer tok-1"}
        )
        stranger = await http.post(
            "/api/exp/gain", content=chat, headers={"Authorization": "Bearer x"}
        )
        levels = await http.get("/api/levels")
    assert first.status_code == 200, first.text
    assert first.json()["awarded_to"] == "u1" and first.json()["exp_added"] == 20
    assert again.status_code == 429 and "Daily limit reached" in again.json()["detail"]
    assert stranger.status_code == 401
    assert levels.status_code == 200 and "1" in levels.json()


@pytest.mark.anyio
async def test_hot_splits_thin_step_awards_by_the_probes_script_for_the_service_keys_user(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bench.hot_split``'s ``thin-lane`` step: thin on the lane's work (the probe's own
    award_reply.lua, its bytes back) for the user a service-key request names, so the split
    can set our gain beside thin's design, not beside a lane with no round trip."""
    from api.app import create_app
    from api.routes import exp as exp_routes
    from bench import hot_split

    handler = hot_split.thin_handler()
    if handler is None:
        pytest.skip("the shared thin probe (../shared/perf/thin) is not on this machine")
    monkeypatch.setattr(exp_routes.hot_gain, "handler", handler)
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {SERVICE_KEY}", "X-User-Id": "fan-7"}
    chat = b'{"action":"daily_chat"}'
    async with app.router.lifespan_context(app), asgi_client(app) as http:
        first = await http.post("/api/exp/gain", content=chat, headers=headers)
        again = await http.post("/api/exp/gain", content=chat, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["awarded_to"] == "fan-7" and first.json()["exp_added"] == 20
    assert again.status_code == 429 and "Daily limit reached" in again.json()["detail"]


def test_each_cut_of_the_debit_steps_runs_and_the_whole_one_debits(
    redis_client: redis.Redis,
) -> None:
    """``python -m bench.lua_cost steps`` counts cuts of debit_xp.lua's own text: each cut must
    still run against today's script (a cut naming a function the script no longer has fails
    here, not under valgrind), and the last is the whole debit: the XP taken, the event and the
    record ledgered, the record written."""
    from bench import lua_cost

    argv, state, scripts = lua_cost.step_scripts()
    keys = lua_cost._DEBIT_KEYS
    entries = []
    for script in scripts.values():
        redis_client.flushall()
        lua_cost.prepare_debits(redis_client, state)
        assert redis_client.eval(script, len(keys), *keys, *argv, 3) == 1
        entries.append(redis_client.xlen(keys[1]))
    assert entries[0] == 0 and entries[-1] == 6  # three debits: an event and a record each
    after = json.loads(redis_client.hget(keys[0], "xp"))
    assert after["alloc"] + after["grants"][0]["left"] < 600 + 10_000_000
    assert redis_client.exists("k:tx:1", "k:tx:2", "k:tx:3") == 3


def test_the_floor_report_gives_each_round_its_own_bare_and_both_budgets() -> None:
    """``bench.floor``'s report: every target's ratio to the bare run of its own round (bare
    moves by a third within a run on this VM), and the server budget at 0.6 x bare both at
    bare's busy share and at gain's."""
    from bench.floor import FloorRun, per_round, render

    def run(name: str, rps: float, server: float, redis_us: float) -> FloorRun:
        return FloorRun(name, rps, server, 0.0, redis_us, 10.0)

    runs = [
        run("bare", 20_000, 40.0, 0.0), run("floor", 30_000, 20.0, 2.0),
        run("gain", 10_000, 80.0, 30.0),
        run("bare", 40_000, 30.0, 0.0), run("floor", 50_000, 10.0, 2.0),
        run("gain", 10_000, 80.0, 30.0),
    ]  # fmt: skip
    assert per_round(runs) == {"floor": "1.50, 1.25", "gain": "0.50, 0.25"}
    report = render(runs)
    assert "gain      per round / that round's bare: 0.50, 0.25" in report
    # bare: 45 us a request (the median of 50 and 40) and busy the median of its two runs'
    # shares (rate x CPU a request / cores); gain's others: Redis 30 + generator 10 = 40 us
    cores = os.cpu_count() or 1
    bare_busy = (20_000 * 50 / 1e6 + 40_000 * 40 / 1e6) / 2 / cores
    gain_busy = 10_000 * 120 / 1e6 / cores
    at_bare = 45 / 0.6 - 40
    at_gain = 45 * gain_busy / bare_busy / 0.6 - 40
    assert f"server {at_bare:.1f} us at bare's busy share, {at_gain:.1f} at gain's" in report


def test_a_floor_variant_names_the_settings_it_changes() -> None:
    """``bench.floor --variant NAME[@TARGET]:VAR=VALUE[,VAR=VALUE]``: row 2 (or another served
    target) again with those settings."""
    from bench.floor import parse_variant

    assert parse_variant("boards-off:COUNTERS_LEADERBOARDS_ENABLED=false") == (
        "boards-off",
        "gain",
        {"COUNTERS_LEADERBOARDS_ENABLED": "false"},
    )
    assert parse_variant("lean@floor-lua:A=0,B=") == ("lean", "floor-lua", {"A": "0", "B": ""})
    for bad in ("no-colon", ":A=1", "name:", "name:A", "name:=1", "@gain:A=1"):
        with pytest.raises(ValueError, match=r"NAME\[@TARGET\]:VAR=VALUE"):
            parse_variant(bad)
    for bad in ("x@bare:A=1", "x@nowhere:A=1", "x@:A=1"):
        with pytest.raises(ValueError, match="TARGET is one of floor, floor-lua, gain"):
            parse_variant(bad)
