"""The README's examples, run as written against a real `counters serve` (embedded servers)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from api.schemas.exp import AdjustRequest
from api.schemas.xp import GrantRequest
from counters.bulkimport.records import ExpLine, TopupLine
from counters.cli.embedded import free_port
from counters.redis.codes import MAX_TOTAL
from counters.rules.xp import PositiveInt
from tests.support.live import serving

README = Path(__file__).parents[2] / "README.md"


def shell_blocks(section: str) -> list[str]:
    """The ```sh blocks of one README section (from its heading to the next ## heading)."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```sh\n(.*?)```", text[start : end if end > 0 else None], re.S)


def upper_bound(kind: object, name: str | None = None) -> int:
    """The ``le`` of an integer type, or of field ``name`` of a Struct type."""
    info = msgspec.inspect.type_info(kind)
    if name is not None:
        assert isinstance(info, msgspec.inspect.StructType)
        [info] = [field.type for field in info.fields if field.name == name]
    assert isinstance(info, msgspec.inspect.IntType) and info.le is not None
    return info.le


def test_the_maximum_section_names_the_amount_bounds_the_types_hold() -> None:
    """README, "The maximum": the bounds that keep each script's comparison exact. It said
    request bodies were bounded at 10^12 where the API takes at most 10^9 (a reviewer
    helper-63 finding): each bound it names is the one the types hold."""
    text = " ".join(README.read_text().split())
    body = re.search(r"a request body's `delta` or `xp_amount` is at most 10\^(\d+)", text)
    rest = re.search(
        r"an import line's `exp` or `xp_amount` and the rules' rewards, caps, costs and monthly"
        r" XP at most 10\^(\d+)",
        text,
    )
    assert body is not None and rest is not None
    assert upper_bound(AdjustRequest, "delta") == upper_bound(GrantRequest, "xp_amount")
    assert upper_bound(GrantRequest, "xp_amount") == 10 ** int(body.group(1))
    bounds = {upper_bound(ExpLine, "exp"), upper_bound(TopupLine, "xp_amount")}
    assert bounds | {upper_bound(PositiveInt)} == {10 ** int(rest.group(1))}
    assert f"Every amount a script adds is at most 10^{rest.group(1)}," in text
    assert MAX_TOTAL + 10 ** int(rest.group(1)) < 2**53  # a double holds the sum exactly


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """`counters serve` with nothing configured, as `make run` starts it, in a temp directory."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERS_")}
    env["COUNTERS_PORT"] = str(port)
    env["COUNTERS_DEV_MODE"] = "1"  # as `make run` sets it
    with serving(tmp_path, env, "/api/levels"):
        yield tmp_path, port


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's examples use curl")
def test_the_try_it_examples_work_as_written(served: tuple[Path, int]) -> None:
    workdir, port = served
    blocks = shell_blocks("Try it")
    assert len(blocks) == 2  # EXP, then XP
    blocks += shell_blocks("Entitlements, history and webhooks")
    assert len(blocks) == 3
    for block in blocks:
        assert block.startswith("source .counters/dev.env")
        script = "set -euo pipefail\n" + block.replace("localhost:8000", f"localhost:{port}")
        run = subprocess.run(
            ["bash", "-c", script], cwd=workdir, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr
        printed = [line for line in block.splitlines() if line.startswith("curl ")]
        bodies = list(json_documents(run.stdout))
        assert len(bodies) == len(printed), run.stdout
        for command, body in zip(printed, bodies, strict=True):
            assert "detail" not in body and "error" not in body, (command, body)


def json_documents(text: str) -> Iterator[dict[str, object]]:
    """The JSON documents curl printed back to back (its bodies end without a newline)."""
    decoder = json.JSONDecoder()
    position = 0
    while position < len(text.rstrip()):
        document, position = decoder.raw_decode(text, position)
        yield document
        while position < len(text) and text[position].isspace():
            position += 1
