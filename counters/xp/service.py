"""XP credits: subscriptions, top-ups, debits, holds (reserve, capture, release) and refunds.

Each operation is one Lua script over the user's whole XP state (``lua/lib/xp_state.lua``), so a
balance never goes below zero however many calls race, and renewals and expiries that came due
are applied in the same atomic step, on the user's next touch. Too little XP, or a tier that
does not allow a generation, is an outcome, not an error.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

import msgspec

from counters.auth import is_service_caller
from counters.clock import Clock, iso_utc, unix_seconds
from counters.errors import ForbiddenError, InvalidRequest, NotFound, shown
from counters.ids import SYSTEM_ACTOR, TRANSACTION_ID, is_whole, random_hex
from counters.metrics import XP_OUTCOMES
from counters.redis.calls import (
    CancelSubscription,
    CaptureHold,
    DebitXp,
    GrantXp,
    ReadXp,
    RefundXp,
    ReleaseHold,
    SetSubscription,
    UserWriteKeys,
    XpCall,
    XpTxKeys,
)
from counters.redis.codes import MAX_TOTAL, Hydration, XpOutcome
from counters.redis.hydration import Hydrator, hydrate_and_run, run_hydrated
from counters.redis.idempotency import (
    Idempotency,
    claim_callers_key,
    reject_reused_key,
    script_args,
)
from counters.redis.keys import UserKeys
from counters.redis.pipelining import RedisRefusal
from counters.redis.scripts import Scripts
from counters.rules.metrics import count_shadow_refusal
from counters.rules.xp import Tier, XpRules
from counters.xp.guidance import XpCheck, evaluate, require_generation_type
from counters.xp.packed import DebitCommands
from counters.xp.state import (
    XpReply,
    XpState,
    decode_reply,
    expiry_problem,
    period_start_problem,
)

# How long a debit or capture can be refunded (and a hold's record is kept).
TRANSACTION_TTL = 30 * 86_400

# A hold's id records the kind of credential that created it (issue #10, item 8): only the same
# kind may capture or release it. Ids are made here, so the prefix cannot be chosen by a caller.
_HOLD_PREFIX = {True: "xhs_", False: "xhu_"}  # by is_service
_CREDENTIAL = {True: "a service key", False: "a user token"}
_NEEDS_HYDRATION = Hydration.NEEDS_HYDRATION


class XpChange(msgspec.Struct, frozen=True, gc=False):
    """The outcome of one XP write and the state after it.

    ``amount`` is the XP the operation moved (debited, held, captured, returned, granted, or the
    allocation added), ``ref`` its id (or the kind of subscription change), ``extra`` the second
    number of the script's reply. ``check`` tells a refused debit or hold what to do next;
    ``detail`` says why any other refusal happened.
    """

    outcome: XpOutcome
    amount: int
    ref: str
    expires_at: int
    extra: int
    replayed: bool
    state: XpState
    check: XpCheck | None = None
    detail: str | None = None
    shadow_refused: str | None = None  # "tier_gate": a gate in shadow mode would have refused

    @property
    def error(self) -> str:
        """The seed's ``error`` of a refused debit or hold."""
        return "insufficient_xp" if self.outcome is XpOutcome.INSUFFICIENT else "tier_required"


