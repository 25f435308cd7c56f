"""Membership by invitation and admin by user id, through the gateway: inviting
tells nothing about which addresses have accounts and adds nobody; only the
user signed in with the invited address accepts; owners see and revoke open
invitations; invitations are limited per owner and per project; admin rights
come from `pulse admin grant USER_ID`, never from an address."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from werkzeug.test import Client as WsgiClient

from tests.conftest import ROOT
from tests.integration.test_auth import PASSWORD, Client, User, join, problem, signup


@pytest.fixture
def alice(pulse: Any) -> User:
    return signup(pulse)


@pytest.fixture
def bob(pulse: Any) -> User:
    return signup(pulse)


def invite(owner: User, project_id: str, email: str, role: str = "viewer") -> Any:
    return owner.post(f"/v1/projects/{project_id}/members", {"email": email, "role": role})


def test_inviting_answers_the_same_for_any_address_and_adds_nobody(pulse: Any, alice: User, bob: User) -> None:
    project_id = alice.new_project("invites")
    registered = invite(alice, project_id, bob.email)
    unknown = invite(alice, project_id, f"nobody-{uuid.uuid4().hex[:8]}@example.com")
    for answer in (registered, unknown):
        assert answer.status == 202, answer.body
        assert set(answer.json) == {"invitation_id", "status"} and answer.json["status"] == "pending"
    assert registered.headers["Content-Type"] == unknown.headers["Content-Type"]
    # nobody joined: bob is not a member, sees no project, reads nothing
    members = alice.get(f"/v1/projects/{project_id}/members").json
    assert [m["user_id"] for m in members] == [alice.user_id]
    assert bob.get("/v1/projects").json == []
    problem(bob.get(f"/v1/stats/overview?project_id={project_id}"), 403)


def test_the_invitee_sees_and_accepts_and_membership_starts_then(pulse: Any, alice: User, bob: User) -> None:
    project_id = alice.new_project("team")
    invitation = invite(alice, project_id, bob.email.upper(), "viewer").json["invitation_id"]
    [pending] = bob.get("/v1/invitations").json
    assert (pending["invitation_id"], pending["project_id"], pending["project_name"], pending["role"],
            pending["invited_by"], pending["status"]) == (invitation, project_id, "team", "viewer", alice.email, "pending")
    assert alice.get("/v1/invitations").json == []  # invitations are listed to their addressee only
    accepted = bob.post(f"/v1/invitations/{invitation}/accept", None)
    assert accepted.status == 200
    assert accepted.json == {"invitation_id": invitation, "project_id": project_id, "role": "viewer",
                             "status": "accepted"}
    assert [p["project_id"] for p in bob.get("/v1/projects").json] == [project_id]
    assert bob.get(f"/v1/stats/overview?project_id={project_id}").status == 200
    assert bob.post(f"/v1/invitations/{invitation}/accept", None).json == accepted.json  # once is enough
    assert bob.get("/v1/invitations").json == []


def test_only_the_addressee_accepts(pulse: Any, alice: User, bob: User) -> None:
    mallory = signup(pulse)
    project_id = alice.new_project()
    invitation = invite(alice, project_id, bob.email).json["invitation_id"]
    for who in (mallory, alice):
        problem(who.post(f"/v1/invitations/{invitation}/accept", None), 404)
    problem(mallory.post(f"/v1/invitations/{uuid.uuid4()}/accept", None), 404)
    problem(mallory.post("/v1/invitations/not-an-id/accept", None), 400, "invitation_id")
    problem(Client(pulse.gateway_url).post(f"/v1/invitations/{invitation}/accept", None), 401)
    assert bob.post(f"/v1/invitations/{invitation}/accept", None).status == 200
    problem(mallory.post(f"/v1/invitations/{invitation}/accept", None), 404)


def test_owners_see_renew_and_revoke_open_invitations(pulse: Any, alice: User, bob: User) -> None:
    project_id = alice.new_project()
    first = invite(alice, project_id, bob.email, "viewer").json["invitation_id"]
    again = invite(alice, project_id, bob.email.upper(), "owner").json["invitation_id"]
    assert again == first  # one open invitation per address, renewed
    [listed] = alice.get(f"/v1/projects/{project_id}/invitations").json
    assert (listed["invitation_id"], listed["role"]) == (first, "owner")
    problem(bob.get(f"/v1/projects/{project_id}/invitations"), 403)
    assert alice.delete(f"/v1/projects/{project_id}/invitations/{first}").status == 204
    problem(alice.delete(f"/v1/projects/{project_id}/invitations/{first}"), 404)
    assert alice.get(f"/v1/projects/{project_id}/invitations").json == []
    assert bob.get("/v1/invitations").json == []
    problem(bob.post(f"/v1/invitations/{first}/accept", None), 404)
    # an invitation that has expired is no longer open
    expired = invite(alice, project_id, bob.email).json["invitation_id"]
    pulse.services.db.run("UPDATE invitations SET expires_at = now() - interval '1 second'"
                          " WHERE invitation_id = CAST(:i AS uuid)", i=expired)
    assert bob.get("/v1/invitations").json == []
    problem(bob.post(f"/v1/invitations/{expired}/accept", None), 404)


def test_an_invitation_to_an_address_without_account_waits_for_its_registration(pulse: Any, alice: User) -> None:
    email = f"later-{uuid.uuid4().hex[:8]}@example.com"
    project_id = alice.new_project()
    invitation = invite(alice, project_id, email).json["invitation_id"]
    carol = signup(pulse, email)
    assert [i["invitation_id"] for i in carol.get("/v1/invitations").json] == [invitation]
    assert join(alice, carol, project_id, "viewer").status == 200


def test_invitations_are_limited_per_owner_and_per_project(pulse: Any) -> None:
    from pulse.auth import Auth
    from pulse.services import Services

    # a replica of auth with small limits, on the same Postgres (the counters are shared there)
    services = Services(pulse.settings.with_(invite_rate_limit=3, project_invite_rate_limit=4))
    try:
        replica = WsgiClient(Auth(services).wsgi)

        def send(user: User, project_id: str) -> Any:
            return replica.post(f"/v1/projects/{project_id}/members", headers=user.auth,
                                json={"email": f"x-{uuid.uuid4().hex[:8]}@example.com"})

        dave, erin, frank = signup(pulse), signup(pulse), signup(pulse)
        mine = dave.new_project()
        assert [send(dave, mine).status_code for _ in range(4)] == [202, 202, 202, 429]  # 3 per owner
        refused = send(dave, dave.new_project())
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["Content-Type"] == "application/problem+json"
        shared = erin.new_project()
        pulse.services.db.run("INSERT INTO project_members (project_id, user_id, role)"
                              " VALUES (CAST(:p AS uuid), CAST(:u AS uuid), 'owner')", p=shared, u=frank.user_id)
        assert [send(erin, shared).status_code for _ in range(3)] == [202, 202, 202]
        assert [send(frank, shared).status_code for _ in range(2)] == [202, 429]  # 4 per project
    finally:
        services.close()


def run_cli(pulse: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PULSE_POSTGRES_URL": pulse.settings.postgres_url, "PULSE_LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "pulse.cli", "admin", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_admin_is_granted_to_a_user_id_by_the_operator(pulse: Any, alice: User, bob: User) -> None:
    problem(alice.get("/v1/admin/users"), 403)
    granted = run_cli(pulse, "grant", alice.user_id)
    assert granted.returncode == 0, granted.stderr
    assert alice.email in granted.stdout
    assert alice.user_id in run_cli(pulse, "list").stdout
    assert alice.get("/v1/admin/users?limit=1000").status == 200
    problem(bob.get("/v1/admin/users"), 403)
    unknown = run_cli(pulse, "grant", str(uuid.uuid4()))
    assert unknown.returncode == 1 and "no user" in unknown.stderr
    assert run_cli(pulse, "grant", "ops@example.com").returncode == 1  # an address is not a user id
    assert run_cli(pulse, "revoke", alice.user_id).returncode == 0
    problem(alice.get("/v1/admin/users"), 403)


def test_registering_an_address_grants_nothing(pulse: Any) -> None:
    # The attack on address-based admin: register the address an operator listed.
    api = Client(pulse.gateway_url)
    email = f"ops-{uuid.uuid4().hex[:6]}@example.com"
    assert api.post("/v1/auth/register", {"email": email, "password": PASSWORD}).status == 201
    token = api.post("/v1/auth/login", {"email": email, "password": PASSWORD}).json["access_token"]
    problem(api.get("/v1/admin/users", headers={"Authorization": f"Bearer {token}"}), 403)
    env = {**os.environ, "PULSE_ADMIN_EMAILS": email}
    refused = subprocess.run([sys.executable, "-m", "pulse.cli", "admin", "list"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "pulse admin grant USER_ID" in refused.stderr
