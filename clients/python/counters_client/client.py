"""The clients: ``AsyncCountersClient`` (asyncio) and ``CountersClient`` (sync), each over one
pooled keep-alive ``httpx2`` client.

- Timeouts on every attempt (``timeout`` seconds, default 2) and a deadline on every call
  (``deadline`` seconds, default 3, attempts, backoff and reading the answer included): a
  stalled service, or one whose answer trickles in a byte at a time, costs a caller at most
  ``deadline`` (then ``Unavailable``). The async client bounds each attempt with
  ``asyncio.timeout``; the sync one cuts each socket wait to what is left (``_deadline``).
- Every exception of a write call carries the ``idempotency_key`` its attempts sent: a write
  whose outcome is unknown can be retried with it, and is applied at most once.
- A 2xx body that does not decode to the result raises ``BadResponse`` (a ``CountersError``),
  so the fail-open calls below stay fail-open.
- Retries (``retries``, default 2, exponential ``backoff``) when no answer came or the service
  said 502/503/504, while the deadline leaves time for another attempt. Writes are retried
  too: each write call carries one ``Idempotency-Key`` (yours, or one made for the call) on
  every attempt, so the service applies it at most once.
- Results are typed (``counters_client.types``); errors are exceptions by ``code``
  (``counters_client.errors``).
- EXP awards fail open: ``award_exp_with_limits`` answers None (and logs) when nothing was
  awarded, for a refusal or an outage, so an outage never breaks a chat: a rule's refusal at
  debug, an outage or any other error answer (a 422: the caller's mistake) at warning. It
  raises only when the client's own credentials are refused (401/403: a bad service key is no
  outage) or an id is not one the service takes (``InvalidId``). Debits
  and holds fail closed: they raise. ``check_xp_availability`` never raises: when the service
  cannot say, it answers "not sufficient" with generic guidance, as the seed's system-error
  path does.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from types import TracebackType
from typing import TypeVar

import httpx2

from counters_client._calls import (
    MIN_ATTEMPT_SECONDS,
    Budget,
    Call,
    Calls,
    Options,
    Target,
    check_dict,
    cost_on_tier,
    fails_loudly,
    fallback_check,
    headers_for,
    idempotency_key,
    log_unawarded,
    result_of,
    unreachable,
)
from counters_client._deadline import DEADLINE, read_by_deadlines
from counters_client.errors import CountersError
from counters_client.types import (
    Award,
    Balance,
    Capture,
    Cost,
    Debit,
    Grant,
    Hold,
    Limits,
    Refund,
    Release,
    Subscription,
    Tier,
    UserProgress,
    XpCheck,
    XpCheckDict,
)

T = TypeVar("T")
_LIMITS = httpx2.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=30)


def _options(
    base_url: str,
    service_key: str | None,
    token: str | None,
    timeout: float,
    retries: int,
    backoff: float,
    exp_fail_open: bool,
    deadline: float,
) -> Options:
    if (service_key is None) == (token is None):
        raise ValueError("give exactly one of service_key (a server) or token (a user's JWT)")
    if not 0 < timeout <= deadline:
        raise ValueError("timeout and deadline are seconds with 0 < timeout <= deadline")
    return Options(base_url.rstrip("/"), service_key, token, timeout, retries, backoff,
                   exp_fail_open, deadline)  # fmt: skip


class AsyncCountersClient:
    """The service for asyncio callers. ``service_key`` acts for the ``user_id`` each call
    names; ``token`` (a user's JWT) acts as that user (leave ``user_id`` out)."""

    def __init__(
        self,
        base_url: str,
        *,
        service_key: str | None = None,
        token: str | None = None,
        timeout: float = 2.0,
        retries: int = 2,
        backoff: float = 0.05,
        exp_fail_open: bool = True,
        deadline: float = 3.0,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.options = _options(base_url, service_key, token, timeout, retries, backoff,
                                exp_fail_open, deadline)  # fmt: skip
        self._http = httpx2.AsyncClient(
            base_url=self.options.base_url, timeout=timeout, limits=_LIMITS, transport=transport
        )
        self._tables: tuple[dict[str, Tier], dict[str, Cost]] | None = None

    async def __aenter__(self) -> AsyncCountersClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    async def call(self, call: Call[T]) -> T:
        """Send one call with its retries within its deadline; its typed result, or the
        exception its code names (``Unavailable`` when no answer came)."""
        key = idempotency_key(call)
        headers = headers_for(self.options, call, key)
        budget = Budget(self.options)
        attempt = 0
        while True:
            try:
                # The whole attempt, reading included, ends by the deadline: httpx2's timeout
                # is per read, and a reply that trickles in would outlast it (H2).
                async with asyncio.timeout(max(budget.left(), MIN_ATTEMPT_SECONDS)):
                    response = await self._http.request(
                        call.method, call.path, json=call.json, params=call.params,
                        headers=headers, timeout=budget.attempt_timeout(),
                    )  # fmt: skip
            except httpx2.TransportError as exc:
                pause = budget.retry_after(attempt, exc, None)
                if pause is None:
                    raise unreachable(call, key, exc) from exc
            except TimeoutError as exc:  # the deadline passed mid-attempt: no time for another
                passed = TimeoutError(f"the call's {self.options.deadline} s deadline passed")
                raise unreachable(call, key, passed) from exc
            else:
                pause = budget.retry_after(attempt, None, response.status_code)
                if pause is None:
                    return result_of(call, key, response, response.content)
            await asyncio.sleep(pause)
            attempt += 1

    # EXP -------------------------------------------------------------------------------------

    async def award(
        self,
        action: str,
        *,
        user_id: str | None = None,
        target: Target | None = None,
        idempotency_key: str | None = None,
    ) -> Award:
        """Award ``action`` (raises ``DailyLimitReached``, ``DailyCapReached``, ...)."""
        return await self.call(Calls.award(action, user_id, target, idempotency_key))

    async def award_exp_with_limits(
        self,
        user_id: str | None,
        action: str,
        target: Target | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Award | None:
        """The seed's ``award_exp_with_limits``: the award, or None when nothing was awarded
        (a limit, the cap, an outage; logged). With ``exp_fail_open=False`` it raises.
        ``target`` is a ``(target_type, target_id)`` pair such as ``("character", 123)``;
        anything else (a mapping too) is a ``TypeError``, before anything is sent."""
        try:
            return await self.award(
                action, user_id=user_id, target=target, idempotency_key=idempotency_key
            )
        except CountersError as exc:
            if not self.options.exp_fail_open or fails_loudly(exc):
                raise
            log_unawarded(action, user_id, exc)
            return None

    async def progress(self, user_id: str | None = None) -> UserProgress:
        return await self.call(Calls.progress(user_id))

    async def limits(self, user_id: str | None = None) -> Limits:
        return await self.call(Calls.limits(user_id))

    # XP ---------------------------------------------------------------------------------------

    async def check_xp(
        self, generation_type: str, *, user_id: str | None = None, include_guidance: bool = True
    ) -> XpCheck:
        """The seed's check-xp body, typed (raises on errors)."""
        return await self.call(Calls.check_xp(generation_type, user_id, include_guidance))

    async def check_xp_availability(
        self, user_id: str | None, generation_type: str, include_guidance: bool = True
    ) -> XpCheckDict:
        """The seed's ``check_xp_availability`` (a dict, as its middleware reads it). Never
        raises for the service's sake: unreachable or failing, it answers not sufficient with
        generic guidance."""
        try:
            return check_dict(await self.check_xp(generation_type, user_id=user_id,
                                                  include_guidance=include_guidance))  # fmt: skip
        except CountersError as exc:
            return fallback_check(generation_type, user_id, exc, self._tables)

    async def check_user_xp_for_generation(
        self, user_id: str | None, generation_type: str
    ) -> XpCheckDict:
        """The seed's simple check (``xp_utils``): ``check_xp_availability`` without guidance."""
        return await self.check_xp_availability(user_id, generation_type, include_guidance=False)

    async def debit(
        self,
        generation_type: str,
        *,
        user_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Debit:
        """Debit a generation's cost; fails closed (``InsufficientXp``, ``TierRequired``, ...)."""
        debit: Debit = await self.call(
            Calls.charge(generation_type, user_id, idempotency_key, hold=False)
        )
        return debit

    async def hold(
        self,
        generation_type: str,
        *,
        user_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Hold:
        """Reserve a generation's cost until captured, released or expired; fails closed."""
        hold: Hold = await self.call(
            Calls.charge(generation_type, user_id, idempotency_key, hold=True)
        )
        return hold

    async def capture(
        self,
        hold_id: str,
        xp_amount: int | None = None,
        *,
        user_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Capture:
        return await self.call(Calls.capture(hold_id, xp_amount, user_id, idempotency_key))

    async def release(
        self, hold_id: str, *, user_id: str | None = None, idempotency_key: str | None = None
    ) -> Release:
        return await self.call(Calls.release(hold_id, user_id, idempotency_key))

    async def refund(
        self, transaction_id: str, *, user_id: str, idempotency_key: str | None = None
    ) -> Refund:
        return await self.call(Calls.refund(transaction_id, user_id, idempotency_key))

    async def grant(
        self,
        user_id: str,
        xp_amount: int,
        reason: str,
        expires_at: datetime | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Grant:
        return await self.call(Calls.grant(user_id, xp_amount, reason, expires_at,
                                           idempotency_key))  # fmt: skip

    async def set_subscription(self, user_id: str, tier: str) -> Subscription:
        return await self.call(Calls.subscribe(user_id, tier))

    async def balance(self, user_id: str | None = None) -> Balance:
        return await self.call(Calls.balance(user_id))

    async def tables(self) -> tuple[dict[str, Tier], dict[str, Cost]]:
        """The tiers and costs tables (fetched once per client)."""
        if self._tables is None:
            self._tables = (await self.call(Calls.tiers()), await self.call(Calls.costs()))
        return self._tables

    async def get_generation_cost(
        self, generation_type: str, user_tier: int | str | None = None
    ) -> int:
        """The seed's ``get_generation_cost``: XP one generation costs on a tier (level, name or
        display name). ``NotFound`` for an unknown generation type, ``InvalidRequest`` for an
        unknown tier (status 0: decided from the tables, as the service decides)."""
        tiers, costs = await self.tables()
        return cost_on_tier(tiers, costs, generation_type, user_tier)


class CountersClient:
    """The same service for synchronous callers (same options and methods, without await)."""

    def __init__(
        self,
        base_url: str,
        *,
        service_key: str | None = None,
        token: str | None = None,
        timeout: float = 2.0,
        retries: int = 2,
        backoff: float = 0.05,
        exp_fail_open: bool = True,
        deadline: float = 3.0,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        self.options = _options(base_url, service_key, token, timeout, retries, backoff,
                                exp_fail_open, deadline)  # fmt: skip
        self._http = httpx2.Client(
            base_url=self.options.base_url, timeout=timeout, limits=_LIMITS, transport=transport
        )
        read_by_deadlines(self._http)
        self._tables: tuple[dict[str, Tier], dict[str, Cost]] | None = None

    def __enter__(self) -> CountersClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(self, call: Call[T]) -> T:
        """As ``AsyncCountersClient.call``."""
        key = idempotency_key(call)
        headers = headers_for(self.options, call, key)
        budget = Budget(self.options)
        in_call = DEADLINE.set(budget.end)  # every socket wait of this thread ends by it (H2)
        try:
            attempt = 0
            while True:
                try:
                    response, content = self._attempt(call, headers, budget)
                except httpx2.TransportError as exc:
                    pause = budget.retry_after(attempt, exc, None)
                    if pause is None:
                        raise unreachable(call, key, exc) from exc
                else:
                    pause = budget.retry_after(attempt, None, response.status_code)
                    if pause is None:
                        return result_of(call, key, response, content)
                time.sleep(pause)
                attempt += 1
        finally:
            DEADLINE.reset(in_call)

    def _attempt(
        self, call: Call[T], headers: dict[str, str], budget: Budget
    ) -> tuple[httpx2.Response, bytes]:
        """One attempt: the answer and its whole body, streamed so that the deadline is checked
        between the body's chunks too (a transport of the caller's reads without
        ``DeadlineBackend``); raises ``httpx2.TransportError`` (``ReadTimeout`` once the
        deadline passed)."""
        request = self._http.build_request(
            call.method, call.path, json=call.json, params=call.params, headers=headers,
            timeout=budget.attempt_timeout(),
        )  # fmt: skip
        response = self._http.send(request, stream=True)
        try:
            chunks = []
            for chunk in response.iter_bytes():
                budget.check(request)
                chunks.append(chunk)
        finally:
            response.close()
        return response, b"".join(chunks)

    def award(
        self,
        action: str,
        *,
        user_id: str | None = None,
        target: Target | None = None,
        idempotency_key: str | None = None,
    ) -> Award:
        return self.call(Calls.award(action, user_id, target, idempotency_key))

    def award_exp_with_limits(
        self,
        user_id: str | None,
        action: str,
        target: Target | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Award | None:
        """As ``AsyncCountersClient.award_exp_with_limits``: None (logged) when not awarded."""
        try:
            return self.award(
                action, user_id=user_id, target=target, idempotency_key=idempotency_key
            )
        except CountersError as exc:
            if not self.options.exp_fail_open or fails_loudly(exc):
                raise
            log_unawarded(action, user_id, exc)
            return None

    def progress(self, user_id: str | None = None) -> UserProgress:
        return self.call(Calls.progress(user_id))

    def limits(self, user_id: str | None = None) -> Limits:
        return self.call(Calls.limits(user_id))

    def check_xp(
        self, generation_type: str, *, user_id: str | None = None, include_guidance: bool = True
    ) -> XpCheck:
        return self.call(Calls.check_xp(generation_type, user_id, include_guidance))

    def check_xp_availability(
        self, user_id: str | None, generation_type: str, include_guidance: bool = True
    ) -> XpCheckDict:
        """As ``AsyncCountersClient.check_xp_availability``: never raises."""
        try:
            return check_dict(self.check_xp(generation_type, user_id=user_id,
                                            include_guidance=include_guidance))  # fmt: skip
        except CountersError as exc:
            return fallback_check(generation_type, user_id, exc, self._tables)

    def check_user_xp_for_generation(
        self, user_id: str | None, generation_type: str
    ) -> XpCheckDict:
        return self.check_xp_availability(user_id, generation_type, include_guidance=False)

    def debit(
        self,
        generation_type: str,
        *,
        user_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Debit:
        debit: Debit = self.call(Calls.charge(generation_type, user_id, idempotency_key, False))
        return debit

    def hold(
        self,
        generation_type: str,
        *,
        user_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Hold:
        hold: Hold = self.call(Calls.charge(generation_type, user_id, idempotency_key, True))
        return hold

    def capture(
        self,
        hold_id: str,
        xp_amount: int | None = None,
        *,
        user_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Capture:
        return self.call(Calls.capture(hold_id, xp_amount, user_id, idempotency_key))

    def release(
        self, hold_id: str, *, user_id: str | None = None, idempotency_key: str | None = None
    ) -> Release:
        return self.call(Calls.release(hold_id, user_id, idempotency_key))

    def grant(
        self,
        user_id: str,
        xp_amount: int,
        reason: str,
        expires_at: datetime | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Grant:
        return self.call(Calls.grant(user_id, xp_amount, reason, expires_at, idempotency_key))

    def refund(
        self, transaction_id: str, *, user_id: str, idempotency_key: str | None = None
    ) -> Refund:
        return self.call(Calls.refund(transaction_id, user_id, idempotency_key))

    def set_subscription(self, user_id: str, tier: str) -> Subscription:
        return self.call(Calls.subscribe(user_id, tier))

    def balance(self, user_id: str | None = None) -> Balance:
        return self.call(Calls.balance(user_id))

    def get_generation_cost(self, generation_type: str, user_tier: int | str | None = None) -> int:
        """As ``AsyncCountersClient.get_generation_cost``."""
        if self._tables is None:
            self._tables = (self.call(Calls.tiers()), self.call(Calls.costs()))
        return cost_on_tier(*self._tables, generation_type, user_tier)