class XpService:
    def __init__(
        self,
        rules: XpRules,
        version: str,
        scripts: Scripts,
        hydrator: Hydrator,
        clock: Clock,
        *,
        buckets: int,
        idempotency_ttl: int,
        hold_ttl: int,
    ) -> None:
        self._scripts = scripts
        self._hydrator = hydrator
        self._clock = clock
        self._buckets = buckets
        self._idempotency_ttl = idempotency_ttl
        self.hold_ttl = hold_ttl
        self.use_rules(rules, version)

    def use_rules(self, rules: XpRules, version: str) -> None:
        """Serve ``rules`` from the next request on (a reload); users' states are kept.

        ``version`` is the rules version the scripts were compiled with (``Scripts.use_rules``;
        the tiers and costs are in their source, counters/rules/compiled.py): every call names
        it. A tier whose gate is in shadow mode is compiled with every generation type's cost,
        so debit_xp charges what its gate would refuse; ``charge`` reports it as
        ``shadow_refused``. Swapped in one step with the rules.
        """
        self.rules, self._version = rules, version
        # by (rules version, may_create, FCALL or EVALSHA: Scripts.functions)
        self._packers: dict[tuple[str, str, bool | None], DebitCommands] = {}

    def tier(self, name: str) -> Tier:
        """The tier called ``name``, or ``InvalidRequest`` listing the known ones."""
        tier = self.rules.tier(name)
        if tier is None:
            raise InvalidRequest(
                f"Unknown tier '{shown(name)}'; known tiers: {', '.join(self._names())}"
            )
        return tier

    def _names(self) -> list[str]:
        return [tier.name for tier in self.rules.tiers]

    def _common(
        self, user_id: str, actor: str, idem: Idempotency | None, now_ms: int
    ) -> dict[str, Any]:
        """The fields of ``XpCall`` (the ARGV every XP script starts with) for one call."""
        fingerprint, idem_key = script_args(idem)
        return {
            "user_id": user_id, "now_ms": now_ms, "fingerprint": fingerprint,
            "idem_ttl": self._idempotency_ttl, "idem_key": idem_key, "actor": actor,
            "may_create": self._hydrator.may_create_code, "rules": self._version,
        }  # fmt: skip

    def _keys(
        self, user_id: str, idem: Idempotency | None, transaction_id: str | None = None
    ) -> UserWriteKeys:
        """An XP script's keys: the user's, the request's record, the transaction's if any."""
        user = UserKeys.of(user_id, self._buckets)
        idem_record = user.idempotency(idem.caller, idem.key) if idem else user.unused
        if transaction_id is not None:
            transaction = user.xp_transaction(transaction_id)
            return XpTxKeys(user.user, user.events, idem_record, user.meta, transaction)
        return UserWriteKeys(user=user.user, events=user.events, idem=idem_record, meta=user.meta)

    def packed_charge(
        self, user_id: str, actor: str, generation_type: str, hold: bool,
        idem: Idempotency | None, now: float, transaction_id: str,
    ) -> bytes:  # fmt: skip
        """The command ``_charge_call`` (with ``_keys``) would send, packed from segments built
        once per rules version and may_create (``counters.xp.packed``)."""
        may_create = self._hydrator.may_create_code
        key = (self._version, may_create, self._scripts.functions)  # FCALL or EVALSHA too
        packer = self._packers.get(key)
        if packer is None:
            sample = self._charge_call("sample", "", "", False, None, 0.0, "")
            keys = self._keys("sample", None, "")
            packer = self._packers[key] = DebitCommands(
                self._scripts.command_head(keys, sample),
                buckets=self._buckets, rules_version=self._version, may_create=may_create,
                idempotency_ttl=self._idempotency_ttl, max_holds=self.rules.max_active_holds,
                record_ttl=TRANSACTION_TTL,
            )  # fmt: skip
        return packer.pack(
            user_id, actor, generation_type, transaction_id, hold, int(now * 1000),
            int(now) + self.hold_ttl,
            None if idem is None else (
                UserKeys.of(user_id, self._buckets).idempotency(idem.caller, idem.key),
                idem.fingerprint, idem.key,
            ),
        )  # fmt: skip

    async def _run(
        self, call: XpCall, idem: Idempotency | None, transaction_id: str | None = None
    ) -> XpReply:
        keys = self._keys(call.user_id, idem, transaction_id)
        reply = await run_hydrated(self._hydrator, self._scripts, call.user_id, keys, call)
        reject_reused_key(reply[0])
        return decode_reply(call.SCRIPT, reply)

    def _change(self, reply: XpReply, detail: str | None = None) -> XpChange:
        if reply.outcome is XpOutcome.TOTAL_LIMIT:  # any script that adds XP (lib/bounds.lua)
            detail = (
                f"The XP balance ({reply.state.balance}) and held XP ({reply.state.held}) would"
                f" pass {MAX_TOTAL:,}; nothing was changed"
            )
        return XpChange(
            reply.outcome,
            reply.amount,
            reply.ref,
            reply.expires_at,
            reply.extra,
            reply.replayed,
            reply.state,
            None,
            None if reply.outcome is XpOutcome.DONE else detail,
        )  # fmt: skip (positional, in XpChange's order: check, then detail)

    async def state(self, user_id: str) -> XpState:
        """The user's XP state, after the renewals and expiries that came due."""
        now_ms = int(self._clock.now() * 1000)
        return (
            await self._run(ReadXp(**self._common(user_id, SYSTEM_ACTOR, None, now_ms)), None)
        ).state

    async def check(self, user_id: str, generation_type: str, include_guidance: bool) -> XpCheck:
        """Whether the user can run one generation now, and what to tell them."""
        require_generation_type(self.rules, generation_type)
        state = await self.state(user_id)
        return evaluate(self.rules, generation_type, state.tier, state.balance, include_guidance)

    async def check_xp_availability(
        self, user_id: str, generation_type: str, include_guidance: bool = False
    ) -> dict[str, Any]:
        """The seed's ``check_xp_availability``: the check-xp body as a dict."""
        body: dict[str, Any] = msgspec.to_builtins(
            await self.check(user_id, generation_type, include_guidance)
        )
        return body

    async def charge(
        self, user_id: str, actor: str, generation_type: str, hold: bool, idem: Idempotency | None
    ) -> XpChange:
        """Debit one generation's XP (``hold=False``) or reserve it until captured or expired."""
        if generation_type not in self.rules.costs:
            require_generation_type(self.rules, generation_type)  # NotFound, listing the types
        now = self._clock.now()
        prefix = _HOLD_PREFIX[is_service_caller(actor)] if hold else "xd_"
        transaction_id = prefix + random_hex(12)  # 24 hex digits
        send = self._scripts.send_packed
        if send is None:  # a cluster, or no auto-pipeline: the typed call
            call = self._charge_call(
                user_id, actor, generation_type, hold, idem, now, transaction_id
            )
            reply = await self._run(call, idem, transaction_id)
        else:  # the hot lane: the same command, packed from the day's segments (one await)
            try:
                raw = await send(
                    self.packed_charge(
                        user_id, actor, generation_type, hold, idem, now, transaction_id
                    )
                )
            except RedisRefusal as exc:  # NOSCRIPT (a restarted Redis): the typed call's recovery
                self._packers.clear()  # and the packers built again from the typed command now
                call = self._charge_call(
                    user_id, actor, generation_type, hold, idem, now, transaction_id
                )
                keys = self._keys(user_id, idem, transaction_id)
                raw = await self._scripts.refused(call, self._scripts.command(keys, call), exc)
            if raw[0] == _NEEDS_HYDRATION:  # Redis lost the user: hydrate, run it again
                call = self._charge_call(
                    user_id, actor, generation_type, hold, idem, now, transaction_id
                )
                keys = self._keys(user_id, idem, transaction_id)
                raw = await hydrate_and_run(self._hydrator, self._scripts, user_id, keys, call)
            reject_reused_key(raw[0])
            reply = decode_reply(DebitXp.SCRIPT, raw)
        if not reply.replayed:
            XP_OUTCOMES.child(generation_type, _charge_label(reply.outcome, hold)).inc()
        change = self._change(
            reply,
            None  # the text only when it is shown (not on the hot lane's success)
            if reply.outcome is XpOutcome.DONE
            else f"{self.rules.max_active_holds} holds are open; capture or release one first",
        )
        tier = self.rules.tier(reply.state.tier)
        # A gate in shadow mode would have refused this request (403) before the script's
        # answer: a debit or hold served, or refused for the balance (402), says so.
        shadow_refused = None
        if (
            tier is not None
            and tier.shadow
            and generation_type not in tier.allows
            and reply.outcome in (XpOutcome.DONE, XpOutcome.INSUFFICIENT)
        ):
            if not reply.replayed:
                count_shadow_refusal("tier_gate", tier.name)
            shadow_refused = "tier_gate"
        if reply.outcome in (XpOutcome.INSUFFICIENT, XpOutcome.TIER_REQUIRED):
            check = evaluate(
                self.rules, generation_type, reply.state.tier, reply.state.balance, True
            )
            return XpChange(
                change.outcome, 0, "", 0, reply.extra, reply.replayed, reply.state, check=check,
                shadow_refused=shadow_refused,
            )  # fmt: skip
        if shadow_refused is not None:
            return msgspec.structs.replace(change, shadow_refused=shadow_refused)
        return change

    def charge_call(
        self, user_id: str, actor: str, generation_type: str, hold: bool, idem: Idempotency | None
    ) -> DebitXp:
        """The debit_xp call of one debit or hold, with a new transaction id (``NotFound`` for
        an unknown generation type)."""
        if generation_type not in self.rules.costs:
            require_generation_type(self.rules, generation_type)  # NotFound, listing the types
        now = self._clock.now()
        prefix = _HOLD_PREFIX[is_service_caller(actor)] if hold else "xd_"
        return self._charge_call(
            user_id, actor, generation_type, hold, idem, now, prefix + random_hex(12)
        )

    def _charge_call(
        self, user_id: str, actor: str, generation_type: str, hold: bool,
        idem: Idempotency | None, now: float, transaction_id: str,
    ) -> DebitXp:  # fmt: skip
        fingerprint, idem_key = script_args(idem)
        # Positional, in DebitXp's field order (the hot lane: from keywords msgspec takes ~4x
        # as long); tests/xp/test_debit_xp.py
        # ::test_the_charge_call_names_every_argument checks every field gets its value.
        return DebitXp(
            user_id, int(now * 1000), fingerprint, self._idempotency_ttl, idem_key, actor,
            self._hydrator.may_create_code, self._version, generation_type, transaction_id,
            "hold" if hold else "debit", int(now) + self.hold_ttl, self.rules.max_active_holds,
            TRANSACTION_TTL,
        )  # fmt: skip

    async def capture(
        self,
        user_id: str,
        actor: str,
        hold_id: str,
        xp_amount: int | None,
        idem: Idempotency | None,
    ) -> XpChange:
        """Take all (``xp_amount=None``) or part of a hold; the rest returns to the balance.
        ``ForbiddenError`` when ``actor`` is not the kind of credential that created the hold."""
        _check_id(hold_id, "hold")
        _check_settler(hold_id, actor)
        if xp_amount is not None and xp_amount <= 0:
            raise InvalidRequest("xp_amount must be a positive number of XP")
        now_ms = int(self._clock.now() * 1000)
        call = CaptureHold(
            **self._common(user_id, actor, idem, now_ms),
            hold_id=hold_id, xp_amount=xp_amount or 0, record_ttl=TRANSACTION_TTL,
        )  # fmt: skip
        reply = await self._run(call, idem, hold_id)
        detail = _hold_detail(reply, hold_id)
        if reply.outcome is XpOutcome.ABOVE_HELD:
            detail = f"Cannot capture {xp_amount} XP: hold {hold_id} holds {reply.extra} XP"
        return self._change(reply, detail)

    async def release(
        self, user_id: str, actor: str, hold_id: str, idem: Idempotency | None
    ) -> XpChange:
        """Give up a hold: all of its XP returns to the balance (same credential rule as
        ``capture``)."""
        _check_id(hold_id, "hold")
        _check_settler(hold_id, actor)
        now_ms = int(self._clock.now() * 1000)
        call = ReleaseHold(**self._common(user_id, actor, idem, now_ms), hold_id=hold_id)
        reply = await self._run(call, idem, hold_id)
        return self._change(reply, _hold_detail(reply, hold_id))

    async def refund(
        self, user_id: str, actor: str, transaction_id: str, idem: Idempotency | None
    ) -> XpChange:
        """Return the XP of a debit or captured hold whose generation failed, once."""
        _check_id(transaction_id, "transaction")
        now_ms = int(self._clock.now() * 1000)
        call = RefundXp(**self._common(user_id, actor, idem, now_ms), transaction_id=transaction_id)
        reply = await self._run(call, idem, transaction_id)
        details = {
            XpOutcome.NOT_FOUND: f"Unknown transaction {transaction_id}",
            XpOutcome.ALREADY_SETTLED: f"Transaction {transaction_id} was already refunded",
            XpOutcome.NOT_CAPTURED: f"Hold {transaction_id} was not captured "
            "(it is open, released or expired): there is nothing to refund",
        }
        return self._change(reply, details.get(reply.outcome))

    async def grant(
        self,
        user_id: str,
        actor: str,
        xp_amount: int,
        reason: str,
        expires_at: datetime | None,
        idem: Idempotency | None,
    ) -> XpChange:
        """Add a top-up to the user's balance, optionally expiring. A key is the service
        caller's whatever user the grant names (``claim_callers_key``: the same key for another
        user is 422); the grant's own record in the user's slot applies it once."""
        now = self._clock.now()
        expiry = 0 if expires_at is None else unix_seconds(expires_at)
        problem = None if expires_at is None else expiry_problem(expiry, now)
        if problem is not None:  # before the key is claimed: a refused grant changes nothing
            raise InvalidRequest(problem)
        if idem is not None:  # the key is the service caller's, whatever user it names
            await claim_callers_key(self._scripts, idem, self._buckets, self._idempotency_ttl)
        grant_id = "xg_" + secrets.token_hex(12)
        call = GrantXp(
            **self._common(user_id, actor, idem, int(now * 1000)),
            grant_id=grant_id, xp_amount=xp_amount, expires_at=expiry, reason=reason,
            max_grants=self.rules.max_active_grants,
        )  # fmt: skip
        reply = await self._run(call, idem)
        detail = f"{self.rules.max_active_grants} top-ups are live; no more can be added now"
        return self._change(reply, detail)

    async def set_subscription(
        self,
        user_id: str,
        actor: str,
        tier_name: str,
        period_start: datetime | None,
        idem: Idempotency | None,
    ) -> XpChange:
        """Start a subscription or change its tier (upgrades now, downgrades at renewal).

        A retired tier (rules: ``retired = true``) is refused, ``InvalidRequest`` with code
        ``tier_retired``, also as a resume of a cancelled subscription that holds it."""
        if self.tier(tier_name).retired:
            raise InvalidRequest(
                f"Tier '{tier_name}' is retired: it takes no new subscriptions; current tiers:"
                f" {', '.join(t.name for t in self.rules.tiers if not t.retired)}",
                code="tier_retired",
            )
        now = self._clock.now()
        start = 0 if period_start is None else unix_seconds(period_start)
        problem = None if period_start is None else period_start_problem(start, now)
        if problem is not None:
            raise InvalidRequest(problem)
        call = SetSubscription(
            **self._common(user_id, actor, idem, int(now * 1000)),
            tier=tier_name, period_start=start,
        )  # fmt: skip
        reply = await self._run(call, idem)
        state = reply.state
        detail = (  # the path that works: set_subscription.lua moves no active subscription
            f"period_start differs from the subscription's start ({iso_utc(state.anchor)});"
            f" an active subscription's start does not move: cancel it (DELETE) and, once it"
            f" has ended at {iso_utc(state.period_end)}, subscribe again with the new"
            f" period_start"
        )
        return self._change(reply, detail)

    async def cancel_subscription(
        self, user_id: str, actor: str, idem: Idempotency | None
    ) -> XpChange:
        """End the subscription at the end of its current period."""
        now_ms = int(self._clock.now() * 1000)
        call = CancelSubscription(**self._common(user_id, actor, idem, now_ms))
        reply = await self._run(call, idem)
        return self._change(reply, f"User {user_id} has no subscription to cancel")


