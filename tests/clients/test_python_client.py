"""counters_client against a real `counters serve`: typed results, exceptions by code, awards
that fail open, debits that fail closed, retried writes applied once, the seed's helpers and
its tier-permissions middleware."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
import typing
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType

import httpx2
import pytest

from api.schemas.exp import TargetId
from counters import ids
from counters.cli.embedded import free_port
from counters.ids import whole
from counters.xp import guidance as server_guidance
from counters_client import (
    AsyncCountersClient,
    BadResponse,
    CountersClient,
    CountersError,
    DailyLimitReached,
    IdempotencyKeyReused,
    InsufficientXp,
    InvalidId,
    InvalidRequest,
    NotFound,
    SelfAction,
    TierRequired,
    Unauthorized,
    Unavailable,
    _calls,
    format_xp_guidance_message,
    xp_utils,
)
from counters_client.errors import error_for
from counters_client.types import Award
from tests.support.core import SERVICE_KEY, issue_token_for

pytestmark = pytest.mark.anyio
EXAMPLE = Path(__file__).resolve().parents[2] / "clients" / "python" / "examples" / "app.py"


def new_user() -> str:
    return f"pc-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def counters(live_url: str, redis_url: str) -> AsyncCountersClient:
    async with AsyncCountersClient(live_url, service_key=SERVICE_KEY) as client:
        yield client  # type: ignore[misc]


async def test_an_award_is_typed_and_a_refusal_raises_by_code(
    counters: AsyncCountersClient,
) -> None:
    user = new_user()
    award = await counters.award("daily_chat", user_id=user)
    assert isinstance(award, Award)
    assert (award.awarded_to, award.exp_added, award.progress.level_name) == (user, 20, "Newbie")
    with pytest.raises(DailyLimitReached) as refused:
        await counters.award("daily_chat", user_id=user)
    assert refused.value.status == 429 and refused.value.code == "daily_limit_reached"
    assert refused.value.detail == "Daily limit reached for daily_chat (1/day)"
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    # The seed's name fails open: nothing awarded is None, not an exception.
    assert await counters.award_exp_with_limits(user, "daily_chat") is None


async def test_a_user_token_acts_as_its_user(
    live_url: str, redis_url: str, counters: AsyncCountersClient
) -> None:
    user = new_user()
    # Only a service records who created an entity; the user's token then acts as its owner.
    await counters.award("create_character", user_id=user, target=("character", f"c-{user}"))
    async with AsyncCountersClient(live_url, token=issue_token_for(user)) as client:
        assert (await client.progress()).total_exp == 30
        award = await client.award("daily_chat")
        assert award.awarded_to == user
        with pytest.raises(SelfAction):
            await client.award("character_liked", target=("character", f"c-{user}"))
        assert (await client.progress()).total_exp == 50


async def test_when_the_service_is_down_awards_fail_open_and_debits_fail_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with AsyncCountersClient(dead, service_key="k", timeout=0.5, backoff=0.01) as client:
        with caplog.at_level(logging.WARNING, "counters_client"):
            assert await client.award_exp_with_limits("u1", "daily_chat") is None
        assert "no EXP for daily_chat by u1" in caplog.text
        with pytest.raises(Unavailable):
            await client.debit("NEW_IMAGE", user_id="u1")
        check = await client.check_xp_availability("u1", "NEW_IMAGE")
        assert "check-xp NEW_IMAGE for u1" in caplog.text
        assert check["has_sufficient_xp"] is False
        assert check["subscription_url"] == "/subscriptions"
        assert check["guidance"] and check["code"] == "unavailable"
    strict = AsyncCountersClient(dead, service_key="k", retries=0, exp_fail_open=False)
    with pytest.raises(Unavailable):
        await strict.award_exp_with_limits("u1", "daily_chat")
    await strict.aclose()


async def test_a_stalled_service_costs_a_call_its_deadline_not_every_retry() -> None:
    """A service that accepts connections and never answers (stopped, or a black hole): the
    call gives up at its deadline. Per-attempt timeouts alone would let 1 + retries attempts
    each wait the full timeout (6 attempts x 0.4 s here)."""
    requests: list[bytes] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.read()  # never answers; returns when the client hangs up
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with AsyncCountersClient(
        url, service_key="k", timeout=0.4, retries=5, backoff=0.01, deadline=1.0
    ) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await client.debit("NEW_IMAGE", user_id="u1")
        elapsed = time.monotonic() - started
    server.close()
    await server.wait_closed()
    assert 2 <= len(requests) <= 3, requests  # 0.4 + 0.4 + what is left of the 1.0 s
    assert elapsed < 3.0  # generous: the point is 1 s, not 6 x 0.4 s + backoff
    with pytest.raises(ValueError, match="timeout and deadline"):
        AsyncCountersClient(url, service_key="k", timeout=2.0, deadline=1.0)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A local HTTP server that answers with ``handler``'s bytes, as a broken or hostile one
    would: the URL to give a client."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


def dripping(where: str, requests: list[bytes]) -> Handler:
    """A server that sends the status line, then the rest of the headers (``where`` "headers")
    or the body (``where`` "body", after whole headers) one byte every 0.1 s, each byte well
    inside the client's per-read timeout. It stops when the client hangs up (or after 60 s)."""

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        if where == "body":
            head += b"Content-Length: 4000\r\n\r\n"
        writer.write(head)
        try:
            for _ in range(600):
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.write(b"x" if where == "headers" else b" ")
        except ConnectionError:
            pass
        finally:
            writer.close()

    return drip


