"""The container files, checked without Docker (images cannot be pulled on these machines):
compose.yaml parses, wires what the service reads, and runs Redis with AOF everysec; the
Dockerfile runs ``counters serve`` as a non-root user on a slim base."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from counters.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {f"COUNTERS_{field.name.upper()}" for field in fields(Settings)}


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return document


def test_compose_names_only_settings_the_service_reads() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "postgres", "counters"}
    environment = services["counters"]["environment"]
    named = {name for name in environment if name.startswith("COUNTERS_")}
    assert named <= SETTINGS, named - SETTINGS
    commented = set(re.findall(r"#\s*(COUNTERS_[A-Z_]+):", (ROOT / "compose.yaml").read_text()))
    assert commented <= SETTINGS
    assert environment["COUNTERS_WORKERS"] == "2"
    assert environment["COUNTERS_REDIS_URL"] == "redis://redis:6379/0"
    assert environment["COUNTERS_DATABASE_URL"].endswith("@postgres:5432/counters")


def test_compose_runs_redis_with_aof_everysec_and_checks_health() -> None:
    services = compose()["services"]
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
    depends = services["counters"]["depends_on"]
    assert {name: d["condition"] for name, d in depends.items()} == {
        "redis": "service_healthy", "postgres": "service_healthy",
    }  # fmt: skip
    assert "/readyz" in " ".join(services["counters"]["healthcheck"]["test"])


def test_the_dockerfile_is_slim_non_root_and_serves() -> None:
    text = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert bases and all(base.endswith("-slim") for base in bases)
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^CMD \["counters", "serve"\]$', text, re.MULTILINE)
    env = set(re.findall(r"(COUNTERS_[A-Z_]+)=", text))
    assert env and env <= SETTINGS
    copied = set(re.findall(r"^COPY (\w+) \1$", text, re.MULTILINE))
    packaged = {"counters", "api", "persistence", "lua"}  # pyproject's packages.find include
    assert copied == packaged
    assert "HEALTHCHECK" in text and "/healthz" in text