_CHARGE_LABELS = {
    XpOutcome.INSUFFICIENT: "insufficient",  # 402
    XpOutcome.TIER_REQUIRED: "tier_required",  # 403
}


def _charge_label(outcome: XpOutcome, hold: bool) -> str:
    """The ``counters_xp_debits_total`` outcome of one charge."""
    if outcome is XpOutcome.DONE:
        return "held" if hold else "debited"
    return _CHARGE_LABELS.get(outcome, "other")


def _check_id(value: str, what: str) -> None:
    if not is_whole(TRANSACTION_ID, value):
        raise NotFound(f"Unknown {what} {shown(value)!r}")


def _check_settler(hold_id: str, actor: str) -> None:
    """A hold is captured or released only by the kind of credential that created it."""
    service = is_service_caller(actor)
    for created_by_service, prefix in _HOLD_PREFIX.items():
        if hold_id.startswith(prefix) and created_by_service != service:
            raise ForbiddenError(
                f"Hold {hold_id} was created with {_CREDENTIAL[created_by_service]}; only "
                f"{_CREDENTIAL[created_by_service]} may capture or release it"
            )


def _hold_detail(reply: XpReply, hold_id: str) -> str | None:
    return {
        XpOutcome.NOT_FOUND: f"Unknown hold {hold_id}",
        XpOutcome.ALREADY_SETTLED: f"Hold {hold_id} was already captured or released",
        XpOutcome.HOLD_EXPIRED: f"Hold {hold_id} expired; its XP went back to the balance",
    }.get(reply.outcome)
