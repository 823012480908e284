"""The one table ``make bench`` prints, the targets it checks, and the JSON it writes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(slots=True)
class Row:
    key: str  # "1", "2", "2h", ... as the issue numbers the targets
    name: str
    rate: float | None  # requests/s (awards/s for rows measured in awards)
    unit: str = "req/s"
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    cpu_us: dict[str, float] = field(default_factory=dict)  # CPU µs per request, by process


@dataclass(slots=True)
class Report:
    rows: list[Row] = field(default_factory=list)
    ablations: list[Row] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def row(self, key: str) -> Row | None:
        return next((row for row in self.rows if row.key == key and row.rate), None)

    def ratio(self, top: str, bottom: str) -> float | None:
        a, b = self.row(top), self.row(bottom)
        return a.rate / b.rate if a and b and a.rate and b.rate else None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "redis": _version(["redis-server", "--version"]),
        "postgres": _version(["postgres", "--version"]),
    }


def _version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not found on PATH"


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table(rows: list[Row]) -> str:
    lines = [
        f"{'':3} {'target':50} {'rate':>8} {'unit':8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU us/req srv+db+gen':>22}  note",
        "-" * 130,
    ]
    for row in rows:
        cpu = "+".join(f"{row.cpu_us[k]:.0f}" for k in ("server", "db", "load") if k in row.cpu_us)
        lines.append(
            f"{row.key:3} {row.name:50} {_num(row.rate):>8} {row.unit:8} "
            f"{_num(row.p50_ms, 2):>7} {_num(row.p99_ms, 2):>7} {cpu:>22}  {row.note}"
        )
    return "\n".join(lines)


Target = tuple[str, Callable[[Report], tuple[float | None, bool | None, str]]]


def _ratio_target(top: str, bottom: str, goal: float) -> Callable[[Report], Any]:
    def check(report: Report) -> tuple[float | None, bool | None, str]:
        value = report.ratio(top, bottom)
        return value, None if value is None else value >= goal, f"{_num(value, 2)} (>= {goal})"

    return check


def _half_peak_p99(report: Report) -> tuple[float | None, bool | None, str]:
    row = report.row("2h")
    value = row.p99_ms if row else None
    return value, None if value is None else value <= 5.0, f"{_num(value, 2)} ms (<= 5 ms)"


def _flusher_lag(report: Report) -> tuple[float | None, bool | None, str]:
    rate = report.extras.get("flusher_at_peak")
    if not rate:
        return None, None, "not measured"
    lag = rate["max_lag_seconds"]
    keeps_up = rate["flushed_per_second"] >= 0.95 * rate["events_per_second"]
    text = (
        f"max lag {lag:.2f} s (< 2 s); {rate['flushed_per_second']:,.0f} of "
        f"{rate['events_per_second']:,.0f} events/s ledgered while produced"
    )
    return lag, lag < 2.0 and keeps_up, text


TARGETS: list[Target] = [
    ("gain >= 0.6 x bare ceiling (2/1)", _ratio_target("2", "1", 0.6)),
    ("gain >= 5 x Postgres-only (2/4)", _ratio_target("2", "4", 5.0)),
    ("p99 <= 5 ms at half of peak (2h)", _half_peak_p99),
    ("batch >= 0.5 x raw Lua ceiling (6/5)", _ratio_target("6", "5", 0.5)),
    ("flusher keeps up at the peak award rate, lag < 2 s", _flusher_lag),
    ("gain with Postgres, known users >= 0.8 x Redis only (2p/2)", _ratio_target("2p", "2", 0.8)),
    ("gain with Postgres, new users >= 0.6 x Redis only (2n/2)", _ratio_target("2n", "2", 0.6)),
]


def gain_budget(report: Report, goal: float = 0.6) -> str | None:
    """What ``goal`` x the bare ceiling leaves the service's own work per gain request.

    On a CPU-bound machine rates go as the inverse of total CPU per request, so gain reaches
    ``goal`` x bare only if its server + Redis + generator CPU stays under bare's / ``goal``.
    Take away the server's floor, Redis's and the generator's share of a gain request: what is
    left is the budget of everything the service itself does. The floor is the hot lane's
    (ablation r2: the service's protocol and lane, one Redis round trip, no work; the path
    ``counters serve`` serves gain by since issue #15's seventh round), else uvicorn's ASGI
    floor (r1) for a report without r2.
    """
    bare, gain = report.row("1"), report.row("2")
    floors = {row.key: row for row in report.ablations if row.key in ("r1", "r2") and row.rate}
    floor = floors.get("r2") or floors.get("r1")
    if bare is None or gain is None or floor is None or "server" not in gain.cpu_us:
        return None
    budget = sum(bare.cpu_us.values()) / goal
    base, redis = floor.cpu_us.get("server", 0.0), gain.cpu_us.get("db", 0.0)
    load = gain.cpu_us.get("load", 0.0)
    left, used = budget - base - redis - load, gain.cpu_us["server"] - base
    name = "the hot lane's floor (r2)" if floor.key == "r2" else "uvicorn's floor (r1)"
    return (
        f"gain's CPU budget at {goal} x bare: {budget:.0f} us/request; {name} "
        f"{base:.0f} + Redis {redis:.0f} + generator {load:.0f} leave the service's own "
        f"work {left:.0f} us; it uses {used:.0f}"
    )


def render(report: Report) -> str:
    parts = [table(report.rows), ""]
    ratios = [
        ("2/1", "2", "1"), ("3/1", "3", "1"), ("2/4", "2", "4"), ("batch/5", "6", "5"),
        ("2p/2", "2p", "2"), ("2n/2", "2n", "2"), ("2c/2", "2c", "2"),
    ]  # fmt: skip
    shown = [f"{label} = {_num(report.ratio(top, bottom), 2)}" for label, top, bottom in ratios]
    parts.append("ratios: " + "   ".join(shown))
    parts.append("")
    parts.append("targets (reported, not asserted):")
    for label, check in TARGETS:
        _, met, text = check(report)
        verdict = {True: "MET", False: "NOT MET", None: "n/a"}[met]
        parts.append(f"  {verdict:8} {label}: {text}")
    budget = gain_budget(report)
    if budget is not None:
        parts += ["", budget]
    if report.extras:
        parts.append("")
        for name, value in report.extras.items():
            parts.append(f"{name}: {_short(value)}")
    if report.ablations:
        parts += ["", "ways there (each against the configuration above):", table(report.ablations)]
    if report.notes:
        parts += ["", *(f"note: {note}" for note in report.notes)]
    return "\n".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        shown = (f"{k}={_num(v, 2) if isinstance(v, float) else v}" for k, v in value.items())
        return ", ".join(shown)
    return str(value)


def write_json(report: Report, options: dict[str, Any]) -> Path:
    """bench/results/<UTC timestamp>.json with everything measured."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{stamp}.json"
    targets = {}
    for label, check in TARGETS:
        value, met, text = check(report)
        targets[label] = {"value": value, "met": met, "text": text}
    document = {
        "when": stamp,
        "machine": machine(),
        "options": options,
        "rows": [vars_of(row) for row in report.rows],
        "ratios": {
            "2/1": report.ratio("2", "1"),
            "3/1": report.ratio("3", "1"),
            "2/4": report.ratio("2", "4"),
            "batch/5": report.ratio("6", "5"),
            "2p/2": report.ratio("2p", "2"),
            "2n/2": report.ratio("2n", "2"),
            "2c/2": report.ratio("2c", "2"),
        },
        "targets": targets,
        "gain_budget": gain_budget(report),
        "extras": report.extras,
        "ablations": [vars_of(row) for row in report.ablations],
        "notes": report.notes,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def vars_of(row: Row) -> dict[str, Any]:
    return {name: getattr(row, name) for name in Row.__slots__}
