"""Demo data for ``pulse up --demo``: a user who signs up, creates a project and
keys through the public auth API, and sample events sent through the gateway
like any client would send them."""

from __future__ import annotations

import random
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import urllib3

from pulse.core.projects import create_project
from pulse.services import Services

PAGES = ["/", "/pricing", "/docs", "/blog", "/signup", "/login", "/dashboard", "/settings"]
COUNTRIES = ["US", "DE", "UA", "FR", "GB", "IN", "BR", "JP"]


@dataclass(frozen=True)
class DemoAccount:
    email: str
    password: str
    project_id: str
    api_key: str  # scopes ingest and read
    access_token: str


def create_demo_account(gateway_url: str, project_name: str = "Demo") -> DemoAccount:
    """Sign up, sign in, create a project and a key (ingest + read), all through the API."""
    http = urllib3.PoolManager()

    def call(path: str, body: dict[str, Any], token: str | None = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = http.request("POST", gateway_url + path, body=orjson.dumps(body), headers=headers)
        if response.status not in (200, 201):
            raise RuntimeError(f"demo {path} failed: {response.status} {response.data[:300]!r}")
        return orjson.loads(response.data)

    email = f"demo-{secrets.token_hex(3)}@example.com"
    password = secrets.token_urlsafe(12)
    call("/v1/auth/register", {"email": email, "password": password, "full_name": "Demo User"})
    token = call("/v1/auth/login", {"email": email, "password": password})["access_token"]
    project_id = call("/v1/projects", {"name": project_name}, token)["project_id"]
    key = call(f"/v1/projects/{project_id}/api-keys", {"name": "demo", "scopes": ["ingest", "read"]}, token)
    return DemoAccount(email, password, project_id, key["api_key"], token)


def create_demo_key(services: Services, name: str = "Demo") -> tuple[str, str]:
    """A project and an API key with both scopes: (project_id, api_key)."""
    project = create_project(services.db, name)
    _, secret = services.keys.create(str(project["project_id"]), "demo", ["ingest", "read"])
    return str(project["project_id"]), secret


def sample_events(count: int, days: int = 14, seed: int = 7, now: datetime | None = None) -> list[dict[str, Any]]:
    """A plausible product's traffic: visitors view pages, some sign up, fewer buy."""
    rng = random.Random(seed)  # noqa: S311 - sample data, reproducible by seed
    now = now or datetime.now(UTC)
    users = [f"user-{n}" for n in range(max(10, count // 20))]
    events: list[dict[str, Any]] = []
    while len(events) < count:
        user = rng.choice(users)
        session = str(uuid.UUID(int=rng.getrandbits(128)))
        start = now - timedelta(days=rng.random() * days)
        steps = ["page_view"] * rng.randint(1, 5)
        if rng.random() < 0.3:
            steps.append("signup")
            if rng.random() < 0.4:
                steps.append("purchase")
        for offset, kind in enumerate(steps):
            event: dict[str, Any] = {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "event_type": kind,
                "occurred_at": (start + timedelta(seconds=30 * offset)).isoformat(),
                "session_id": session,
                "context": {"country": rng.choice(COUNTRIES)},
            }
            if rng.random() < 0.2:
                event["anonymous_id"] = f"anon-{user}"
            else:
                event["user_id"] = user
            if kind == "page_view":
                event["context"]["page"] = {"path": rng.choice(PAGES)}
            if kind == "purchase":
                event["properties"] = {"plan": rng.choice(["basic", "pro"]), "amount": rng.choice([9, 29, 99])}
            events.append(event)
    return events[:count]


def send_events(gateway_url: str, api_key: str, events: list[dict[str, Any]], batch: int = 1000) -> int:
    http = urllib3.PoolManager()
    accepted = 0
    for start in range(0, len(events), batch):
        response = http.request(
            "POST", f"{gateway_url}/v1/events", body=orjson.dumps({"events": events[start:start + batch]}),
            headers={"X-API-Key": api_key, "Content-Type": "application/json"})
        if response.status != 202:
            raise RuntimeError(f"demo ingest failed: {response.status} {response.data[:300]!r}")
        accepted += int(orjson.loads(response.data)["accepted"])
    return accepted
