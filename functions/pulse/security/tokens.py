"""Access tokens: JWTs signed with an asymmetric key, verified locally.

auth signs with one private key (``PULSE_JWT_PRIVATE_KEY_FILE``: Ed25519,
EC P-256 or RSA ≥ 2048 in PEM). Every other PEM in the same directory is a
verification-only key, published in the JWKS next to the signing key, so
tokens signed before a rotation stay valid until they expire. The ``kid`` is
the key's RFC 7638 thumbprint.

Verifiers (aggregate, export) never call auth per request: they hold the
keys from a configured PEM file or directory (``PULSE_JWT_PUBLIC_KEY_FILE``)
or the JWKS fetched from auth (``PULSE_JWKS_URL``) and cached. The algorithm
is pinned by the key: a token must name a known ``kid`` and exactly that
key's algorithm, so ``alg: none``, HS256 signed with a public key, or any
other algorithm swap is refused before a signature is even looked at.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from pulse.errors import Unauthorized, Unavailable

if TYPE_CHECKING:  # PyJWT and cryptography are imported where first used: ingest needs neither
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

LEEWAY_S = 10
JWKS_MIN_REFRESH_S = 10.0
REQUIRED_CLAIMS = ["exp", "iat", "sub", "iss", "aud", "jti"]


class KeyFileError(ValueError):
    """A key file is missing, unreadable or of an unsupported type."""


def algorithm_for(key: PublicKey | PrivateKey) -> str:
    """The one algorithm a key may be used with."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name != "secp256r1":
            raise KeyFileError(f"EC keys must be P-256, not {key.curve.name}")
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise KeyFileError("RSA keys must have at least 2048 bits")
        return "RS256"
    raise KeyFileError(f"unsupported key type {type(key).__name__} (use Ed25519, EC P-256 or RSA)")


def public_jwk(key: PublicKey) -> dict[str, str]:
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    alg = algorithm_for(key)
    codec = {"EdDSA": OKPAlgorithm, "ES256": ECAlgorithm, "RS256": RSAAlgorithm}[alg]
    jwk: dict[str, str] = codec.to_jwk(key, as_dict=True)  # type: ignore[attr-defined]
    jwk = {k: v for k, v in jwk.items() if k in ("kty", "crv", "x", "y", "n", "e")}
    return {**jwk, "kid": thumbprint(jwk), "alg": alg, "use": "sig"}


def thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, without whitespace."""
    members = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class VerifyingKey:
    kid: str
    alg: str
    key: PublicKey

    @classmethod
    def of(cls, key: PublicKey) -> VerifyingKey:
        jwk = public_jwk(key)
        return cls(jwk["kid"], jwk["alg"], key)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> VerifyingKey:
        import jwt

        try:
            key = jwt.PyJWK(dict(jwk)).key
        except jwt.PyJWTError as exc:
            raise KeyFileError(f"unusable JWK: {exc}") from exc
        found = cls.of(key)
        if jwk.get("alg") not in (None, found.alg):
            raise KeyFileError(f"JWK {found.kid} claims alg {jwk.get('alg')}, its key type allows {found.alg}")
        return found


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    key: PrivateKey


def _read_pem(path: Path) -> PrivateKey | PublicKey:
    from cryptography.hazmat.primitives import serialization

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror}") from exc
    try:
        if b"PRIVATE KEY" in data:
            return serialization.load_pem_private_key(data, password=None)  # type: ignore[return-value]
        return serialization.load_pem_public_key(data)  # type: ignore[return-value]
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM key ({exc})") from exc


def _public(key: PrivateKey | PublicKey) -> PublicKey:
    return key.public_key() if hasattr(key, "public_key") else key


def load_ring(path: Path) -> dict[str, VerifyingKey]:
    """Every PEM key in ``path`` (a directory) or in its directory (a file), by kid."""
    folder = path if path.is_dir() else path.parent
    files = sorted(folder.glob("*.pem")) if folder.is_dir() else []
    if not path.is_dir() and path not in files:
        files.append(path)
    ring = {}
    for file in files:
        found = VerifyingKey.of(_public(_read_pem(file)))
        ring[found.kid] = found
    if not ring:
        raise KeyFileError(f"{path}: no PEM key found")
    return ring


def load_signing_key(path: Path) -> SigningKey:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    key = _read_pem(path)
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise KeyFileError(f"{path}: the signing key must be a private key")
    public = VerifyingKey.of(key.public_key())
    return SigningKey(public.kid, public.alg, key)


def generate_key_file(path: Path) -> Path:
    """A new Ed25519 private key in PEM, readable by the owner only."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    path.parent.mkdir(parents=True, exist_ok=True)
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return path


