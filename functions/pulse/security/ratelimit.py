"""Rate limits that hold across replicas, and the back-off on failed sign-ins.

Counters live in Postgres (``rate_counters``), one row per bucket per fixed
window, bumped by atomic upserts, so every replica of a function counts into
the same row. Window boundaries come from the database clock, not the
replica's. So that a busy key does not cost a database write per request, a
replica claims counts in leases of 1% of the limit (at least 1) and spends
them locally until the lease or the window runs out: the replicas together
never admit more than the limit; they may refuse up to one lease per replica
early. A request over the limit is answered 429 with ``Retry-After`` (the
seconds left in the window) and still counts, so a client that keeps
hammering stays limited until it waits.

Failed sign-ins are counted per lower-cased email (``login_failures``),
whether or not the account exists. From the ``lock_after``-th failure in a
row the account is locked for 1 s, then 2 s, 4 s… up to ``max_lock_s``; while
locked, sign-in answers 429 without looking at the password. A success
clears the count.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from dataclasses import dataclass

from pulse.errors import RateLimited
from pulse.storage.postgres import Database

SWEEP_EVERY = 500
LEASE_FRACTION = 100
MAX_LEASES = 10000


@dataclass(frozen=True)
class Limit:
    name: str
    limit: int
    window_s: int


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(remote_addr: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address. When the peer is a trusted proxy, walk
    X-Forwarded-For from the right past trusted proxies: the first address not
    among them is the client (entries further left are client-controlled)."""
    peer = remote_addr or "unknown"
    if not trusted or not forwarded_for or not _within(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",")][-64:]
    for hop in reversed(hops):
        if not _within(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer
    return peer


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def lock_seconds(failures: int, lock_after: int, max_lock_s: int) -> int:
    """How long an account stays locked after ``failures`` failed sign-ins in a row."""
    if failures < lock_after:
        return 0
    return min(max_lock_s, 2 ** min(failures - lock_after, 30))


@dataclass
class _Lease:
    left: int
    ends_at: float  # time.monotonic() when the window ends


class RateLimiter:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._claims = 0
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()

    def hit(self, limit: Limit, subject: str) -> None:
        """Count one request by ``subject``; 429 when it is over ``limit``."""
        bucket = f"{limit.name}:{subject}"
        with self._lock:
            lease = self._leases.get(bucket)
            if lease is not None and lease.left > 0 and time.monotonic() < lease.ends_at:
                lease.left -= 1
                return
        size = max(1, limit.limit // LEASE_FRACTION)
        hits, left_s = self._claim(bucket, limit.window_s, size)
        granted = min(size, limit.limit - (hits - size))
        if granted <= 0:
            raise RateLimited(f"rate limit: {limit.limit} {limit.name} requests per {limit.window_s} s",
                              max(1, math.ceil(left_s)))
        with self._lock:
            if len(self._leases) > MAX_LEASES:
                now = time.monotonic()
                self._leases = {k: v for k, v in self._leases.items() if v.ends_at > now}
            self._leases[bucket] = _Lease(granted - 1, time.monotonic() + left_s)

    def _claim(self, bucket: str, window_s: int, size: int) -> tuple[int, float]:
        """Add ``size`` to the bucket's count in the current window: (count, seconds left in the window)."""
        rows = self.db.run(
            "WITH w AS (SELECT floor(extract(epoch FROM now()) / CAST(:win AS integer))::bigint AS idx,"
            "                  extract(epoch FROM now())::float8 AS at),"
            " up AS (INSERT INTO rate_counters AS c (bucket, window_idx, hits, expires_at)"
            "        SELECT :b, w.idx, CAST(:n AS integer), to_timestamp((w.idx + 1) * CAST(:win AS integer)) FROM w"
            "        ON CONFLICT (bucket, window_idx) DO UPDATE SET hits = c.hits + EXCLUDED.hits"
            "        RETURNING c.hits, c.window_idx)"
            " SELECT up.hits, (up.window_idx + 1) * CAST(:win AS integer) - w.at FROM up, w",
            b=bucket, win=window_s, n=size)
        with self._lock:
            self._claims += 1
            sweep = self._claims % SWEEP_EVERY == 0
        if sweep:
            self.db.run("DELETE FROM rate_counters WHERE expires_at < now() - interval '1 minute'")
        return int(rows[0][0]), float(rows[0][1])


class LoginBackoff:
    def __init__(self, db: Database, lock_after: int, max_lock_s: int) -> None:
        self.db = db
        self.lock_after = lock_after
        self.max_lock_s = max_lock_s

    def check(self, email_lower: str) -> None:
        rows = self.db.run(
            "SELECT extract(epoch FROM locked_until - now())::float8 FROM login_failures"
            " WHERE email_lower = :e AND locked_until > now()", e=email_lower)
        if rows:
            raise RateLimited("too many failed sign-ins for this account; wait and try again",
                              max(1, math.ceil(rows[0][0])))

    def failed(self, email_lower: str) -> None:
        rows = self.db.run(
            "INSERT INTO login_failures AS f (email_lower, failures, last_at) VALUES (:e, 1, now())"
            " ON CONFLICT (email_lower) DO UPDATE SET"
            "   failures = CASE WHEN f.last_at < now() - make_interval(secs => CAST(:reset AS integer))"
            "                   THEN 1 ELSE f.failures + 1 END,"
            "   last_at = now()"
            " RETURNING failures", e=email_lower, reset=self.max_lock_s)
        seconds = lock_seconds(int(rows[0][0]), self.lock_after, self.max_lock_s)
        if seconds:
            self.db.run("UPDATE login_failures SET locked_until = now() + make_interval(secs => CAST(:s AS integer))"
                        " WHERE email_lower = :e", e=email_lower, s=seconds)

    def succeeded(self, email_lower: str) -> None:
        self.db.run("DELETE FROM login_failures WHERE email_lower = :e", e=email_lower)
