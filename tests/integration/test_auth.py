"""auth end to end on the real embedded stack, through the gateway: sign-up to
stats with only the documented API, sessions, projects, keys, members, admin,
and the attacks a reviewer would try (forged tokens, other tenants' data,
injection-shaped and oversized input).

Every client comes from its own loopback address (127.x.y.z), as distinct
users do, so the per-IP limits on register/login never couple two tests.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import urllib3
from werkzeug.test import Client as WsgiClient

from tests.conftest import Answer, Api, make_event, wait_persisted

PASSWORD = "correct horse battery"


def fresh_ip() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


class Client(Api):
    """The gateway seen from one client address."""

    def __init__(self, base_url: str, source_ip: str | None = None) -> None:
        super().__init__(base_url)
        self.ip = source_ip or fresh_ip()
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=60),
                                        source_address=(self.ip, 0))

    def delete(self, path: str, **kwargs: Any) -> Answer:
        return self.request("DELETE", path, **kwargs)


@dataclass
class User:
    email: str
    password: str
    user_id: str
    api: Client
    access: str
    refresh: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}

    def get(self, path: str) -> Answer:
        return self.api.get(path, headers=self.auth)

    def post(self, path: str, body: Any) -> Answer:
        return self.api.post(path, body, headers=self.auth)

    def delete(self, path: str) -> Answer:
        return self.api.delete(path, headers=self.auth)

    def new_project(self, name: str = "site") -> str:
        answer = self.post("/v1/projects", {"name": name})
        assert answer.status == 201, answer.body
        return str(answer.json["project_id"])

    def new_key(self, project_id: str, scopes: list[str]) -> str:
        answer = self.post(f"/v1/projects/{project_id}/api-keys", {"name": "k", "scopes": scopes})
        assert answer.status == 201, answer.body
        return str(answer.json["api_key"])


def signup(pulse: Any, email: str | None = None) -> User:
    api = Client(pulse.gateway_url)
    email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
    registered = api.post("/v1/auth/register", {"email": email, "password": PASSWORD})
    assert registered.status == 201, registered.body
    tokens = api.post("/v1/auth/login", {"email": email, "password": PASSWORD})
    assert tokens.status == 200, tokens.body
    return User(email, PASSWORD, registered.json["user_id"], api, tokens.json["access_token"],
                tokens.json["refresh_token"])


@pytest.fixture
def alice(pulse: Any) -> User:
    return signup(pulse)


@pytest.fixture
def bob(pulse: Any) -> User:
    return signup(pulse)


def join(owner: User, invitee: User, project_id: str, role: str, email: str | None = None) -> Answer:
    """The owner invites the invitee's address; the invitee accepts: the accept answer."""
    invited = owner.post(f"/v1/projects/{project_id}/members", {"email": email or invitee.email, "role": role})
    assert invited.status == 202 and invited.json["status"] == "pending", invited.body
    return invitee.post(f"/v1/invitations/{invited.json['invitation_id']}/accept", None)


def problem(answer: Answer, status: int, field: str | None = None) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.body[:500])
    assert answer.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = answer.json
    if field is not None:
        assert field in {e["field"] for e in body["errors"]}, body
    return body


# The documented journey ---------------------------------------------------------

