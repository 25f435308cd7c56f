"""The clients a function holds: Postgres, ClickHouse, the Kafka producer.

Opened on first use, closed at stop, asked for readiness. In the cluster each
function process has its own ``Services`` built from its settings; the
embedded runtime builds one and lets the five functions share it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pulse.security.access import BearerAccess, Memberships, ReadAccess
from pulse.security.keys import KeyStore
from pulse.security.ratelimit import Limit, RateLimiter
from pulse.security.tokens import (
    FileKeys,
    Issuer,
    JwksKeys,
    KeyFileError,
    Verifier,
    load_signing_key,
)
from pulse.settings import RECORD_HEADROOM_BYTES, Settings, SettingsError, redact
from pulse.storage.postgres import Database

if TYPE_CHECKING:  # imported where first used: a function loads only the clients it needs (cold start)
    from pulse.bus.kafka import Producer
    from pulse.security.eventauth import ClusterIssuer, EventAuth, LocalIssuer, TokenSource
    from pulse.storage.clickhouse import ClickHouse

log = logging.getLogger("pulse.services")

# What each function depends on, declared once. `pulse serve` and the embedded
# runtime check these before serving (``Services.verify`` names the one that
# does not answer), /readyz probes the reachable ones (``Services.readiness``),
# and ``shut_down`` closes them when the function stops.
NEEDS: dict[str, tuple[str, ...]] = {
    "host": (),
    "ingest": ("postgres", "kafka"),
    "auth": ("postgres", "signing_key"),
    "persist": ("postgres", "clickhouse"),
    "aggregate": ("postgres", "clickhouse", "token_keys"),
    "export": ("postgres", "clickhouse", "token_keys"),
}
PROBED = ("postgres", "clickhouse", "kafka")


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._db: Database | None = None
        self._ch: ClickHouse | None = None
        self._producer: Producer | None = None
        self._keys: KeyStore | None = None
        self._verifier: Verifier | None = None
        self._issuer: Issuer | None = None
        self._limiter: RateLimiter | None = None
        self._access: ReadAccess | None = None
        self._event_keys: ClusterIssuer | LocalIssuer | None = None
        self.sinks: dict[str, str] = {}
        # Embedded mode: each function's audience and each publisher's token
        # (set by the runtime from the chart's wiring, as ``sinks`` is).
        self.ce_audiences: dict[str, str] = {}
        self.ce_senders: dict[str, tuple[str, ...]] = {}
        self.sink_tokens: dict[str, TokenSource] = {}

    def sink(self, function: str) -> str | None:
        """Where ``function`` publishes CloudEvents: its SinkBinding's address
        (set by the embedded runtime), else ``K_SINK``."""
        return self.sinks.get(function) or self.settings.k_sink

    def sink_token(self, function: str) -> TokenSource | None:
        """The token ``function`` presents when it publishes: minted by the
        embedded runtime, else the one its SinkBinding mounts (when there)."""
        if function in self.sink_tokens:
            return self.sink_tokens[function]
        from pulse.security.eventauth import TokenFile

        path = Path(self.settings.ce_sink_token_file)
        return TokenFile(str(path)) if path.is_file() else None

    @property
    def event_keys(self) -> ClusterIssuer | LocalIssuer:
        """Who issues event tokens: the embedded run's key, else the cluster's issuer."""
        from pulse.security.eventauth import ClusterIssuer, LocalIssuer

        settings = self.settings
        with self._lock:
            if self._event_keys is None:
                if settings.ce_token_key_file:
                    try:
                        self._event_keys = LocalIssuer(Path(settings.ce_token_key_file))
                    except KeyFileError as exc:
                        raise SettingsError(f"PULSE_CE_TOKEN_KEY_FILE: {exc}") from exc
                else:
                    self._event_keys = ClusterIssuer(settings.ce_oidc_discovery_url, settings.ce_oidc_token_file,
                                                     settings.ce_oidc_ca_file)
            return self._event_keys

    def event_auth(self, function: str) -> EventAuth:
        """What ``function``'s ``/_ce/*`` routes accept (pulse.security.eventauth)."""
        from pulse.security.eventauth import EventAuth, subjects_of

        keys = self.event_keys
        return EventAuth(keys, keys.issuer, self.ce_audiences.get(function) or self.settings.ce_audience,
                         self.ce_senders.get(function) or subjects_of(self.settings.ce_subjects))

    @property
    def db(self) -> Database:
        with self._lock:
            if self._db is None:
                self._db = Database(_required(self.settings.postgres_url, "PULSE_POSTGRES_URL"))
            return self._db

    @property
    def ch(self) -> ClickHouse:
        with self._lock:
            if self._ch is None:
                from pulse.storage.clickhouse import ClickHouse, Layout, embedded_caches

                self._ch = ClickHouse(_required(self.settings.clickhouse_url, "PULSE_CLICKHOUSE_URL"),
                                      layout=Layout(self.settings.clickhouse_cluster),
                                      engine_options=embedded_caches(self.settings.chdb_cache_mb),
                                      release_ms=self.settings.chdb_release_ms)
            return self._ch

    @property
    def producer(self) -> Producer:
        with self._lock:
            if self._producer is None:
                from pulse.bus import kafka

                self._producer = kafka.Producer(_required(self.settings.kafka_bootstrap, "PULSE_KAFKA_BOOTSTRAP"),
                                          self.settings.kafka_ack_timeout_s, self.settings.retry_after_s,
                                          self.settings.kafka_max_in_flight,
                                          self.settings.limits.max_record_bytes + RECORD_HEADROOM_BYTES)
            return self._producer

    @property
    def keys(self) -> KeyStore:
        db = self.db
        with self._lock:
            if self._keys is None:
                self._keys = KeyStore(db, self.settings.key_cache_ttl_s)
            return self._keys

    @property
    def verifier(self) -> Verifier | None:
        """Access-token verification from the JWKS URL, else a configured public
        key (file or directory of PEMs), else the signing key's directory; None
        when none is configured."""
        settings = self.settings
        with self._lock:
            if self._verifier is None:
                if settings.jwks_url:
                    keys: JwksKeys | FileKeys = JwksKeys(settings.jwks_url, settings.jwks_cache_ttl_s)
                else:
                    path = settings.jwt_public_key_file or settings.jwt_private_key_file
                    if not path:
                        return None
                    keys = _file_keys(path)
                self._verifier = Verifier(keys, settings.jwt_issuer, settings.jwt_audience)
            return self._verifier

    @property
    def issuer(self) -> Issuer:
        settings = self.settings
        with self._lock:
            if self._issuer is None:
                path = _required(settings.jwt_private_key_file, "PULSE_JWT_PRIVATE_KEY_FILE")
                try:
                    signing = load_signing_key(Path(path))
                except KeyFileError as exc:
                    raise SettingsError(f"PULSE_JWT_PRIVATE_KEY_FILE: {exc}") from exc
                self._issuer = Issuer(signing, settings.jwt_issuer, settings.jwt_audience,
                                      settings.access_token_ttl_s)
            return self._issuer

    @property
    def limiter(self) -> RateLimiter:
        db = self.db
        with self._lock:
            if self._limiter is None:
                self._limiter = RateLimiter(db)
            return self._limiter

    def limit(self, name: str) -> Limit:
        """The configured limit ``ingest``, ``login``, ``register``, ``invite`` or ``project_invite``."""
        settings = self.settings
        return Limit(name, getattr(settings, f"{name}_rate_limit"), getattr(settings, f"{name}_rate_window_s"))

    @property
    def access(self) -> ReadAccess:
        keys, verifier, db = self.keys, self.verifier, self.db
        with self._lock:
            if self._access is None:
                bearer = BearerAccess(verifier, Memberships(db, self.settings.key_cache_ttl_s)) if verifier else None
                self._access = ReadAccess(keys, bearer)
            return self._access

    def readiness(self, function: str) -> Callable[[], dict[str, bool]]:
        """The /readyz checks of ``function``: its reachable dependencies."""
        probed = [need for need in NEEDS[function] if need in PROBED]
        return lambda: self.checks(probed)

    def checks(self, needs: Iterable[str]) -> dict[str, bool]:
        probes = {
            "postgres": lambda: self.db.ping(),
            "clickhouse": lambda: self.ch.ping(),
            "kafka": lambda: self.producer.ready(self.settings.raw_topic),
        }
        out = {}
        for need in needs:
            try:
                out[need] = bool(probes[need]())
            except Exception:  # noqa: BLE001 - readiness reports any failure as failing
                out[need] = False
        return out

    def verify(self, needs: Iterable[str]) -> None:
        """Fail fast, naming the dependency, when a configured one does not answer."""
        urls = {"postgres": self.settings.postgres_url, "clickhouse": self.settings.clickhouse_url,
                "kafka": self.settings.kafka_bootstrap}
        for need in needs:
            if need == "signing_key":
                self.issuer  # noqa: B018 - loading it names the problem
                continue
            if need == "token_keys":
                if self.verifier is None:
                    raise SettingsError("set PULSE_JWKS_URL or PULSE_JWT_PUBLIC_KEY_FILE to verify access tokens")
                continue
            if need == "kafka":
                from pulse.bus import kafka

                ok = kafka.reachable(_required(self.settings.kafka_bootstrap, "PULSE_KAFKA_BOOTSTRAP"))
            else:
                ok = self.checks([need])[need]
            if not ok:
                raise SettingsError(f"{need} at {redact(urls[need] or '')} does not answer")

    def close(self) -> None:
        with self._lock:
            producer, db, ch = self._producer, self._db, self._ch
            self._producer = self._db = self._ch = None
            self._keys = None
            self._limiter = None
            self._access = None
        if producer is not None:
            producer.close()
        if db is not None:
            db.close()
        if ch is not None:
            ch.close()


def _file_keys(path: str) -> FileKeys:
    try:
        return FileKeys(Path(path))
    except KeyFileError as exc:
        raise SettingsError(f"JWT verification keys: {exc}") from exc


def _required(value: str | None, name: str) -> str:
    if not value:
        raise SettingsError(f"{name} is not set (run `pulse up` for embedded services, or set it)")
    return value


def shut_down(timeout_s: float) -> bool:
    """The end of a function process in the cluster (``pulse serve`` calls it in
    each worker once SIGTERM stopped the server taking connections): every
    function the process built refuses new work, finishes the requests it holds
    (within ``timeout_s``), then its clients close, the Kafka producer flushing
    what it still holds. False if some request outlived the bound."""
    from pulse.web.http import HttpFunction

    idle = True
    for function in HttpFunction.built():
        function.begin_stop()
        in_flight = function.in_flight
        done = function.wait_idle(timeout_s)
        function.close()
        services = getattr(function, "services", None)
        if isinstance(services, Services):
            services.close()
        log.info("%s stopped", function.name, extra={"fields": {
            "function": function.name, "in_flight_at_stop": in_flight, "finished": done, "clients_closed": True}})
        idle = idle and done
    return idle
