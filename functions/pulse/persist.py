"""persist — CloudEvent function: each ``dev.pulse.events.ingested`` batch
(delivered by the KafkaSource, one record at a time) goes into the dedup
ledger and ClickHouse exactly once; see pulse/core/persisting.py for how. In
embedded mode a record may carry its batch by reference to ingest's spool
(pulse.bus.spool), read from there.

It answers 2xx only when the batch is durable in both stores and a
``dev.pulse.events.persisted`` event naming it was handed to ``K_SINK``;
otherwise 5xx, and the source redelivers. Batches finishing at the same
moment share one such event per project (``batches`` lists their ids), so the
notification costs one request per group, not per batch. A malformed batch
gets 400, which a KafkaSource does not retry: it goes to the dead-letter sink.

Served as an HTTP target that parses CloudEvents itself (binary, structured
and batch modes), so it also answers /healthz, /readyz and /metrics.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson
from opentelemetry.trace import SpanKind
from werkzeug.wrappers import Request, Response

from pulse import telemetry
from pulse.bus import kafka, sink, spool
from pulse.bus.cloudevents import (
    INGESTED,
    MAINTENANCE_REQUESTED,
    PERSISTED,
    CloudEvent,
    receive,
)
from pulse.core import erasure, persons
from pulse.core.events import RowView
from pulse.core.ingestion import decode_batch
from pulse.core.persisting import Outcome, Persister
from pulse.errors import InvalidInput, Unavailable
from pulse.group_commit import GroupCommit
from pulse.services import Services
from pulse.settings import Settings
from pulse.storage.persons import PersonStore
from pulse.web.body import read_body
from pulse.web.http import HttpFunction, Route, json_response

log = logging.getLogger("pulse.persist")
SOURCE = "/pulse/persist"
# A PingSource cannot set the CloudEvent type; its Trigger filters on the source.
MAINTENANCE_TYPES = frozenset({MAINTENANCE_REQUESTED, "dev.knative.sources.ping"})


class Persist(HttpFunction):
    name = "persist"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.persons = PersonStore(services.db, services.ch)
        self.persister = Persister(services.db, services.ch, identity=self.identity)
        self.notices: GroupCommit[tuple[str, Outcome, str | None], None] = GroupCommit(self._notify)
        super().__init__(services.readiness(self.name), services.event_auth(self.name))

    def routes(self) -> Iterable[Route]:
        return [
            Route("POST", "/_ce/ingested", self.ingested, "ce-ingested"),
            Route("POST", "/_ce/maintenance", self.maintenance, "ce-maintenance"),
        ]

    def ingested(self, request: Request) -> Response:
        results = []
        for event in receive(request.headers, read_body(request, kafka.MAX_RECORD_BYTES)):
            if event.type != INGESTED:
                raise InvalidInput.field("type", f"expected {INGESTED}, got {event.type}")
            results.append(self.persist_one(event))
        return json_response({"results": results})

    def identity(self, project_id: str, batch_id: str, rows: Sequence[RowView]) -> None:
        # A pooled connection of its own: persist holds none while a batch is in hand (its
        # steps take one for each grouped statement), so a full pool cannot deadlock it.
        self.persons.apply(project_id, batch_id, persons.operations(rows))

    def persist_one(self, event: CloudEvent) -> dict[str, object]:
        spool_dir = self.services.settings.spool_dir
        record = spool.resolve(Path(spool_dir), event) if spool_dir else event
        if record is None:  # a reference whose segment is gone: every batch in it was persisted
            outcome = self.persister.recorded(event.id, event.get("partitionkey") or "")
            if outcome is None:
                raise Unavailable(f"the spooled record of batch {event.id} is missing", 1)
            return self._finished(event, outcome)
        project_id, received_at, rows = decode_batch(record)
        with telemetry.span("persist batch", event.get("traceparent"), SpanKind.CONSUMER, attributes={
                "messaging.message.id": event.id, "pulse.events": len(rows), "pulse.project_id": project_id}), \
                telemetry.bound(project_id=project_id):
            return self._finished(event, self.persister.persist(event.id, project_id, received_at, rows))

    def _finished(self, event: CloudEvent, outcome: Outcome) -> dict[str, object]:
        """Announce the batch (grouped with others finishing now) and log it."""
        self.notices.submit((event.id, outcome, telemetry.current_traceparent()))
        telemetry.event("batch persisted", batch_id=event.id, inserted=outcome.inserted,
                        duplicates=outcome.duplicates, redelivered=outcome.redelivered)
        return {"batch_id": event.id, **outcome.as_event_data()}

    def _notify(self, finished: list[tuple[str, Outcome, str | None]]) -> list[None]:
        """One ``persisted`` event per project for the batches that finished together."""
        by_project: dict[str, list[tuple[str, Outcome, str | None]]] = {}
        for item in finished:
            by_project.setdefault(item[1].project_id, []).append(item)
        for project_id, items in by_project.items():
            firsts = [o.first for _, o, _ in items if o.first]
            lasts = [o.last for _, o, _ in items if o.last]
            data = {"project_id": project_id, "batches": [batch_id for batch_id, _, _ in items],
                    "inserted": sum(o.inserted for _, o, _ in items),
                    "duplicates": sum(o.duplicates for _, o, _ in items),
                    "from": min(firsts) if firsts else None, "to": max(lasts) if lasts else None}
            notice = CloudEvent.new(PERSISTED, SOURCE, orjson.dumps(data), partitionkey=project_id,
                                    traceparent=items[0][2])
            sink.publish(self.services.sink(self.name), notice, token=self.services.sink_token(self.name))
        return [None] * len(finished)

    def maintenance(self, request: Request) -> Response:
        for event in receive(request.headers, request.get_data()):
            if event.type not in MAINTENANCE_TYPES:
                raise InvalidInput.field("type", f"expected {MAINTENANCE_REQUESTED}, got {event.type}")
        removed = self.persister.trim_ledger(self.services.settings.ledger_retention_days)
        self.persons.trim(self.services.settings.ledger_retention_days)
        telemetry.event("ledger trimmed", removed=removed)
        expired = self.expire()
        return json_response({"ledger_rows_removed": removed, "events_expired": expired})

    def expire(self) -> int:
        """Each project's retention (pulse.core.erasure): events older than its
        ``retention_days`` are removed with their rollup rows."""
        total = 0
        for project_id, days in self.services.db.run("SELECT project_id::text, retention_days FROM projects"):
            gone = erasure.expire(self.services.db, self.services.ch, project_id, int(days))
            if gone:
                telemetry.event("events expired", project_id=project_id, retention_days=days, removed=gone)
            total += gone
        return total


@functools.cache
def _function() -> Persist:
    return Persist(Services(Settings.load()))


def persist(request: Request) -> Response:
    """functions-framework target."""
    return _function().handle(request)
