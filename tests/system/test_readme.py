"""The README's examples, run as written against a real `counters serve` (embedded servers)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from counters.cli.embedded import free_port
from tests.support.live import serving

README = Path(__file__).parents[2] / "README.md"


def shell_blocks(section: str) -> list[str]:
    """The ```sh blocks of one README section (from its heading to the next ## heading)."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```sh\n(.*?)```", text[start : end if end > 0 else None], re.S)


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
