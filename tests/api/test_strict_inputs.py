"""Issue #10, items 9-11: ids match as whole strings, token expiry is a finite number, and a
body nested too deeply is a 400: never a second user named "alice\\n", a token that never
expires, or a 500."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time

import httpx2
import pytest
import redis
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.types import Message

from api.app import create_app
from api.http import receive_body
from counters.ids import (
    IDEMPOTENCY_KEY_PATTERN,
    IMPORT_ACTOR,
    RECONCILE_ACTOR,
    SYSTEM_ACTOR,
    TARGET_ID_PATTERN,
    TRANSACTION_ID_PATTERN,
    USER_ID_PATTERN,
    is_reserved_actor,
)
from counters.settings import Settings
from tests.support.core import JWT_SECRET, data_keys, service_headers, user_headers

pytestmark = pytest.mark.anyio


def raw_token(payload: str, secret: str = JWT_SECRET) -> str:
    """An HS256 token whose payload is exactly ``payload`` (JSON text PyJWT will parse)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    signing = f"{header}.{b64(payload.encode())}"
    signature = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(signature)}"


@pytest.mark.parametrize(
    "pattern", [USER_ID_PATTERN, TARGET_ID_PATTERN, TRANSACTION_ID_PATTERN, IDEMPOTENCY_KEY_PATTERN]
)
def test_every_id_pattern_refuses_a_trailing_newline_and_control_characters(pattern: str) -> None:
    assert re.search(pattern, "a1") is not None  # msgspec's pattern check is re.search
    for bad in ("a1\n", "a1\r", "a1\x00", "\na1", "a\t1"):
        assert re.search(pattern, bad) is None, bad