@pytest.mark.parametrize("where", ["headers", "body"])
async def test_a_trickling_reply_costs_a_call_its_deadline(where: str) -> None:
    """H2: httpx2's timeouts are per read, so a reply that trickles in one byte at a time, each
    inside the timeout, kept ``debit()`` 13 s past a 3 s deadline. Now the deadline bounds the
    whole attempt, reading included, in both clients, and a deadline passed mid-read is
    ``Unavailable``, never a raw exception. (Without it this reply lasts 60 s.)"""
    requests: list[bytes] = []
    options = {"service_key": "k", "timeout": 0.5, "retries": 3, "backoff": 0.01, "deadline": 1.0}
    async with raw_server(dripping(where, requests)) as url:
        async with AsyncCountersClient(url, **options) as client:  # type: ignore[arg-type]
            started = time.monotonic()
            with pytest.raises(Unavailable) as late:
                await client.debit("NEW_IMAGE", user_id="u1")
            async_elapsed = time.monotonic() - started

        def sync_debit() -> Unavailable:
            with CountersClient(url, **options) as client:  # type: ignore[arg-type]
                try:
                    client.debit("NEW_IMAGE", user_id="u1")
                except Unavailable as exc:
                    return exc
            raise AssertionError("the debit of a dripped reply succeeded")

        started = time.monotonic()
        sync_late = await asyncio.to_thread(sync_debit)
        sync_elapsed = time.monotonic() - started
    for error in (late.value, sync_late):
        assert (error.code, error.status) == ("unavailable", 0), error
        assert error.idempotency_key and error.idempotency_key.startswith("cc-")
        assert "deadline passed" in error.detail or "timed out" in error.detail, error.detail
    assert 2 <= len(requests) <= 4, requests  # one attempt each: the deadline left no retry
    assert async_elapsed < 10 and sync_elapsed < 10  # generous: the point is 1 s, not 60 s


