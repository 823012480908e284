"""The JS client's own tests (node's test runner), with the live-service ones pointed at a real
`counters serve`."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.core import issue_token_for

JS = Path(__file__).resolve().parents[2] / "clients" / "js"


def test_node_tests_pass_against_the_live_service(live_url: str, redis_url: str) -> None:
    node = shutil.which("node")
    if node is None:
        message = "node >= 20 runs the JS client's tests: apt-get install -y nodejs"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = os.environ | {
        "COUNTERS_TEST_URL": live_url,
        "COUNTERS_TEST_TOKEN": issue_token_for(f"js-{uuid.uuid4().hex[:12]}"),
    }
    tests = sorted(str(path) for path in (JS / "test").glob("*.test.js"))
    run = subprocess.run(
        [node, "--test", *tests], cwd=JS, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "# fail 0" in run.stdout and "# skipped 0" in run.stdout, run.stdout