def test_new_user_signs_up_creates_project_and_key_sends_events_and_reads_stats(pulse: Any) -> None:
    api = Client(pulse.gateway_url)
    email = f"Founder-{uuid.uuid4().hex[:8]}@Example.com"
    registered = api.post("/v1/auth/register", {"email": email, "password": PASSWORD, "full_name": "Ada",
                                                "company": "Acme"})
    assert registered.status == 201 and registered.json["email"] == email
    assert set(registered.json) == {"user_id", "email"}
    login = api.post("/v1/auth/login", {"email": email.lower(), "password": PASSWORD})
    assert login.status == 200
    assert login.json["token_type"] == "Bearer" and login.json["expires_in"] == 900
    assert login.headers["Cache-Control"] == "no-store"
    bearer = {"Authorization": f"Bearer {login.json['access_token']}"}

    created = api.post("/v1/projects", {"name": "My site"}, headers=bearer)
    assert created.status == 201 and created.json["name"] == "My site"
    project_id = created.json["project_id"]
    listed = api.get("/v1/projects", headers=bearer)
    assert [p["project_id"] for p in listed.json] == [project_id]

    key = api.post(f"/v1/projects/{project_id}/api-keys", {"name": "web"}, headers=bearer)
    assert key.status == 201 and key.json["scopes"] == ["ingest"]
    assert key.json["api_key"].startswith(key.json["prefix"] + "_")

    events = [make_event(event_type=kind, user_id=f"u{n % 4}")
              for n, kind in enumerate(["signup"] * 3 + ["page_view"] * 7 + ["purchase"] * 2)]
    sent = api.post("/v1/events", {"events": events}, headers={"X-API-Key": key.json["api_key"]})
    assert sent.status == 202 and sent.json["accepted"] == len(events)
    wait_persisted(pulse)

    counts = Counter(e["event_type"] for e in events)
    users = {kind: len({e["user_id"] for e in events if e["event_type"] == kind}) for kind in counts}
    expected = sorted(({"event_type": k, "count": c, "users": users[k]} for k, c in counts.items()),
                      key=lambda row: (-row["count"], row["event_type"]))
    stats = api.get(f"/v1/stats/top-events?project_id={project_id}", headers=bearer)
    assert stats.status == 200 and stats.json == expected
    # the ingest-only key cannot read; a read key can
    assert api.get("/v1/stats/top-events", headers={"X-API-Key": key.json["api_key"]}).status == 403
    reader = api.post(f"/v1/projects/{project_id}/api-keys", {"name": "bi", "scopes": ["read"]}, headers=bearer)
    assert api.get("/v1/stats/top-events", headers={"X-API-Key": reader.json["api_key"]}).json == expected


# Accounts and sessions ------------------------------------------------------------

def test_register_rejects_taken_emails_case_insensitively(pulse: Any, alice: User) -> None:
    api = Client(pulse.gateway_url)
    problem(api.post("/v1/auth/register", {"email": alice.email.upper(), "password": PASSWORD}), 409)
    problem(api.post("/v1/auth/register", {"email": "x@example.com", "password": "short"}), 400, "password")
    problem(api.post("/v1/auth/register", {"email": "not-an-email", "password": PASSWORD}), 400, "email")
    missing = problem(api.post("/v1/auth/register", {}), 400, "email")
    assert missing["errors"]


def test_unknown_email_and_wrong_password_get_the_same_401(pulse: Any, alice: User) -> None:
    api = Client(pulse.gateway_url)
    wrong = problem(api.post("/v1/auth/login", {"email": alice.email, "password": "wrong password"}), 401)
    unknown = problem(api.post("/v1/auth/login", {"email": f"nobody-{uuid.uuid4().hex}@example.com",
                                                  "password": "wrong password"}), 401)
    assert (wrong["title"], wrong["detail"]) == (unknown["title"], unknown["detail"])


def test_refresh_rotates_and_reuse_revokes_the_family(pulse: Any, alice: User) -> None:
    api = alice.api
    first = api.post("/v1/auth/refresh", {"refresh_token": alice.refresh})
    assert first.status == 200 and first.json["refresh_token"] != alice.refresh
    assert first.json["token_type"] == "Bearer"
    second = api.post("/v1/auth/refresh", {"refresh_token": first.json["refresh_token"]})
    assert second.status == 200
    # a thief replays the spent first token: 401, and the live successor dies with its family
    problem(api.post("/v1/auth/refresh", {"refresh_token": alice.refresh}), 401)
    problem(api.post("/v1/auth/refresh", {"refresh_token": second.json["refresh_token"]}), 401)
    # another sign-in is another family, untouched
    other = api.post("/v1/auth/login", {"email": alice.email, "password": alice.password})
    assert api.post("/v1/auth/refresh", {"refresh_token": other.json["refresh_token"]}).status == 200


