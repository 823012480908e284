"""The shapes of ids (users, entities, transactions, idempotency keys), written once.

Every check matches the WHOLE string. Python's ``$`` (and so ``re.match`` and msgspec's
``pattern``, which searches with Python's ``re``) also matches just before a trailing newline:
``^[a-z]+$`` accepts ``"alice\\n"``, which would then be a second user beside ``"alice"``
(issue #10, item 9). Each pattern here ends in ``$(?!\\n)``: still plain JSON Schema (ECMA 262,
where ``$`` never matches before a newline and the lookahead is a no-op), and exact in Python.
Use ``is_whole`` (``fullmatch``) in code and the typed aliases below (``UserId``, ``Name``, ...)
in msgspec shapes; no other module defines an id or name pattern of its own.
No character class here admits a control character.
"""

from __future__ import annotations

import os
import re
import secrets
from typing import Annotated

import msgspec


def whole(body: str) -> str:
    """A pattern that matches ``body`` as the whole string, in Python and in JSON Schema."""
    return f"^{body}$(?!\\n)"


# The ledger's actors that are not users: the XP transitions that came due ("system"), import
# lines ("import"), reconcile's repairs ("reconcile"), service keys ("service:<n>") and a user
# token on the XP side ("user:<id>"). No user id has one of these forms, wherever it comes from
# (a token's ``sub``, ``X-User-Id``, a path, a request body, an import line: ``USER_ID_PATTERN``
# refuses them), so an award's actor (the user's id) is never one of them and a ledger actor
# means one thing. Matched case-sensitively, as every id is (Redis keys, the ledger's text
# columns): the service writes these actors in lower case only, so ``SYSTEM`` or ``Service:0``
# is a user of its own that no ledger row can confuse with an actor.
SYSTEM_ACTOR, IMPORT_ACTOR, RECONCILE_ACTOR = "system", "import", "reconcile"
_RESERVED_ACTORS = (SYSTEM_ACTOR, IMPORT_ACTOR, RECONCILE_ACTOR)
_RESERVED_PREFIXES = ("service:", "user:")
RESERVED_FORMS = "system, import, reconcile, service:*, user:*"  # for messages
# A lookahead that fails on a reserved form: one of the names as the whole string, or a prefix.
_NOT_RESERVED = (
    f"(?!(?:{'|'.join(map(re.escape, _RESERVED_ACTORS))})$(?!\\n)"
    f"|{'|'.join(map(re.escape, _RESERVED_PREFIXES))})"
)
USER_ID_PATTERN = whole(_NOT_RESERVED + r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}")
TARGET_ID_PATTERN = whole(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
NAME_PATTERN = whole(r"[a-z][a-z0-9_]{0,63}")  # rules: actions, tiers, entity types
TRANSACTION_ID_PATTERN = whole(r"[A-Za-z0-9_-]{1,64}")
IDEMPOTENCY_KEY_PATTERN = whole(r"[\x21-\x7e]{1,255}")  # visible ASCII, no space
GENERATION_TYPE_PATTERN = whole(r"[A-Z][A-Z0-9_]{0,63}")  # rules: the XP costs table's keys
REQUEST_ID_PATTERN = whole(r"[A-Za-z0-9._:/+=@-]{1,128}")  # X-Request-Id: cannot forge a log line

USER_ID = re.compile(USER_ID_PATTERN)
TARGET_ID = re.compile(TARGET_ID_PATTERN)
TRANSACTION_ID = re.compile(TRANSACTION_ID_PATTERN)
IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
NAME = re.compile(NAME_PATTERN)  # also a ledger kind (exp_award, xp_debit, ...)

# The same shapes as msgspec types, for request bodies, import lines and the rules file.
UserId = Annotated[str, msgspec.Meta(pattern=USER_ID_PATTERN)]
TargetIdText = Annotated[str, msgspec.Meta(pattern=TARGET_ID_PATTERN)]
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
GenerationType = Annotated[str, msgspec.Meta(pattern=GENERATION_TYPE_PATTERN)]
TransactionId = Annotated[str, msgspec.Meta(pattern=TRANSACTION_ID_PATTERN)]
IdempotencyKey = Annotated[str, msgspec.Meta(pattern=IDEMPOTENCY_KEY_PATTERN)]


def is_reserved_actor(user_id: str) -> bool:
    """Whether ``user_id`` has the form of an actor that is not a user (see ``_RESERVED_ACTORS``;
    ``USER_ID_PATTERN`` refuses the same forms)."""
    return user_id in _RESERVED_ACTORS or user_id.startswith(_RESERVED_PREFIXES)


# Free text a caller chooses (a reason, a label) reaches the ledger: control characters (NUL,
# which Postgres text cannot hold, newlines, escapes) are refused at the door, by the API (422,
# ``api.http.decode``) and by ``counters import`` alike (``validation_detail`` words it).
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")  # U+0000-U+001F, U+007F: C0 controls, DEL
NO_CONTROL_CHARACTERS = msgspec.Meta(pattern=r"\A[^\x00-\x1f\x7f]*\Z")  # $ allows a final \n
# A top-up's reason (POST /api/v1/xp/grants, an import's topup line): the ledger's action.
GrantReason = Annotated[str, msgspec.Meta(min_length=1, max_length=200), NO_CONTROL_CHARACTERS]


USER_ID_RULE = (
    "1-128 characters of letters, digits and ._@:- starting with a letter or digit, and not"
    f" one the ledger records for a reserved actor ({RESERVED_FORMS}), which is not a user"
)


def _refusal(kind: object, value: str) -> str:
    """msgspec's message refusing ``value`` as a ``kind``."""
    try:
        msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        return str(exc)
    raise AssertionError(f"{value!r} is a {kind}")


_USER_ID_REFUSED = _refusal(UserId, "")  # how msgspec words a refused UserId, before " - at"


def validation_detail(exc: msgspec.ValidationError) -> str:
    """msgspec's message, with a refused control character or user id worded for people: the
    patterns of ``NO_CONTROL_CHARACTERS`` and ``UserId`` mean nothing to a caller."""
    message = str(exc)
    if message.startswith("Expected `str` matching regex '\\\\A[^\\\\x00-"):
        where = message.rpartition(" - at ")[2]
        return f"{where} must not contain control characters (U+0000-U+001F, U+007F)"
    if message.startswith(_USER_ID_REFUSED):
        where = message.rpartition(" - at ")[2]
        return f"{where} must be a user id: {USER_ID_RULE}"
    return message


def is_whole(pattern: re.Pattern[str], value: str) -> bool:
    """``value`` is, as a whole, one string of ``pattern``'s shape."""
    return pattern.fullmatch(value) is not None


MAX_DIGITS = 64  # the longest digit string ``is_digits`` takes (far past any number read)


def is_digits(text: str) -> bool:
    """``text`` is one or more ASCII digits, 0-9: a number a caller writes in a query, a header
    or a setting. ``str.isdigit`` alone also takes other scripts' digits (U+0661 ARABIC-INDIC
    DIGIT ONE, U+FF11 FULLWIDTH DIGIT ONE), which ``int`` reads as numbers, and superscripts
    (U+00B2), which it cannot: a ``ValueError`` where a 422 was due (a reviewer's finding:
    ``limit=`` U+0661 was a limit of 1, while ``limit=+5`` was refused). At most
    ``MAX_DIGITS`` of them: ``int`` refuses a string of more than 4,300 digits (CPython's
    conversion limit, a ``ValueError``), and no number the service reads is that long (a
    second reviewer's finding: ``limit=`` 4,301 nines was a 500)."""
    return 0 < len(text) <= MAX_DIGITS and text.isascii() and text.isdigit()


_RANDOM = bytearray()  # cryptographically random bytes drawn ahead (random_hex)
_RANDOM_DRAW = 6_144


def random_hex(nbytes: int) -> str:
    """``2 * nbytes`` hex digits of ``secrets.token_bytes`` (1 <= ``nbytes`` <= 64), drawn
    6,144 bytes at a time: one ``getrandom`` call per few hundred ids instead of one per id (a
    syscall on the hot lane: a debit's transaction id, a creator award's reservation id). A
    forked process draws its own bytes. ``ValueError`` for ``nbytes`` outside 1..64 (0 would
    hand out, and empty, the whole pool)."""
    if not 0 < nbytes <= 64:
        raise ValueError(f"random_hex takes 1 to 64 bytes, not {nbytes}")
    if len(_RANDOM) < nbytes:
        _RANDOM.extend(secrets.token_bytes(_RANDOM_DRAW))
    part = _RANDOM[-nbytes:]
    del _RANDOM[-nbytes:]
    return part.hex()


os.register_at_fork(after_in_child=_RANDOM.clear)
