"""Who may read which project's data: the one place read access is decided.

A ``read``-scoped API key reaches its own project; a ``project_id`` given with
it must be that project (otherwise 403, and nothing is read). A bearer token
(verified locally, see pulse.security.tokens) reaches the ``project_id`` it
names when its user is a member of that project, as owner or viewer; the
membership is looked up in Postgres and cached for a few seconds.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

from pulse.errors import Forbidden, InvalidInput, Unauthorized
from pulse.security.keys import KeyStore
from pulse.security.tokens import Verifier
from pulse.storage.postgres import Database
from pulse.web.credentials import Credential

MAX_CACHED = 10000


@dataclass(frozen=True)
class Reader:
    project_id: str
    via: str  # "api_key" or "bearer"
    subject: str  # key id or user id
    role: str = "reader"  # "reader" (API key), "owner" or "viewer"


class Memberships:
    """A user's role in a project, from ``project_members``, cached for ``ttl_s``
    (so a removed member loses access within that time)."""

    def __init__(self, db: Database, ttl_s: float) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self._cache: dict[tuple[str, str], tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def role(self, project_id: str, user_id: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get((project_id, user_id))
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        rows = self.db.run("SELECT role FROM project_members WHERE project_id = CAST(:p AS uuid)"
                           " AND user_id = CAST(:u AS uuid)", p=project_id, u=user_id)
        role = str(rows[0][0]) if rows else None
        with self._lock:
            if len(self._cache) > MAX_CACHED:
                self._cache.clear()
            self._cache[(project_id, user_id)] = (now, role)
        return role


class BearerAccess:
    def __init__(self, verifier: Verifier, memberships: Memberships) -> None:
        self.verifier = verifier
        self.memberships = memberships

    def reader(self, token: str, project_id: str | None) -> Reader:
        claims = self.verifier.verify(token)
        if not project_id:
            raise InvalidInput.field("project_id", "is required with a bearer token")
        try:
            project = str(uuid.UUID(project_id))
        except ValueError as exc:
            raise InvalidInput.field("project_id", "must be a UUID") from exc
        role = self.memberships.role(project, claims.subject)
        if role is None:
            raise Forbidden("you are not a member of this project")
        return Reader(project, "bearer", claims.subject, role)


class ReadAccess:
    def __init__(self, keys: KeyStore, bearer: BearerAccess | None = None) -> None:
        self.keys = keys
        self.bearer = bearer

    def project(self, credential: Credential | None, project_id: str | None) -> Reader:
        if credential is None:
            raise Unauthorized("a read API key (X-API-Key) or a bearer token with project_id is required")
        if credential.kind == "api_key":
            key = self.keys.verify(credential.value, "read")
            if project_id and project_id != key.project_id:
                raise Forbidden("this API key does not reach that project")
            return Reader(key.project_id, "api_key", key.key_id)
        if self.bearer is None:
            raise Unauthorized("bearer tokens are not accepted here (no JWT key or JWKS configured)")
        return self.bearer.reader(credential.value, project_id)