def test_concurrent_reuse_of_one_refresh_token_revokes_the_family(pulse: Any, alice: User) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: Client(pulse.gateway_url).post(
            "/v1/auth/refresh", {"refresh_token": alice.refresh}), range(2)))
    assert sorted(a.status for a in answers) == [200, 401]
    winner = next(a for a in answers if a.status == 200)
    problem(alice.api.post("/v1/auth/refresh", {"refresh_token": winner.json["refresh_token"]}), 401)


def test_expired_refresh_token_is_refused(pulse: Any, alice: User) -> None:
    from pulse.auth import Auth
    from pulse.services import Services

    services = Services(pulse.settings.with_(refresh_token_ttl_s=1))
    try:
        replica = WsgiClient(Auth(services).wsgi)
        pair = replica.post("/v1/auth/login", json={"email": alice.email, "password": alice.password}).json
        digest = hashlib.sha256(pair["refresh_token"].encode()).digest()
        deadline = time.monotonic() + 10
        while pulse.services.db.run("SELECT expires_at > now() FROM refresh_tokens WHERE token_sha256 = :h",
                                    h=digest)[0][0]:
            assert time.monotonic() < deadline, "the 1 s refresh token did not expire"
            time.sleep(0.2)
        problem(alice.api.post("/v1/auth/refresh", {"refresh_token": pair["refresh_token"]}), 401)
    finally:
        services.close()


def test_logout_revokes_the_session(pulse: Any, alice: User) -> None:
    answer = alice.api.post("/v1/auth/logout", {"refresh_token": alice.refresh})
    assert answer.status == 204
    problem(alice.api.post("/v1/auth/refresh", {"refresh_token": alice.refresh}), 401)
    assert alice.api.post("/v1/auth/logout", {"refresh_token": alice.refresh}).status == 204


def test_refresh_tokens_and_passwords_are_stored_hashed(pulse: Any, alice: User) -> None:
    db = pulse.services.db
    stored = db.run("SELECT password_hash FROM users WHERE user_id = CAST(:u AS uuid)", u=alice.user_id)[0][0]
    assert stored.startswith("scrypt$") and PASSWORD not in stored
    tokens = db.run("SELECT token_sha256 FROM refresh_tokens JOIN refresh_families USING (family_id)"
                    " WHERE user_id = CAST(:u AS uuid)", u=alice.user_id)
    assert tokens and all(len(bytes(t[0])) == 32 for t in tokens)
    assert not db.run("SELECT 1 FROM refresh_tokens WHERE encode(token_sha256, 'escape') LIKE :t",
                      t=f"%{alice.refresh}%")


# Tokens ---------------------------------------------------------------------------

def forge(pulse: Any, **claims: Any) -> str:
    """A token signed with the real key (to test claim checks, not signatures)."""
    from pulse.security.tokens import load_signing_key

    signing = load_signing_key(Path(pulse.settings.jwt_private_key_file))
    now = int(time.time())
    body = {"sub": claims.pop("sub"), "iat": now, "exp": now + 600, "iss": "pulse", "aud": "pulse",
            "jti": str(uuid.uuid4()), **claims}
    return jwt.encode(body, signing.key, algorithm=signing.alg, headers={"kid": signing.kid})


def test_jwks_publishes_the_signing_key_and_verifies_tokens_remotely(pulse: Any, alice: User) -> None:
    from pulse.security.tokens import JwksKeys, Verifier

    document = alice.api.get("/.well-known/jwks.json")
    assert document.status == 200 and "max-age" in document.headers["Cache-Control"]
    keys = document.json["keys"]
    assert keys and all(k["kty"] in ("OKP", "EC", "RSA") and "d" not in k and k["kid"] for k in keys)
    header = jwt.get_unverified_header(alice.access)
    assert header["kid"] in {k["kid"] for k in keys} and header["alg"] == "EdDSA"
    remote = Verifier(JwksKeys(pulse.gateway_url + "/.well-known/jwks.json", 300), "pulse", "pulse")
    assert remote.verify(alice.access).subject == alice.user_id


