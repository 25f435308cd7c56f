"""Password hashing: scrypt (memory-hard, in the standard library) with a
per-user 16-byte salt. The parameters travel inside the stored hash
(``scrypt$n$r$p$salt$hash``), so raising the cost later leaves old hashes
verifiable, and a sign-in with an older cost stores a new hash at today's
(``needs_rehash``). Comparison is constant-time, and checking a password for
an unknown account costs the same as for a known one (``Passwords.check`` runs
the KDF against a dummy hash), so timing tells nothing about which emails exist.

The default cost is OWASP's for scrypt: N = 2^17, r = 8, p = 1, which takes
128 MiB and about 0.3 s of one core here (0.07 s at the former 2^15). So that
a flood of sign-ins cannot take the memory, at most ``KDF_SLOTS`` hashes run
at once per process; the others wait their turn.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading

R = 8
P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_CHARS = 8
MAX_CHARS = 1024
KDF_SLOTS = max(2, os.cpu_count() or 2)
_slots = threading.BoundedSemaphore(KDF_SLOTS)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _kdf(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    with _slots:
        return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=HASH_BYTES,
                              maxmem=256 * n * r * p)


def hash_password(password: str, n: int) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    return f"scrypt${n}${R}${P}${_b64(salt)}${_b64(_kdf(password, salt, n, R, P))}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = _kdf(password, _unb64(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, _unb64(expected))


class Passwords:
    """Hashing at one cost, with a dummy hash that makes 'no such user' as slow as 'wrong password'."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._dummy = hash_password(secrets.token_urlsafe(16), n)

    def hash(self, password: str) -> str:
        return hash_password(password, self.n)

    def check(self, password: str, stored: str | None) -> bool:
        if stored is None:
            verify_password(password, self._dummy)
            return False
        return verify_password(password, stored)

    def needs_rehash(self, stored: str) -> bool:
        """True when ``stored`` was made at another cost than today's."""
        parts = stored.split("$")
        return len(parts) != 6 or parts[1:4] != [str(self.n), str(R), str(P)]
