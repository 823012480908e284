"""Per-call costs of the pieces whose alternatives the issue asks about, timed in-process."""

from __future__ import annotations

import timeit
from collections.abc import Callable
from typing import Any

import jwt
import msgspec
import orjson

from api.schemas.exp import GainRequest, GainResponse, gain_decoder
from bench import scenarios
from counters.auth import Authenticator, issue_token
from counters.exp.levels import progress
from counters.rules import load_rules


def _us(fn: Callable[[], Any], number: int) -> float:
    best = min(timeit.repeat(fn, number=number, repeat=3))
    return round(best / number * 1e6, 2)


def measure() -> dict[str, float]:
    """Microseconds per call: JWT verified vs cached, msgspec vs orjson for the gain shapes."""
    auth = Authenticator(scenarios.JWT_SECRET, [scenarios.SERVICE_KEY])
    token = issue_token(scenarios.JWT_SECRET, "u1")
    header = f"Bearer {token}"
    auth.authenticate(header, None)
    options: Any = {"require": ["sub", "exp"]}
    rules = load_rules().exp
    body = b'{"action":"character_liked","target_type":"character","target_id":"c42"}'
    response = GainResponse(
        awarded_to="u1", action="daily_chat", success=True, exp_added=20, total_exp=130,
        level=2, leveled_up=True, daily_exp_gained=20, daily_exp_cap=150, action_count=1,
        action_limit=1, progress=progress(rules, 130), unlocked_features=["fork"],
    )  # fmt: skip
    as_dict = msgspec.to_builtins(response)
    encoder = msgspec.json.Encoder()

    def orjson_decode() -> GainRequest:
        raw = orjson.loads(body)
        return GainRequest(**raw)  # no validation: orjson alone checks nothing

    return {
        "jwt_verify_us": _us(
            lambda: jwt.decode(token, scenarios.JWT_SECRET, algorithms=["HS256"], options=options),
            2_000,
        ),
        "jwt_cached_us": _us(lambda: auth.authenticate(header, None), 20_000),
        "service_key_us": _us(
            lambda: auth.authenticate(f"Bearer {scenarios.SERVICE_KEY}", "u1"), 20_000
        ),
        "msgspec_decode_validated_us": _us(lambda: gain_decoder.decode(body), 50_000),
        "orjson_decode_unvalidated_us": _us(orjson_decode, 50_000),
        "msgspec_encode_us": _us(lambda: encoder.encode(response), 50_000),
        "orjson_encode_dict_us": _us(lambda: orjson.dumps(as_dict), 50_000),
    }