def test_bad_tokens_are_refused_everywhere(pulse: Any, alice: User) -> None:
    import base64
    import json

    project_id = alice.new_project()
    signing_kid = jwt.get_unverified_header(alice.access)["kid"]
    head, body, sig = alice.access.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    from cryptography.hazmat.primitives.asymmetric import ed25519

    stranger = ed25519.Ed25519PrivateKey.generate()
    now = int(time.time())
    bad = {
        "expired": forge(pulse, sub=alice.user_id, iat=now - 7200, exp=now - 3600),
        "wrong audience": forge(pulse, sub=alice.user_id, aud="not-pulse"),
        "wrong issuer": forge(pulse, sub=alice.user_id, iss="not-pulse"),
        "tampered": f"{head}.{b64({**claims, 'sub': str(uuid.uuid4())})}.{sig}",
        "wrong key": jwt.encode({**claims}, stranger, algorithm="EdDSA", headers={"kid": signing_kid}),
        "alg none": f"{b64({'alg': 'none', 'kid': signing_kid})}.{body}.",
        "HS256": jwt.encode({**claims}, "s" * 32, algorithm="HS256", headers={"kid": signing_kid}),
    }
    for name, token in bad.items():
        auth = {"Authorization": f"Bearer {token}"}
        for path in (f"/v1/stats/top-events?project_id={project_id}", "/v1/projects"):
            answer = alice.api.get(path, headers=auth)
            assert answer.status == 401, (name, path, answer.status, answer.body[:200])
    assert alice.get(f"/v1/stats/top-events?project_id={project_id}").status == 200


# Tenants, roles, keys ---------------------------------------------------------------

def read_routes(pulse: Any) -> list[tuple[str, str]]:
    """Every public data route of aggregate and export, path parameters filled."""
    routes = []
    for name in ("aggregate", "export"):
        for route in pulse.functions[name]._handlers.values():
            if not route.path.startswith("/v1/"):
                continue
            path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "user-1" if m.group(1) == "user_id" else str(uuid.uuid4()),
                          route.path)
            routes.append((route.method, path))
    assert ("GET", "/v1/stats/top-events") in routes
    return routes


def test_other_tenants_data_is_out_of_reach_on_every_read_route(pulse: Any, alice: User, bob: User) -> None:
    alices = alice.new_project()
    key = alice.new_key(alices, ["ingest", "read"])
    secret_type = f"alice-secret-{uuid.uuid4().hex[:6]}"
    assert alice.api.post("/v1/events", make_event(event_type=secret_type, user_id="user-1"),
                          headers={"X-API-Key": key}).status == 202
    wait_persisted(pulse)
    bobs = bob.new_project()
    bobs_key = bob.new_key(bobs, ["read"])
    for method, path in read_routes(pulse):
        sep = "&" if "?" in path else "?"
        for headers in ({"Authorization": f"Bearer {bob.access}"}, {"X-API-Key": bobs_key}):
            answer = bob.api.request(method, f"{path}{sep}project_id={alices}", body={} if method == "POST" else None,
                                     headers=headers)
            assert answer.status in (403, 404), (method, path, headers, answer.status, answer.body[:200])
            assert secret_type.encode() not in answer.body
    # and Bob's own key and token see only Bob's (empty) project
    own = bob.api.get("/v1/stats/top-events", headers={"X-API-Key": bobs_key})
    assert own.status == 200 and own.json == []
    for path in (f"/v1/projects/{alices}/api-keys", f"/v1/projects/{alices}/members"):
        problem(bob.get(path), 403)
    problem(bob.post(f"/v1/projects/{alices}/api-keys", {"name": "mine now"}), 403)
    problem(bob.post(f"/v1/projects/{alices}/members", {"email": bob.email, "role": "owner"}), 403)


