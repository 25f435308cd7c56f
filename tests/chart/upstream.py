"""The upstream material the chart and manifests are held against, read from
``upstream/`` (see upstream/PROVENANCE.yaml and upstream/refresh.sh).

``validate(obj)`` checks a custom resource as the API server would with strict
field validation (``kubectl apply --validate=strict``, the default): its
apiVersion must be a served version of a vendored CRD, and the object must
match that version's ``openAPIV3Schema`` as a structural schema: types,
required fields, enums, patterns, bounds, and no field the schema does not
declare unless ``x-kubernetes-preserve-unknown-fields`` keeps it. CEL rules
(``x-kubernetes-validations``) are not evaluated here; a live apply runs them.

``configmaps()`` are the upstream default ConfigMaps, ``known_keys`` what a
component reads from one (its data keys and the keys of its ``_example``).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / "upstream"
CORE_GROUPS = ("", "apps", "batch", "policy", "rbac.authorization.k8s.io", "networking.k8s.io")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


@functools.cache
def provenance() -> dict[str, Any]:
    return yaml.safe_load((UPSTREAM / "PROVENANCE.yaml").read_text())["sources"]


def vendored_files() -> list[Path]:
    return sorted(p for p in UPSTREAM.rglob("*.yaml") if p.name != "PROVENANCE.yaml")


@functools.cache
def crds() -> dict[tuple[str, str, str], dict[str, Any]]:
    """(group, version, kind) -> the served version's openAPIV3Schema."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in vendored_files():
        for doc in _docs(path):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if version.get("served", False):
                    schema = version.get("schema", {}).get("openAPIV3Schema") or spec.get("validation", {}).get(
                        "openAPIV3Schema")
                    out[(spec["group"], version["name"], spec["names"]["kind"])] = schema
    return out


def group_version(obj: dict[str, Any]) -> tuple[str, str]:
    api = obj["apiVersion"]
    return (api.split("/")[0], api.split("/")[1]) if "/" in api else ("", api)


def is_core(obj: dict[str, Any]) -> bool:
    return group_version(obj)[0] in CORE_GROUPS


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 structural schema as JSON Schema (draft 4) with strict
    pruning semantics: undeclared fields are errors."""
    out = copy.deepcopy(schema)
    _strict(out)
    return out


def _strict(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _strict(item)
        return
    if not isinstance(node, dict):
        return
    if node.pop("x-kubernetes-int-or-string", False):
        node.pop("type", None)
        node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
    preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
    if node.pop("x-kubernetes-embedded-resource", False):
        props = node.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    for key in [k for k in node if k.startswith("x-kubernetes-")]:
        node.pop(key)
    node.pop("format", None)  # int32, date-time, ...: checked by the API server's own decoders
    is_object = node.get("type") == "object" or "properties" in node
    if is_object and not preserve and "additionalProperties" not in node:
        node["additionalProperties"] = False
    for key in ("properties", "patternProperties", "definitions"):
        for child in node.get(key, {}).values():
            _strict(child)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict | list):
            _strict(node[key])
    for key in ("anyOf", "oneOf", "allOf"):
        for child in node.get(key, []):
            _strict(child)


@functools.cache
def _validator(group: str, version: str, kind: str) -> jsonschema.Draft4Validator:
    schema = structural(crds()[(group, version, kind)])
    # metadata is validated as ObjectMeta by the API server, not by the CRD schema
    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
    for field in ("apiVersion", "kind"):
        schema["properties"].setdefault(field, {"type": "string"})
    return jsonschema.Draft4Validator(schema)


def validate(obj: dict[str, Any]) -> list[str]:
    """Every reason the API server would refuse ``obj`` by its CRD's schema."""
    group, version = group_version(obj)
    key = (group, version, obj.get("kind", ""))
    where = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    if key not in crds():
        served = sorted(f"{g}/{v}" for g, v, k in crds() if k == obj.get("kind"))
        return [f"{where}: no matches for kind {key[2]!r} in version {obj['apiVersion']!r}"
                + (f" (served: {', '.join(served)})" if served else "")]
    errors = [f"{where}: {'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
              for e in _validator(*key).iter_errors(obj)]
    errors += [f"{where}: metadata.{e}" for e in _metadata_errors(obj.get("metadata", {}))]
    return errors


def _metadata_errors(meta: dict[str, Any]) -> list[str]:
    errors = []
    name = meta.get("name", "")
    if not name or len(name) > 253:
        errors.append(f"name {name!r} must be 1-253 characters")
    for field in ("labels", "annotations"):
        for k, v in (meta.get(field) or {}).items():
            if not isinstance(v, str):
                errors.append(f"{field}.{k}: must be a string, not {type(v).__name__}")
    for k, v in (meta.get("labels") or {}).items():
        if isinstance(v, str) and len(v) > 63:
            errors.append(f"labels.{k}: must be at most 63 characters")
    return errors


@functools.cache
def configmaps() -> dict[tuple[str, str], dict[str, Any]]:
    """(namespace, name) -> the upstream default ConfigMap."""
    out = {}
    for path in vendored_files():
        for doc in _docs(path):
            if doc.get("kind") == "ConfigMap":
                out[(doc["metadata"]["namespace"], doc["metadata"]["name"])] = doc
    return out


def known_keys(cm: dict[str, Any]) -> set[str]:
    data = cm.get("data") or {}
    keys = set(data) - {"_example"}
    example = yaml.safe_load(data.get("_example", "")) if "_example" in data else None
    if isinstance(example, dict):
        keys |= set(example)
    return keys


def properties(text: str) -> dict[str, str]:
    """A Java .properties text (as Knative's data-plane ConfigMaps hold) as a dict."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out
