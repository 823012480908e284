"""The contract and the pages around it: GET /openapi.json, the /docs page, and (dev mode) /demo.

The docs page is Swagger UI from the ``swagger-ui-py`` wheel's static files, served here: no CDN,
so it works offline and on a locked-down network. Only the package's directory is located (no
import of its Jinja-based handlers). The demo page is the JS client's ``clients/js/demo.html``,
served from the repository only with ``COUNTERS_DEV_MODE=1`` (README, "Clients").
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from api.http import json_response
from api.openapi import document
from counters.settings import Settings

log = logging.getLogger("counters.api")

JS_CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "js"

_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>counters API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""
_DOCS_INIT = (
    'window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", '
    "deepLinking: true});\n"
)


def swagger_ui_dir() -> Path:
    """Swagger UI's static files inside the installed ``swagger-ui-py`` package."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed: pip install swagger-ui-py")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


async def openapi_json(request: Request) -> Response:
    """The OpenAPI 3.1 document (``api.openapi``)."""
    return json_response(document())


async def docs_page(request: Request) -> Response:
    return HTMLResponse(_DOCS_PAGE)


async def docs_init(request: Request) -> Response:
    return Response(_DOCS_INIT, media_type="text/javascript")


async def demo_redirect(request: Request) -> Response:
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"/demo/demo.html{query}")


def routes(settings: Settings) -> list[BaseRoute]:
    """The docs routes; with ``dev_mode`` also the demo page and the JS client's files."""
    found: list[BaseRoute] = [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
        Route("/docs/init.js", docs_init, methods=["GET"]),
        Mount("/docs/assets", StaticFiles(directory=swagger_ui_dir()), name="docs-assets"),
    ]
    if settings.dev_mode:
        if (JS_CLIENT_DIR / "demo.html").exists():
            found.append(Route("/demo", demo_redirect, methods=["GET"]))
            found.append(Mount("/demo", StaticFiles(directory=JS_CLIENT_DIR), name="demo"))
        else:  # an installed wheel carries no clients/: say so instead of a bare 404
            log.warning("COUNTERS_DEV_MODE: no demo page, %s is missing", JS_CLIENT_DIR)
    return found
