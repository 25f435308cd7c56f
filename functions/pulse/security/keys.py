"""API keys: ``pulse_<prefix>_<secret>``. The prefix is public and indexes the
key; only the SHA-256 of the whole key is stored (the secret carries 190
random bits, so a slow KDF adds nothing). Lookups go through a short
in-process cache, positive and negative, whose lifetime bounds how long a
revoked key may still be honoured (``key_cache_ttl_s``, default 2 s < 5 s).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import threading
import time
import uuid
from dataclasses import dataclass

from pulse import telemetry
from pulse.errors import Forbidden, InvalidInput, Unauthorized
from pulse.storage.postgres import Database

SCOPES = frozenset({"ingest", "read"})
ALPHABET = string.ascii_letters + string.digits
PREFIX_CHARS = 8
SECRET_CHARS = 32
LAST_USED_EVERY_S = 60.0


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    project_id: str
    prefix: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"this API key lacks the '{scope}' scope")


def _random(chars: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(chars))


def digest(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode()).digest()


def split_key(api_key: str) -> str | None:
    """The prefix of a well-formed key, else None."""
    parts = api_key.split("_")
    if len(parts) != 3 or parts[0] != "pulse" or len(parts[1]) != PREFIX_CHARS or len(parts[2]) != SECRET_CHARS:
        return None
    return f"pulse_{parts[1]}"


def check_scopes(scopes: list[str] | None) -> list[str]:
    chosen = ["ingest"] if scopes is None else scopes
    if not isinstance(chosen, list) or not chosen or not all(isinstance(s, str) for s in chosen):
        raise InvalidInput.field("scopes", "must be a non-empty list of 'ingest' and/or 'read'")
    unknown = sorted(set(chosen) - SCOPES)
    if unknown:
        raise InvalidInput.field("scopes", f"unknown scope(s): {', '.join(unknown)}")
    return sorted(set(chosen))


class KeyStore:
    def __init__(self, db: Database, cache_ttl_s: float = 2.0) -> None:
        self.db = db
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()

    def create(self, project_id: str, name: str, scopes: list[str] | None = None) -> tuple[ApiKey, str]:
        chosen = check_scopes(scopes)
        prefix = f"pulse_{_random(PREFIX_CHARS)}"
        secret = f"{prefix}_{_random(SECRET_CHARS)}"
        key_id = str(uuid.uuid4())
        self.db.run(
            "INSERT INTO api_keys (key_id, project_id, name, prefix, secret_sha256, scopes)"
            " VALUES (CAST(:k AS uuid), CAST(:p AS uuid), :n, :x, :h, CAST(:s AS text[]))",
            k=key_id, p=project_id, n=name, x=prefix, h=digest(secret), s=chosen,
        )
        return ApiKey(key_id, project_id, prefix, frozenset(chosen)), secret

    def verify(self, api_key: str, scope: str) -> ApiKey:
        """The key's identity when it is valid and holds ``scope``; 401/403 otherwise."""
        found = self.lookup(api_key)
        if found is None:
            raise Unauthorized("unknown or revoked API key")
        found.require(scope)
        self._touch(found)
        telemetry.set_project(found.project_id)
        return found

    def lookup(self, api_key: str) -> ApiKey | None:
        prefix = split_key(api_key)
        if prefix is None:
            return None
        wanted = digest(api_key)
        now = time.monotonic()
        cache_key = wanted.hex()
        with self._lock:
            hit = self._cache.get(cache_key)
        if hit is not None and now - hit[0] < self.cache_ttl_s:
            return hit[1]
        rows = self.db.run(
            "SELECT key_id, project_id, prefix, secret_sha256, scopes FROM api_keys"
            " WHERE prefix = :x AND revoked_at IS NULL", x=prefix)
        found = None
        for key_id, project_id, key_prefix, stored, scopes in rows:
            if hmac.compare_digest(bytes(stored), wanted):
                found = ApiKey(str(key_id), str(project_id), key_prefix, frozenset(scopes))
        with self._lock:
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[cache_key] = (now, found)
        return found

    def _touch(self, key: ApiKey) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last_used.get(key.key_id, -LAST_USED_EVERY_S) < LAST_USED_EVERY_S:
                return
            self._last_used[key.key_id] = now
        self.db.run("UPDATE api_keys SET last_used_at = now() WHERE key_id = CAST(:k AS uuid)", k=key.key_id)

    def list(self, project_id: str) -> list[dict[str, object]]:
        """The project's keys, revoked ones included, never their secrets."""
        rows = self.db.run(
            "SELECT key_id, name, prefix, scopes, created_at, last_used_at, revoked_at FROM api_keys"
            " WHERE project_id = CAST(:p AS uuid) ORDER BY created_at, key_id", p=project_id)
        return [{"key_id": str(k), "name": n, "prefix": x, "scopes": sorted(s), "created_at": c.isoformat(),
                 "last_used_at": u.isoformat() if u else None, "revoked_at": r.isoformat() if r else None}
                for k, n, x, s, c, u, r in rows]

    def revoke(self, project_id: str, key_id: str) -> bool:
        rows = self.db.run(
            "UPDATE api_keys SET revoked_at = now() WHERE key_id = CAST(:k AS uuid)"
            " AND project_id = CAST(:p AS uuid) AND revoked_at IS NULL RETURNING key_id",
            k=key_id, p=project_id)
        return bool(rows)
