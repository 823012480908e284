"""The demo page in a real headless Chromium (Debian's package, driven by Playwright; no browser
download) against a real `counters serve`: buttons award EXP and the bar moves; /docs renders
from local assets only.

A screenshot of the component is kept under ``.artifacts/browser/`` (gitignored);
``COUNTERS_UPDATE_SCREENSHOT=1`` also refreshes the README's ``docs/level-progress.png``.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support.core import issue_token_for

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get update && apt-get install -y chromium"
ARGS = [
    "--no-sandbox",  # root in CI and containers
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        message = f"the browser tests drive Debian's chromium at {CHROMIUM}: {INSTALL}"
        if os.environ.get("CI"):
            pytest.fail(message)  # .ci/run installs it; its absence there is a failure
        pytest.skip(message)
    with sync_playwright() as playwright:
        found = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield found
        found.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 640, "height": 420}, device_scale_factor=2)
    found = context.new_page()
    yield found
    context.close()


def bar(page: Page) -> dict[str, object]:
    """What the component shows: texts, and the fill's width as a share of the bar's (0-100)."""
    shown: dict[str, object] = page.eval_on_selector(
        "level-progress",
        """el => {
            const root = el.shadowRoot;
            const fill = root.querySelector('.fill').getBoundingClientRect().width;
            const track = root.querySelector('.bar').getBoundingClientRect().width;
            return {
                title: root.querySelector('.title').textContent,
                name: root.querySelector('.name').textContent,
                exp: root.querySelector('.exp').textContent,
                width: Math.round(fill * 1000 / track) / 10,
            };
        }""",
    )
    return shown


def click(page: Page, label: str) -> str:
    """Click a demo button and wait for its answer; the status line it wrote."""
    done = int(page.get_attribute("#status", "data-done") or 0)
    page.get_by_role("button", name=label).click()
    page.wait_for_function(
        f"Number(document.querySelector('#status').dataset.done || 0) > {done}", timeout=10_000
    )
    page.wait_for_timeout(350)  # the bar's width transition (.3 s)
    return page.inner_text("#status")


def test_the_demo_page_awards_exp_and_moves_the_bar(
    page: Page, live_url: str, redis_url: str
) -> None:
    user = f"web-{uuid.uuid4().hex[:10]}"
    page.goto(f"{live_url}/demo?token={issue_token_for(user)}")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    assert bar(page) == {"title": "Level 1", "name": "Newbie", "exp": "0 EXP · 100 EXP to Level 2",
                         "width": 0.0}  # fmt: skip
    assert click(page, "Create character") == "+30 EXP for create_character"
    assert bar(page) == {"title": "Level 1", "name": "Newbie", "exp": "30 EXP · 70 EXP to Level 2",
                         "width": 30.0}  # fmt: skip
    assert click(page, "Daily chat") == "+20 EXP for daily_chat"
    assert click(page, "Daily chat") == "No EXP for daily_chat (daily limit or cap reached)"
    assert bar(page)["width"] == 50.0
    click(page, "Create scene")
    click(page, "Create scene")
    click(page, "Create persona")
    assert bar(page)["exp"] == "95 EXP · 5 EXP to Level 2"
    status = click(page, "Create persona")
    assert status == "+15 EXP for create_persona · Level up: Creator!"
    assert bar(page) == {"title": "Level 2", "name": "Creator",
                         "exp": "110 EXP · 190 EXP to Level 3", "width": 5.0}  # fmt: skip
    guidance = click(page, "Check XP for NEW_IMAGE")
    assert guidance.startswith("🎮 Subscribe to unlock NEW_IMAGE")
    click(page, "Create character")  # 140 EXP: 20% of the way to level 3
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "level-progress.png"
    page.locator("main").screenshot(path=str(shot))
    assert shot.stat().st_size > 1_000
    if os.environ.get("COUNTERS_UPDATE_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "level-progress.png")


def test_the_demo_page_says_when_its_token_is_refused(page: Page, live_url: str) -> None:
    """silentExpGain throws Unauthorized for a refused token (no outage: nothing to fail open
    for), and the page says so instead of "No EXP"."""
    page.goto(f"{live_url}/demo?token=not-a-token")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    status = click(page, "Daily chat")
    assert status.startswith("Sign-in refused: ") and status.endswith("(unauthorized)"), status


def test_the_docs_page_renders_from_local_assets_only(page: Page, live_url: str) -> None:
    origins: set[str] = set()
    page.on("request", lambda request: origins.add(urlsplit(request.url).netloc))
    page.goto(f"{live_url}/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=15_000)
    assert "counters" in page.inner_text(".swagger-ui .info .title")
    assert page.locator(".opblock").count() >= 20  # every operation is listed
    assert origins == {urlsplit(live_url).netloc}  # nothing from a CDN


@pytest.fixture
def static_demo(demo_origin: str) -> Iterator[str]:
    """clients/js served as plain static files from another origin than the service's."""
    port = urlsplit(demo_origin).port
    assert port is not None
    handler = functools.partial(QuietHandler, directory=str(ROOT / "clients" / "js"))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield demo_origin
    server.shutdown()
    server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_static_demo_calls_the_service_across_origins(
    page: Page, live_url: str, redis_url: str, static_demo: str
) -> None:
    """The page on one origin, the service on another: without the service's CORS answers
    (a preflight for the award's Authorization and Idempotency-Key, on the hot lane) the
    browser would block every call and the page would show nothing."""
    user = f"web-{uuid.uuid4().hex[:10]}"
    token = issue_token_for(user)
    page.goto(f"{static_demo}/demo.html?api={live_url}&token={token}")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    assert page.inner_text("#user") == f"({user})"  # GET /api/exp/progress across origins
    assert click(page, "Daily chat") == "+20 EXP for daily_chat"  # the hot lane, preflighted
    assert bar(page)["width"] == 20.0
