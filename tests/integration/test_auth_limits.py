"""Limits on the real stack: API key revocation honoured by ingest within 5 s,
rate limits that hold across replicas (counters in Postgres), 429 with
Retry-After and recovery, and the back-off on repeated failed sign-ins.

Replicas are extra instances of a function built on their own ``Services``
(own connection pool, own caches) with small limits, sharing only Postgres
(and Kafka), as two pods would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.test import Client as WsgiClient
from werkzeug.test import TestResponse

from tests.conftest import make_event
from tests.integration.test_auth import Client, User, fresh_ip, problem, signup


@pytest.fixture
def replicas(pulse: Any) -> Iterator[Callable[..., Any]]:
    """Build function replicas with changed settings; closed after the test."""
    from pulse.services import Services

    opened: list[Services] = []

    def build(kind: type, **changes: Any) -> Any:
        services = Services(pulse.settings.with_(**changes))
        opened.append(services)
        return kind(services)

    yield build
    for services in opened:
        services.close()


def call(function: Any, method: str, path: str, ip: str, **kwargs: Any) -> TestResponse:
    return WsgiClient(function.wsgi).open(path, method=method, environ_base={"REMOTE_ADDR": ip}, **kwargs)


def window_index(pulse: Any, window_s: int) -> int:
    return int(pulse.services.db.run("SELECT floor(extract(epoch FROM now()) / CAST(:w AS integer))::bigint",
                                     w=window_s)[0][0])


def poll(answer: Callable[[], int], wanted: Callable[[int], bool], timeout_s: float, what: str) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        status = answer()
        if wanted(status):
            return status
        assert time.monotonic() < deadline, f"{what}: still {status} after {timeout_s} s"
        time.sleep(0.1)


def test_revoked_key_is_refused_by_ingest_within_5_seconds(pulse: Any) -> None:
    owner = signup(pulse)
    project_id = owner.new_project()
    key = owner.new_key(project_id, ["ingest"])
    send = lambda: owner.api.post("/v1/events", make_event(), headers={"X-API-Key": key}).status  # noqa: E731
    assert send() == 202
    key_id = owner.get(f"/v1/projects/{project_id}/api-keys").json[0]["key_id"]
    assert owner.delete(f"/v1/projects/{project_id}/api-keys/{key_id}").status == 204
    poll(send, lambda s: s == 401, 5.0, "ingest after revocation")
    listed = owner.get(f"/v1/projects/{project_id}/api-keys").json
    assert listed[0]["revoked_at"] is not None
    problem(owner.delete(f"/v1/projects/{project_id}/api-keys/{key_id}"), 404)


def test_login_limit_per_ip_holds_across_replicas(pulse: Any, replicas: Callable[..., Any]) -> None:
    from pulse.auth import Auth

    limit, window = 3, 60
    one, two = (replicas(Auth, login_rate_limit=limit, login_rate_window_s=window) for _ in range(2))
    for _attempt in range(3):
        ip, start = fresh_ip(), window_index(pulse, window)
        statuses = [call((one, two)[n % 2], "POST", "/v1/auth/login", ip, json={}).status_code
                    for n in range(limit + 1)]
        if window_index(pulse, window) != start:
            continue  # the window turned mid-sequence: count again in a fresh one
        # each replica saw only 2 of the 4 requests: a per-process count would never refuse
        assert statuses == [400] * limit + [429], statuses
        limited = call(one, "POST", "/v1/auth/login", ip, json={})
        assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= window
        assert limited.headers["Content-Type"] == "application/problem+json"
        # a made-up X-Forwarded-For from an untrusted peer changes nothing
        spoofed = call(two, "POST", "/v1/auth/login", ip, json={}, headers={"X-Forwarded-For": fresh_ip()})
        assert spoofed.status_code == 429
        # another address is not affected
        assert call(two, "POST", "/v1/auth/login", fresh_ip(), json={}).status_code == 400
        return
    pytest.fail("could not fit four requests in one window")


def test_register_limit_returns_429_and_recovers(pulse: Any, replicas: Callable[..., Any]) -> None:
    from pulse.auth import Auth

    auth = replicas(Auth, register_rate_limit=2, register_rate_window_s=2)
    ip = fresh_ip()
    statuses = []
    while not statuses or statuses[-1] != 429:
        statuses.append(call(auth, "POST", "/v1/auth/register", ip, json={}).status_code)
        assert len(statuses) <= 5, statuses  # a fixed window admits at most 2 × limit across a boundary
    limited = call(auth, "POST", "/v1/auth/register", ip, json={})
    retry_after = int(limited.headers["Retry-After"])
    assert limited.status_code == 429 and 1 <= retry_after <= 2
    email = f"late-{uuid.uuid4().hex[:8]}@example.com"
    poll(lambda: call(auth, "POST", "/v1/auth/register", ip,
                      json={"email": email, "password": "long enough"}).status_code,
         lambda s: s == 201, retry_after + 3.0, "register after the window")


def test_ingest_limit_per_key_holds_across_replicas_and_recovers(pulse: Any, replicas: Callable[..., Any]) -> None:
    from pulse.ingest import Ingest

    owner = signup(pulse)
    project_id = owner.new_project()
    key, other_key = owner.new_key(project_id, ["ingest"]), owner.new_key(project_id, ["ingest"])
    one, two = (replicas(Ingest, ingest_rate_limit=3, ingest_rate_window_s=2) for _ in range(2))

    def send(n: int, api_key: str = key) -> TestResponse:
        return call((one, two)[n % 2], "POST", "/v1/events", "127.0.0.1", json=make_event(),
                    headers={"X-API-Key": api_key})

    statuses: list[int] = []
    while not statuses or statuses[-1] != 429:
        statuses.append(send(len(statuses)).status_code)
        assert len(statuses) <= 7, statuses
    assert statuses.count(202) >= 3
    limited = send(0)
    assert limited.status_code == 429 and 1 <= int(limited.headers["Retry-After"]) <= 2
    assert send(1, other_key).status_code == 202  # limits are per key
    poll(lambda: send(0).status_code, lambda s: s == 202, 5.0, "ingest after the window")


def test_ingest_limit_covers_keys_sent_in_the_body(pulse: Any, replicas: Callable[..., Any]) -> None:
    from pulse.ingest import Ingest

    owner = signup(pulse)
    key = owner.new_key(owner.new_project(), ["ingest"])
    ingest = replicas(Ingest, ingest_rate_limit=2, ingest_rate_window_s=2)
    statuses: list[int] = []
    while not statuses or statuses[-1] != 429:
        statuses.append(call(ingest, "POST", "/v1/track", "127.0.0.1", json={
            "writeKey": key, "event": "a", "userId": "u", "messageId": uuid.uuid4().hex}).status_code)
        assert len(statuses) <= 5, statuses
    assert set(statuses[:-1]) == {200}


def test_repeated_failed_logins_lock_the_account_briefly(pulse: Any) -> None:
    user: User = signup(pulse)
    api = Client(pulse.gateway_url)
    lock_after = pulse.settings.login_lock_after
    for _ in range(lock_after):
        problem(api.post("/v1/auth/login", {"email": user.email, "password": "wrong guess"}), 401)
    locked = api.post("/v1/auth/login", {"email": user.email.upper(), "password": user.password})
    problem(locked, 429)
    assert int(locked.headers["Retry-After"]) >= 1
    # an unknown email behaves the same, so the lock reveals nothing about who has an account
    ghost = f"ghost-{uuid.uuid4().hex[:8]}@example.com"
    for _ in range(lock_after):
        problem(api.post("/v1/auth/login", {"email": ghost, "password": "wrong guess"}), 401)
    problem(api.post("/v1/auth/login", {"email": ghost, "password": "wrong guess"}), 429)
    poll(lambda: api.post("/v1/auth/login", {"email": user.email, "password": user.password}).status,
         lambda s: s == 200, 5.0, "sign-in after the lock")
    # success clears the count: one more failure does not lock again
    problem(api.post("/v1/auth/login", {"email": user.email, "password": "wrong guess"}), 401)
    assert api.post("/v1/auth/login", {"email": user.email, "password": user.password}).status == 200


def test_leased_counts_never_admit_more_than_the_limit_across_replicas(pulse: Any) -> None:
    from pulse.errors import RateLimited
    from pulse.security.ratelimit import Limit, RateLimiter
    from pulse.storage.postgres import Database

    limit = Limit("test", 300, 3600)  # leases of 3
    databases = [Database(pulse.settings.postgres_url) for _ in range(3)]
    limiters = [RateLimiter(db) for db in databases]
    try:
        for _attempt in range(3):
            subject, start = uuid.uuid4().hex, window_index(pulse, limit.window_s)
            admitted = 0
            for n in range(400):
                try:
                    limiters[n % 3].hit(limit, subject)
                    admitted += 1
                except RateLimited:
                    pass
            if window_index(pulse, limit.window_s) == start:
                assert limit.limit - 3 * 3 <= admitted <= limit.limit
                return
        pytest.fail("could not stay in one window")
    finally:
        for db in databases:
            db.close()
