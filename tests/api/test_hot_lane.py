"""The hot lane (api/asgi.py) answers exactly as Starlette's router would, for every outcome."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from time import perf_counter
from typing import Any

import httpx2
import pytest
from starlette.types import Message, Receive, Scope, Send

from api.app import create_app
from api.asgi import CountersApp
from counters.clock import ManualClock
from counters.settings import Settings
from tests.support.core import SERVICE_KEY, service_headers, user_headers
from tests.support.xp import grant, subscribe

pytestmark = pytest.mark.anyio


@pytest.fixture
async def app(settings: Settings, clock: ManualClock) -> AsyncIterator[CountersApp]:
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        yield app


def _client(app: Any) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://counters")


def _through_router(app: CountersApp) -> Any:
    """The same app with the hot lane skipped: every request goes through Starlette's router."""

    async def routed(scope: Scope, receive: Receive, send: Send) -> None:
        await app.serve_routed(scope, receive, send, perf_counter())

    return routed


def _answer(response: httpx2.Response, user: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body, with what differs between users (id, transaction ids) masked."""
    assert response.headers["x-request-id"]  # every answer carries one (its value differs)
    headers = sorted(
        (k, "<id>" if k == "x-request-id" else v)
        for k, v in response.headers.items()
        if k != "date"
    )
    body = _TRANSACTION.sub(b"xd_<id>", response.content.replace(user.encode(), b"<user>"))
    return response.status_code, headers, body


_TRANSACTION = re.compile(rb"xd_[0-9a-f]+")

# Sent in order for one user, then for another: (path, extra headers, body).
_GAIN = "/api/exp/gain"
_DEBIT = "/api/v1/xp/debit"
_REQUESTS: list[tuple[str, dict[str, str], bytes]] = [
    (_GAIN, {}, b'{"action": "daily_chat"}'),  # awarded
    (_GAIN, {}, b'{"action": "daily_chat"}'),  # 429, Retry-After
    (_GAIN, {"Idempotency-Key": "k1"}, b'{"action": "create_scene"}'),  # awarded
    (_GAIN, {"Idempotency-Key": "k1"}, b'{"action": "create_scene"}'),  # replayed
    (_GAIN, {"Idempotency-Key": "k1"}, b'{"action": "daily_chat"}'),  # key reused: 422
    (_GAIN, {}, b'{"action": "no_such_action"}'),  # 422
    (_GAIN, {}, b"{not json"),  # 400
    (_GAIN, {}, b""),  # 400
    (_GAIN, {}, b'{"action": "daily_chat", "extra": 1}'),  # 422
    (_GAIN, {}, b'{"action": "character_liked", "target_type": "character"}'),  # 422
    (_GAIN, {}, b'{"action": "character_liked", "target_type": "character", '
                b'"target_id": "nobody-owns-this"}'),  # 404
    (_GAIN, {}, b'{"action": "daily_chat", "pad": "' + b"x" * 70_000 + b'"}'),  # 413
    (_DEBIT, {}, b'{"generation_type": "EDIT_IMAGE"}'),  # 200
    (_DEBIT, {}, b'{"generation_type": "NEW_VIDEO_WITH_AUDIO"}'),  # 403: tier
    (_DEBIT, {}, b'{"generation_type": "NOPE"}'),  # 404
    (_DEBIT, {"Idempotency-Key": "d1"}, b'{"generation_type": "EDIT_IMAGE"}'),  # 200
    (_DEBIT, {"Idempotency-Key": "d1"}, b'{"generation_type": "EDIT_IMAGE"}'),  # replayed
]  # fmt: skip


async def _exchange(http: httpx2.AsyncClient, user: str) -> list[tuple[int, Any, bytes]]:
    await subscribe(http, user, "pixel_rookie")
    await grant(http, user, 50)
    answers = []
    for path, extra, body in _REQUESTS:
        response = await http.post(path, content=body, headers=service_headers(user, **extra))
        answers.append(_answer(response, user))
    return answers


async def test_every_outcome_is_answered_as_the_router_answers(app: CountersApp) -> None:
    async with _client(app) as hot, _client(_through_router(app)) as routed:
        hot_answers = await _exchange(hot, "user-hot-1")
        routed_answers = await _exchange(routed, "user-rtd-1")
    assert hot_answers == routed_answers
    statuses = [status for status, _, _ in hot_answers]
    assert statuses == [200, 429, 200, 200, 422, 422, 400, 400, 422, 422, 404, 413,
                        200, 403, 404, 200, 200]  # fmt: skip


async def test_credentials_are_checked_as_on_every_route(app: CountersApp) -> None:
    async with _client(app) as http:
        missing = await http.post(_GAIN, json={"action": "daily_chat"})
        wrong = await http.post(
            _GAIN, json={"action": "daily_chat"}, headers={"Authorization": "Bearer nope"}
        )
        other_user = await http.post(
            _DEBIT,
            json={"generation_type": "EDIT_IMAGE"},
            headers=user_headers("alice", **{"X-User-Id": "bob"}),
        )
    assert (missing.status_code, wrong.status_code, other_user.status_code) == (401, 401, 403)
    assert missing.headers["www-authenticate"] == "Bearer"


async def test_other_methods_on_a_hot_path_go_to_the_router(app: CountersApp) -> None:
    async with _client(app) as http:
        response = await http.get(_GAIN, headers=service_headers("u1"))
    assert response.status_code == 405


async def test_storage_down_is_503_with_retry_after(settings: Settings, clock: ManualClock) -> None:
    dead = Settings(
        redis_url="redis://127.0.0.1:1/0", jwt_secret=settings.jwt_secret,
        service_keys=(SERVICE_KEY,),
    )  # fmt: skip
    app = create_app(dead, clock=clock)
    async with app.router.lifespan_context(app), _client(app) as http:
        response = await http.post(
            _GAIN, json={"action": "daily_chat"}, headers=service_headers("u1")
        )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == {  # refused connection: the command was never sent
        "detail": "Storage unavailable, try again",
        "code": "storage_unavailable",
    }


async def test_a_client_gone_before_its_body_arrived_gets_no_answer(app: CountersApp) -> None:
    sent: list[Message] = []
    headers = [(b"authorization", f"Bearer {SERVICE_KEY}".encode()), (b"x-user-id", b"u1")]
    scope: Scope = {
        "type": "http", "method": "POST", "path": _GAIN, "root_path": "", "headers": headers,
        "query_string": b"", "http_version": "1.1", "scheme": "http",
    }  # fmt: skip

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent == []
