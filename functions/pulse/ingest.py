"""ingest — HTTP function: clients POST events; each accepted request goes
into a Kafka record (its own, or one shared with other small requests of the
project arriving at the same moment: pulse.core.ingestion), answered 202 only
after the broker acknowledged it (and, when ``spool_dir`` is set, after the
record is in the spool on disk: see pulse/bus/spool.py)."""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from werkzeug.wrappers import Request, Response

from pulse import telemetry
from pulse.bus.cloudevents import receive
from pulse.bus.spool import Spool
from pulse.core import compat
from pulse.core.erasure import Suppressions
from pulse.core.events import Batch, parse_batch
from pulse.core.importing import (
    Importer,
    ImportLedger,
    body_stream,
    declared_sha256,
    file_format,
)
from pulse.core.ingestion import Ingestor, count_rejections
from pulse.core.persisting import persisted_batches
from pulse.errors import InvalidInput, PayloadTooLarge, Unauthorized, Unavailable
from pulse.security.keys import ApiKey
from pulse.services import Services
from pulse.settings import Settings
from pulse.web.body import read_body
from pulse.web.credentials import extract
from pulse.web.http import HttpFunction, Route, json_response


class Ingest(HttpFunction):
    name = "ingest"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.spool = open_spool(services)
        self.ingestor = Ingestor(services.producer, services.settings.raw_topic,
                                 services.settings.limits.max_record_bytes, self.spool,
                                 services.settings.ingest_coalesce_events, services.settings.ingest_linger_s)
        self.importer = Importer(self.ingestor, ImportLedger(services.db), services.settings.limits)
        self.suppressions = Suppressions(services.db, services.settings.key_cache_ttl_s)
        super().__init__(services.readiness(self.name))

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()

    def routes(self) -> Iterable[Route]:
        return [
            Route("POST", "/v1/events", self.events, "events"),
            # Compatible ingest (pulse.core.compat) and bulk import (pulse.core.importing).
            Route("POST", "/v1/batch", self.segment, "segment-batch"),
            Route("POST", "/v1/<any(track,page,screen,identify,group,alias):kind>", self.segment, "segment"),
            Route("POST", "/batch/", self.posthog, "posthog-batch"),
            Route("POST", "/i/v0/e/", self.posthog, "posthog-v0"),
            Route("POST", "/e/", self.posthog, "posthog-e"),
            Route("POST", "/i/v1/analytics/events", self.posthog_v1, "posthog-v1"),
            Route("POST", "/v1/cloudevents", self.cloudevents, "cloudevents"),
            Route("POST", "/v1/import", self.import_file, "import"),
        ]

    def api_key(self, request: Request) -> ApiKey:
        credential = extract(request)
        if credential is None or credential.kind != "api_key":
            raise Unauthorized("an API key with the 'ingest' scope is required (X-API-Key or Basic)")
        return self.key_named(credential.value)

    def events(self, request: Request) -> Response:
        if self.stopping:
            raise Unavailable("ingest is shutting down", self.settings.retry_after_s)
        key = self.api_key(request)
        with self.ingestor.announce() as coming:  # the record about to go waits a moment for this one's events
            batch = parse_batch(read_body(request, self.settings.limits.max_body_bytes), self.settings.limits)
            count_rejections(batch.errors)
            if not batch.rows:
                raise InvalidInput("no valid event in the request", batch.errors)
            rows = self.kept(key.project_id, batch.rows)
            if rows:
                self.ingestor.submit(key.project_id, rows, announcement=coming)
        return json_response({"accepted": len(batch.rows), "errors": batch.error_list()}, 202)

    # Compatible ingest --------------------------------------------------

    def key_named(self, value: str | None) -> ApiKey:
        """An ingest key (also as given in the body: Segment's writeKey, PostHog's api_key), within its rate limit."""
        if not value:
            raise Unauthorized("an API key with the 'ingest' scope is required")
        key = self.services.keys.verify(value, "ingest")
        self.services.limiter.hit(self.services.limit("ingest"), key.key_id)
        return key

    def accept(self, key: ApiKey, batch: Batch, source: str) -> None:
        """Submit the valid events, one Kafka record per ``max_batch_events``."""
        if self.stopping:
            raise Unavailable("ingest is shutting down", self.settings.retry_after_s)
        count_rejections(batch.errors)
        if not batch.rows:
            raise InvalidInput("no valid event in the request", batch.errors)
        size = self.settings.limits.max_batch_events
        rows = self.kept(key.project_id, batch.rows)
        for start in range(0, len(rows), size):
            self.ingestor.submit(key.project_id, rows[start:start + size], source)

    def kept(self, project_id: str, rows: list[dict[str, str]]) -> list[dict[str, str]]:
        """Rows of identifiers a deletion suppressed are dropped (answered as accepted)."""
        kept = self.suppressions.kept(project_id, rows)
        if len(kept) < len(rows):
            telemetry.EVENTS_REJECTED.labels("suppressed").inc(len(rows) - len(kept))
        return kept

    def segment(self, request: Request, kind: str | None = None) -> Response:
        try:
            body = read_body(request, compat.SEGMENT_MAX_BATCH_BYTES)
        except PayloadTooLarge as exc:  # Segment answers 400 to an oversized batch
            raise InvalidInput.field("body", f"is over Segment's {compat.SEGMENT_MAX_BATCH_BYTES} bytes") from exc
        doc = compat.load_json(body)
        credential = extract(request)
        key = self.api_key(request) if credential else self.key_named(compat.segment_write_key(doc))
        if kind == "identify" and compat.is_native_identify(doc):
            self.accept(key, compat.native_identify(doc, self.settings.limits), "identify")
            return json_response({"accepted": 1}, 202)
        self.accept(key, compat.segment_batch(doc, kind, key.project_id, self.settings.limits), "segment")
        return json_response({"success": True})

    def _posthog(self, request: Request) -> tuple[ApiKey, Sequence[object], Batch]:
        body = read_body(request, self.settings.limits.max_body_bytes)
        items, sent_at, body_key = compat.posthog_messages(compat.load_json(body))
        credential = extract(request)
        key = self.key_named(credential.value if credential else body_key)
        return key, items, compat.posthog_batch(list(items), sent_at, key.project_id, self.settings.limits)

    def posthog(self, request: Request) -> Response:
        key, _items, batch = self._posthog(request)
        self.accept(key, batch, "posthog")
        return json_response({"status": 1})

    def posthog_v1(self, request: Request) -> Response:
        key, items, batch = self._posthog(request)
        self.accept(key, batch, "posthog")
        return json_response({"results": compat.posthog_results(list(items), batch)})

    def cloudevents(self, request: Request) -> Response:
        key = self.api_key(request)
        body = read_body(request, self.settings.limits.max_body_bytes)
        events = receive(request.headers, body)
        if len(events) > self.settings.limits.max_batch_events:
            raise PayloadTooLarge(f"at most {self.settings.limits.max_batch_events} CloudEvents per request")
        batch = compat.cloudevents_batch(events, key.project_id, self.settings.limits)
        self.accept(key, batch, "cloudevents")
        return json_response({"accepted": len(batch.rows), "errors": batch.error_list()}, 202)

    def import_file(self, request: Request) -> Response:
        if self.stopping:
            raise Unavailable("ingest is shutting down", self.settings.retry_after_s)
        key = self.api_key(request)
        fmt = file_format(request.headers.get("Content-Type"))
        stream = body_stream(request.stream, request.headers.get("Content-Encoding"))
        result = self.importer.run(key.project_id, stream, fmt, declared_sha256(request.headers.get("Content-Digest")))
        return json_response(result.as_dict())


_owners = itertools.count(1)


def open_spool(services: Services) -> Spool | None:
    """ingest's write-ahead spool when ``spool_dir`` is set, trimmed as persist finishes batches."""
    settings = services.settings
    if not settings.spool_dir:
        return None
    owner = f"ingest-{os.getpid()}-{time.time_ns()}-{next(_owners)}"
    return Spool(Path(settings.spool_dir), owner, settings.spool_segment_s, max_bytes=settings.spool_max_bytes,
                 persisted=lambda ids: persisted_batches(services.db, ids))


@functools.cache
def _function() -> Ingest:
    return Ingest(Services(Settings.load()))


def ingest(request: Request) -> Response:
    """functions-framework target."""
    return _function().handle(request)
