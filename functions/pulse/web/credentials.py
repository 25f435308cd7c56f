"""Credential extraction shared by the HTTP functions (verification is in pulse.security).

An API key comes as ``X-API-Key: <key>`` or as HTTP Basic with the key as the
user name and an empty password (as Segment sends its write key). An access
token comes as ``Authorization: Bearer <jwt>``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from werkzeug.wrappers import Request

from pulse.errors import Unauthorized

MAX_CREDENTIAL_CHARS = 4096


@dataclass(frozen=True)
class Credential:
    kind: str  # "api_key" or "bearer"
    value: str


def extract(request: Request) -> Credential | None:
    key = request.headers.get("X-API-Key")
    if key:
        return Credential("api_key", _bounded(key.strip()))
    header = request.headers.get("Authorization", "")
    scheme, _, rest = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        try:
            user, _, _password = base64.b64decode(rest.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise Unauthorized("Authorization: malformed Basic credentials") from exc
        if not user:
            raise Unauthorized("Authorization: Basic credentials need the API key as user name")
        return Credential("api_key", _bounded(user))
    if scheme == "bearer" and rest.strip():
        return Credential("bearer", _bounded(rest.strip()))
    return None


def _bounded(value: str) -> str:
    if len(value) > MAX_CREDENTIAL_CHARS:
        raise Unauthorized("credential is too long")
    return value
