"""The public host explains itself: probes, one OpenAPI document, the API
reference page, and an ``X-Request-ID`` on every answer. Checked from the
outside, over HTTP, with an independent OpenAPI validator."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
import pytest
import urllib3
from openapi_spec_validator import validate

from tests.conftest import make_event

METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def http() -> urllib3.PoolManager:
    return urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=30))


def fetch(http: urllib3.PoolManager, base: str, method: str, path: str, **kwargs: Any) -> Any:
    return http.request(method, base + path, preload_content=True, **kwargs)


def test_probes_answer_for_the_whole_of_pulse(pulse: Any, http: urllib3.PoolManager) -> None:
    alive = fetch(http, pulse.gateway_url, "GET", "/healthz")
    assert alive.status == 200 and orjson.loads(alive.data)["status"] == "ok"
    ready = fetch(http, pulse.gateway_url, "GET", "/readyz")
    body = orjson.loads(ready.data)
    assert ready.status == 200, body
    assert body["functions"] == {f: "ready" for f in ("aggregate", "auth", "export", "ingest", "persist")}
    assert body["not_ready"] == []


def test_one_document_lists_every_public_operation(pulse: Any, http: urllib3.PoolManager) -> None:
    answer = fetch(http, pulse.gateway_url, "GET", "/openapi.json")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("application/json")
    doc = orjson.loads(answer.data)
    validate(doc)  # OpenAPI 3.1, by a validator that shares no code with Pulse
    assert doc["servers"] == [{"url": pulse.gateway_url, "description": "Pulse"}]

    for name in ("ingest", "auth", "aggregate", "export"):
        own = orjson.loads(urllib3.request("GET", pulse.url(name) + "/openapi.json").data)
        public = {p for p in own["paths"] if p not in ("/healthz", "/readyz", "/metrics", "/openapi.json")
                  and not p.startswith("/_ce/")}
        assert public, name
        for path in public:
            assert doc["paths"][path].keys() == own["paths"][path].keys(), path
            for method, operation in doc["paths"][path].items():
                assert operation["x-pulse-function"] == name
                # the route table of the chart sends the path to that same function
                concrete = re.sub(r"{[^}]+}", "x", path)
                assert pulse.wiring.route_for(concrete) == name, (method, path)
    assert not [p for p in doc["paths"] if p.startswith("/_ce/")], "CloudEvent deliveries are not public"
    assert {"/healthz", "/readyz", "/openapi.json", "/docs"} <= doc["paths"].keys()
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values() if "operationId" in op]
    assert len(ids) == len(set(ids))


def test_every_answer_carries_a_request_id(pulse: Any, project: Any, http: urllib3.PoolManager) -> None:
    """Every documented path with every documented method, with and without a
    credential, plus paths nobody serves: the header is always there, and the
    client's own id comes back when it sent one."""
    doc = orjson.loads(fetch(http, pulse.gateway_url, "GET", "/openapi.json").data)
    tried = 0
    for path, item in doc["paths"].items():
        concrete = re.sub(r"{[^}]+}", "00000000-0000-0000-0000-000000000000", path)
        for method in item:
            if method not in METHODS or path == "/v1/stats/live":
                continue
            for headers in ({}, {"X-API-Key": project.key, "Content-Type": "application/json"}):
                answer = fetch(http, pulse.gateway_url, method.upper(), concrete, headers=headers,
                               body=b"{}" if method != "get" else None)
                assert re.fullmatch(r"[0-9a-f]{32}", answer.headers.get("X-Request-ID", "")), (method, path)
                tried += 1
    assert tried > 60
    for method, path in (("GET", "/nothing/here"), ("GET", "/metrics"), ("DELETE", "/healthz"),
                         ("GET", "/docs/../../pyproject.toml"), ("POST", "/v1/events")):
        mine = f"client-{uuid.uuid4().hex[:8]}"
        answer = fetch(http, pulse.gateway_url, method, path, headers={"X-Request-ID": mine})
        assert answer.headers["X-Request-ID"] == mine, (method, path)
        if answer.status >= 400:
            problem = orjson.loads(answer.data)
            assert answer.headers["Content-Type"] == "application/problem+json"
            assert problem["request_id"] == mine
    not_mine = fetch(http, pulse.gateway_url, "GET", "/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", not_mine.headers["X-Request-ID"])


def test_a_function_sees_the_request_id_the_client_gets(pulse: Any, project: Any, http: urllib3.PoolManager) -> None:
    answer = fetch(http, pulse.gateway_url, "POST", "/v1/events", body=orjson.dumps(make_event()),
                   headers={"X-API-Key": project.key, "Content-Type": "application/json"})
    assert answer.status == 202
    request_id = answer.headers["X-Request-ID"]
    traced = fetch(http, pulse.gateway_url, "GET", "/v1/stats/nope", headers={"X-API-Key": project.key})
    assert traced.status == 404
    assert orjson.loads(traced.data)["request_id"] == traced.headers["X-Request-ID"]
    assert request_id != traced.headers["X-Request-ID"]


def test_the_reference_page_is_served_by_pulse_alone(pulse: Any, http: urllib3.PoolManager) -> None:
    page = fetch(http, pulse.gateway_url, "GET", "/docs")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.data.decode()
    assert "<script>" not in html and "style=" not in html and "<style" not in html, "nothing inline"
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "nothing from another host"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    for asset in re.findall(r"(?:src|href)=\"(/docs/[^\"]+)\"", html):
        answer = fetch(http, pulse.gateway_url, "GET", asset)
        assert answer.status == 200 and len(answer.data) > 100, asset
    bundle = fetch(http, pulse.gateway_url, "GET", "/docs/swagger-ui-bundle.js")
    assert b"SwaggerUIBundle" in bundle.data
