"""Membership by invitation.

An owner invites an email address with a role. The answer is the same
whether or not an account has that address (``{invitation_id, status:
"pending"}``), and nothing is looked up about the address then, so inviting
tells the inviter nothing about who has an account, and nobody joins a
project they did not ask to join. The user signed in with that address sees
the invitation (``GET /v1/invitations``) and accepts it; membership starts
then. Inviting the same address to the same project again renews the open
invitation (new role, new expiry) instead of adding one.

An invitation is open until accepted, revoked by an owner, or expired
(``ttl_s``, 7 days by default). Accepting locks the invitation's row and the
project's member list, so an invitation is accepted once, and an acceptance
that would demote the last owner is refused (409) like any other change.

Pulse sends no email and registration does not prove an address: whoever
registers an address first sees the invitations sent to it. Owners see every
open invitation of their project and revoke the ones they did not mean
(docs/security.md).
"""

from __future__ import annotations

import uuid
from typing import Any

from pulse.core.accounts import check_email, check_role, keep_an_owner, lock_members
from pulse.errors import NotFound
from pulse.storage.postgres import Connection, Database

DEFAULT_TTL_S = 7 * 86400


def invite(db: Database, project_id: str, inviter: str, body: dict[str, Any], ttl_s: int) -> dict[str, str]:
    """Open (or renew) the invitation of ``body["email"]`` to the project."""
    email = check_email(body.get("email"))
    role = check_role(body.get("role", "viewer"))
    rows = db.run(
        "INSERT INTO invitations (invitation_id, project_id, email, role, invited_by, expires_at)"
        " VALUES (CAST(:i AS uuid), CAST(:p AS uuid), :e, :r, CAST(:u AS uuid),"
        "         now() + make_interval(secs => CAST(:ttl AS integer)))"
        " ON CONFLICT (project_id, lower(email)) WHERE accepted_at IS NULL AND revoked_at IS NULL DO UPDATE"
        " SET role = EXCLUDED.role, invited_by = EXCLUDED.invited_by, expires_at = EXCLUDED.expires_at"
        " RETURNING invitation_id::text",
        i=str(uuid.uuid4()), p=project_id, e=email, r=role, u=inviter, ttl=ttl_s)
    return {"invitation_id": rows[0][0], "status": "pending"}


def of_project(db: Database, project_id: str) -> list[dict[str, Any]]:
    """The project's open invitations (for its owners)."""
    rows = db.run(
        "SELECT invitation_id::text, email, role, created_at, expires_at FROM invitations"
        " WHERE project_id = CAST(:p AS uuid) AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > now()"
        " ORDER BY created_at, invitation_id", p=project_id)
    return [{"invitation_id": i, "email": e, "role": r, "status": "pending", "created_at": c.isoformat(),
             "expires_at": x.isoformat()} for i, e, r, c, x in rows]


def revoke(db: Database, project_id: str, invitation_id: str) -> None:
    rows = db.run(
        "UPDATE invitations SET revoked_at = now() WHERE invitation_id = CAST(:i AS uuid)"
        " AND project_id = CAST(:p AS uuid) AND accepted_at IS NULL AND revoked_at IS NULL RETURNING 1",
        i=invitation_id, p=project_id)
    if not rows:
        raise NotFound("no such open invitation in this project")


def of_user(db: Database, user_id: str) -> list[dict[str, Any]]:
    """The open invitations to the signed-in user's address."""
    rows = db.run(
        "SELECT i.invitation_id::text, i.project_id::text, p.name, i.role, inviter.email, i.created_at, i.expires_at"
        " FROM invitations i JOIN users u ON lower(i.email) = lower(u.email)"
        " JOIN projects p ON p.project_id = i.project_id"
        " LEFT JOIN users inviter ON inviter.user_id = i.invited_by"
        " WHERE u.user_id = CAST(:u AS uuid) AND i.accepted_at IS NULL AND i.revoked_at IS NULL"
        " AND i.expires_at > now()"
        " ORDER BY i.created_at, i.invitation_id", u=user_id)
    return [{"invitation_id": i, "project_id": p, "project_name": n, "role": r, "invited_by": by,
             "status": "pending", "created_at": c.isoformat(), "expires_at": x.isoformat()}
            for i, p, n, r, by, c, x in rows]


def accept(db: Database, user_id: str, invitation_id: str) -> dict[str, str]:
    """Membership for the signed-in user from an open invitation to their
    address. Accepting one already accepted by the same user answers the same;
    anything else (unknown, someone else's, revoked, expired) is 404."""

    def take(conn: Connection) -> dict[str, str]:
        rows = conn.run(
            "SELECT i.project_id::text, i.role, i.accepted_by::text, i.revoked_at IS NULL AND i.expires_at > now()"
            " FROM invitations i JOIN users u ON lower(i.email) = lower(u.email)"
            " WHERE i.invitation_id = CAST(:i AS uuid) AND u.user_id = CAST(:u AS uuid) FOR UPDATE OF i",
            i=invitation_id, u=user_id)
        if not rows:
            raise NotFound("no such invitation for you")
        project_id, role, accepted_by, usable = rows[0]
        answer = {"invitation_id": invitation_id, "project_id": project_id, "role": role, "status": "accepted"}
        if accepted_by is not None:
            if accepted_by == user_id:
                return answer
            raise NotFound("no such invitation for you")
        if not usable:
            raise NotFound("no such invitation for you (revoked or expired)")
        lock_members(conn, project_id)
        current = conn.run("SELECT role FROM project_members WHERE project_id = CAST(:p AS uuid)"
                           " AND user_id = CAST(:u AS uuid)", p=project_id, u=user_id)
        if current and current[0][0] == "owner" and role != "owner":
            keep_an_owner(conn, project_id)
        conn.run("INSERT INTO project_members (project_id, user_id, role)"
                 " VALUES (CAST(:p AS uuid), CAST(:u AS uuid), :r)"
                 " ON CONFLICT (project_id, user_id) DO UPDATE SET role = EXCLUDED.role",
                 p=project_id, u=user_id, r=role)
        conn.run("UPDATE invitations SET accepted_at = now(), accepted_by = CAST(:u AS uuid)"
                 " WHERE invitation_id = CAST(:i AS uuid)", u=user_id, i=invitation_id)
        return answer

    return db.transaction(take)