async def test_a_token_whose_sub_ends_in_a_newline_is_401(client: httpx2.AsyncClient) -> None:
    token = raw_token(json.dumps({"sub": "alice\n", "exp": int(time.time()) + 600}))
    response = await client.get("/api/exp/progress", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "sub" in response.json()["detail"]


@pytest.mark.parametrize("sub", ["service:0", "import", "system", "reconcile", "user:bob"])
async def test_a_user_cannot_act_as_an_actor_the_ledger_records_for_others(
    client: httpx2.AsyncClient, redis_client: redis.Redis, sub: str
) -> None:
    """FINDINGS F8: a token whose sub was ``service:0`` (or ``import``) earned EXP recorded with
    the same actor as the service key's (an import's) changes."""
    token = raw_token(json.dumps({"sub": sub, "exp": int(time.time()) + 600}))
    gain = {"action": "daily_chat"}
    response = await client.post(
        "/api/exp/gain", json=gain, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert "reserved actor" in response.json()["detail"]
    acting = await client.post("/api/exp/gain", json=gain, headers=service_headers(sub))
    assert acting.status_code == 422
    assert "reserved actor" in acting.json()["detail"]
    assert data_keys(redis_client) == []
    # a user id that merely contains such a form is a user
    fine = await client.post("/api/exp/gain", json=gain, headers=user_headers("importer:service"))
    assert fine.status_code == 200


# Every form the ledger records for an actor that is not a user (counters.ids.is_reserved_actor).
RESERVED = ["system", "import", "reconcile", "service:1", "user:x"]


def test_the_user_id_pattern_refuses_exactly_the_reserved_forms() -> None:
    """One definition: ``UserId`` (bodies, import lines) refuses what ``is_reserved_actor``
    (tokens, X-User-Id, paths) names, and nothing else of a user id's shape."""
    samples = [
        *RESERVED, "service:", "user:", "system\n", "SYSTEM", "Service:0", "User:x", "systems",
        "importer:service", "my.user:x", "reconcile1", "service", "a",
    ]  # fmt: skip
    for sample in samples:
        shaped = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}", sample) is not None
        expected = shaped and not is_reserved_actor(sample)
        assert (re.search(USER_ID_PATTERN, sample) is not None) is expected, sample
    assert {SYSTEM_ACTOR, IMPORT_ACTOR, RECONCILE_ACTOR} <= set(RESERVED)


@pytest.mark.parametrize("reserved", RESERVED)
async def test_a_reserved_actor_named_in_a_body_or_a_path_is_422_and_changes_nothing(
    client: httpx2.AsyncClient, redis_client: redis.Redis, reserved: str
) -> None:
    """A black-box finding: the body's ``user_id`` (adjust, grant) and ``owner_id`` were only
    checked for shape, so ``system`` could be adjusted, granted XP and own entities (its EXP
    then on the leaderboard, its ledger rows not told from the service's own)."""
    adjust = {"user_id": reserved, "delta": 5, "reason": "x"}
    grant = {"user_id": reserved, "xp_amount": 5, "reason": "x"}
    writes: list[tuple[str, str, dict[str, object] | None, str]] = [
        ("POST", "/api/admin/exp/adjust", adjust, "user_id"),
        ("POST", "/api/v1/xp/grants", grant, "user_id"),
        ("PUT", "/api/entities/scene/x", {"owner_id": reserved}, "owner_id"),
        ("PUT", f"/api/v1/subscriptions/{reserved}", {"tier": "pixel_rookie"}, "user_id"),
        ("DELETE", f"/api/v1/subscriptions/{reserved}", None, "user_id"),
    ]  # fmt: skip
    for method, path, body, field in writes:
        response = await client.request(method, path, json=body, headers=service_headers())
        assert response.status_code == 422, (path, response.text)
        error = response.json()
        assert error["code"] == "invalid_request", error
        assert field in error["detail"] and "reserved actor" in error["detail"], error
    assert data_keys(redis_client) == []


@pytest.mark.parametrize("user_id", ["SYSTEM", "Import", "Service:0", "USER:x"])
async def test_reserved_forms_match_case_sensitively_as_every_id_does(
    client: httpx2.AsyncClient, user_id: str
) -> None:
    """Ids are case-sensitive everywhere (Redis keys, the ledger's text columns) and the service
    writes its own actors in lower case only: ``SYSTEM`` is a user, not the actor ``system``."""
    gain = {"action": "daily_chat"}
    for headers in (user_headers(user_id), service_headers(user_id)):
        response = await client.post("/api/exp/gain", json=gain, headers=headers)
        assert response.status_code in (200, 429), response.text  # the 2nd: the daily limit
    adjust = {"user_id": user_id, "delta": 5, "reason": "support"}
    response = await client.post("/api/admin/exp/adjust", json=adjust, headers=service_headers())
    assert response.status_code == 200, response.text
    owner = {"owner_id": user_id}
    response = await client.put("/api/entities/scene/s1", json=owner, headers=service_headers())
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("exp", ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400, "true"])
async def test_a_token_expiry_that_is_not_a_finite_time_is_401(
    client: httpx2.AsyncClient, exp: str
) -> None:
    token = raw_token(f'{{"sub": "alice", "exp": {exp}}}')
    response = await client.get("/api/exp/progress", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "exp" in response.json()["detail"]


async def test_ids_ending_in_a_newline_are_refused(client: httpx2.AsyncClient) -> None:
    gain = {"action": "forked", "target_type": "character", "target_id": "c1\n"}
    response = await client.post("/api/exp/gain", json=gain, headers=user_headers("fan"))
    assert response.status_code == 422
    adjust = {"user_id": "u1\n", "delta": 5, "reason": "support"}
    response = await client.post("/api/admin/exp/adjust", json=adjust, headers=service_headers())
    assert response.status_code == 422
    response = await client.put(
        "/api/entities/character/c1%0A", json={"owner_id": "a"}, headers=service_headers()
    )
    assert response.status_code == 422
    response = await client.put(
        "/api/entities/character/c1", json={"owner_id": "a\n"}, headers=service_headers()
    )
    assert response.status_code == 422
    refund = {"transaction_id": "xd_1\n"}
    response = await client.post("/api/v1/xp/refunds", json=refund, headers=service_headers("u1"))
    assert response.status_code == 422
    response = await client.post(
        "/api/exp/gain",
        json={"action": "daily_chat"},
        headers=user_headers("u1", **{"Idempotency-Key": "k\n"}),
    )
    assert response.status_code == 422


async def test_a_batch_item_id_or_key_ending_in_a_newline_is_that_items_422(
    client: httpx2.AsyncClient,
) -> None:
    awards = [
        {"user_id": "u1\n", "action": "daily_chat"},
        {"user_id": "u1", "action": "daily_chat", "idempotency_key": "k\n"},
        {"user_id": "u1", "action": "daily_chat", "idempotency_key": "k"},
    ]
    response = await client.post(
        "/api/exp/gain/batch", json={"awards": awards}, headers=service_headers()
    )
    assert [r["status"] for r in response.json()["results"]] == [422, 422, 200]


@pytest.mark.parametrize("depth", [250_000, 2_000, 50])
async def test_a_batch_nested_too_deeply_is_400_never_500(
    client: httpx2.AsyncClient, depth: int
) -> None:
    nested = "[" * depth + "]" * depth
    for body in (nested, f'{{"awards": [{nested}]}}', f'{{"awards": [{{"user_id": {nested}}}]}}'):
        response = await client.post(
            "/api/exp/gain/batch",
            content=body,
            headers={**service_headers(), "Content-Type": "application/json"},
        )
        assert response.status_code in (200, 400, 422), response.text  # a 4xx, or the item's
    if depth < 250_000:
        return
    deep = "[" * depth + "]" * depth
    response = await client.post(
        "/api/exp/gain/batch",
        content=f'{{"awards": [{deep}]}}',
        headers={**service_headers(), "Content-Type": "application/json"},
    )
    assert response.json() == {
        "detail": "Malformed JSON: nested too deeply",
        "code": "malformed_body",
    }
    assert response.status_code == 400


@pytest.mark.parametrize("declared", ["\u00b2", "1\u00b9"])
async def test_a_content_length_of_digits_other_than_ascii_is_not_read_as_a_number(
    declared: str,
) -> None:
    """A header's text is latin-1, where the superscripts (U+00B2, U+00B9) pass str.isdigit
    and then int() raised: a 500, had the HTTP server let the header through. The body itself
    is still counted against the limit."""

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    assert await receive_body(receive, declared, 5) == b"{}"


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/exp/gain", "Authorization"),  # the hot lane
        ("/api/exp/gain", "X-User-Id"),
        ("/api/exp/gain", "Idempotency-Key"),
        ("/api/admin/exp/adjust", "Authorization"),  # through Starlette (it reads no X-User-Id)
        ("/api/admin/exp/adjust", "Idempotency-Key"),
    ],
)
async def test_a_single_valued_header_sent_twice_is_400_and_applies_nothing(
    client: httpx2.AsyncClient, path: str, name: str
) -> None:
    """Found by an attacker: with two Idempotency-Key headers the first was recorded and a
    retry carrying only the second applied again; two X-User-Id or Authorization were taken
    first-wins. Whichever the caller meant cannot be told: 400 ``repeated_header``."""
    user = f"rep-{path.rsplit('/', 1)[1]}-{name.lower()}"
    body = (
        {"action": "daily_chat"}
        if path.endswith("gain")
        else {"user_id": user, "delta": 5, "reason": "t"}
    )
    base = service_headers(user) | {"Idempotency-Key": "rep-k1"}
    twice = {"Authorization": base["Authorization"], "X-User-Id": "rep-u2",
             "Idempotency-Key": "rep-k2"}[name]  # fmt: skip
    headers = [*base.items(), (name, twice)]
    response = await client.post(path, json=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json() == {
        "detail": f"The {name.lower()} header was sent more than once",
        "code": "repeated_header",
    }
    progress = await client.get("/api/exp/progress", headers=service_headers(user))
    assert progress.json()["total_exp"] == 0  # nothing was applied


# A value for each path parameter of any route, and a body each write route would apply.
PATH_VALUES = {"target_type": "character", "target_id": "c1", "generation_type": "NEW_IMAGE",
               "user_id": "rh-u1", "hold_id": "h1", "feature": "fork"}  # fmt: skip
BODIES: dict[tuple[str, str], object] = {
    ("POST", "/api/exp/gain"): {"action": "daily_chat"},
    ("POST", "/api/exp/gain/batch"): {"awards": [{"user_id": "rh-u1", "action": "daily_chat"}]},
    ("POST", "/api/admin/exp/adjust"): {"user_id": "rh-u1", "delta": 5, "reason": "t"},
    ("PUT", "/api/entities/{target_type}/{target_id}"): {"owner_id": "rh-u1"},
    ("POST", "/api/v1/subscriptions/preview-generation-cost"): {"generation_type": "NEW_IMAGE"},
    ("PUT", "/api/v1/subscriptions/{user_id}"): {"tier": "arcade_artist"},
    ("POST", "/api/v1/xp/debit"): {"generation_type": "NEW_IMAGE"},
    ("POST", "/api/v1/xp/holds"): {"generation_type": "NEW_IMAGE"},
    ("POST", "/api/v1/xp/refunds"): {"transaction_id": "t1"},
    ("POST", "/api/v1/xp/grants"): {"user_id": "rh-u1", "xp_amount": 5, "reason": "t"},
}


def every_route(app: Starlette) -> list[tuple[str, str, str]]:
    """Each route of ``app`` as (method, path template, a path to send), mounts included."""
    found = []
    for route in app.routes:
        if isinstance(route, Mount):
            found.append(("GET", route.path, f"{route.path}/"))
        elif isinstance(route, Route):
            path = route.path.format(**{name: PATH_VALUES[name] for name in route.param_convertors})
            found += [(m, route.path, path) for m in sorted(route.methods or ()) if m != "HEAD"]
    return found


@pytest.mark.parametrize("name", ["Authorization", "X-User-Id", "Idempotency-Key"])
async def test_every_route_refuses_a_repeated_single_valued_header_and_writes_nothing(
    client: httpx2.AsyncClient, settings: Settings, redis_client: redis.Redis, name: str
) -> None:
    """Found by reviewer helper-63: POST /api/v1/xp/holds, POST /api/exp/gain/batch and PUT
    /api/entities took the first of a repeated header (a hold made on the first X-User-Id)
    where every other route answered 400. Every route the app serves, whether it reads the
    header or not, answers 400 ``repeated_header`` (``api.asgi.SingleHeaders``), and Redis is
    left exactly as it was."""
    subscribed = await client.put(  # XP to hold or debit: a request taken would write
        "/api/v1/subscriptions/rh-u1", json={"tier": "pixel_rookie"}, headers=service_headers()
    )
    assert subscribed.status_code == 200, subscribed.text
    before = {key: redis_client.dump(key) for key in data_keys(redis_client)}
    base = service_headers("rh-u1") | {"Idempotency-Key": "rh-k1"}
    twice = {"Authorization": user_headers("rh-u2")["Authorization"], "X-User-Id": "rh-u2",
             "Idempotency-Key": "rh-k2"}[name]  # fmt: skip
    routes = every_route(create_app(settings))
    assert len(routes) > 25  # the walk found the app's routes
    answered = {}
    for method, template, path in routes:
        body = BODIES.get((method, template))
        response = await client.request(
            method, path, json=body, headers=[*base.items(), (name, twice)]
        )
        is_json = "json" in response.headers["content-type"]  # /docs, /metrics: not JSON
        answered[method, path] = (response.status_code, response.json() if is_json else "...")
    refused = (400, {"detail": f"The {name.lower()} header was sent more than once",
                     "code": "repeated_header"})  # fmt: skip
    assert {route: answer for route, answer in answered.items() if answer != refused} == {}
    assert {key: redis_client.dump(key) for key in data_keys(redis_client)} == before


@pytest.mark.parametrize(
    "path",
    ["/api/exp/gain", "/api/admin/exp/adjust"],  # the hot lane and a Starlette route
)
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/jsonx", "text/json"],
)  # fmt: skip
async def test_a_body_declared_as_not_json_is_415_and_applies_nothing(
    client: httpx2.AsyncClient, path: str, content_type: str
) -> None:
    """Found by an attacker: JSON sent as text/plain, a form or multipart was applied. The
    first three are what a page on another origin may make a browser post without a CORS
    preflight; none of them is JSON: 415 ``unsupported_media_type``, nothing applied."""
    user = f"ct-{path.rsplit('/', 1)[1]}-{len(content_type)}"
    body = (
        {"action": "daily_chat"}
        if path.endswith("gain")
        else {"user_id": user, "delta": 5, "reason": "t"}
    )
    headers = service_headers(user) | {"Content-Type": content_type}
    response = await client.post(path, content=json.dumps(body), headers=headers)
    assert response.status_code == 415, response.text
    assert response.json()["code"] == "unsupported_media_type"
    assert content_type[:10] in response.json()["detail"]
    progress = await client.get("/api/exp/progress", headers=service_headers(user))
    assert progress.json()["total_exp"] == 0


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "Application/JSON; charset=utf-8", "application/merge-patch+json"],
)
async def test_json_in_any_spelling_or_no_content_type_is_served(
    client: httpx2.AsyncClient, content_type: str | None
) -> None:
    """No Content-Type (a service's plain call), application/json with parameters or in any
    case, and application/*+json (RFC 6839) are all JSON: the award applies."""
    user = f"ct-ok-{len(content_type or '')}"
    headers = service_headers(user)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.post(
        "/api/exp/gain", content=b'{"action":"daily_chat"}', headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["exp_added"] == 20
