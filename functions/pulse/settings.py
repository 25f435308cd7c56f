"""Pulse settings, read once.

Precedence, highest first: the process environment, then the TOML file named
by ``PULSE_CONFIG_FILE`` (keys are the variable names without the ``PULSE_``
prefix, lower case), then the defaults below. A bad value fails at start with
the variable named; secrets are never printed (see ``Settings.describe``).

A dependency left unset (``PULSE_POSTGRES_URL``, ``PULSE_CLICKHOUSE_URL``,
``PULSE_KAFKA_BOOTSTRAP``) means "start the embedded one" under ``state_dir``
when running ``pulse up``; a function started on its own requires them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
# The largest Kafka record any hop reads or writes (persist's body limit, the
# consumers' fetch sizes); pulse.bus.kafka uses them.
MAX_RECORD_BYTES = 16 * 1024 * 1024
# What a record carries besides its value: CloudEvent attributes as headers
# (and a dead letter's knativeerror* extensions), Kafka's framing.
RECORD_HEADROOM_BYTES = 64 * 1024
# How long the embedded engine's allocator keeps memory a query freed (PULSE_CHDB_RELEASE_MS);
# pulse.storage.clickhouse uses it.
CHDB_RELEASE_MS = 1000


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


@dataclass(frozen=True)
class Limits:
    """Input limits, enforced by ingest and documented in the README."""

    max_batch_events: int = 1000
    max_body_bytes: int = 5 * 1024 * 1024
    # The largest Kafka record value ingest writes: a batch whose encoding is
    # larger (escaping can nearly double a body) goes out as several records.
    # Every hop after ingest allows this plus RECORD_HEADROOM_BYTES (above);
    # tests/chart checks the topics and Knative's data planes.
    max_record_bytes: int = 6 * 1024 * 1024
    max_properties_bytes: int = 32 * 1024
    max_future_skew_s: int = 300
    max_event_type_chars: int = 128
    max_id_chars: int = 256
    max_text_chars: int = 2048
    # POST /v1/import: a file may inflate to at most this many bytes, hold at
    # most this many lines (empty ones count) and take at most this long.
    max_import_bytes: int = 1 << 30
    max_import_lines: int = 2_000_000
    max_import_seconds: int = 600


@dataclass(frozen=True)
class Settings:
    state_dir: Path = Path(".pulse")
    postgres_url: str | None = None
    clickhouse_url: str | None = None
    # The ClickHouse cluster (remote_servers name) whose shards and replicas hold
    # the tables in their cluster form (docs/scaling.md); empty: one node.
    clickhouse_cluster: str = ""
    kafka_bootstrap: str | None = None
    raw_topic: str = "pulse.events.raw"
    dlq_topic: str = "pulse.events.dlq"
    raw_topic_partitions: int = 4
    events_ttl_days: int = 365
    ledger_retention_days: int = 30
    host: str = "127.0.0.1"
    gateway_port: int = 8080
    k_sink: str | None = None
    key_cache_ttl_s: float = 2.0
    kafka_ack_timeout_s: float = 5.0
    kafka_max_in_flight: int = 64
    # ingest: requests of one project answered together share one record of
    # at most this many events (0: a record per request), each downstream step
    # being paid per record; a round about to be sent waits up to
    # ingest_linger_s for requests still being read (pulse.core.ingestion).
    ingest_coalesce_events: int = 1000
    ingest_linger_s: float = 0.002
    # ingest's write-ahead spool (pulse.bus.spool): set by `pulse up` to
    # <state_dir>/spool when it runs the embedded broker, which keeps records
    # in memory only. At most spool_max_bytes not yet persisted.
    spool_dir: str | None = None
    spool_max_bytes: int = 1 << 30
    spool_segment_s: float = 5.0
    # Embedded dispatcher: records in flight to each KafkaSource's sink (persist
    # groups the claims and inserts of those in flight, so more means larger
    # inserts, at a thread each on both sides).
    dispatch_window: int = 128
    # The embedded ClickHouse engine's caches, in all (pulse.storage.clickhouse.CACHE_SHARES).
    chdb_cache_mb: int = 128
    # How long the embedded engine's allocator keeps memory a query freed before giving it
    # back to the system (pulse.storage.clickhouse.embedded_allocator).
    chdb_release_ms: int = CHDB_RELEASE_MS
    shutdown_timeout_s: float = 20.0
    # Embedded mode: ingest runs in this many processes of its own (0: inside
    # the main process); the gateway spreads its requests over them.
    ingest_processes: int = 1
    retry_after_s: int = 2
    max_range_days: int = 731
    # Where the export function writes async export files (default <state_dir>/exports).
    export_dir: str | None = None
    log_level: str = "INFO"
    # json (one JSON object a line, on stderr) or console (short lines for a
    # person at a terminal; `pulse up` picks it when stdout is a terminal).
    log_format: str = "json"
    # The public host (pulse.host): its address as clients use it, for the
    # ``servers`` of /openapi.json (default: the address the request came to),
    # and, in the cluster, each function's address for /readyz (name=url,...).
    public_url: str | None = None
    host_functions: str = ""
    limits: Limits = field(default_factory=Limits)
    # Accounts and tokens (docs/security.md).
    jwt_private_key_file: str | None = None
    jwt_public_key_file: str | None = None
    jwks_url: str | None = None
    jwks_cache_ttl_s: float = 300.0
    jwt_issuer: str = "pulse"
    jwt_audience: str = "pulse"
    access_token_ttl_s: int = 900
    refresh_token_ttl_s: int = 30 * 86400
    # Internal events (/_ce/*, docs/security.md): the audience of this function
    # (the chart's sink/subscriber audience), the senders allowed (shell
    # patterns of token subjects), and where the cluster's issuer is found.
    ce_audience: str | None = None
    ce_subjects: str = ""
    ce_oidc_discovery_url: str = "https://kubernetes.default.svc"
    ce_oidc_token_file: str | None = None
    ce_oidc_ca_file: str | None = None
    # The token a SinkBinding mounts for publishing to the Broker.
    ce_sink_token_file: str = "/oidc/token"  # noqa: S105 - a path, not a secret
    # Embedded mode: the key that signs and verifies event tokens.
    ce_token_key_file: str | None = None
    # Invitations (docs/security.md): open for this long; at most N per window
    # by one owner, and into one project.
    invitation_ttl_s: int = 7 * 86400
    invite_rate_limit: int = 20
    invite_rate_window_s: int = 3600
    project_invite_rate_limit: int = 50
    project_invite_rate_window_s: int = 86400
    password_scrypt_n: int = 1 << 17
    trusted_proxies: str = ""
    # Rate limits: at most N requests per window, counted in Postgres so they
    # hold across replicas.
    ingest_rate_limit: int = 20000
    ingest_rate_window_s: int = 10
    login_rate_limit: int = 30
    login_rate_window_s: int = 60
    register_rate_limit: int = 20
    register_rate_window_s: int = 3600
    login_lock_after: int = 5
    login_lock_max_s: int = 900

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        config_file = env.get("PULSE_CONFIG_FILE")
        if config_file:
            try:
                values.update(tomllib.loads(Path(config_file).read_text()))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise SettingsError(f"PULSE_CONFIG_FILE={config_file}: {exc}") from exc
        for name, value in env.items():
            if name.startswith("PULSE_") and name != "PULSE_CONFIG_FILE":
                values[name[len("PULSE_"):].lower()] = value
        if "K_SINK" in env:
            values["k_sink"] = env["K_SINK"]
        return cls.from_values(values)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Settings:
        kwargs: dict[str, Any] = {}
        limit_kwargs: dict[str, Any] = {}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        limit_fields = {f.name: f for f in dataclasses.fields(Limits)}
        if "admin_emails" in values:
            raise SettingsError("PULSE_ADMIN_EMAILS is no longer read: an email address proves nothing."
                                " Grant admin to a user id with `pulse admin grant USER_ID` (docs/security.md)")
        for key, raw in values.items():
            if key in fields and key != "limits":
                kwargs[key] = _coerce(key, fields[key].type, raw)
            elif key in limit_fields:
                limit_kwargs[key] = _coerce(key, limit_fields[key].type, raw)
        if limit_kwargs:
            kwargs["limits"] = Limits(**limit_kwargs)
        settings = cls(**kwargs)
        settings.check()
        return settings

    def check(self) -> None:
        for url_field in ("postgres_url", "clickhouse_url"):
            url = getattr(self, url_field)
            if url is not None and not urlsplit(url).scheme:
                raise SettingsError(f"PULSE_{url_field.upper()}: not a URL: {redact(url)}")
        if self.postgres_url and urlsplit(self.postgres_url).scheme not in ("postgres", "postgresql"):
            raise SettingsError("PULSE_POSTGRES_URL: scheme must be postgresql://")
        if self.clickhouse_url and urlsplit(self.clickhouse_url).scheme not in ("http", "https", "chdb"):
            raise SettingsError("PULSE_CLICKHOUSE_URL: scheme must be http://, https:// or chdb://")
        if self.clickhouse_cluster and not CLUSTER_NAME.match(self.clickhouse_cluster):
            raise SettingsError("PULSE_CLICKHOUSE_CLUSTER: letters, digits, '_', '-' and '.' only")
        if self.clickhouse_cluster and self.clickhouse_url and self.clickhouse_url.startswith("chdb:"):
            raise SettingsError("PULSE_CLICKHOUSE_CLUSTER: the embedded ClickHouse is one node")
        if self.events_ttl_days < 1:
            raise SettingsError("PULSE_EVENTS_TTL_DAYS: must be at least 1")
        if self.log_format not in ("json", "console"):
            raise SettingsError("PULSE_LOG_FORMAT: must be json or console")
        if self.limits.max_record_bytes < 256 * 1024:
            raise SettingsError("PULSE_MAX_RECORD_BYTES: must be at least 262144 (one event always fits)")
        if self.kafka_max_in_flight < 1:
            raise SettingsError("PULSE_KAFKA_MAX_IN_FLIGHT: must be at least 1")
        if not 0 <= self.ingest_coalesce_events <= 100_000:
            raise SettingsError("PULSE_INGEST_COALESCE_EVENTS: must be from 0 to 100000")
        if not 0 <= self.ingest_linger_s <= 1:
            raise SettingsError("PULSE_INGEST_LINGER_S: must be from 0 to 1")
        if not 0 <= self.ingest_processes <= 16:
            raise SettingsError("PULSE_INGEST_PROCESSES: must be from 0 to 16")
        if self.chdb_cache_mb < 8:
            raise SettingsError("PULSE_CHDB_CACHE_MB: must be at least 8")
        if not 0 <= self.chdb_release_ms <= 600_000:
            raise SettingsError("PULSE_CHDB_RELEASE_MS: must be from 0 to 600000")
        if not 1 <= self.dispatch_window <= 1024:
            raise SettingsError("PULSE_DISPATCH_WINDOW: must be from 1 to 1024")
        if self.spool_max_bytes < 1 << 20:
            raise SettingsError("PULSE_SPOOL_MAX_BYTES: must be at least 1048576")
        if self.spool_segment_s <= 0:
            raise SettingsError("PULSE_SPOOL_SEGMENT_S: must be above 0")
        if self.ledger_retention_days < 1:
            raise SettingsError("PULSE_LEDGER_RETENTION_DAYS: must be at least 1")
        for positive in ("access_token_ttl_s", "refresh_token_ttl_s", "ingest_rate_limit", "ingest_rate_window_s",
                         "login_rate_limit", "login_rate_window_s", "register_rate_limit",
                         "register_rate_window_s", "login_lock_after", "login_lock_max_s", "invitation_ttl_s",
                         "invite_rate_limit", "invite_rate_window_s", "project_invite_rate_limit",
                         "project_invite_rate_window_s"):
            if getattr(self, positive) < 1:
                raise SettingsError(f"PULSE_{positive.upper()}: must be at least 1")
        if self.password_scrypt_n < 1024 or self.password_scrypt_n & (self.password_scrypt_n - 1):
            raise SettingsError("PULSE_PASSWORD_SCRYPT_N: must be a power of two, at least 1024")
        try:
            self.trusted_networks  # noqa: B018 - parsed to fail fast
        except ValueError as exc:
            raise SettingsError(f"PULSE_TRUSTED_PROXIES: {exc}") from exc
        if self.jwks_url is not None and urlsplit(self.jwks_url).scheme not in ("http", "https"):
            raise SettingsError("PULSE_JWKS_URL: scheme must be http:// or https://")

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """Proxies whose X-Forwarded-For is believed (``PULSE_TRUSTED_PROXIES``: addresses or CIDR blocks)."""
        parts = [p.strip() for p in self.trusted_proxies.split(",") if p.strip()]
        return tuple(ipaddress.ip_network(p, strict=False) for p in parts)

    def with_(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, str]:
        """Settings fit to print: passwords in URLs are masked."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = redact(value) if isinstance(value, str) else str(value)
        return out


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _coerce(key: str, type_name: Any, raw: Any) -> Any:
    name = f"PULSE_{key.upper()}"
    text = str(type_name)
    try:
        if text in ("int",):
            return int(raw)
        if text in ("float",):
            return float(raw)
        if text == "Path":
            return Path(raw)
        if text == "str | None":
            return str(raw) if raw not in ("", None) else None
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{name}: {raw!r} is not a valid {text}") from exc
