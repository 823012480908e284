"""The lines of an import file: parsed, validated against the rules, each with its import id.

Formats (by suffix: ``.csv``, else JSON Lines)::

    {"kind": "exp", "user_id": "u1", "exp": 450, "level": 3}          level optional, checked
    {"kind": "subscription", "user_id": "u1", "tier": "arcade_artist",
     "period_start": "2026-11-03T00:00:00Z"}                           period_start optional
    {"kind": "topup", "user_id": "u1", "xp_amount": 100, "expires_at": "2027-01-01T00:00:00Z",
     "reason": "legacy balance"}       expires_at, reason optional (the ledger's action)

A CSV file has a header naming the same fields (``kind`` first); empty cells are absent fields,
and a number (``exp``, ``level``, ``xp_amount``) is ASCII digits only, as the API's query integers
(``counters.ids.is_digits``), where JSON Lines take JSON integers. Times name their offset, as in
the API's bodies (``counters.clock.AwareDatetime``). One byte order mark opening a file (Excel's
"CSV UTF-8" writes one) is not part of its first line.

The import id of a line is derived from its content (the validated record and how many identical
records came before it in the file), so the same file applied twice, or re-ordered, applies each
line once; two identical top-ups in one file are two top-ups.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec

from counters.clock import AwareDatetime, unix_seconds
from counters.errors import shown
from counters.ids import GrantReason, UserId, is_digits, validation_detail
from counters.redis.codes import MAX_TOTAL
from counters.rules import Rules
from counters.xp.state import expiry_problem, period_start_problem

NonNegative = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
Positive = Annotated[int, msgspec.Meta(gt=0, le=10**12)]


class _Line(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
            tag_field="kind"):  # fmt: skip
    user_id: UserId


class ExpLine(_Line, frozen=True, tag="exp"):
    """EXP the product counted for a user, added to what the service counted."""

    exp: NonNegative
    level: int | None = None  # if given, must be the level the rules derive from exp


class SubscriptionLine(_Line, frozen=True, tag="subscription"):
    """A subscription to start (a user with an active one is left as is)."""

    tier: str
    period_start: AwareDatetime | None = None


class TopupLine(_Line, frozen=True, tag="topup"):
    """A top-up to grant."""

    xp_amount: Positive
    expires_at: AwareDatetime | None = None
    reason: GrantReason = "import"  # the API's shape (POST /api/v1/xp/grants); the ledger action


Line = ExpLine | SubscriptionLine | TopupLine


@dataclass(frozen=True, slots=True)
class Record:
    """One valid line: where it was, what it says, and its import id."""

    line_number: int
    line: Line
    import_id: str


class LineError(ValueError):
    """A line that cannot be imported; ``str()`` names its number and why."""

    def __init__(self, line_number: int, reason: str) -> None:
        super().__init__(f"line {line_number}: {reason}")
        self.line_number = line_number


_DECODER = msgspec.json.Decoder(Line)


def _raw_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, JSON text or CSV row dict) of every non-blank line.

    Read as ``utf-8-sig``: one leading byte order mark is dropped. Read as part of the text it
    made the CSV header's first name U+FEFF + "kind" (every line "missing required field
    'kind'") and JSON Lines' first line malformed (a reviewer helper-63 finding)."""
    text = path.read_text("utf-8-sig")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        for row in reader:
            cells = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
            if None in row:
                yield reader.line_num, ValueError("more cells than the header names")
            elif cells:
                yield reader.line_num, cells
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


def _integer_fields() -> frozenset[str]:
    """The names of the integer fields of every line kind (``exp``, ``level``, ``xp_amount``)."""
    found = set()
    for struct in msgspec.inspect.multi_type_info([ExpLine, SubscriptionLine, TopupLine]):
        assert isinstance(struct, msgspec.inspect.StructType)
        for field in struct.fields:
            kind = field.type
            kinds = kind.types if isinstance(kind, msgspec.inspect.UnionType) else (kind,)
            if any(isinstance(k, msgspec.inspect.IntType) for k in kinds):
                found.add(field.name)
    return frozenset(found)


