"""Shared fixtures. Integration tests start the real embedded services once per
run (Postgres, the chDB engine, the Tansu broker, the five functions, the
gateway and the dispatcher) and isolate themselves by project.

chDB opens one engine path per process, so everything in this pytest process
shares the runtime's path; tests that need another path run a subprocess.
"""

from __future__ import annotations

import gzip
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import urllib3

ROOT = Path(__file__).resolve().parents[1]


def make_event(**overrides: Any) -> dict[str, Any]:
    """A valid event; each test states only what it varies."""
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": "page_view",
        "user_id": "user-1",
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not None}


@dataclass
class Answer:
    status: int
    body: bytes
    headers: Any

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


class Api:
    """A plain HTTP client for the gateway."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=60))

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                raw: bytes | None = None, gzip_body: bool = False, key: str | None = None,
                fields: Any = None) -> Answer:
        sent = dict(headers or {})
        api_key = key if key is not None else self.api_key
        if api_key and "Authorization" not in sent and "X-API-Key" not in sent:
            sent["X-API-Key"] = api_key
        data = raw
        if body is not None:
            data = orjson.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        if gzip_body and data is not None:
            data = gzip.compress(data)
            sent["Content-Encoding"] = "gzip"
        response = self.http.request(method, self.base_url + path, body=data, headers=sent, fields=fields)
        return Answer(response.status, response.data, response.headers)

    def get(self, path: str, **kwargs: Any) -> Answer:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Answer:
        return self.request("POST", path, body, **kwargs)


@pytest.fixture(scope="session")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from pulse.local.runtime import Runtime
    from pulse.settings import Settings

    state = tmp_path_factory.mktemp("pulse-state")
    # ingest in this process, so tests can look inside it (logs, spans, routes); test_cli
    # runs `pulse up` as users do, with ingest in a process of its own.
    runtime = Runtime(Settings(state_dir=state, gateway_port=0, kafka_ack_timeout_s=2.0, ingest_processes=0)).start()
    yield runtime
    runtime.stop()


@dataclass
class Project:
    project_id: str
    key: str
    api: Api


@pytest.fixture
def project(pulse: Any) -> Project:
    """A fresh project with an ingest+read key: tests never see each other's data."""
    from pulse.local.demo import create_demo_key

    project_id, key = create_demo_key(pulse.services, f"test-{uuid.uuid4().hex[:8]}")
    return Project(project_id, key, Api(pulse.gateway_url, key))


def wait_persisted(pulse: Any, timeout_s: float = 60.0) -> None:
    """Wait until every record now in Kafka has been delivered to persist."""
    assert pulse.drain(timeout_s), "the dispatcher did not deliver every record in time"