def jwks(ring: Mapping[str, VerifyingKey]) -> dict[str, Any]:
    return {"keys": [public_jwk(k.key) for k in ring.values()]}


@dataclass(frozen=True)
class AccessToken:
    token: str
    expires_in: int
    jti: str


class Issuer:
    def __init__(self, signing: SigningKey, issuer: str, audience: str, ttl_s: int) -> None:
        self.signing = signing
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = ttl_s

    def issue(self, subject: str, now: float | None = None) -> AccessToken:
        import jwt

        issued = int(time.time() if now is None else now)
        jti = str(uuid.uuid4())
        claims = {"sub": subject, "iat": issued, "nbf": issued, "exp": issued + self.ttl_s,
                  "iss": self.issuer, "aud": self.audience, "jti": jti}
        token = jwt.encode(claims, self.signing.key, algorithm=self.signing.alg,
                           headers={"kid": self.signing.kid, "typ": "JWT"})
        return AccessToken(token, self.ttl_s, jti)


class FileKeys:
    """The PEM keys of a file's directory (or a directory), read again every
    ``reload_s`` so a key added to a mounted Secret is published and trusted
    without a restart. A read that fails keeps the last good keys."""

    def __init__(self, path: Path, reload_s: float = 30.0) -> None:
        self.path = path
        self.reload_s = reload_s
        self._ring = load_ring(path)
        self._loaded = time.monotonic()
        self._lock = threading.Lock()

    def ring(self) -> dict[str, VerifyingKey]:
        with self._lock:
            if time.monotonic() - self._loaded >= self.reload_s:
                with contextlib.suppress(KeyFileError):
                    self._ring = load_ring(self.path)
                self._loaded = time.monotonic()
            return self._ring

    def get(self, kid: str) -> VerifyingKey | None:
        return self.ring().get(kid)


Fetch = Callable[[str], bytes]


def http_fetch(url: str) -> bytes:
    import urllib3

    response = urllib3.request("GET", url, timeout=urllib3.Timeout(total=5.0), retries=False)
    if response.status != 200:
        raise OSError(f"JWKS answered {response.status}")
    return response.data


class JwksKeys:
    """The JWKS from auth, cached for ``ttl_s``; an unknown kid triggers a refresh
    at most every ``JWKS_MIN_REFRESH_S`` (so random kids cannot make us hammer auth)."""

    def __init__(self, url: str, ttl_s: float, fetch: Fetch = http_fetch) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.fetch = fetch
        self._ring: dict[str, VerifyingKey] = {}
        self._fetched = float("-inf")
        self._lock = threading.Lock()

    def get(self, kid: str) -> VerifyingKey | None:
        with self._lock:
            age = time.monotonic() - self._fetched
            if age >= self.ttl_s or (kid not in self._ring and age >= JWKS_MIN_REFRESH_S):
                self._refresh()
            return self._ring.get(kid)

    def _refresh(self) -> None:
        import urllib3

        try:
            document = orjson.loads(self.fetch(self.url))
            ring = {}
            for entry in document["keys"]:
                try:
                    key = VerifyingKey.from_jwk(entry)
                except (KeyFileError, KeyError, TypeError, ValueError):
                    continue
                ring[key.kid] = key
        except (OSError, urllib3.exceptions.HTTPError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            if not self._ring:
                raise Unavailable("cannot fetch the signing keys (JWKS)") from exc
            self._fetched = time.monotonic() - self.ttl_s + JWKS_MIN_REFRESH_S  # keep the old keys, retry soon
            return
        self._ring = ring
        self._fetched = time.monotonic()


class KeySource(Protocol):
    def get(self, kid: str) -> VerifyingKey | None: ...


@dataclass(frozen=True)
class Claims:
    subject: str
    jti: str
    expires_at: int


class Verifier:
    def __init__(self, keys: KeySource, issuer: str, audience: str) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience

    def verify(self, token: str) -> Claims:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized("malformed access token") from exc
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or not isinstance(alg, str):
            raise Unauthorized("access token header lacks kid or alg")
        key = self.keys.get(kid)
        if key is None:
            raise Unauthorized("access token signed with an unknown key")
        if alg != key.alg:
            raise Unauthorized(f"access token algorithm {alg[:16]!r} is not allowed")
        try:
            claims = jwt.decode(token, key.key, algorithms=[key.alg], audience=self.audience, issuer=self.issuer,
                                leeway=LEEWAY_S, options={"require": REQUIRED_CLAIMS})
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("access token expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid access token: {exc}") from exc
        subject = claims["sub"]
        if not isinstance(subject, str) or not _is_uuid(subject):
            raise Unauthorized("invalid access token subject")
        return Claims(subject, str(claims["jti"]), int(claims["exp"]))


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