_INTEGER_FIELDS = _integer_fields()


def _parse(raw: Any) -> Line:
    if isinstance(raw, ValueError):
        raise raw
    if isinstance(raw, str):
        return _DECODER.decode(raw)
    # CSV cells are text, converted by msgspec ("450" -> 450), which also took "1e3" as 1000
    # while refusing "1.5" and "1e20" as text (a reviewer helper-63 finding): one rule instead,
    # an integer cell is ASCII digits, as a query's integer is (counters.ids.is_digits).
    for name, cell in raw.items():
        if name in _INTEGER_FIELDS and not is_digits(cell):
            raise ValueError(f"{name} must be a whole number in digits 0-9, got {shown(cell)!r}")
    line: Line = msgspec.convert(raw, Line, strict=False)
    return line


def _check(line: Line, rules: Rules, now: float) -> None:
    """Rules the types cannot say; ``ValueError`` says which."""
    if isinstance(line, ExpLine):
        derived = rules.exp.level_for(line.exp)
        if line.level is not None and line.level != derived:
            raise ValueError(f"level {line.level} does not match {line.exp} EXP (level {derived})")
    elif isinstance(line, SubscriptionLine):
        if rules.xp.tier(line.tier) is None:
            known = ", ".join(tier.name for tier in rules.xp.tiers)
            raise ValueError(f"unknown tier '{shown(line.tier)}'; known tiers: {known}")
        if rules.xp.tiers_by_name[line.tier].retired:
            raise ValueError(f"tier '{line.tier}' is retired: it takes no new subscriptions")
        # The second the import sends (service.py): the float let 1970-01-01T00:00:00.5Z pass,
        # and the script then read its second, 0, as "now".
        start = None if line.period_start is None else unix_seconds(line.period_start)
        problem = None if start is None else period_start_problem(start, now)
        if problem is not None:
            raise ValueError(problem)
    elif line.expires_at is not None:
        problem = expiry_problem(unix_seconds(line.expires_at), now)  # as the API's grant
        if problem is not None:
            raise ValueError(problem)


def _check_sum(line: Line, sums: Counter[tuple[str, str]]) -> None:
    """Add the line's amount to its user's sum in the file; ``ValueError`` once the sum passes
    ``MAX_TOTAL`` (lua/lib/bounds.lua refuses it too, line by line, counting what the service
    holds: this refuses the whole file before anything is written)."""
    if isinstance(line, SubscriptionLine):
        return
    kind, amount = ("exp", line.exp) if isinstance(line, ExpLine) else ("topup", line.xp_amount)
    sums[line.user_id, kind] += amount
    if sums[line.user_id, kind] > MAX_TOTAL:
        raise ValueError(f"{line.user_id}'s {kind} lines add up past {MAX_TOTAL:,}")


def read_records(path: Path, rules: Rules, now: float) -> tuple[list[Record], list[LineError]]:
    """Every line of ``path``, parsed and validated: the records, and the errors (by line)."""
    records: list[Record] = []
    errors: list[LineError] = []
    seen: Counter[bytes] = Counter()
    sums: Counter[tuple[str, str]] = Counter()  # (user, "exp" | "topup"): the file's amounts
    try:
        raw_lines = list(_raw_lines(path))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return [], [LineError(0, f"cannot read {path}: {exc}")]
    for number, raw in raw_lines:
        try:
            line = _parse(raw)
            _check(line, rules, now)
            _check_sum(line, sums)
        except msgspec.ValidationError as exc:
            errors.append(LineError(number, validation_detail(exc)))
            continue
        except (msgspec.DecodeError, ValueError) as exc:
            errors.append(LineError(number, str(exc)))
            continue
        canonical = msgspec.json.encode(line)
        occurrence = seen[canonical]
        seen[canonical] += 1
        digest = hashlib.sha256(canonical + b"#%d" % occurrence).hexdigest()[:32]
        records.append(Record(number, line, f"imp_{digest}"))
    return records, errors
