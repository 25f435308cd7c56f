"""Internal events: who may POST to ``/_ce/*``.

Pulse uses Knative Eventing's own sender identity (the ``authentication-oidc``
feature): a sender (KafkaSource, a Trigger's dispatcher, PingSource, a
SinkBinding's subject) presents ``Authorization: Bearer <token>``, an OIDC
token for the *audience of its target*. A Knative Service announces no
audience of its own, so the chart sets ``sink.audience`` on the KafkaSource
and ``subscriber.audience`` on each Trigger, and gives each function the same
value (``PULSE_CE_AUDIENCE``). The token is a Kubernetes service-account token
of the sender's own OIDC identity, which Knative names
``<resource name>-oidc-<API group>-<kind>`` (``pkg/auth/serviceaccount.go``).

Every ``/_ce/*`` route verifies, before its handler runs:

- the signature, against the keys of the issuer (``KeySource``: the
  cluster's JWKS from its OIDC discovery document, or the embedded run's own
  key), the algorithm pinned by the key;
- ``iss`` is that issuer, ``aud`` holds this function's audience, ``exp``,
  ``nbf`` and ``iat`` hold (10 s leeway);
- ``sub`` matches one of the allowed subjects (``PULSE_CE_SUBJECTS``, shell
  patterns such as ``system:serviceaccount:pulse:*-oidc-sources.knative.dev-kafkasource``);

and refuses anything else with 401 (nothing configured: everything refused).
A sender presents the same token on every delivery until it renews it, so a
token that passed is remembered (at most ``VERIFIED_TTL_S`` and never past
its ``exp``) rather than its signature checked again per delivery.

Embedded mode plays the same protocol: ``LocalIssuer`` holds a key under the
state directory, the dispatcher and the sink present tokens it mints for the
same audiences and subjects the chart describes, and the functions verify
them with this same code, against that key.
"""

from __future__ import annotations

import fnmatch
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import orjson
import urllib3

from pulse.errors import Unauthorized, Unavailable
from pulse.security.tokens import (
    JWKS_MIN_REFRESH_S,
    LEEWAY_S,
    KeyFileError,
    KeySource,
    VerifyingKey,
    load_ring,
    load_signing_key,
)

log = logging.getLogger("pulse.security")
REQUIRED_CLAIMS = ["exp", "iat", "sub", "iss", "aud"]
VERIFIED_TTL_S = 60.0  # how long a token that passed is taken on trust
VERIFIED_MAX = 1024
LOCAL_ISSUER = "pulse-embedded"
TokenSource = Callable[[], str]


def knative_oidc_subject(namespace: str, name: str, group: str, kind: str) -> str:
    """The subject of the OIDC identity Knative gives a sender resource
    (``kmeta.ChildName(name, "-oidc-<group>-<kind>")``, lower-cased)."""
    suffix = f"-oidc-{group}-{kind}".lower()
    account = (name[:63 - len(suffix)] + suffix).lower()
    return f"system:serviceaccount:{namespace}:{account}"


@dataclass(frozen=True)
class EventAuth:
    """The check every ``/_ce/*`` route of one function makes."""

    keys: KeySource
    issuer: Callable[[], str]
    audience: str | None
    subjects: tuple[str, ...]
    _verified: dict[str, tuple[str, float]] = field(default_factory=dict, compare=False, repr=False)

    def verify(self, authorization: str | None) -> str:
        """The sender's subject, or ``Unauthorized``."""
        if not self.audience or not self.subjects:
            raise Unauthorized("internal events are refused: no audience or sender is configured")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("internal events need Authorization: Bearer <OIDC token>")
        now = time.time()
        known = self._verified.get(token.strip())
        if known is not None and now < known[1]:
            return known[0]
        subject, expires = self._check(token.strip())
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified[token.strip()] = (subject, min(expires, now + VERIFIED_TTL_S))
        return subject

    def _check(self, token: str) -> tuple[str, float]:
        """(subject, exp) of a token whose signature and claims hold; ``Unauthorized`` otherwise."""
        try:
            header = jwt.get_unverified_header(token.strip())
        except jwt.PyJWTError as exc:
            raise Unauthorized("malformed event token") from exc
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or not isinstance(alg, str):
            raise Unauthorized("event token header lacks kid or alg")
        key = self.keys.get(kid)
        if key is None:
            raise Unauthorized("event token signed with an unknown key")
        if alg != key.alg:
            raise Unauthorized(f"event token algorithm {alg[:16]!r} is not allowed")
        try:
            claims = jwt.decode(token.strip(), key.key, algorithms=[key.alg], audience=self.audience,
                                issuer=self.issuer(), leeway=LEEWAY_S, options={"require": REQUIRED_CLAIMS})
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("event token expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid event token: {exc}") from exc
        subject = claims["sub"]
        if not isinstance(subject, str) or not any(fnmatch.fnmatchcase(subject, p) for p in self.subjects):
            raise Unauthorized("this sender may not send internal events here")
        return subject, float(claims["exp"])


