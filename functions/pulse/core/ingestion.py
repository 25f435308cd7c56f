"""Turning accepted events into one Kafka record per request.

One record carries one accepted batch (up to the batch limit), keyed by
project, as a ``dev.pulse.events.ingested`` CloudEvent in binary mode. The
CloudEvent id is the batch id persist dedups redeliveries by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry.trace import SpanKind

from pulse import telemetry
from pulse.bus.cloudevents import INGESTED, CloudEvent
from pulse.core.events import CANONICAL_UUID, EVENT_COLUMNS, format_ts
from pulse.errors import FieldError, InvalidInput, PayloadTooLarge
from pulse.settings import Limits

if TYPE_CHECKING:  # persist decodes batches here and never produces: no Kafka client for it
    from pulse.bus.kafka import Producer

SOURCE = "/pulse/ingest"
ROW_KEYS = frozenset(EVENT_COLUMNS)


@dataclass(frozen=True)
class Submitted:
    batch_id: str
    accepted: int


def encode_batch(project_id: str, rows: Sequence[dict[str, str]], received_at: datetime | None = None,
                 traceparent: str | None = None) -> CloudEvent:
    data = orjson.dumps({
        "project_id": project_id,
        "received_at": format_ts(received_at or datetime.now(UTC)),
        "events": rows,
    })
    return CloudEvent.new(INGESTED, SOURCE, data, partitionkey=project_id, traceparent=traceparent)


def encode_records(project_id: str, rows: Sequence[dict[str, str]], max_record_bytes: int,
                   received_at: datetime | None = None, traceparent: str | None = None) -> list[CloudEvent]:
    """The rows as ingested-batch records of at most ``max_record_bytes`` each:
    one record, or, when the encoding is larger, the rows halved until each
    part fits (each part its own batch id)."""
    received_at = received_at or datetime.now(UTC)
    event = encode_batch(project_id, rows, received_at, traceparent)
    if len(event.data) <= max_record_bytes:
        return [event]
    if len(rows) == 1:
        raise PayloadTooLarge(f"one event encodes to {len(event.data)} bytes, over the record limit "
                              f"of {max_record_bytes}")
    half = len(rows) // 2
    return (encode_records(project_id, rows[:half], max_record_bytes, received_at, traceparent)
            + encode_records(project_id, rows[half:], max_record_bytes, received_at, traceparent))


def decode_batch(event: CloudEvent) -> tuple[str, str, list[dict[str, str]]]:
    """(project_id, received_at, rows) of an ingested batch; InvalidInput if malformed."""
    doc: Any = event.json()
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise InvalidInput.field("data.events", "must be an array")
    project_id, received_at = doc.get("project_id"), doc.get("received_at")
    if not isinstance(project_id, str) or not CANONICAL_UUID.match(project_id) or not isinstance(received_at, str):
        raise InvalidInput.field("data.project_id", "project_id (a UUID) and received_at are required")
    rows = doc["events"]
    for index, row in enumerate(rows):
        if type(row) is dict and "bot" not in row:  # a record from before bots were marked
            row["bot"] = "0"
        if type(row) is not dict or row.keys() != ROW_KEYS or type(row["event_id"]) is not str \
                or not CANONICAL_UUID.match(row["event_id"]):
            raise InvalidInput(f"data.events[{index}] is not a normalized event",
                               [FieldError("data.events", "not a normalized event", index)])
    return project_id, received_at, rows


class Ingestor:
    def __init__(self, producer: Producer, topic: str, max_record_bytes: int = Limits.max_record_bytes) -> None:
        self.producer = producer
        self.topic = topic
        self.max_record_bytes = max_record_bytes

    def submit(self, project_id: str, rows: Sequence[dict[str, str]], source: str = "events",
               received_at: datetime | None = None) -> Submitted:
        """Send the rows as one record (several if one would be over the record
        limit); returns once the broker acknowledged them."""
        with telemetry.span(f"{self.topic} publish", kind=SpanKind.PRODUCER, attributes={
                "messaging.system": "kafka", "messaging.destination.name": self.topic, "pulse.events": len(rows)}):
            events = encode_records(project_id, rows, self.max_record_bytes, received_at,
                                    telemetry.current_traceparent())
            for event in events:
                self.producer.send(self.topic, project_id, event)
        telemetry.EVENTS_ACCEPTED.labels(source).inc(len(rows))
        return Submitted(events[0].id, len(rows))


def count_rejections(errors: Sequence[FieldError]) -> None:
    for error in errors:
        telemetry.EVENTS_REJECTED.labels(error.field).inc()
