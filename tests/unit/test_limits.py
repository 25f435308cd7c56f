"""Limits as pure logic: an import's inflated bytes, lines and time; clock
corrections and offsets that leave the calendar; the span of dates and the
zones the filters take."""

from __future__ import annotations

import gzip
import io
from datetime import UTC, datetime

import pytest

from pulse.core.compat import posthog_batch, segment_batch
from pulse.core.filters import parse_filters
from pulse.core.importing import _Lines, body_stream
from pulse.errors import InvalidInput, PayloadTooLarge
from pulse.settings import Limits

PROJECT = "6f1c1d2e-0000-4000-8000-000000000001"
RECEIVED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def read_all(body: bytes, limits: Limits, encoding: str | None = "gzip") -> int:
    lines = _Lines(body_stream(io.BytesIO(body), encoding), limits)
    return sum(1 for _ in lines)


def limit_named(exc: pytest.ExceptionInfo[PayloadTooLarge]) -> str:
    assert len(exc.value.errors) == 1
    return exc.value.errors[0].field


def test_a_file_that_inflates_past_the_byte_limit_stops_there() -> None:
    bomb = gzip.compress(b"x" * (4 << 20))  # one 4 MiB line of nothing
    with pytest.raises(PayloadTooLarge) as exc:
        read_all(bomb, Limits(max_import_bytes=1 << 20))
    assert limit_named(exc) == "bytes" and "1048576" in exc.value.detail


def test_empty_lines_count_against_the_line_limit() -> None:
    assert read_all(gzip.compress(b"\n" * 1000), Limits(max_import_lines=1000)) == 1000
    with pytest.raises(PayloadTooLarge) as exc:
        read_all(gzip.compress(b"\n" * 1001), Limits(max_import_lines=1000))
    assert limit_named(exc) == "lines" and "1000" in exc.value.detail


def test_the_line_limit_also_bounds_a_drained_body() -> None:
    lines = _Lines(io.BytesIO(b"\n" * 5000), Limits(max_import_lines=100))
    with pytest.raises(PayloadTooLarge) as exc:
        lines.drain()
    assert limit_named(exc) == "lines"


def test_an_import_past_its_time_stops() -> None:
    with pytest.raises(PayloadTooLarge) as exc:
        read_all(b'{"a": 1}\n' * 10, Limits(max_import_seconds=-1), None)
    assert limit_named(exc) == "duration"


def test_a_skew_correction_off_the_calendar_refuses_that_message_alone() -> None:
    doc = {"batch": [
        {"type": "track", "event": "kept", "userId": "u1"},
        {"type": "track", "event": "bad", "userId": "u2", "timestamp": "9999-12-31T00:00:00Z",
         "sentAt": "0001-01-01T00:00:00Z"},
    ]}
    batch = segment_batch(doc, None, PROJECT, Limits(), RECEIVED)
    assert [r["event_type"] for r in batch.rows] == ["kept"]
    assert [(e.index, e.field) for e in batch.errors] == [(1, "timestamp")]


@pytest.mark.parametrize("offset", [10**15, 10**17, 10**30])
def test_a_posthog_offset_of_centuries_refuses_that_event_alone(offset: int) -> None:
    items = [{"event": "kept", "distinct_id": "u1"}, {"event": "bad", "distinct_id": "u2", "offset": offset}]
    batch = posthog_batch(items, None, PROJECT, Limits(), RECEIVED)
    assert [r["event_type"] for r in batch.rows] == ["kept"]
    assert [(e.index, e.field) for e in batch.errors] == [(1, "offset")]


def test_a_posthog_offset_is_milliseconds_before_receipt() -> None:
    batch = posthog_batch([{"event": "e", "distinct_id": "u", "offset": 1500}], None, PROJECT, Limits(), RECEIVED)
    assert batch.rows[0]["occurred_at"] == "2026-05-01 11:59:58.500"


@pytest.mark.parametrize(("params", "field"), [
    ({"to": ["1969-12-31"]}, "to"),
    ({"from": ["2100-01-01"], "to": ["2100-01-02"]}, "from"),
    ({"to": ["9999-12-31T23:59:59-14:00"]}, "to"),
    ({"tz": ["right/UTC"]}, "tz"),
    ({"tz": ["posix/UTC"]}, "tz"),
    ({"tz": ["localtime"]}, "tz"),
    ({"event_type": ["a\x00b"]}, "event_type"),
    ({"segment": ["path:/\x00"]}, "segment"),
])
def test_filters_outside_what_the_stores_hold_are_named(params: dict[str, list[str]], field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_filters(params, PROJECT, 731, RECEIVED)
    assert field in {e.field for e in exc.value.errors}


def test_both_bounds_are_named_at_once() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_filters({"from": ["0500-01-01"], "to": ["0500-02-01"]}, PROJECT, 731, RECEIVED)
    assert {e.field for e in exc.value.errors} == {"from", "to"}


def test_a_default_range_near_the_first_day_starts_there() -> None:
    filters = parse_filters({"to": ["1970-01-05"]}, PROJECT, 731, RECEIVED)
    assert filters.start == datetime(1970, 1, 1, tzinfo=UTC)
