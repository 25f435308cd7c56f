"""Turning accepted events into one Kafka record per request.

One record carries one accepted batch (up to the batch limit), keyed by
project, as a ``dev.pulse.events.ingested`` CloudEvent in binary mode. The
CloudEvent id is the batch id persist dedups redeliveries by.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import orjson
from opentelemetry.trace import SpanKind

from pulse import telemetry
from pulse.bus.cloudevents import INGESTED, CloudEvent
from pulse.bus.kafka import Producer
from pulse.bus.spool import Spool
from pulse.bus.spool import reference as spool_reference
from pulse.core.events import CANONICAL_UUID, canonical_ids, format_ts
from pulse.errors import FieldError, InvalidInput, PayloadTooLarge, Unavailable
from pulse.settings import Limits

SOURCE = "/pulse/ingest"


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


class Row(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A normalized event as a record carries it: every column of EVENT_COLUMNS,
    in that order, as text. Read as ``row["column"]`` too."""

    event_id: str
    event_type: str
    user_id: str
    anonymous_id: str
    session_id: str
    occurred_at: str
    properties: str
    path: str
    url: str
    referrer: str
    title: str
    user_agent: str
    ip: str
    locale: str
    country: str
    bot: str = "0"  # a record from before bots were marked

    def __getitem__(self, column: str) -> str:
        value: str = getattr(self, column)
        return value


class _Record(msgspec.Struct):
    project_id: str
    received_at: str
    events: list[Row]


_decode_record = msgspec.json.Decoder(_Record).decode
_AT_INDEX = re.compile(r"\$\.events\[(\d+)\]")
_AT_FIELD = re.compile(r"\$\.(\w+)")


def decode_batch(event: CloudEvent) -> tuple[str, str, list[Row]]:
    """(project_id, received_at, rows) of an ingested batch; InvalidInput if malformed."""
    try:
        record = _decode_record(event.data)
    except msgspec.ValidationError as exc:
        at = _AT_INDEX.search(str(exc))
        if at is not None:
            index = int(at.group(1))
            raise InvalidInput(f"data.events[{index}] is not a normalized event ({exc})",
                               [FieldError("data.events", "not a normalized event", index)]) from exc
        where = _AT_FIELD.search(str(exc))
        raise InvalidInput.field(f"data.{where.group(1)}" if where else "data",
                                 f"does not fit an ingested batch ({exc})") from exc
    except msgspec.DecodeError as exc:  # (after its subclass ValidationError)
        raise InvalidInput.field("data", f"is not valid JSON ({exc})") from exc
    if not CANONICAL_UUID.match(record.project_id):
        raise InvalidInput.field("data.project_id", "project_id (a UUID) and received_at are required")
    rows = record.events
    if not canonical_ids([row.event_id for row in rows]):
        index = next(i for i, row in enumerate(rows) if not CANONICAL_UUID.match(row.event_id))
        raise InvalidInput(f"data.events[{index}] is not a normalized event",
                           [FieldError("data.events", "not a normalized event", index)])
    return record.project_id, record.received_at, rows


class Ingestor:
    def __init__(self, producer: Producer, topic: str, max_record_bytes: int = Limits.max_record_bytes,
                 spool: Spool | None = None) -> None:
        self.producer = producer
        self.topic = topic
        self.max_record_bytes = max_record_bytes
        self.spool = spool

    def submit(self, project_id: str, rows: Sequence[dict[str, str]], source: str = "events",
               received_at: datetime | None = None) -> Submitted:
        """Send the rows as one record (several if one would be over the record
        limit); returns once the broker acknowledged them (and, with a spool,
        once the spool has them on disk)."""
        with telemetry.span(f"{self.topic} publish", kind=SpanKind.PRODUCER, attributes={
                "messaging.system": "kafka", "messaging.destination.name": self.topic, "pulse.events": len(rows)}):
            events = encode_records(project_id, rows, self.max_record_bytes, received_at,
                                    telemetry.current_traceparent())
            for event in events:
                self._send(project_id, event)
        telemetry.EVENTS_ACCEPTED.labels(source).inc(len(rows))
        return Submitted(events[0].id, len(rows))


    def _send(self, project_id: str, event: CloudEvent) -> None:
        """One record to the broker; with a spool, the record goes there and the
        broker carries a reference to it (pulse.bus.spool), the spool's fsync
        running while the broker acknowledges."""
        if self.spool is None:
            self.producer.send(self.topic, project_id, event)
            return
        ref, segment = self.spool.write(event)
        spool = self.spool
        try:
            self.producer.send(self.topic, project_id, spool_reference(event, ref), lambda: spool.sync(segment))
        except Unavailable:  # answered 503: the client sends again; the spooled copy must not pin its segment
            spool.settle(event.id)
            raise


def count_rejections(errors: Sequence[FieldError]) -> None:
    for error in errors:
        telemetry.EVENTS_REJECTED.labels(error.field).inc()
