"""The OpenAPI documents: one per HTTP function in ``docs/openapi/``, and the
public host's merged document built from them.

A function's public operations are those a client may call through the one
public host: everything but its own probes (``/healthz``, ``/readyz``,
``/metrics``, ``/openapi.json``, which the host answers for all of them) and
the CloudEvent deliveries under ``/_ce/``, which only the eventing layer
reaches. The merge keeps each operation as written; shared components must be
identical across documents (they are the same problem and security schemes),
and a clash is an error at start, not a silently wrong document.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

OPENAPI_DIR = Path(__file__).resolve().parents[3] / "docs" / "openapi"
FUNCTION_DOCUMENTS = ("ingest", "auth", "aggregate", "export", "persist")
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
INTERNAL_PREFIX = "/_ce/"


def load(name: str, directory: Path = OPENAPI_DIR) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((directory / f"{name}.json").read_text())
    return document


def is_public(path: str) -> bool:
    return path not in PROBE_PATHS and not path.startswith(INTERNAL_PREFIX)


def merge(own: Mapping[str, Any], functions: Mapping[str, Mapping[str, Any]],
          servers: list[dict[str, str]]) -> dict[str, Any]:
    """The public host's document: ``own`` (its probes, this document, /docs)
    plus every public operation of ``functions`` (name → document), tagged
    with the function that serves it (``x-pulse-function``); an operationId
    two functions use is prefixed with the function's name."""
    merged: dict[str, Any] = {
        "openapi": own["openapi"],
        "info": copy.deepcopy(own["info"]),
        "servers": servers,
        "paths": {},
        "components": {},
    }
    sources = [("host", own, lambda _path: True)] + [(name, doc, is_public) for name, doc in functions.items()]
    shared = _shared_operation_ids([(name, doc, keep) for name, doc, keep in sources])
    for name, document, keep in sources:
        for path, item in document.get("paths", {}).items():
            if not keep(path):
                continue
            if path in merged["paths"]:
                raise ValueError(f"{path} is documented by two functions")
            item = copy.deepcopy(item)
            for operation in item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                operation["x-pulse-function"] = name
                if operation.get("operationId") in shared:
                    operation["operationId"] = f"{name}-{operation['operationId']}"
            merged["paths"][path] = item
        for section, entries in document.get("components", {}).items():
            into = merged["components"].setdefault(section, {})
            for key, value in entries.items():
                if key in into and into[key] != value:
                    raise ValueError(f"components.{section}.{key} differs between documents ({name})")
                into[key] = copy.deepcopy(value)
    merged["tags"] = sorted(({"name": t} for t in _tags(merged["paths"])), key=lambda t: t["name"])
    return merged


def _shared_operation_ids(sources: list[tuple[str, Mapping[str, Any], Any]]) -> set[str]:
    """operationIds that more than one document uses (each is then prefixed with its function)."""
    users: dict[str, set[str]] = {}
    for name, document, keep in sources:
        for path, item in document.get("paths", {}).items():
            for operation in item.values():
                if keep(path) and isinstance(operation, dict) and operation.get("operationId"):
                    users.setdefault(operation["operationId"], set()).add(name)
    return {op_id for op_id, names in users.items() if len(names) > 1}


def _tags(paths: Mapping[str, Any]) -> set[str]:
    return {tag for item in paths.values() for op in item.values() if isinstance(op, dict)
            for tag in op.get("tags", [])}
