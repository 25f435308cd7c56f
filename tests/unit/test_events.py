"""Validation of the event model, without a server."""

from __future__ import annotations

import gzip
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from pulse.core.events import format_ts, normalize_event, parse_batch, validate_events
from pulse.errors import InvalidInput, PayloadTooLarge
from pulse.settings import Limits
from tests.conftest import make_event

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
LIMITS = Limits()


def ev(**overrides: object) -> dict[str, object]:
    return make_event(**{"occurred_at": NOW.isoformat(), **overrides})


def fields_of(batch) -> list[tuple[int | None, str]]:  # type: ignore[no-untyped-def]
    return [(e.index, e.field) for e in batch.errors]


def test_a_valid_event_is_normalized_to_plain_strings() -> None:
    event_id = str(uuid.uuid4()).upper()
    row = normalize_event(ev(event_id=event_id, occurred_at="2026-11-22T13:30:00.250+02:00",
                                     session_id="s1", properties={"plan": "pro"},
                                     context={"page": {"url": "https://x.io/pricing?a=1"}, "country": "UA"}),
                          LIMITS, NOW)
    assert row["event_id"] == event_id.lower()
    assert row["occurred_at"] == "2026-11-22 11:30:00.250"
    assert row["properties"] == '{"plan":"pro"}'
    assert row["url"] == "https://x.io/pricing?a=1"
    assert row["path"] == "/pricing"
    assert row["country"] == "UA"
    assert row["anonymous_id"] == ""


def test_aliases_for_simple_clients() -> None:
    row = normalize_event({"event_type": "page_view", "anonymous_id": "a1", "timestamp": "2026-11-22T10:00:00Z",
                           "metadata": {"k": 1}, "path": "/docs", "page_url": "https://x.io/docs",
                           "site_id": "ignored"}, LIMITS, NOW)
    assert (row["occurred_at"], row["properties"], row["path"], row["url"]) == (
        "2026-11-22 10:00:00.000", '{"k":1}', "/docs", "https://x.io/docs")


def test_missing_fields_are_named_and_collected() -> None:
    batch = validate_events([{"properties": []}], LIMITS, NOW)
    assert sorted(f for _, f in fields_of(batch)) == ["event_type", "properties", "user_id"]
    assert batch.rows == []


def test_event_id_generated_when_absent_and_checked_when_present() -> None:
    row = normalize_event(ev(event_id=None), LIMITS, NOW)
    assert uuid.UUID(row["event_id"])
    batch = validate_events([ev(event_id="not-a-uuid")], LIMITS, NOW)
    assert fields_of(batch) == [(0, "event_id")]


def test_future_timestamps_beyond_five_minutes_are_refused() -> None:
    ok = NOW + timedelta(minutes=5)
    late = NOW + timedelta(minutes=5, seconds=1)
    assert normalize_event(ev(occurred_at=ok.isoformat()), LIMITS, NOW)["occurred_at"] == format_ts(ok)
    batch = validate_events([ev(occurred_at=late.isoformat())], LIMITS, NOW)
    assert fields_of(batch) == [(0, "occurred_at")]
    assert "future" in batch.errors[0].message


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01T00:00:00Z", True, [], "1"])
def test_bad_timestamps(value: object) -> None:
    batch = validate_events([ev(occurred_at=value)], LIMITS, NOW)
    assert fields_of(batch) == [(0, "occurred_at")]


def test_event_type_length_limit() -> None:
    assert normalize_event(ev(event_type="x" * 128), LIMITS, NOW)["event_type"] == "x" * 128
    batch = validate_events([ev(event_type="x" * 129), ev(event_type="")], LIMITS, NOW)
    assert fields_of(batch) == [(0, "event_type"), (1, "event_type")]


def test_properties_size_limit() -> None:
    fits = {"blob": "x" * (32 * 1024 - 20)}
    assert len(orjson.dumps(fits)) <= 32 * 1024
    normalize_event(ev(properties=fits), LIMITS, NOW)
    batch = validate_events([ev(properties={"blob": "x" * (32 * 1024)})], LIMITS, NOW)
    assert fields_of(batch) == [(0, "properties")]


def test_valid_events_are_kept_beside_invalid_ones() -> None:
    body = orjson.dumps({"events": [ev(), {"event_type": "x"}, ev(), "nope"]})
    batch = parse_batch(body, LIMITS, NOW)
    assert len(batch.rows) == 2
    assert fields_of(batch) == [(1, "user_id"), (3, "event")]
    assert batch.error_list()[0] == {"index": 1, "field": "user_id",
                                     "error": "user_id: user_id or anonymous_id is required"}


def test_batch_limits() -> None:
    with pytest.raises(PayloadTooLarge):
        parse_batch(orjson.dumps({"events": [ev() for _ in range(1001)]}), LIMITS, NOW)
    assert len(parse_batch(orjson.dumps({"events": [ev() for _ in range(1000)]}), LIMITS, NOW).rows) == 1000
    with pytest.raises(PayloadTooLarge):
        parse_batch(b" " * (5 * 1024 * 1024 + 1), LIMITS, NOW)


@pytest.mark.parametrize("body,field", [
    (b"{not json", "body"), (b"[1, 2]", "body"), (b'{"events": {}}', "events"), (b'{"events": []}', "events"),
])
def test_malformed_bodies_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_batch(body, LIMITS, NOW)
    assert caught.value.errors[0].field == field


def test_identifiers_accept_numbers_and_bound_lengths() -> None:
    assert normalize_event(ev(user_id=42), LIMITS, NOW)["user_id"] == "42"
    batch = validate_events([ev(user_id="u" * 257), ev(user_id={"a": 1})], LIMITS, NOW)
    assert fields_of(batch) == [(0, "user_id"), (1, "user_id")]


def test_gzip_is_not_parsed_here() -> None:
    # Decompression belongs to the HTTP layer (pulse.web.body); the model sees JSON only.
    with pytest.raises(InvalidInput):
        parse_batch(gzip.compress(orjson.dumps(ev())), LIMITS, NOW)
