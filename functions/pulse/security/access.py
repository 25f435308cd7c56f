"""Who may read which project's data: the one place read access is decided.

A ``read``-scoped API key reaches its own project; a ``project_id`` given with
it must be that project (otherwise 403, and nothing is read).
"""

from __future__ import annotations

from dataclasses import dataclass

from pulse.errors import Forbidden, Unauthorized
from pulse.security.keys import KeyStore
from pulse.web.credentials import Credential


@dataclass(frozen=True)
class Reader:
    project_id: str
    via: str  # "api_key" or "bearer"
    subject: str  # key id or user id


class ReadAccess:
    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    def project(self, credential: Credential | None, project_id: str | None) -> Reader:
        if credential is None:
            raise Unauthorized("a read API key (X-API-Key) or a bearer token with project_id is required")
        if credential.kind == "api_key":
            key = self.keys.verify(credential.value, "read")
            if project_id and project_id != key.project_id:
                raise Forbidden("this API key does not reach that project")
            return Reader(key.project_id, "api_key", key.key_id)
        raise Unauthorized("bearer tokens are not accepted here yet")
