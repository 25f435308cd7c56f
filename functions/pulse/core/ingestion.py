"""Turning accepted events into Kafka records.

A record carries one batch of one project's accepted events, keyed by
project, as a ``dev.pulse.events.ingested`` CloudEvent in binary mode: one
request's events, or those of several small requests of the project that
arrived together (``Ingestor``). The CloudEvent id is the batch id persist
dedups redeliveries by.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
import orjson
from opentelemetry.trace import SpanKind

from pulse import telemetry
from pulse.bus.cloudevents import INGESTED, CloudEvent
from pulse.bus.spool import Spool
from pulse.bus.spool import reference as spool_reference
from pulse.core.events import CANONICAL_UUID, canonical_ids, format_ts
from pulse.errors import FieldError, InvalidInput, PayloadTooLarge, Unavailable
from pulse.group_commit import Announcement, GroupCommit
from pulse.settings import Limits

if TYPE_CHECKING:  # persist decodes batches here and never produces: no Kafka client for it
    from pulse.bus.kafka import Producer

SOURCE = "/pulse/ingest"
# A shared record's bytes besides its events: project id, received_at, the JSON around them.
RECORD_OVERHEAD_BYTES = 256


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


def shared_record(project_id: str, received_at: str, arrays: Sequence[bytes],
                  traceparent: str | None = None) -> CloudEvent:
    """One record of several requests' events (each a JSON array of rows), one after the other."""
    head = orjson.dumps({"project_id": project_id, "received_at": received_at})[:-1]
    events = b",".join(array[1:-1] for array in arrays if len(array) > 2)
    return CloudEvent.new(INGESTED, SOURCE, head + b',"events":[' + events + b"]}", partitionkey=project_id,
                          traceparent=traceparent)


def pack(parts: Sequence[tuple[str, int, int]], max_record_bytes: int, max_events: int) -> list[list[int]]:
    """Requests' events (project id, encoded size, count) as records: the indexes
    of the parts each record carries, in order, one project to a record, each
    at most ``max_events`` and ``max_record_bytes`` with RECORD_OVERHEAD_BYTES
    (a part alone may be larger)."""
    by_project: dict[str, list[int]] = {}
    for index, (project_id, _, _) in enumerate(parts):
        by_project.setdefault(project_id, []).append(index)
    records: list[list[int]] = []
    for indexes in by_project.values():
        record: list[int] = []
        size, count = RECORD_OVERHEAD_BYTES, 0
        for index in indexes:
            _, part_size, part_count = parts[index]
            if record and (size + part_size > max_record_bytes or count + part_count > max_events):
                records.append(record)
                record, size, count = [], RECORD_OVERHEAD_BYTES, 0
            record.append(index)
            size += part_size
            count += part_count
        records.append(record)
    return records


@dataclass(eq=False)
class _Part:
    """One request's rows on their way into a shared record."""

    project_id: str
    events: bytes  # the rows as one JSON array
    count: int
    traceparent: str | None


