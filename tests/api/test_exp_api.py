"""The EXP routes at the boundary: auth, bad input, idempotency, ownership, corrections."""

from __future__ import annotations

import time

import httpx2
import jwt
import pytest
import redis

from counters.auth import Authenticator
from counters.clock import ManualClock
from counters.errors import AuthError, ForbiddenError, InvalidRequest
from tests.support.core import JWT_SECRET, SERVICE_KEY, data_keys, service_headers, user_headers

pytestmark = pytest.mark.anyio

CHAT = {"action": "daily_chat"}


NEITHER = (
    "The bearer credential is neither a known service key nor a valid token"
    " (a token is a JWT: three parts separated by dots)"
)


def snapshot(redis_client: redis.Redis) -> dict[str, bytes | None]:
    return {key: redis_client.dump(key) for key in redis_client.keys("*")}


@pytest.mark.parametrize(
    ("headers", "status", "detail"),
    [
        ({}, 401, "Missing Authorization header: send 'Authorization: Bearer <token>'"),
        ({"Authorization": "Basic abc"}, 401, "Authorization must be 'Bearer <token>'"),
        # "Unknown service key" misled a user whose token was broken (reviewer helper-63)
        ({"Authorization": "Bearer not-a-jwt"}, 401, NEITHER),
        ({"Authorization": "Bearer a.b"}, 401, NEITHER),
        ({"Authorization": "Bearer a.b.c"}, 401, "Invalid token: Invalid header padding"),
        (
            {"Authorization": "Bearer " + jwt.encode({"sub": "u1", "exp": 2**40}, "x" * 40)},
            401,
            "Invalid token: Signature verification failed",
        ),
        (
            {"Authorization": "Bearer " + jwt.encode({"sub": "u1", "exp": 1_000}, JWT_SECRET)},
            401,
            "Token has expired",
        ),
        (
            {"Authorization": "Bearer " + jwt.encode({"sub": "u1"}, JWT_SECRET)},
            401,
            'Invalid token: Token is missing the "exp" claim',
        ),
        (
            user_headers("u1", **{"X-User-Id": "u2"}),
            403,
            "A user token acts only as its own user; X-User-Id is refused",
        ),
        (
            {"Authorization": f"Bearer {SERVICE_KEY}"},
            422,
            "A service key must name the user in the X-User-Id header",
        ),
    ],
)
async def test_auth_failures(
    client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    headers: dict[str, str],
    status: int,
    detail: str,
) -> None:
    response = await client.post("/api/exp/gain", json=CHAT, headers=headers)
    code = {401: "unauthorized", 403: "forbidden", 422: "invalid_request"}[status]
    assert (response.status_code, response.json()) == (status, {"detail": detail, "code": code})
    assert data_keys(redis_client) == []


async def test_a_service_key_acts_for_the_named_user(client: httpx2.AsyncClient) -> None:
    response = await client.post("/api/exp/gain", json=CHAT, headers=service_headers("u7"))
    assert response.json()["awarded_to"] == "u7"


