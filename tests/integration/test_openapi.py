"""Each HTTP function serves its OpenAPI document, and the document lists
exactly the routes the function registers: no route undocumented, no
documented route missing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import urllib3

DOCS = Path(__file__).resolve().parents[2] / "docs" / "openapi"
FUNCTIONS = ("ingest", "auth", "persist", "aggregate", "export")
DOCUMENTS = (*FUNCTIONS, "host")  # host.json: the public host's own routes (its /openapi.json merges them all)
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def openapi_paths(rule: str) -> set[str]:
    """werkzeug ``/a/<path:user_id>`` → OpenAPI ``/a/{user_id}``; ``<any(x,y):kind>`` → each of its paths.
    Trailing slashes are not significant (routes are not strict about them)."""
    choice = re.search(r"<any\(([^)]*)\):[^>]+>", rule)
    if choice:
        return set().union(*(openapi_paths(rule.replace(choice.group(0), option.strip()))
                             for option in choice.group(1).split(",")))
    return {normal(re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule))}


def normal(path: str) -> str:
    return path.rstrip("/") or "/"


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), normal(path)) for path, item in doc["paths"].items() for method in item
            if method in METHODS}


@pytest.mark.parametrize("name", DOCUMENTS)
def test_documented_routes_are_the_registered_routes(pulse: Any, name: str) -> None:
    doc = json.loads((DOCS / f"{name}.json").read_text())
    assert doc["openapi"].startswith("3.1")
    function = pulse.host if name == "host" else pulse.functions[name]
    registered = {(method, path) for method, rule in function.registered_routes()
                  for path in openapi_paths(rule)}
    assert documented(doc) - registered == set(), "documented but not served"
    assert registered - documented(doc) == set(), "served but not documented"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_function_serves_its_document(pulse: Any, name: str) -> None:
    answer = urllib3.request("GET", pulse.url(name) + "/openapi.json", retries=False, timeout=10)
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    assert json.loads(answer.data) == json.loads((DOCS / f"{name}.json").read_text())


def test_documents_resolve_their_references() -> None:
    for name in DOCUMENTS:
        doc = json.loads((DOCS / f"{name}.json").read_text())
        text = json.dumps(doc)
        for ref in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
            node: Any = doc
            for part in ref.split("/"):
                assert part in node, f"{name}: unresolved $ref #/{ref}"
                node = node[part]
        for path, item in doc["paths"].items():
            for method, operation in item.items():
                params = {p["name"] for p in operation.get("parameters", []) if "name" in p and p.get("in") == "path"}
                assert params == set(re.findall(r"{([^}]+)}", path)), f"{name} {method} {path}: path parameters"