def answering(status: int, body: bytes) -> Handler:
    """A server that answers every request ``status`` with ``body`` (JSON), then hangs up."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
             if line.startswith(b"content-length:")), 0,
        )  # fmt: skip
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, len(body), body)
        )
        await writer.drain()
        writer.close()

    return answer


async def test_a_2xx_body_that_does_not_decode_is_a_counters_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """M2: a 200 whose body is not the result's shape raised msgspec's errors, even from the
    calls documented never to raise. It is ``BadResponse`` now: fail-open awards answer None
    (a warning), the XP check answers not sufficient, a debit raises a ``CountersError``."""
    async with raw_server(answering(200, b'{"awarded_to": 5}')) as url:
        async with AsyncCountersClient(url, service_key="k") as client:
            with caplog.at_level(logging.WARNING, "counters_client"):
                assert await client.award_exp_with_limits("u1", "daily_chat") is None
            assert "no EXP for daily_chat by u1" in caplog.text
            check = await client.check_xp_availability("u1", "NEW_IMAGE")
            assert (check["has_sufficient_xp"], check["code"]) == (False, "bad_response")
            with pytest.raises(BadResponse) as bad:
                await client.debit("NEW_IMAGE", user_id="u1")

        def sync_calls() -> BadResponse:  # in a thread: the server runs on this event loop
            with CountersClient(url, service_key="k") as sync_client:
                assert sync_client.award_exp_with_limits("u1", "daily_chat") is None
                check = sync_client.check_xp_availability("u1", "NEW_IMAGE")
                assert check["code"] == "bad_response"
                with pytest.raises(BadResponse) as sync_bad:
                    sync_client.balance("u1")
                return sync_bad.value

        sync_bad = await asyncio.to_thread(sync_calls)
    assert isinstance(bad.value, CountersError)
    assert (bad.value.status, bad.value.code) == (200, "bad_response")
    assert "Expected `object`" in bad.value.detail or "Object missing" in bad.value.detail
    assert bad.value.idempotency_key and bad.value.idempotency_key.startswith("cc-")
    assert (sync_bad.code, sync_bad.idempotency_key) == ("bad_response", None)
    async with (
        raw_server(answering(200, b"not json")) as url,
        AsyncCountersClient(url, service_key="k") as client,
    ):
        with pytest.raises(BadResponse, match="does not decode"):
            await client.debit("NEW_IMAGE", user_id="u1")


@pytest.mark.parametrize("status", [502, 504])
async def test_a_gateways_502_or_504_is_unavailable_with_the_key_to_retry(status: int) -> None:
    """A proxy's 502/504 in front of the service, after the retries, is ``Unavailable`` (the
    write may have been applied) and carries the Idempotency-Key every attempt sent, so the
    caller can retry it safely; a fail-open award answers None."""
    page = b"<html><head><title>%d Bad Gateway</title></head></html>" % status
    async with (
        raw_server(answering(status, page)) as url,
        AsyncCountersClient(url, service_key="k", retries=1, backoff=0) as client,
    ):
        with pytest.raises(Unavailable) as gone:
            await client.debit("NEW_IMAGE", user_id="u1", idempotency_key="mine-1")
        assert await client.award_exp_with_limits("u1", "daily_chat") is None
    assert (gone.value.status, gone.value.code) == (status, f"http_{status}")
    assert gone.value.idempotency_key == "mine-1"


@pytest.mark.parametrize(
    ("status", "code", "level"),
    [
        (422, "invalid_request", logging.WARNING),
        (400, "malformed_body", logging.WARNING),
        (404, "not_found", logging.WARNING),
        (422, "idempotency_key_reused", logging.WARNING),
        (418, "teapot", logging.WARNING),
        (429, "daily_limit_reached", logging.DEBUG),
        (429, "daily_cap_reached", logging.DEBUG),
        (409, "already_triggered", logging.DEBUG),
        (409, "self_action", logging.DEBUG),
        (409, "total_limit", logging.DEBUG),
    ],
)
async def test_an_award_refused_for_the_callers_mistake_is_a_warning(
    status: int, code: str, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Reviewer helper-63: a 422 on an award (an unknown action, a target type the action does
    not take) was logged at debug, so every such award was lost unseen. Only a rule's refusal
    (a limit, the cap, a 409) is routine; any other 4xx is the caller's mistake, a warning. The
    award still fails open (None)."""
    caplog.set_level(logging.DEBUG, logger="counters_client")
    body = b'{"detail": "no", "code": "%s"}' % code.encode()
    async with (
        raw_server(answering(status, body)) as url,
        AsyncCountersClient(url, service_key="k") as client,
    ):
        assert await client.award_exp_with_limits("u1", "daily_chat") is None
    [record] = [r for r in caplog.records if r.getMessage().startswith("no EXP")]
    assert record.levelno == level, record.getMessage()