async def test_a_user_token_naming_itself_is_fine(client: httpx2.AsyncClient) -> None:
    response = await client.post(
        "/api/exp/gain", json=CHAT, headers=user_headers("u1", **{"X-User-Id": "u1"})
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b"{not json", 400, "Malformed JSON: JSON is malformed: object keys must be strings"),
        (b"", 400, "Request body must be a JSON object"),
        (b"[]", 422, "Invalid request: Expected `object`, got `array`"),
        (b'{"action": 5}', 422, "Invalid request: Expected `str`, got `int` - at `$.action`"),
        (b"{}", 422, "Invalid request: Object missing required field `action`"),
        (
            b'{"action": "fly"}',
            422,
            "Unknown action 'fly'; known actions: daily_chat, create_character, create_scene, "
            "create_persona, character_liked, forked, paid_char_sold",
        ),
        (
            b'{"action": "daily_chat", "extra": 1}',
            422,
            "Invalid request: Object contains unknown field `extra`",
        ),
        (
            b'{"action": "character_liked"}',
            422,
            "character_liked needs target_type and target_id",
        ),
        (
            b'{"action": "character_liked", "target_type": "character"}',
            422,
            "target_type and target_id must be sent together",
        ),
        (
            b'{"action": "character_liked", "target_type": "scene", "target_id": 1}',
            422,
            "character_liked takes target_type character, not 'scene'",
        ),
        (
            b'{"action": "forked", "target_type": "character", "target_id": -1}',
            422,
            "Invalid request: Expected `int` >= 0 - at `$.target_id`",
        ),
        (
            b'{"action": "forked", "target_type": "character", "target_id": "a b"}',
            422,
            "Invalid request: Expected `str` matching regex",
        ),
        (
            b'{"action": "character_liked", "target_type": "character", "target_id": 404}',
            404,
            "Unknown character 404: no owner is recorded",
        ),
    ],
)
async def test_bad_input_is_a_clear_4xx_and_changes_nothing(
    client: httpx2.AsyncClient,
    redis_client: redis.Redis,
    body: bytes,
    status: int,
    detail: str,
) -> None:
    await client.post("/api/exp/gain", json={"action": "create_scene"}, headers=user_headers("u1"))
    before = snapshot(redis_client)
    response = await client.post(
        "/api/exp/gain",
        content=body,
        headers=user_headers("u1", **{"Content-Type": "application/json"}),
    )
    assert response.status_code == status
    assert response.json()["detail"].startswith(detail)
    assert snapshot(redis_client) == before