def test_viewer_reads_stats_but_cannot_manage_and_loses_access_when_removed(pulse: Any, alice: User,
                                                                             bob: User) -> None:
    project_id = alice.new_project()
    added = join(alice, bob, project_id, "viewer", email=bob.email.upper())
    assert added.status == 200 and (added.json["project_id"], added.json["role"]) == (project_id, "viewer")
    members = alice.get(f"/v1/projects/{project_id}/members").json
    assert {(m["user_id"], m["role"]) for m in members} == {(alice.user_id, "owner"), (bob.user_id, "viewer")}
    assert bob.get(f"/v1/stats/top-events?project_id={project_id}").status == 200
    exported = bob.get(f"/v1/export?format=ndjson&project_id={project_id}")
    assert exported.status == 200, exported.body[:300]
    assert [p["role"] for p in bob.get("/v1/projects").json] == ["viewer"]
    problem(bob.post(f"/v1/projects/{project_id}/api-keys", {"name": "k"}), 403)
    problem(bob.get(f"/v1/projects/{project_id}/api-keys"), 403)
    problem(bob.get(f"/v1/projects/{project_id}/members"), 403)
    problem(bob.delete(f"/v1/projects/{project_id}/members/{alice.user_id}"), 403)
    assert alice.delete(f"/v1/projects/{project_id}/members/{bob.user_id}").status == 204
    deadline = time.monotonic() + 5
    while bob.get(f"/v1/stats/top-events?project_id={project_id}").status != 403:
        assert time.monotonic() < deadline, "a removed member still reads after 5 s"
        time.sleep(0.2)


def test_a_project_keeps_an_owner(pulse: Any, alice: User, bob: User) -> None:
    project_id = alice.new_project()
    problem(alice.delete(f"/v1/projects/{project_id}/members/{alice.user_id}"), 409)
    problem(join(alice, alice, project_id, "viewer"), 409)  # accepting a demotion of the last owner
    assert join(alice, bob, project_id, "owner").status == 200
    assert alice.delete(f"/v1/projects/{project_id}/members/{alice.user_id}").status == 204
    problem(alice.get(f"/v1/projects/{project_id}/members"), 403)


def test_api_keys_show_the_secret_once_and_track_use(pulse: Any, alice: User) -> None:
    project_id = alice.new_project()
    created = alice.post(f"/v1/projects/{project_id}/api-keys", {"name": "server", "scopes": ["read", "ingest"]})
    assert created.status == 201 and created.json["scopes"] == ["ingest", "read"]
    secret = created.json["api_key"]
    assert alice.api.post("/v1/events", make_event(), headers={"X-API-Key": secret}).status == 202
    listed = alice.get(f"/v1/projects/{project_id}/api-keys")
    assert listed.status == 200 and secret.encode() not in listed.body
    [row] = listed.json
    assert row["prefix"] == created.json["prefix"] and row["last_used_at"] is not None and row["revoked_at"] is None
    problem(alice.post(f"/v1/projects/{project_id}/api-keys", {"name": "x", "scopes": ["admin"]}), 400, "scopes")
    problem(alice.delete(f"/v1/projects/{project_id}/api-keys/{uuid.uuid4()}"), 404)


def test_admins_list_users_and_everyone_else_gets_403(pulse: Any, alice: User, bob: User) -> None:
    from pulse.core import accounts

    problem(alice.get("/v1/admin/users"), 403)
    problem(alice.api.get("/v1/admin/users"), 401)
    accounts.grant_admin(pulse.services.db, alice.user_id)  # what `pulse admin grant` does (test_invitations)
    try:
        listed = alice.get("/v1/admin/users?limit=1000")
        assert listed.status == 200
        emails = {u["email"] for u in listed.json}
        assert {alice.email, bob.email} <= emails
        assert all("password" not in k for u in listed.json for k in u)
        problem(bob.get("/v1/admin/users"), 403)
        problem(alice.get("/v1/admin/users?limit=0"), 400, "limit")
    finally:
        accounts.revoke_admin(pulse.services.db, alice.user_id)
    problem(alice.get("/v1/admin/users"), 403)


# Hostile input ----------------------------------------------------------------------

INJECTION = "'; DROP TABLE users; --"
HUGE = "x" * 5000