# The cluster: Kubernetes' service-account issuer ---------------------------------------

class ClusterIssuer:
    """The issuer and keys of the cluster's service-account tokens, from its
    OIDC discovery document (``<base>/.well-known/openid-configuration``, by
    default the API server's, read with the pod's own token as Knative does),
    then its ``jwks_uri``. Keys are cached for ``ttl_s``; an unknown kid
    refreshes them at most every ``JWKS_MIN_REFRESH_S``; the last good keys
    stay while the API server is unreachable."""

    def __init__(self, discovery_url: str, token_file: str | None, ca_file: str | None, ttl_s: float = 300.0) -> None:
        self.discovery_url = discovery_url.rstrip("/")
        self.token_file = Path(token_file) if token_file else None
        self.ttl_s = ttl_s
        context = ssl.create_default_context(cafile=ca_file) if ca_file and Path(ca_file).is_file() else None
        self.http = urllib3.PoolManager(ssl_context=context, retries=False, timeout=urllib3.Timeout(total=5.0))
        self._issuer = ""
        self._ring: dict[str, VerifyingKey] = {}
        self._fetched = float("-inf")
        self._lock = threading.Lock()

    def _get(self, url: str) -> Any:
        headers = {}
        if self.token_file is not None and self.token_file.is_file():
            headers["Authorization"] = "Bearer " + self.token_file.read_text().strip()
        response = self.http.request("GET", url, headers=headers)
        if response.status != 200:
            raise OSError(f"{url} answered {response.status}")
        return orjson.loads(response.data)

    def _refresh(self) -> None:
        try:
            discovery = self._get(self.discovery_url + "/.well-known/openid-configuration")
            document = self._get(str(discovery["jwks_uri"]))
            ring = {}
            for entry in document["keys"]:
                try:
                    key = VerifyingKey.from_jwk(entry)
                except (KeyFileError, KeyError, TypeError, ValueError):
                    continue
                # Kubernetes names its keys with kids of its own, not RFC 7638 thumbprints.
                ring[str(entry.get("kid") or key.kid)] = key
            issuer = str(discovery["issuer"])
        except (OSError, urllib3.exceptions.HTTPError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            if not self._ring:
                raise Unavailable("cannot fetch the cluster's token keys (OIDC discovery)") from exc
            log.warning("cluster token keys not refreshed: %s", exc)
            self._fetched = time.monotonic() - self.ttl_s + JWKS_MIN_REFRESH_S
            return
        self._issuer, self._ring, self._fetched = issuer, ring, time.monotonic()

    def get(self, kid: str) -> VerifyingKey | None:
        with self._lock:
            age = time.monotonic() - self._fetched
            if age >= self.ttl_s or (kid not in self._ring and age >= JWKS_MIN_REFRESH_S):
                self._refresh()
            return self._ring.get(kid)

    def issuer(self) -> str:
        with self._lock:
            if not self._issuer:
                self._refresh()
            return self._issuer


class TokenFile:
    """A token Knative keeps fresh in a file (a SinkBinding's ``/oidc/token``),
    read again when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._seen: tuple[float, str] = (-1.0, "")

    def __call__(self) -> str:
        stamp = self.path.stat().st_mtime
        if stamp != self._seen[0]:
            self._seen = (stamp, self.path.read_text().strip())
        return self._seen[1]


# Embedded mode: the same protocol with a key of its own --------------------------------

class LocalIssuer:
    """Signs event tokens for the embedded dispatcher, sink and pings, and
    serves as the functions' ``KeySource`` (every PEM key of its directory)."""

    def __init__(self, key_file: Path, ttl_s: int = 3600) -> None:
        self.key_file = key_file
        self.signing = load_signing_key(key_file)
        self.ring = load_ring(key_file)
        self.ttl_s = ttl_s

    def get(self, kid: str) -> VerifyingKey | None:
        return self.ring.get(kid)

    def issuer(self) -> str:
        return LOCAL_ISSUER

    def mint(self, audience: str, subject: str, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        claims = {"iss": LOCAL_ISSUER, "aud": [audience], "sub": subject, "iat": issued, "nbf": issued,
                  "exp": issued + self.ttl_s}
        return jwt.encode(claims, self.signing.key, algorithm=self.signing.alg, headers={"kid": self.signing.kid})

    def source(self, audience: str, subject: str) -> TokenSource:
        """A token for ``audience`` as ``subject``, minted again before it expires."""
        lock = threading.Lock()
        held: dict[str, Any] = {"token": "", "until": 0.0}

        def token() -> str:
            with lock:
                if time.monotonic() >= held["until"]:
                    held["token"] = self.mint(audience, subject)
                    held["until"] = time.monotonic() + self.ttl_s / 2
                return str(held["token"])

        return token


def subjects_of(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())