async def test_an_unknown_action_is_logged_as_a_warning(
    counters: AsyncCountersClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The live service's 422 for an action it does not know: None, and a warning."""
    with caplog.at_level(logging.WARNING, "counters_client"):
        assert await counters.award_exp_with_limits(new_user(), "no_such_action") is None
    assert "no EXP for no_such_action" in caplog.text and "422 invalid_request" in caplog.text


@pytest.mark.parametrize(
    ("header", "seconds"), [("7", 7), ("\u00b2", None), ("\u0667", None), ("9" * 4301, None)]
)
def test_retry_after_is_read_in_ascii_digits_only(header: str, seconds: int | None) -> None:
    """A superscript two passed str.isdigit and then int() raised out of error_for, in place of
    the Unavailable the caller handles; other scripts' digits no server writes."""
    error = error_for(503, {"detail": "busy", "code": "storage_unavailable"}, header)
    assert isinstance(error, Unavailable) and error.retry_after == seconds


async def test_a_refused_service_key_is_raised_even_by_fail_open_awards(live_url: str) -> None:
    """A bad service key is the deployment's mistake, not an outage: swallowed like one, every
    award would be lost with only a warning in a log."""
    async with AsyncCountersClient(live_url, service_key="not-the-key") as client:
        with pytest.raises(Unauthorized):
            await client.award_exp_with_limits(new_user(), "daily_chat")
    with (
        CountersClient(live_url, service_key="not-the-key") as sync_client,
        pytest.raises(Unauthorized),
    ):
        sync_client.award_exp_with_limits(new_user(), "daily_chat")


class LoseFirstAnswer(httpx2.AsyncBaseTransport):
    """Sends every request, but the first answer is lost on the way back (a read timeout)."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.sent: list[httpx2.Request] = []
        self.answered: list[httpx2.Response] = []  # the answers that were not lost

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.sent.append(request)
        response = await self.inner.handle_async_request(request)
        if len(self.sent) == 1:
            await response.aread()
            raise httpx2.ReadTimeout("answer lost", request=request)
        self.answered.append(response)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_retried_debit_is_applied_once(live_url: str, redis_url: str) -> None:
    user = new_user()
    transport = LoseFirstAnswer()
    async with AsyncCountersClient(
        live_url, service_key=SERVICE_KEY, transport=transport, backoff=0.01
    ) as client:
        await client.set_subscription(user, "pixel_rookie")
        transport.sent.clear()
        debit = await client.debit("NEW_IMAGE", user_id=user)
        keys = [r.headers["idempotency-key"] for r in transport.sent]
        assert len(keys) == 2 and keys[0] == keys[1]  # one key for both attempts
        assert debit.xp_balance == 600 - 12
        assert (await client.balance(user)).xp_balance == 600 - 12  # applied once


async def test_a_write_that_failed_carries_its_key_and_a_retry_with_it_replays(
    live_url: str, counters: AsyncCountersClient
) -> None:
    """M3: a write whose outcome is unknown (here: applied, its answer lost, no retries left)
    raises ``Unavailable``; the key the client made for it is on the exception, and the
    caller's retry with it is replayed, not applied twice."""
    user = new_user()
    await counters.set_subscription(user, "pixel_rookie")
    transport = LoseFirstAnswer()
    async with AsyncCountersClient(
        live_url, service_key=SERVICE_KEY, transport=transport, retries=0
    ) as client:
        with pytest.raises(Unavailable) as lost:
            await client.debit("NEW_IMAGE", user_id=user)
        key = lost.value.idempotency_key
        assert key and key == transport.sent[0].headers["idempotency-key"]
        debit = await client.debit("NEW_IMAGE", user_id=user, idempotency_key=key)
        assert transport.answered[-1].headers.get("idempotent-replayed") == "true"
        assert debit.xp_balance == 600 - 12
        assert (await client.balance(user)).xp_balance == 600 - 12  # applied once
        with pytest.raises(IdempotencyKeyReused) as reused:  # the caller's own key is kept too
            await client.debit("EDIT_IMAGE", user_id=user, idempotency_key=key)
        assert reused.value.idempotency_key == key
        with pytest.raises(NotFound) as read:  # a read sends no key
            await client.check_xp("NO_SUCH_TYPE", user_id=user)
        assert read.value.idempotency_key is None


async def test_insufficient_xp_carries_the_numbers(counters: AsyncCountersClient) -> None:
    user = new_user()
    await counters.set_subscription(user, "arcade_artist")  # 800 XP
    for _ in range(5):
        await counters.debit("IMAGE_TO_VIDEO", user_id=user)  # 150 each
    with pytest.raises(InsufficientXp) as short:
        await counters.debit("IMAGE_TO_VIDEO", user_id=user)
    assert (short.value.xp_balance, short.value.xp_required, short.value.xp_deficit) == (
        50,
        150,
        100,
    )
    assert short.value.status == 402 and short.value.guidance
    with pytest.raises(TierRequired):
        await counters.hold("NEW_IMAGE", user_id=new_user())  # no subscription


async def test_the_seeds_helpers(counters: AsyncCountersClient) -> None:
    assert await counters.get_generation_cost("NEW_IMAGE", user_tier=1) == 12
    assert await counters.get_generation_cost("NEW_VIDEO_WITH_AUDIO", "Game Master") == 720
    xp_utils.configure(counters)
    assert await xp_utils.get_generation_cost("EDIT_IMAGE") == 9
    user = new_user()
    await counters.set_subscription(user, "pixel_rookie")
    simple = await xp_utils.check_user_xp_for_generation(user, "NEW_IMAGE")
    assert simple["has_sufficient_xp"] is True and "guidance" not in simple
    unknown = await counters.check_xp_availability(user, "NO_SUCH_TYPE")
    assert (unknown["has_sufficient_xp"], unknown["code"]) == (False, "not_found")
    full = await counters.check_xp_availability(user, "NEW_VIDEO")
    assert full["has_sufficient_xp"] is False
    assert full["recommended_tier"] and full["recommended_tier"]["tier_name"] == "arcade_artist"


async def test_an_unknown_generation_type_or_tier_raises_the_clients_own_errors(
    counters: AsyncCountersClient, live_url: str
) -> None:
    """Reviewer helper-63: ``get_generation_cost("NOPE")`` and ``user_tier=7`` raised bare
    ``KeyError``s. They raise what the service answers for the same lookup: ``NotFound`` for
    the type, ``InvalidRequest`` for the tier (a bool too: ``True == 1`` matched level 1)."""
    with pytest.raises(NotFound, match="Unknown generation type 'NOPE'; known types: ") as no:
        await counters.get_generation_cost("NOPE")
    assert (no.value.status, no.value.code) == (0, "not_found")
    for tier in (7, "gold", True, "a\nb"):
        with pytest.raises(InvalidRequest, match=r"Unknown tier .*; known tiers: 1 ") as bad:
            await counters.get_generation_cost("NEW_IMAGE", user_tier=tier)
        assert (bad.value.status, bad.value.code) == (0, "invalid_request")
        assert not isinstance(bad.value, KeyError) and bad.value.detail.isprintable()
    xp_utils.configure(counters)
    with pytest.raises(NotFound):
        await xp_utils.get_generation_cost("NOPE")

    def sync_costs() -> None:
        with CountersClient(live_url, service_key=SERVICE_KEY) as client:
            with pytest.raises(NotFound):
                client.get_generation_cost("NOPE")
            with pytest.raises(InvalidRequest):
                client.get_generation_cost("NEW_IMAGE", user_tier=7)

    await asyncio.to_thread(sync_costs)


async def test_a_target_not_a_pair_is_a_type_error_naming_the_shape() -> None:
    """Reviewer helper-63: the JS client's ``{"type": ..., "id": ...}`` raised ``KeyError: 1``.
    The Python client takes one shape, a ``(target_type, target_id)`` pair, and says so
    before sending anything; the fail-open award lets the ``TypeError`` through."""
    requests: list[bytes] = []
    async with (
        raw_server(dripping("body", requests)) as url,
        AsyncCountersClient(url, service_key="k", deadline=0.5, timeout=0.5) as client,
    ):
        for target in ({"type": "character", "id": "x"}, ("character",), "character", 5):
            with pytest.raises(TypeError, match=r"a \(target_type, target_id\) pair such as"):
                await client.award_exp_with_limits("u1", "character_liked", target)  # type: ignore[arg-type]
        award = client.award("character_liked", user_id="u1", target=["character", "c1"])  # type: ignore[arg-type]
        with pytest.raises(Unavailable):  # a list of two is a pair: sent
            await award
    assert len(requests) == 1


@pytest.mark.parametrize("has_xp", [True, False])
@pytest.mark.parametrize("balance", [0, 5, 700])
@pytest.mark.parametrize("required", [12, 720, 1500])
@pytest.mark.parametrize("tier", [None, "Pixel Rookie", "Arcade Artist", "Game Master"])
def test_format_xp_guidance_message_says_what_the_service_says(
    has_xp: bool, balance: int, required: int, tier: str | None
) -> None:
    ours = format_xp_guidance_message(has_xp, balance, required, tier)
    theirs = server_guidance.format_xp_guidance_message(has_xp, balance, required, tier)
    assert ours == theirs


def test_the_seed_example_guidance() -> None:
    assert format_xp_guidance_message(False, 5, 12, "Pixel Rookie") == (
        "⚡ You need 7 more XP credits. 💎 Upgrade your tier or wait for your monthly XP refresh "
        "to continue creating. 🎯 Recommended: Arcade Artist (A$20/month) gives you 800 XP "
        "monthly!"
    )


def test_the_sync_client(live_url: str, redis_url: str) -> None:
    user = new_user()
    with CountersClient(live_url, service_key=SERVICE_KEY) as client:
        client.set_subscription(user, "pixel_rookie")
        hold = client.hold("NEW_IMAGE", user_id=user)
        capture = client.capture(hold.hold_id, 10, user_id=user)
        assert (capture.xp_captured, capture.xp_released) == (10, 2)
        assert client.award_exp_with_limits(user, "daily_chat") is not None
        assert client.award_exp_with_limits(user, "daily_chat") is None
        assert client.check_xp_availability(user, "NEW_IMAGE")["xp_balance"] == 590
        assert client.get_generation_cost("NEW_IMAGE") == 12


def example_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("counters_example_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_apps_tier_gate_answers_the_seeds_402(
    counters: AsyncCountersClient,
) -> None:
    app = example_module().create_example_app(counters)
    user = new_user()
    await counters.set_subscription(user, "pixel_rookie")
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://example") as http:
        ok = await http.post("/generate/NEW_IMAGE", headers={"X-User-Id": user})
        assert ok.status_code == 200
        assert ok.json() == {
            "generated": "NEW_IMAGE", "xp_required": 12, "xp_debited": 12, "xp_balance": 588,
        }  # fmt: skip
        refused = await http.post("/generate/NEW_VIDEO", headers={"X-User-Id": user})
        assert refused.status_code == 402
        assert refused.json() == {
            "error": "insufficient_xp",
            "message": "NEW_VIDEO is not included in Pixel Rookie.",
            "guidance": "🔒 NEW_VIDEO is not included in Pixel Rookie. 💎 Upgrade your tier to "
            "unlock it. 🎯 Recommended: Arcade Artist (A$20/month) gives you 800 XP monthly!",
            "subscription_url": "/subscriptions",
            "recommended_tier": {
                "tier_name": "arcade_artist",
                "tier_display_name": "Arcade Artist",
                "tier_level": 2,
                "monthly_xp_allocation": 800,
                "monthly_price_aud": 20,
            },
        }
        chat = await http.post("/chat", headers={"X-User-Id": user})
        assert chat.json() == {"reply": "hello!", "exp_added": 20}
        for path in ("/chat", "/generate/NEW_IMAGE"):  # no user: a 401, not a 500
            anonymous = await http.post(path)
            assert anonymous.status_code == 401, anonymous.text


class DebitAs(httpx2.AsyncBaseTransport):
    """Forwards every request to the live service, but a debit as ``user`` (another user, in the
    state the acting user's may have reached after the gate's check), or, with ``user`` None,
    answers it with no answer at all (a refused connection)."""

    def __init__(self, user: str | None) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.user = user

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/api/v1/xp/debit":
            if self.user is None:
                raise httpx2.ConnectError("refused", request=request)
            request.headers["X-User-Id"] = self.user
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_the_example_app_never_answers_500_for_the_clients_exceptions(
    live_url: str, counters: AsyncCountersClient
) -> None:
    """Reviewer helper-63: ``POST /chat`` as ``X-User-Id: system`` was a plain 500 (the
    ``InvalidId`` unhandled), and so was ``/generate`` when the debit after the gate's check
    raised. Now: 422 with a JSON detail for the caller's bad id, the service's own 402 or 403
    body for a debit refused after the gate (the balance or tier changed in between), 503 when
    the service cannot be reached."""
    acting, short, untiered = new_user(), new_user(), new_user()
    for user in (acting, short):
        await counters.set_subscription(user, "arcade_artist")  # 800 XP
    for _ in range(5):
        await counters.debit("IMAGE_TO_VIDEO", user_id=short)  # 150 each: 50 left
    module = example_module()

    async def post(path: str, user: str, debit_as: str | None = "") -> httpx2.Response:
        transport = None if debit_as == "" else DebitAs(debit_as)
        async with AsyncCountersClient(
            live_url, service_key=SERVICE_KEY, transport=transport, backoff=0.01
        ) as client:
            app = httpx2.ASGITransport(app=module.create_example_app(client))
            async with httpx2.AsyncClient(transport=app, base_url="http://example") as http:
                return await http.post(path, headers={"X-User-Id": user})

    for bad in ("system", "service:1", "a b"):
        chat = await post("/chat", bad)
        assert chat.status_code == 422, chat.text
        assert chat.json()["code"] == "invalid_request"
        assert "is not a user_id the service accepts" in chat.json()["detail"]
        generate = await post("/generate/NEW_IMAGE", bad)  # the gate stays shut: its 402
        assert generate.status_code == 402, generate.text
    insufficient = await post("/generate/IMAGE_TO_VIDEO", acting, debit_as=short)
    assert insufficient.status_code == 402, insufficient.text
    body = insufficient.json()
    assert (body["error"], body["code"], body["xp_balance"], body["xp_deficit"]) == (
        "insufficient_xp", "insufficient_xp", 50, 100,
    )  # fmt: skip
    assert body["guidance"] and body["subscription_url"] == "/subscriptions"
    tier = await post("/generate/IMAGE_TO_VIDEO", acting, debit_as=untiered)
    assert tier.status_code == 403, tier.text
    assert (tier.json()["error"], tier.json()["code"]) == ("tier_required", "tier_required")
    down = await post("/generate/IMAGE_TO_VIDEO", acting, debit_as=None)
    assert down.status_code == 503, down.text
    assert down.json()["code"] == "unavailable"
    assert (await counters.balance(acting)).xp_balance == 800  # nothing was debited


def test_sync_refunds_and_limits(live_url: str, redis_url: str) -> None:
    user = new_user()
    with CountersClient(live_url, service_key=SERVICE_KEY) as client:
        client.set_subscription(user, "pixel_rookie")
        debit = client.debit("EDIT_IMAGE", user_id=user)
        refund = client.refund(debit.transaction_id, user_id=user)
        assert (refund.xp_refunded, refund.xp_balance) == (9, 600)
        client.award("daily_chat", user_id=user)
        limits = client.limits(user)
        assert (limits.daily_exp_gained, limits.daily_action_counts) == (20, {"daily_chat": 1})
        assert client.check_user_xp_for_generation(user, "NEW_IMAGE")["has_sufficient_xp"]


BAD_IDS = ["", "a\nb", "x" * 300, "alice\n", " alice", "a\x1b[31m"]


async def test_an_invalid_user_id_raises_before_sending_and_is_never_logged_raw(
    counters: AsyncCountersClient, caplog: pytest.LogCaptureFixture
) -> None:
    """``award_exp_with_limits("a\\nb", ...)`` answered None, as if the service were down, and
    logged the raw newline: a caller's bug looked like an outage and forged a log line."""
    caplog.set_level(logging.DEBUG, logger="counters_client")
    async with AsyncCountersClient(f"http://127.0.0.1:{free_port()}", service_key="k") as down:
        for client in (counters, down):  # refused before sending: the same with nothing there
            for bad in BAD_IDS:
                with pytest.raises(InvalidId, match="is not a user_id") as raised:
                    await client.award_exp_with_limits(bad, "daily_chat")
                assert isinstance(raised.value, ValueError) and raised.value.status == 0
                check = await client.check_xp_availability(bad, "NEW_IMAGE")  # never raises
                assert (check["has_sufficient_xp"], check["code"]) == (False, "invalid_request")
                with pytest.raises(InvalidId):
                    await client.debit("NEW_IMAGE", user_id=bad)
            with pytest.raises(InvalidId, match="is not a target_id"):
                await client.award_exp_with_limits(
                    new_user(), "character_liked", ("character", "a\nb")
                )
    with CountersClient(counters.options.base_url, service_key=SERVICE_KEY) as sync_client:
        for bad in BAD_IDS:
            with pytest.raises(InvalidId):
                sync_client.award_exp_with_limits(bad, "daily_chat")
    # A refusal the service gives (an unknown action with a newline) is logged escaped.
    assert await counters.award_exp_with_limits(new_user(), "daily\nchat\x1b[31m") is None
    lines = [record.getMessage() for record in caplog.records]
    assert any("no EXP for daily\\nchat\\x1b[31m" in line for line in lines), lines
    assert all(line.isprintable() for line in lines), lines


async def test_a_reserved_actor_raises_invalid_id_before_sending() -> None:
    """``award_exp_with_limits("system", ...)`` answered None (the service's 422 swallowed as
    an outage); ids the service refuses raise ``InvalidId``, reserved actors' too."""
    async with AsyncCountersClient(f"http://127.0.0.1:{free_port()}", service_key="k") as down:
        for reserved in ("system", "import", "reconcile", "service:1", "user:x"):
            with pytest.raises(InvalidId, match="is not a user_id"):
                await down.award_exp_with_limits(reserved, "daily_chat")
            with pytest.raises(InvalidId):
                await down.debit("NEW_IMAGE", user_id=reserved)
            with pytest.raises(InvalidId):
                await down.grant(reserved, 5, "gift")
            with pytest.raises(InvalidId):
                await down.set_subscription(reserved, "pixel_rookie")
        # ids are case-sensitive: "SYSTEM" is a user (here: fails open, the service is down)
        assert await down.award_exp_with_limits("SYSTEM", "daily_chat") is None


BAD_INTEGER_TARGET_IDS = [-5, -1, 2**63, 10**5000, True, False, 1.0, None]


async def test_an_integer_target_id_the_service_refuses_raises_before_sending(
    counters: AsyncCountersClient,
) -> None:
    """Reviewer helper-63: ``("character", -5)``, ``2**63`` and ``True`` were sent, the service
    answered 422 and the fail-open award returned None with a debug line: an award lost in
    silence. They raise ``InvalidId`` before sending now, as a bad text id does; 0 and
    2**63 - 1, the service's bounds, are sent and awarded."""
    requests: list[bytes] = []
    async with (
        raw_server(dripping("body", requests)) as url,
        AsyncCountersClient(url, service_key="k", deadline=0.5, timeout=0.5) as client,
    ):
        for bad in BAD_INTEGER_TARGET_IDS:
            target = ("character", bad)
            with pytest.raises(InvalidId, match="is not a target_id the service accepts") as no:
                await client.award_exp_with_limits("pyu1", "character_liked", target)  # type: ignore[arg-type]
            assert no.value.status == 0 and no.value.detail.isprintable()
            assert "0 to 9223372036854775807" in no.value.detail
            with pytest.raises(InvalidId):
                await client.award("character_liked", user_id="pyu1", target=target)  # type: ignore[arg-type]

        def sync_award() -> None:
            with CountersClient(url, service_key="k") as sync_client, pytest.raises(InvalidId):
                sync_client.award_exp_with_limits("pyu1", "character_liked", ("character", -5))

        await asyncio.to_thread(sync_award)
    assert requests == []
    for bound in (0, 2**63 - 1):
        user = new_user()
        created = await counters.award("create_persona", user_id=user, target=("persona", bound))
        assert created.exp_added > 0


def test_the_clients_id_shapes_are_the_services() -> None:
    assert whole(_calls.USER_ID.pattern) == ids.USER_ID_PATTERN
    assert whole(_calls.TARGET_ID.pattern) == ids.TARGET_ID_PATTERN
    (integer, _text) = typing.get_args(TargetId)
    limits = integer.__metadata__[0]
    assert (limits.ge, limits.le) == (0, _calls.MAX_TARGET_ID)
    js = (Path(__file__).resolve().parents[2] / "clients/js/src/client.js").read_text()
    assert f"const TARGET_ID = /^{_calls.TARGET_ID.pattern}$/;" in js