class Ingestor:
    """Sends accepted rows as ingested-batch records.

    Small requests of one project that arrive together share a record
    (``coalesce_events``, 0: never): each waits for the round of sends in
    progress (its broker acknowledgement, its spool fsync), then the next
    round takes every request that queued meanwhile: one record per project
    with their events one after the other (more if one would be over
    ``coalesce_events`` or the record limit), all sent at once and synced
    by one fsync, and answers each request once its record is acknowledged
    (and on disk). A request that announced itself is
    waited for up to ``linger_s``. Everything downstream (the dispatcher's
    delivery, the spool read, the ledger claim, the ``persisted`` notice) is
    paid per record, so per several requests. Nothing else changes: a record
    is one project's, a 202 still means durable, and persist dedups by
    event id within a record as across records."""

    def __init__(self, producer: Producer, topic: str, max_record_bytes: int = Limits.max_record_bytes,
                 spool: Spool | None = None, coalesce_events: int = 0, linger_s: float = 0.0) -> None:
        self.producer = producer
        self.topic = topic
        self.max_record_bytes = max_record_bytes
        self.spool = spool
        self.coalesce_events = coalesce_events
        self._rounds: GroupCommit[_Part, str | Unavailable] = GroupCommit(self._send_round, linger_s=linger_s)

    def announce(self) -> Announcement:
        """A request that may submit soon (``with`` around its parsing): the round about to be sent waits for it."""
        return self._rounds.announce()

    def submit(self, project_id: str, rows: Sequence[dict[str, str]], source: str = "events",
               received_at: datetime | None = None, announcement: Announcement | None = None) -> Submitted:
        """Send the rows (in a record of their own, or shared with other requests
        of the project; several records if one would be over the record
        limit); returns once the broker acknowledged them (and, with a spool,
        once the spool has them on disk)."""
        with telemetry.span(f"{self.topic} publish", kind=SpanKind.PRODUCER, attributes={
                "messaging.system": "kafka", "messaging.destination.name": self.topic, "pulse.events": len(rows)}):
            traceparent = telemetry.current_traceparent()
            events = orjson.dumps(rows) if self._coalesces(rows, received_at) else b""
            if events and len(events) + RECORD_OVERHEAD_BYTES <= self.max_record_bytes:
                outcome = self._rounds.submit(_Part(project_id, events, len(rows), traceparent), announcement)
                if isinstance(outcome, Unavailable):
                    raise Unavailable(outcome.detail, outcome.retry_after_s) from outcome
                batch_id = outcome
            else:
                if announcement is not None:
                    self._rounds.withdraw(announcement)
                records = encode_records(project_id, rows, self.max_record_bytes, received_at, traceparent)
                for error in self._send([(project_id, event) for event in records]):
                    if error is not None:
                        raise error
                telemetry.INGEST_RECORD_REQUESTS.observe(1)
                batch_id = records[0].id
        telemetry.EVENTS_ACCEPTED.labels(source).inc(len(rows))
        return Submitted(batch_id, len(rows))

    def _coalesces(self, rows: Sequence[dict[str, str]], received_at: datetime | None) -> bool:
        return received_at is None and 0 < len(rows) <= self.coalesce_events

    def _send_round(self, parts: list[_Part]) -> list[str | Unavailable]:
        """The requests queued now, as one record per project (more if one would
        be over the record limit): each request's outcome, its record's id or
        the Unavailable its record met."""
        received_at = format_ts(datetime.now(UTC))
        groups = pack([(part.project_id, len(part.events), part.count) for part in parts], self.max_record_bytes,
                      self.coalesce_events)
        records = [(parts[group[0]].project_id,
                    shared_record(parts[group[0]].project_id, received_at, [parts[i].events for i in group],
                                  parts[group[0]].traceparent)) for group in groups]
        errors = self._send(records)
        outcomes: list[str | Unavailable] = [""] * len(parts)
        for group, (_, event), error in zip(groups, records, errors, strict=True):
            telemetry.INGEST_RECORD_REQUESTS.observe(len(group))
            for index in group:
                outcomes[index] = error or event.id
        return outcomes

    def _send(self, records: list[tuple[str, CloudEvent]]) -> list[Unavailable | None]:
        """The records to the broker at once, each one's error or None. With a
        spool, each record goes there and the broker carries a reference to it
        (pulse.bus.spool), the spool's fsync running while the broker
        acknowledges."""
        if self.spool is None:
            return self.producer.send_many(self.topic, records)
        spool = self.spool
        references: list[tuple[str, CloudEvent]] = []
        segments = []
        try:
            for project_id, event in records:
                ref, segment = spool.write(event)
                references.append((project_id, spool_reference(event, ref)))
                segments.append(segment)
        except Unavailable:  # the spool is full or failing: none goes; those written must not pin their segment
            for _, event in references:
                spool.settle(event.id)
            raise
        errors = self.producer.send_many(self.topic, references,
                                         lambda: spool.sync(*segments))
        for (_, event), error in zip(records, errors, strict=True):
            if error is not None:  # answered 503: the client sends again; the spooled copy must not pin its segment
                spool.settle(event.id)
        return errors


def count_rejections(errors: Sequence[FieldError]) -> None:
    for error in errors:
        telemetry.EVENTS_REJECTED.labels(error.field).inc()
