"""Shared helpers for the chart tests: offline renders, cached per values."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "pulse"
K8S_VERSION = "1.33.0"
FUNCTIONS = ("ingest", "auth", "persist", "aggregate", "export", "host")
MONITORED = FUNCTIONS[:-1]  # the public host serves no /metrics
NAMESPACE = "pulse"

DB_CREATE = {"database": {"create": True, "postgresUrl": "postgresql://pulse:x@postgres:5432/pulse",
                          "clickhouseUrl": "http://pulse:x@clickhouse:8123/pulse"}}
JWT_CREATE = {"jwt": {"create": True, "keys": {"signing.pem": "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"}}}

# Every option worth rendering on its own; each must render, lint and validate.
PROFILES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "podmonitor": {"monitoring": {"enabled": True, "kind": "PodMonitor", "labels": {"release": "prometheus"}}},
    "servicemonitor": {"monitoring": {"enabled": True, "kind": "ServiceMonitor"}},
    "keda": {"eventing": {"source": {"keda": {"enabled": True}}}},
    "no-routing": {"routing": {"enabled": False}},
    "no-dashboards-no-tests": {"dashboards": {"enabled": False}, "tests": {"enabled": False}},
    "created-secrets": {**DB_CREATE, **JWT_CREATE},
    "exports-emptydir": {"exports": {"persistence": {"enabled": False}},
                         "functions": {"export": {"autoscaling": {"minScale": 1, "maxScale": 1, "scaleToZero": False}}}},
    "otel": {"otel": {"enabled": True, "endpoint": "http://otel-collector.observability:4318"}},
    "hpa-ingest": {"functions": {"ingest": {"autoscaling": {"class": "hpa.autoscaling.knative.dev", "metric": "cpu",
                                                           "target": 70, "minScale": 1, "scaleToZero": False}}}},
    "no-source": {"eventing": {"source": {"enabled": False}}},
    "clickhouse-cluster": {"database": {"clickhouseCluster": "events"}},
}


@functools.cache
def _chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


@functools.cache
def _render_json(values_json: str) -> dict[str, str]:
    return _chart().render(json.loads(values_json), name="pulse", namespace=NAMESPACE)


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    return _render_json(json.dumps(values or {}, sort_keys=True))


def objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path, text in sorted(render(values).items()):
        if path.endswith(".yaml"):
            out.extend(d for d in yaml.safe_load_all(text) if isinstance(d, dict))
    return out


def of_kind(objs: list[dict[str, Any]], kind: str, group: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (group is None or o["apiVersion"].split("/")[0] == group)]


def ksvcs(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return of_kind(objs, "Service", "serving.knative.dev")


def name(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def load_yaml_dir(directory: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))
    return docs


@pytest.fixture(scope="session")
def default_objects() -> list[dict[str, Any]]:
    return objects()
