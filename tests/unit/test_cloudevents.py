"""Round trips of Pulse's CloudEvents bindings against the cloudevents SDK."""

from __future__ import annotations

import msgspec
import orjson
import pytest
from cloudevents.conversion import to_binary as sdk_to_http_binary
from cloudevents.conversion import to_structured as sdk_to_structured
from cloudevents.http import CloudEvent as SdkEvent
from cloudevents.http import from_http as sdk_from_http
from cloudevents.kafka import KafkaMessage
from cloudevents.kafka import from_binary as sdk_from_kafka
from cloudevents.kafka import to_binary as sdk_to_kafka

from pulse.bus.cloudevents import (
    CloudEvent,
    from_batch,
    from_http,
    from_kafka,
    receive,
    to_http,
    to_kafka_headers,
    to_structured,
)
from pulse.core.events import validate_events
from pulse.core.ingestion import decode_batch, encode_batch
from pulse.errors import InvalidInput
from pulse.settings import Limits
from tests.conftest import make_event


def sample() -> CloudEvent:
    return CloudEvent.new("dev.pulse.events.ingested", "/pulse/ingest", b'{"a": 1}',
                          partitionkey="p1", traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")


def test_kafka_binding_matches_the_sdk_both_ways() -> None:
    ours = sample()
    headers = dict(to_kafka_headers(ours))
    theirs = sdk_from_kafka(KafkaMessage(headers=headers, key=b"p1", value=ours.data), data_unmarshaller=lambda b: b)
    assert theirs["id"] == ours.id and theirs["type"] == ours.type
    assert theirs["partitionkey"] in ("p1", b"p1")  # the SDK takes it from the record key
    assert theirs.get_data() == ours.data

    sdk_event = SdkEvent({"type": "t", "source": "/s", "datacontenttype": "application/json", "partitionkey": "k"},
                         {"x": 2})
    message = sdk_to_kafka(sdk_event)
    back = from_kafka(list(message.headers.items()), message.value, message.key)
    assert back is not None
    assert (back.type, back.source, back.id, back.get("partitionkey")) == ("t", "/s", sdk_event["id"], "k")
    assert orjson.loads(back.data) == {"x": 2}


def test_a_record_without_ce_headers_is_not_a_cloudevent() -> None:
    assert from_kafka([("content-type", b"application/json")], b"{}") is None


def test_http_binary_and_structured_match_the_sdk() -> None:
    ours = sample()
    theirs = sdk_from_http(to_http(ours), ours.data)
    assert theirs["id"] == ours.id and theirs["traceparent"] == ours.get("traceparent")

    sdk_event = SdkEvent({"type": "t", "source": "/s"}, {"x": 3})
    headers, body = sdk_to_http_binary(sdk_event)
    assert orjson.loads(from_http(headers, body).data) == {"x": 3}
    headers, body = sdk_to_structured(sdk_event)
    structured = from_http(headers, body)
    assert (structured.type, orjson.loads(structured.data)) == ("t", {"x": 3})
    assert to_structured(structured)["data"] == {"x": 3}


def test_batch_mode() -> None:
    docs = [{"specversion": "1.0", "id": str(n), "source": "/s", "type": "t", "data": {"n": n}} for n in range(3)]
    events = receive({"Content-Type": "application/cloudevents-batch+json"}, orjson.dumps(docs))
    assert [orjson.loads(e.data)["n"] for e in events] == [0, 1, 2]
    with pytest.raises(InvalidInput):
        from_batch(b'{"not": "a list"}')


def test_missing_required_attributes_are_named() -> None:
    with pytest.raises(InvalidInput) as caught:
        from_http({"ce-id": "1", "ce-specversion": "1.0"}, b"")
    assert sorted(e.field for e in caught.value.errors) == ["source", "type"]


def test_ingested_batch_round_trip_record_to_event_to_rows() -> None:
    rows = validate_events([make_event(), make_event(anonymous_id="a", user_id=None)], Limits()).rows
    event = encode_batch("0b3c0e55-1d2a-4a49-9ad6-5d1a3b0f0d11", rows)
    record = from_kafka(to_kafka_headers(event), event.data)
    assert record is not None and record.id == event.id
    project_id, received_at, back = decode_batch(record)
    assert project_id == "0b3c0e55-1d2a-4a49-9ad6-5d1a3b0f0d11" and received_at
    assert [msgspec.structs.asdict(row) for row in back] == rows


def test_a_batch_over_the_record_limit_goes_out_as_several_records() -> None:
    from pulse.core.ingestion import encode_records
    from pulse.errors import PayloadTooLarge

    project = "00000000-0000-4000-8000-000000000000"
    rows = validate_events([make_event(properties={"q": ['"' * 50] * 40}) for _ in range(100)], Limits()).rows
    whole = encode_batch(project, rows)
    limit = len(whole.data) // 3
    records = encode_records(project, rows, limit)
    assert len(records) >= 3 and all(len(r.data) <= limit for r in records)
    decoded = [decode_batch(r) for r in records]
    assert [msgspec.structs.asdict(row) for _, _, part in decoded for row in part] == rows  # every row once, in order
    assert len({r.id for r in records}) == len(records) and len({received for _, received, _ in decoded}) == 1
    assert len(encode_records(project, rows, len(whole.data))) == 1  # at the limit: one record
    with pytest.raises(PayloadTooLarge):
        encode_records(project, rows[:1], 100)