def test_injection_shaped_and_oversized_input_is_400_never_500(pulse: Any, alice: User) -> None:
    api = Client(pulse.gateway_url)
    project_id = alice.new_project()
    cases: list[tuple[str, str, Any, str, bool]] = [
        ("POST", "/v1/auth/register", {"email": INJECTION, "password": PASSWORD}, "email", False),
        ("POST", "/v1/auth/register", {"email": HUGE + "@x.io", "password": PASSWORD}, "email", False),
        ("POST", "/v1/auth/register", {"email": "a@x.io", "password": HUGE}, "password", False),
        ("POST", "/v1/auth/register", {"email": "a@x.io", "password": 12345678}, "password", False),
        ("POST", "/v1/auth/register", {"email": "a@x.io", "password": PASSWORD, "full_name": HUGE}, "full_name", False),
        ("POST", "/v1/auth/register", {"email": "a@x.io", "password": PASSWORD, "company": "\x00" + INJECTION},
         "company", False),
        ("POST", "/v1/auth/register", ["not", "an", "object"], "body", False),
        ("POST", "/v1/auth/login", {"email": INJECTION, "password": PASSWORD}, "email", False),
        ("POST", "/v1/auth/login", {"email": alice.email, "password": HUGE}, "password", False),
        ("POST", "/v1/auth/login", {"email": {"$ne": ""}, "password": PASSWORD}, "email", False),
        ("POST", "/v1/auth/refresh", {"refresh_token": INJECTION}, "refresh_token", False),
        ("POST", "/v1/auth/refresh", {"refresh_token": HUGE}, "refresh_token", False),
        ("POST", "/v1/auth/logout", {"refresh_token": INJECTION}, "refresh_token", False),
        ("POST", "/v1/projects", {"name": HUGE}, "name", True),
        ("POST", "/v1/projects", {"name": ["x"]}, "name", True),
        ("POST", f"/v1/projects/{project_id}/api-keys", {"name": HUGE}, "name", True),
        ("POST", f"/v1/projects/{project_id}/api-keys", {"name": "k", "scopes": INJECTION}, "scopes", True),
        ("POST", f"/v1/projects/{project_id}/members", {"email": INJECTION, "role": "viewer"}, "email", True),
        ("POST", f"/v1/projects/{project_id}/members", {"email": alice.email, "role": INJECTION}, "role", True),
        ("GET", f"/v1/projects/{INJECTION}/api-keys", None, "project_id", True),
        ("GET", f"/v1/projects/{HUGE}/members", None, "project_id", True),
        ("DELETE", f"/v1/projects/{project_id}/api-keys/{INJECTION}", None, "key_id", True),
        ("DELETE", f"/v1/projects/{project_id}/members/{INJECTION}", None, "user_id", True),
        ("GET", f"/v1/stats/top-events?project_id={INJECTION}", None, "project_id", True),
    ]
    for method, path, body, field, signed_in in cases:
        headers = alice.auth if signed_in else {}
        answer = api.request(method, path.replace(" ", "%20"), body=body, headers=headers)
        problem(answer, 400, field)
    raw = api.post("/v1/auth/login", raw=b"{not json", headers={"Content-Type": "application/json"})
    problem(raw, 400, "body")
    assert api.post("/v1/auth/login", raw=b"{" + b" " * 20000 + b"}").status == 413
    # a legitimate address with a quote is just data
    quoted = signup(pulse, email=f"o'brien-{uuid.uuid4().hex[:6]}@example.com")
    assert quoted.get("/v1/projects").status == 200
    assert pulse.services.db.run("SELECT count(*) FROM users")[0][0] >= 3


def test_demo_account_is_made_through_the_public_api(pulse: Any) -> None:
    from pulse.local.demo import create_demo_account, send_events

    demo = create_demo_account(pulse.gateway_url)
    assert send_events(pulse.gateway_url, demo.api_key, [make_event(event_type="demo")]) == 1
    wait_persisted(pulse)
    api = Client(pulse.gateway_url)
    assert api.get("/v1/stats/top-events", headers={"X-API-Key": demo.api_key}).json == [
        {"event_type": "demo", "count": 1, "users": 1}]
    login = api.post("/v1/auth/login", {"email": demo.email, "password": demo.password})
    bearer = {"Authorization": f"Bearer {login.json['access_token']}"}
    assert [p["role"] for p in api.get("/v1/projects", headers=bearer).json] == ["owner"]
