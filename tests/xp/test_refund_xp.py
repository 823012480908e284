"""lua/refund_xp.lua through POST /api/v1/xp/refunds: once, to where the XP came from."""

from __future__ import annotations

import httpx2
import pytest
import redis

from counters.clock import ManualClock
from tests.support.core import NOON, service_headers, user_headers
from tests.support.xp import balance, debit, events, grant, hold, kinds, subscribe

pytestmark = pytest.mark.anyio


async def refund(
    client: httpx2.AsyncClient, user: str, txid: str, **headers: str
) -> httpx2.Response:
    return await client.post(
        "/api/v1/xp/refunds",
        json={"transaction_id": txid},
        headers=service_headers(user, **headers),
    )


async def rookie_debit(client: httpx2.AsyncClient, user: str = "u1") -> str:
    await subscribe(client, user, "pixel_rookie")
    txid: str = (await debit(client, user, "NEW_IMAGE")).json()["transaction_id"]
    return txid


async def test_a_refund_returns_the_xp_once(
    client: httpx2.AsyncClient, redis_client: redis.Redis
) -> None:
    txid = await rookie_debit(client)
    response = await refund(client, "u1", txid)
    assert response.status_code == 200
    assert response.json() == {
        "transaction_id": txid,
        "xp_refunded": 12,
        "xp_debited": 12,
        "xp_balance": 600,
    }
    event = events(redis_client, "u1")[-1]
    assert (event["kind"], event["action"], event["amount"], event["target"]) == (
        "xp_refund",
        "NEW_IMAGE",
        "12",
        txid,
    )
    before = kinds(redis_client, "u1")
    again = await refund(client, "u1", txid)
    assert again.status_code == 409
    assert again.json() == {
        "detail": f"Transaction {txid} was already refunded",
        "code": "already_settled",
    }
    assert kinds(redis_client, "u1") == before
    assert (await balance(client, "u1"))["xp_balance"] == 600


async def test_a_captured_hold_refunds_what_was_captured(client: httpx2.AsyncClient) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    hold_id = (await hold(client, "u1", "NEW_IMAGE_REF")).json()["hold_id"]
    await client.post(
        f"/api/v1/xp/holds/{hold_id}/capture", json={"xp_amount": 10}, headers=user_headers("u1")
    )
    assert (await balance(client, "u1"))["xp_balance"] == 590
    response = await refund(client, "u1", hold_id)
    assert (response.json()["xp_refunded"], response.json()["xp_balance"]) == (10, 600)


async def test_holds_that_were_not_captured_cannot_be_refunded(
    client: httpx2.AsyncClient, clock: ManualClock
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    open_hold = (await hold(client, "u1", "EDIT_IMAGE")).json()["hold_id"]
    released = (await hold(client, "u1", "EDIT_IMAGE")).json()["hold_id"]
    await client.post(f"/api/v1/xp/holds/{released}/release", headers=user_headers("u1"))
    for hold_id in (open_hold, released):
        response = await refund(client, "u1", hold_id)
        assert response.status_code == 409
        assert "was not captured" in response.json()["detail"]
    clock.at = NOON + 1000  # the open hold expires
    assert (await refund(client, "u1", open_hold)).status_code == 409
    assert (await balance(client, "u1"))["xp_balance"] == 600


async def test_unknown_and_foreign_transactions(client: httpx2.AsyncClient) -> None:
    txid = await rookie_debit(client, "u1")
    await subscribe(client, "u2", "pixel_rookie")
    for user, tx in (("u1", "xd_000000000000000000000000"), ("u2", txid)):
        response = await refund(client, user, tx)
        assert response.status_code == 404
        assert response.json() == {"detail": f"Unknown transaction {tx}", "code": "not_found"}
    assert (await balance(client, "u2"))["xp_balance"] == 600
    colon = await refund(client, "u1", "a:b")
    assert colon.status_code == 422
    assert "transaction_id" in colon.json()["detail"]


async def test_users_cannot_refund_themselves(client: httpx2.AsyncClient) -> None:
    txid = await rookie_debit(client)
    response = await client.post(
        "/api/v1/xp/refunds", json={"transaction_id": txid}, headers=user_headers("u1")
    )
    assert response.status_code == 403
    assert (await balance(client, "u1"))["xp_balance"] == 588


async def test_refund_replay_with_the_same_key(client: httpx2.AsyncClient) -> None:
    txid = await rookie_debit(client)
    first = await refund(client, "u1", txid, **{"Idempotency-Key": "r1"})
    again = await refund(client, "u1", txid, **{"Idempotency-Key": "r1"})
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await refund(client, "u1", txid, **{"Idempotency-Key": "r2"})).status_code == 409


async def test_xp_goes_back_to_the_top_up_it_came_from(client: httpx2.AsyncClient) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    grant_id = (await grant(client, "u1", 12, NOON + 86_400))["grant_id"]
    txid = (await debit(client, "u1", "NEW_IMAGE")).json()["transaction_id"]
    assert (await balance(client, "u1"))["topups"] == []  # used up, dropped
    await refund(client, "u1", txid)
    view = await balance(client, "u1")
    assert view["topups"] == [
        {"grant_id": grant_id, "xp_left": 12, "expires_at": "2026-11-22T12:00:00Z"}
    ]
    assert view["xp_allocation"] == 600


async def test_expired_credit_does_not_come_back(
    client: httpx2.AsyncClient, clock: ManualClock
) -> None:
    await subscribe(client, "u1", "pixel_rookie")
    await grant(client, "u1", 5, NOON + 3600)
    txid = (await debit(client, "u1", "NEW_IMAGE")).json()["transaction_id"]  # 5 top-up + 7
    clock.at = NOON + 30 * 86_400 + 1  # the top-up and the period have both ended
    response = await refund(client, "u1", txid)
    assert response.status_code == 200
    assert (response.json()["xp_refunded"], response.json()["xp_debited"]) == (0, 12)
    assert (await balance(client, "u1"))["xp_balance"] == 600