async def test_an_oversize_body_is_refused(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    body = b'{"action": "daily_chat", "pad": "' + b"x" * 70_000 + b'"}'
    response = await client.post("/api/exp/gain", content=body, headers=user_headers("u1"))
    assert response.status_code == 413
    assert response.json() == {
        "detail": "Body is larger than 65536 bytes",
        "code": "payload_too_large",
    }
    assert data_keys(redis_client) == []


async def test_unknown_route_and_method(client: httpx2.AsyncClient) -> None:
    assert (await client.get("/api/nope")).json() == {"detail": "Not Found", "code": "not_found"}
    wrong = await client.get("/api/exp/gain")
    assert (wrong.status_code, wrong.json()) == (
        405,
        {"detail": "Method Not Allowed", "code": "method_not_allowed"},
    )


async def test_an_idempotent_retry_is_applied_once(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    headers = user_headers("u1", **{"Idempotency-Key": "chat-2026-11-21"})
    first = await client.post("/api/exp/gain", json={"action": "create_scene"}, headers=headers)
    again = await client.post(
        "/api/exp/gain", content=b'{ "action" : "create_scene" }', headers=headers
    )
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    [stream] = redis_client.keys("*:events")
    assert redis_client.xlen(stream) == 1
    usage = (await client.get("/api/exp/limits", headers=user_headers("u1"))).json()
    assert usage["daily_action_counts"] == {"create_scene": 1}
    [key] = redis_client.keys("*:idem:*")
    assert 86_390 < redis_client.ttl(key) <= 86_400


async def test_a_refusal_is_replayed_too(client: httpx2.AsyncClient) -> None:
    await client.post("/api/exp/gain", json=CHAT, headers=user_headers("u1"))
    headers = user_headers("u1", **{"Idempotency-Key": "k1"})
    refused = await client.post("/api/exp/gain", json=CHAT, headers=headers)
    replay = await client.post("/api/exp/gain", json=CHAT, headers=headers)
    assert (refused.status_code, replay.status_code) == (429, 429)
    assert replay.json() == refused.json()


async def test_an_idempotency_key_reused_with_another_body_is_refused(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    headers = user_headers("u1", **{"Idempotency-Key": "k1"})
    await client.post("/api/exp/gain", json={"action": "create_scene"}, headers=headers)
    before = snapshot(redis_client)
    other = await client.post("/api/exp/gain", json={"action": "create_persona"}, headers=headers)
    assert other.status_code == 422
    assert other.json() == {
        "detail": "Idempotency-Key was already used with a different request",
        "code": "idempotency_key_reused",
    }
    assert snapshot(redis_client) == before


async def test_idempotency_keys_are_scoped_to_their_caller(client: httpx2.AsyncClient) -> None:
    for user in ("u1", "u2"):
        headers = user_headers(user, **{"Idempotency-Key": "same"})
        response = await client.post("/api/exp/gain", json=CHAT, headers=headers)
        assert (response.status_code, response.json()["awarded_to"]) == (200, user)


async def test_a_bad_idempotency_key(client: httpx2.AsyncClient) -> None:
    headers = user_headers("u1", **{"Idempotency-Key": "has space"})
    response = await client.post("/api/exp/gain", json=CHAT, headers=headers)
    assert response.status_code == 422
    assert "Idempotency-Key must be" in response.json()["detail"]


async def test_creator_awards_go_to_the_owner(client: httpx2.AsyncClient) -> None:
    made = await client.post(
        "/api/exp/gain",
        json={"action": "create_character", "target_type": "character", "target_id": 123},
        headers=service_headers("maker"),
    )
    assert made.json()["awarded_to"] == "maker"
    liked = await client.post(
        "/api/exp/gain",
        json={"action": "character_liked", "target_type": "character", "target_id": 123},
        headers=user_headers("fan"),
    )
    assert (liked.status_code, liked.json()["awarded_to"]) == (200, "maker")
    assert liked.json()["total_exp"] == 35
    fan = (await client.get("/api/exp/progress", headers=user_headers("fan"))).json()
    assert fan["total_exp"] == 0


async def test_the_same_fan_liking_again_awards_nothing(client: httpx2.AsyncClient) -> None:
    await client.put(
        "/api/entities/character/7", json={"owner_id": "maker"}, headers=service_headers()
    )
    like = {"action": "character_liked", "target_type": "character", "target_id": 7}
    assert (
        await client.post("/api/exp/gain", json=like, headers=user_headers("fan"))
    ).status_code == 200
    again = await client.post("/api/exp/gain", json=like, headers=user_headers("fan"))
    assert again.status_code == 409
    assert again.json() == {
        "detail": "fan already triggered character_liked on character 7; no EXP awarded",
        "code": "already_triggered",
    }
    maker = (await client.get("/api/exp/progress", headers=user_headers("maker"))).json()
    assert maker["total_exp"] == 5


async def test_the_liker_record_is_bounded_in_time(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    await client.put(
        "/api/entities/character/7", json={"owner_id": "maker"}, headers=service_headers()
    )
    like = {"action": "character_liked", "target_type": "character", "target_id": 7}
    await client.post("/api/exp/gain", json=like, headers=user_headers("fan"))
    [likers] = redis_client.keys("*:once:character_liked:character:7")
    assert redis_client.ttl(likers) == 30 * 86_400


@pytest.mark.parametrize("action", ["character_liked", "forked"])
async def test_your_own_entity_awards_nothing(client: httpx2.AsyncClient, action: str) -> None:
    await client.put(
        "/api/entities/character/7", json={"owner_id": "maker"}, headers=service_headers()
    )
    body = {"action": action, "target_type": "character", "target_id": 7}
    response = await client.post("/api/exp/gain", json=body, headers=user_headers("maker"))
    assert response.status_code == 409
    assert response.json() == {
        "detail": f"{action} on your own character awards nothing",
        "code": "self_action",
    }


async def test_creating_an_entity_someone_else_owns_is_refused(client: httpx2.AsyncClient) -> None:
    body = {"action": "create_scene", "target_type": "scene", "target_id": "s1"}
    assert (
        await client.post("/api/exp/gain", json=body, headers=service_headers("a"))
    ).status_code == 200
    taken = await client.post("/api/exp/gain", json=body, headers=service_headers("b"))
    assert taken.status_code == 409
    assert taken.json() == {
        "detail": "scene s1 is already owned by another user",
        "code": "already_owned",
    }
    b = (await client.get("/api/exp/progress", headers=user_headers("b"))).json()
    assert b["total_exp"] == 0


async def test_ownership_transfer_moves_later_awards(client: httpx2.AsyncClient) -> None:
    put = "/api/entities/character/9"
    first = await client.put(put, json={"owner_id": "old"}, headers=service_headers())
    assert first.json() == {
        "target_type": "character", "target_id": "9", "owner_id": "old", "previous_owner_id": None,
    }  # fmt: skip
    fork = {"action": "forked", "target_type": "character", "target_id": 9}
    assert (await client.post("/api/exp/gain", json=fork, headers=user_headers("f1"))).json()[
        "awarded_to"
    ] == "old"
    moved = await client.put(put, json={"owner_id": "new"}, headers=service_headers())
    assert moved.json()["previous_owner_id"] == "old"
    # The app's owner cache still says "old": the script's marker check catches it.
    after = await client.post("/api/exp/gain", json=fork, headers=user_headers("f2"))
    assert after.json()["awarded_to"] == "new"


async def test_ownership_routes_are_for_services(client: httpx2.AsyncClient) -> None:
    put = "/api/entities/character/9"
    by_user = await client.put(put, json={"owner_id": "me"}, headers=user_headers("me"))
    assert (by_user.status_code, by_user.json()) == (
        403,
        {"detail": "This route is for services only", "code": "forbidden"},
    )
    unknown = await client.put(
        "/api/entities/planet/9", json={"owner_id": "me"}, headers=service_headers()
    )
    assert unknown.status_code == 404
    assert (
        unknown.json()["detail"] == "Unknown target_type 'planet'; known: character, persona, scene"
    )


async def test_an_ownership_put_refuses_an_x_user_id_naming_another_user(
    client: httpx2.AsyncClient,
) -> None:
    """The route acts for the body's owner_id; an X-User-Id naming someone else was silently
    ignored (session 14's note), where grants, adjusts and subscriptions refuse it (422)."""
    put = "/api/entities/character/11"
    for sent in ("other", "system"):
        refused = await client.put(put, json={"owner_id": "maker"}, headers=service_headers(sent))
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "invalid_request"
    fork = {"action": "forked", "target_type": "character", "target_id": 11}
    unowned = await client.post("/api/exp/gain", json=fork, headers=user_headers("f1"))
    assert unowned.status_code != 200, unowned.text  # nothing was recorded
    same = await client.put(put, json={"owner_id": "maker"}, headers=service_headers("maker"))
    assert (same.status_code, same.json()["previous_owner_id"]) == (200, None), same.text


async def test_adjust_clamps_at_zero_and_reports_progress(client: httpx2.AsyncClient) -> None:
    url = "/api/admin/exp/adjust"
    up = await client.post(
        url, json={"user_id": "u1", "delta": 130, "reason": "support #1"}, headers=service_headers()
    )
    assert up.json() == {
        "user_id": "u1",
        "applied_delta": 130,
        "total_exp": 130,
        "level": 2,
        "leveled_up": True,
        "progress": {
            "current_level": 2, "level_name": "Creator", "total_exp": 130,
            "current_level_exp": 30, "exp_needed_for_next": 200, "exp_to_next_level": 170,
            "progress_percentage": 15.0, "is_max_level": False,
        },
        "unlocked_features": ["fork", "private_characters"],  # as a gain's level-up says
    }  # fmt: skip
    down = await client.post(
        url, json={"user_id": "u1", "delta": -500, "reason": "abuse"}, headers=service_headers()
    )
    assert (down.json()["applied_delta"], down.json()["total_exp"], down.json()["level"]) == (
        -130,
        0,
        1,
    )
    assert down.json()["unlocked_features"] == []


async def test_adjust_is_for_services_and_validates(client: httpx2.AsyncClient) -> None:
    url = "/api/admin/exp/adjust"
    body = {"user_id": "u1", "delta": 5, "reason": "x"}
    assert (await client.post(url, json=body, headers=user_headers("u1"))).status_code == 403
    bad = await client.post(url, json={**body, "reason": ""}, headers=service_headers())
    assert bad.status_code == 422
    assert "at `$.reason`" in bad.json()["detail"]


async def test_levels_needs_no_auth_and_is_the_seed_table(client: httpx2.AsyncClient) -> None:
    levels = (await client.get("/api/levels")).json()
    assert levels["1"] == {
        "name": "Newbie",
        "unlock": "Create chars, scenes, personas",
        "exp_required": 0,
    }
    assert levels["6"] == {
        "name": "Master",
        "unlock": "Creator badge, early revenue tools",
        "exp_required": 1500,
    }
    assert list(levels) == ["1", "2", "3", "4", "5", "6"]


async def test_limits_and_progress_for_a_new_user(client: httpx2.AsyncClient) -> None:
    limits = (await client.get("/api/exp/limits", headers=user_headers("new"))).json()
    assert limits["level"] == 1
    assert (limits["daily_exp_gained"], limits["daily_exp_cap"], limits["remaining_exp"]) == (
        0,
        150,
        150,
    )
    assert limits["daily_action_counts"] == {}
    assert limits["action_limits"]["forked"] is None
    assert limits["exp_rewards"]["daily_chat"] == 20
    progress = (await client.get("/api/exp/progress", headers=user_headers("new"))).json()
    assert progress["user_id"] == "new"
    assert progress["progress"]["exp_to_next_level"] == 100


def test_a_cached_token_is_refused_once_it_expires() -> None:
    clock = ManualClock(time.time())
    auth = Authenticator(JWT_SECRET, (), now=clock.now)
    token = jwt.encode({"sub": "u1", "exp": int(clock.now()) + 60}, JWT_SECRET)
    assert auth.authenticate(f"Bearer {token}", None).user_id == "u1"
    clock.advance(59)
    assert auth.authenticate(f"Bearer {token}", None).user_id == "u1"  # from the cache
    clock.advance(2)
    with pytest.raises(AuthError, match="Token has expired"):
        auth.authenticate(f"Bearer {token}", None)


def test_the_token_cache_is_keyed_by_the_raw_header_and_still_checks_x_user_id() -> None:
    """A header seen before is answered from the cache, with the same checks as the first time:
    a user token naming another X-User-Id is 403, a service key without one 422 (a cached
    header never skips them); an unknown key never enters the cache."""
    auth = Authenticator(JWT_SECRET, (SERVICE_KEY,))
    token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 600}, JWT_SECRET)
    user_header = f"Bearer {token}".encode()
    service_header = f"Bearer {SERVICE_KEY}".encode()
    for _ in range(2):  # verified, then cached
        assert auth.authenticate_raw(user_header, None) == auth.authenticate(
            f"Bearer {token}", "u1"
        )
        with pytest.raises(ForbiddenError):
            auth.authenticate_raw(user_header, "u2")
        assert auth.authenticate_raw(service_header, "u7").caller == "service:0"
        assert auth.authenticate_raw(service_header, "u8").user_id == "u8"
        with pytest.raises(InvalidRequest):
            auth.authenticate_raw(service_header, None)
        with pytest.raises(InvalidRequest):
            auth.authenticate_raw(service_header, "bad id!")
        with pytest.raises(AuthError, match="neither a known service key nor a valid token"):
            auth.authenticate_raw(b"Bearer not-the-key", "u7")
    assert auth._service_headers == {service_header: "service:0"}
    assert list(auth._user_headers) == [user_header]
