"""The OpenAPI 3.1 contract: served, complete, and held against a real `counters serve` by
Schemathesis (no 5xx, every status, header and body as the document says)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Mount, Route

from api.app import create_app
from api.errors import AWARD_CODE, ERROR_CODES, XP_CODE
from api.openapi import OPERATIONS, document
from counters.errors import RequestError
from counters.settings import Settings
from tests.support.core import SERVICE_KEY

ROOT = Path(__file__).resolve().parents[2]


def test_every_route_is_in_the_document(settings: Settings) -> None:
    app = create_app(settings)
    served = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route) and not isinstance(route, Mount)
        for method in route.methods or ()
        if method != "HEAD"
    }
    undocumented = {"/openapi.json", "/docs", "/docs/init.js"}
    documented = {(op.method, op.path) for op in OPERATIONS}
    assert {r for r in served if r[1] not in undocumented} == documented
    assert set(document()["paths"]) == {op.path for op in OPERATIONS}
    assert document()["openapi"] == "3.1.0"


def test_every_ref_in_the_document_resolves_within_it() -> None:
    """A parameter's schema was ``{"$ref": "#/$defs/Period", "$defs": ...}``: ``#`` is the
    document's root, which has no ``$defs`` (reviewer helper-66)."""
    spec = document()

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [ref for value in node.values() for ref in refs(value)]
        if isinstance(node, list):
            return [ref for value in node for ref in refs(value)]
        return []

    def resolves(ref: str) -> bool:  # a JSON pointer (RFC 6901) from the document's root
        node: object = spec
        for token in ref.removeprefix("#/").split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or token not in node:
                return False
            node = node[token]
        return True

    found = refs(spec)
    assert found and all(ref.startswith("#/") for ref in found)
    assert [ref for ref in found if not resolves(ref)] == []


def test_the_document_is_valid_openapi() -> None:
    """The whole document against the OpenAPI 3.1 specification's schema, as a client's code
    generator or gateway would check it (openapi-spec-validator)."""
    validate(document())


def test_every_code_an_answer_can_carry_is_documented() -> None:
    def codes(kind: type[RequestError]) -> set[str]:
        return {kind.code} | {c for sub in kind.__subclasses__() for c in codes(sub)}

    raised = {
        match
        for path in [*ROOT.glob("counters/**/*.py"), *ROOT.glob("api/**/*.py")]
        for match in re.findall(r'code="([a-z_]+)"', path.read_text())
    }
    used = codes(RequestError) | raised | set(AWARD_CODE.values()) | set(XP_CODE.values())
    assert used <= set(ERROR_CODES), used - set(ERROR_CODES)
    enum = document()["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"]
    assert enum == list(ERROR_CODES)


@pytest.mark.anyio
async def test_openapi_json_and_the_docs_page_with_local_assets(
    client: httpx2.AsyncClient,
) -> None:
    spec = await client.get("/openapi.json")
    assert spec.status_code == 200
    assert spec.json() == document()
    page = await client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(asset.startswith("/docs/") for asset in assets)  # nothing from a CDN
    for asset in assets:
        served = await client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 20
    bundle = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert b"SwaggerUIBundle" in bundle.content


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_the_live_service_keeps_its_contract(live_url: str, redis_url: str) -> None:
    """Every operation of the served document, a few generated requests each, sent with the
    service key (so most reach the domain); bounded: ~4 examples per operation, seconds."""
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len(OPERATIONS)
    headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=4,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def conforms(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, timeout=10, checks=CHECKS)

        conforms()


@pytest.mark.anyio
async def test_the_demo_page_only_in_dev_mode(
    client: httpx2.AsyncClient, settings: Settings
) -> None:
    assert (await client.get("/demo")).json()["code"] == "not_found"
    app = create_app(replace(settings, dev_mode=True))
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://counters") as dev:
        moved = await dev.get("/demo?token=t")
        assert moved.status_code == 307
        assert moved.headers["location"] == "/demo/demo.html?token=t"
        page = await dev.get("/demo/demo.html")
        assert page.status_code == 200 and "<level-progress" in page.text
        module = await dev.get("/demo/src/client.js")
        assert "javascript" in module.headers["content-type"]
        assert "export async function silentExpGain" in module.text
