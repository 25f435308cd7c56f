"""Accounts: users, sign-in sessions (refresh tokens), projects a user reaches,
members and their roles. Plain values in and out; HTTP lives in pulse.auth.

Refresh tokens are ``prt_`` + 256 random bits, stored as their SHA-256 only.
Each use spends the token and issues its successor in the same family; a
spent or revoked token presented again revokes the whole family (whoever holds
the live successor — the user or a thief — must sign in again). Refresh and
sign-out lock the family's row first, so two uses of one token, or a refresh
racing a sign-out, cannot leave a live successor behind.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from pg8000.exceptions import DatabaseError

from pulse.core.projects import check_name, check_text, check_uuid, create_project
from pulse.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from pulse.security.passwords import MAX_CHARS as PASSWORD_MAX
from pulse.security.passwords import MIN_CHARS as PASSWORD_MIN
from pulse.security.passwords import Passwords
from pulse.security.ratelimit import LoginBackoff
from pulse.security.tokens import Issuer
from pulse.storage.postgres import Connection, Database

log = logging.getLogger("pulse.auth")
ROLES = ("owner", "viewer")
EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$")
REFRESH = re.compile(r"^prt_[A-Za-z0-9_-]{43}$")
MAX_PAGE = 1000


# Validation -----------------------------------------------------------------

def check_email(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput.field("email", "is required")
    email = value.strip()
    if len(email) > 254 or not EMAIL.match(email):
        raise InvalidInput.field("email", "is not a valid email address")
    return email


def check_password(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput.field("password", "is required")
    if len(value) < PASSWORD_MIN:
        raise InvalidInput.field("password", f"must be at least {PASSWORD_MIN} characters")
    if len(value) > PASSWORD_MAX:
        raise InvalidInput.field("password", f"must be at most {PASSWORD_MAX} characters")
    return value


def check_role(value: object) -> str:
    if value not in ROLES:
        raise InvalidInput.field("role", "must be 'owner' or 'viewer'")
    return str(value)


def check_refresh_token(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput.field("refresh_token", "is required")
    if not REFRESH.match(value):
        raise InvalidInput.field("refresh_token", "is malformed")
    return value


def check_page(limit: str | None, offset: str | None) -> tuple[int, int]:
    def number(field: str, text: str | None, default: int, low: int, high: int) -> int:
        if text is None:
            return default
        if not text.isdigit() or not low <= int(text) <= high:
            raise InvalidInput.field(field, f"must be an integer from {low} to {high}")
        return int(text)
    return number("limit", limit, 100, 1, MAX_PAGE), number("offset", offset, 0, 0, 10**9)


def body_of(data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInput.field("body", "must be a JSON object")
    return data


def _unique_violation(exc: DatabaseError) -> bool:
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return info.get("C") == "23505"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# Users and sessions ---------------------------------------------------------

@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int

    def as_dict(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "refresh_token": self.refresh_token,
                "token_type": "Bearer", "expires_in": self.expires_in}


class Accounts:
    def __init__(self, db: Database, passwords: Passwords, backoff: LoginBackoff, issuer: Issuer,
                 refresh_ttl_s: int) -> None:
        self.db = db
        self.passwords = passwords
        self.backoff = backoff
        self.issuer = issuer
        self.refresh_ttl_s = refresh_ttl_s

    def register(self, body: dict[str, Any]) -> dict[str, str]:
        email = check_email(body.get("email"))
        password = check_password(body.get("password"))
        full_name = check_text("full_name", body.get("full_name"))
        company = check_text("company", body.get("company"))
        user_id = str(uuid.uuid4())
        try:
            self.db.run(
                "INSERT INTO users (user_id, email, password_hash, full_name, company)"
                " VALUES (CAST(:u AS uuid), :e, :h, :n, :c)",
                u=user_id, e=email, h=self.passwords.hash(password), n=full_name, c=company)
        except DatabaseError as exc:
            if _unique_violation(exc):
                raise Conflict("an account with this email already exists") from exc
            raise
        return {"user_id": user_id, "email": email}

    def login(self, body: dict[str, Any]) -> TokenPair:
        email = check_email(body.get("email"))
        password = body.get("password")
        if not isinstance(password, str) or not password:
            raise InvalidInput.field("password", "is required")
        if len(password) > PASSWORD_MAX:
            raise InvalidInput.field("password", f"must be at most {PASSWORD_MAX} characters")
        email_lower = email.lower()
        self.backoff.check(email_lower)
        rows = self.db.run("SELECT user_id, password_hash FROM users WHERE lower(email) = :e", e=email_lower)
        stored = rows[0][1] if rows else None
        if not self.passwords.check(password, stored):
            self.backoff.failed(email_lower)
            raise Unauthorized("invalid email or password")
        self.backoff.succeeded(email_lower)
        user_id = str(rows[0][0])
        if stored is not None and self.passwords.needs_rehash(stored):
            self.db.run("UPDATE users SET password_hash = :h WHERE user_id = CAST(:u AS uuid) AND password_hash = :old",
                        h=self.passwords.hash(password), u=user_id, old=stored)

        def sign_in(conn: Connection) -> TokenPair:
            family_id = str(uuid.uuid4())
            conn.run("INSERT INTO refresh_families (family_id, user_id) VALUES (CAST(:f AS uuid), CAST(:u AS uuid))",
                     f=family_id, u=user_id)
            return self._pair(conn, user_id, family_id)

        return self.db.transaction(sign_in)

    def refresh(self, body: dict[str, Any]) -> TokenPair:
        token = check_refresh_token(body.get("refresh_token"))
        digest = _digest(token)

        def rotate(conn: Connection) -> TokenPair | None:
            family = _lock_family(conn, digest)
            if family is None:
                return None
            family_id, user_id, revoked = family
            used, expired = conn.run("SELECT used_at IS NOT NULL, expires_at <= now() FROM refresh_tokens"
                                     " WHERE token_sha256 = :h", h=digest)[0]
            if revoked or expired:
                return None
            if used:
                conn.run("UPDATE refresh_families SET revoked_at = now() WHERE family_id = CAST(:f AS uuid)",
                         f=family_id)
                log.warning("spent refresh token presented again: sign-in revoked",
                            extra={"fields": {"user_id": user_id, "family_id": family_id}})
                return None
            conn.run("UPDATE refresh_tokens SET used_at = now() WHERE token_sha256 = :h", h=digest)
            return self._pair(conn, user_id, family_id)

        pair = self.db.transaction(rotate)
        if pair is None:
            raise Unauthorized("refresh token is invalid, expired or already used")
        return pair

    def logout(self, body: dict[str, Any]) -> None:
        digest = _digest(check_refresh_token(body.get("refresh_token")))

        def revoke(conn: Connection) -> None:
            family = _lock_family(conn, digest)
            if family is not None and not family[2]:
                conn.run("UPDATE refresh_families SET revoked_at = now() WHERE family_id = CAST(:f AS uuid)",
                         f=family[0])

        self.db.transaction(revoke)

    def _pair(self, conn: Connection, user_id: str, family_id: str) -> TokenPair:
        """A new refresh token in the family (inside the caller's transaction) and an access token."""
        refresh = "prt_" + secrets.token_urlsafe(32)
        conn.run(
            "INSERT INTO refresh_tokens (token_sha256, family_id, expires_at)"
            " VALUES (:h, CAST(:f AS uuid), now() + make_interval(secs => CAST(:t AS integer)))",
            h=_digest(refresh), f=family_id, t=self.refresh_ttl_s)
        access = self.issuer.issue(user_id)
        return TokenPair(access.token, refresh, access.expires_in)


def _lock_family(conn: Connection, digest: bytes) -> tuple[str, str, bool] | None:
    """The token's family (id, user, revoked), its row locked for this transaction; None for an unknown token."""
    rows = conn.run(
        "SELECT f.family_id, f.user_id, f.revoked_at IS NOT NULL FROM refresh_families f"
        " WHERE f.family_id = (SELECT family_id FROM refresh_tokens WHERE token_sha256 = :h) FOR UPDATE", h=digest)
    return (str(rows[0][0]), str(rows[0][1]), bool(rows[0][2])) if rows else None


# Instance admins: granted to a user id by an operator (`pulse admin grant`) -----

def is_admin(db: Database, user_id: str) -> bool:
    return bool(db.run("SELECT 1 FROM instance_admins WHERE user_id = CAST(:u AS uuid)", u=user_id))


def grant_admin(db: Database, user_id: str) -> dict[str, str]:
    """Make an existing user an instance admin: (user_id, email)."""
    user = check_uuid("user_id", user_id)
    found = db.run(
        "WITH granted AS (INSERT INTO instance_admins (user_id) SELECT user_id FROM users"
        "                 WHERE user_id = CAST(:u AS uuid) ON CONFLICT DO NOTHING)"
        " SELECT email FROM users WHERE user_id = CAST(:u AS uuid)", u=user)
    if not found:
        raise NotFound(f"no user {user}")
    return {"user_id": user, "email": str(found[0][0])}


def revoke_admin(db: Database, user_id: str) -> bool:
    user = check_uuid("user_id", user_id)
    return bool(db.run("DELETE FROM instance_admins WHERE user_id = CAST(:u AS uuid) RETURNING 1", u=user))


def list_admins(db: Database) -> list[dict[str, str]]:
    rows = db.run("SELECT a.user_id::text, u.email, a.granted_at FROM instance_admins a JOIN users u USING (user_id)"
                  " ORDER BY a.granted_at, a.user_id")
    return [{"user_id": u, "email": e, "granted_at": t.isoformat()} for u, e, t in rows]


def list_users(db: Database, limit: int, offset: int) -> list[dict[str, Any]]:
    rows = db.run(
        "SELECT user_id, email, full_name, company, created_at FROM users"
        " ORDER BY created_at, user_id LIMIT CAST(:l AS integer) OFFSET CAST(:o AS integer)", l=limit, o=offset)
    return [{"user_id": str(u), "email": e, "full_name": n, "company": c, "created_at": t.isoformat()}
            for u, e, n, c, t in rows]


# Projects, roles and members ------------------------------------------------

def role_of(db: Database, project_id: str, user_id: str) -> str | None:
    rows = db.run("SELECT role FROM project_members WHERE project_id = CAST(:p AS uuid) AND user_id = CAST(:u AS uuid)",
                  p=project_id, u=user_id)
    return str(rows[0][0]) if rows else None


def require_role(db: Database, project_id: str, user_id: str, needed: str) -> str:
    """The caller's role in the project; 403 when not a member, or a viewer where an owner is needed."""
    role = role_of(db, project_id, user_id)
    if role is None:
        raise Forbidden("you are not a member of this project")
    if needed == "owner" and role != "owner":
        raise Forbidden("only the project's owners may do this")
    return role


def create_owned_project(db: Database, user_id: str, name: object) -> dict[str, object]:
    def create(conn: Connection) -> dict[str, object]:
        project = create_project(conn, name)
        conn.run("INSERT INTO project_members (project_id, user_id, role)"
                 " VALUES (CAST(:p AS uuid), CAST(:u AS uuid), 'owner')", p=project["project_id"], u=user_id)
        return project

    return db.transaction(create)


def projects_of(db: Database, user_id: str) -> list[dict[str, Any]]:
    rows = db.run(
        "SELECT p.project_id, p.name, p.created_at, m.role, p.retention_days FROM project_members m"
        " JOIN projects p USING (project_id) WHERE m.user_id = CAST(:u AS uuid) ORDER BY p.created_at, p.project_id",
        u=user_id)
    return [{"project_id": str(p), "name": n, "created_at": t.isoformat(), "role": r, "retention_days": d}
            for p, n, t, r, d in rows]


MIN_RETENTION_DAYS, MAX_RETENTION_DAYS = 30, 2555


def update_project(db: Database, project_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """``PATCH /v1/projects/{id}``: ``name`` and/or ``retention_days`` (30 to 2555:
    how long the project's events are kept; pulse.core.erasure applies it)."""
    unknown = sorted(set(body) - {"name", "retention_days"})
    if unknown:
        raise InvalidInput.field(str(unknown[0])[:64], "is not a project field")
    if not body:
        raise InvalidInput.field("body", "name or retention_days is required")
    days = body.get("retention_days")
    if "retention_days" in body and (isinstance(days, bool) or not isinstance(days, int)
                                     or not MIN_RETENTION_DAYS <= days <= MAX_RETENTION_DAYS):
        raise InvalidInput.field("retention_days",
                                 f"must be an integer from {MIN_RETENTION_DAYS} to {MAX_RETENTION_DAYS}")
    name = check_name(body["name"]) if "name" in body else None
    rows = db.run(
        "UPDATE projects SET name = coalesce(:n, name), retention_days = coalesce(CAST(:d AS integer), retention_days),"
        " retention_changed_at = CASE WHEN CAST(:d AS integer) IS NULL THEN retention_changed_at ELSE now() END"
        " WHERE project_id = CAST(:p AS uuid) RETURNING project_id, name, created_at, retention_days",
        n=name, d=days, p=project_id)
    if not rows:
        raise NotFound("no such project")
    p, n, t, d = rows[0]
    return {"project_id": str(p), "name": n, "created_at": t.isoformat(), "retention_days": d}


def list_members(db: Database, project_id: str) -> list[dict[str, Any]]:
    rows = db.run(
        "SELECT u.user_id, u.email, m.role, m.added_at FROM project_members m JOIN users u USING (user_id)"
        " WHERE m.project_id = CAST(:p AS uuid) ORDER BY m.added_at, u.user_id", p=project_id)
    return [{"user_id": str(u), "email": e, "role": r, "added_at": t.isoformat()} for u, e, r, t in rows]


def remove_member(db: Database, project_id: str, user_id: str) -> None:
    def remove(conn: Connection) -> None:
        lock_members(conn, project_id)
        current = conn.run("SELECT role FROM project_members WHERE project_id = CAST(:p AS uuid)"
                           " AND user_id = CAST(:u AS uuid)", p=project_id, u=user_id)
        if not current:
            raise NotFound("no such member")
        if current[0][0] == "owner":
            keep_an_owner(conn, project_id)
        conn.run("DELETE FROM project_members WHERE project_id = CAST(:p AS uuid) AND user_id = CAST(:u AS uuid)",
                 p=project_id, u=user_id)

    db.transaction(remove)


def lock_members(conn: Connection, project_id: str) -> None:
    conn.run("SELECT 1 FROM projects WHERE project_id = CAST(:p AS uuid) FOR UPDATE", p=project_id)


def keep_an_owner(conn: Connection, project_id: str) -> None:
    owners = conn.run("SELECT count(*) FROM project_members WHERE project_id = CAST(:p AS uuid) AND role = 'owner'",
                      p=project_id)[0][0]
    if owners <= 1:
        raise Conflict("a project keeps at least one owner")
