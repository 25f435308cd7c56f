"""Shared records (pulse.core.ingestion): how requests sent together are packed
into records, and what such a record carries."""

from __future__ import annotations

import uuid

import orjson

from pulse.core.events import validate_events
from pulse.core.ingestion import RECORD_OVERHEAD_BYTES, decode_batch, pack, shared_record
from pulse.settings import Limits
from tests.conftest import make_event

A, B = str(uuid.uuid4()), str(uuid.uuid4())


def test_one_record_per_project_in_arrival_order() -> None:
    assert pack([(A, 100, 5), (B, 100, 5), (A, 100, 5), (B, 100, 5), (A, 100, 5)], 10_000, 1000) == [
        [0, 2, 4], [1, 3]]


def test_a_record_over_either_limit_is_split_and_a_part_alone_may_be_larger() -> None:
    limit = RECORD_OVERHEAD_BYTES + 1000
    assert pack([(A, 600, 1), (A, 400, 1), (A, 1, 1), (A, 5000, 1), (A, 10, 1)], limit, 1000) == [
        [0, 1], [2], [3], [4]]
    assert pack([(A, 10, 510), (A, 10, 510), (A, 10, 490), (A, 10, 2000)], 10_000, 1000) == [
        [0], [1, 2], [3]]


def test_a_shared_record_decodes_to_every_request_s_rows_in_order() -> None:
    first = validate_events([make_event() for _ in range(3)], Limits()).rows
    again = first[1]  # an id re-sent in the other request: persist keeps one (it dedups by event id)
    second = validate_events([make_event(), dict(again)], Limits()).rows
    record = shared_record(A, "2026-05-01 10:00:00.000", [orjson.dumps(first), orjson.dumps([]),
                                                           orjson.dumps(second)], traceparent=None)
    project_id, received_at, rows = decode_batch(record)
    assert (project_id, received_at) == (A, "2026-05-01 10:00:00.000")
    assert [row.event_id for row in rows] == [r["event_id"] for r in [*first, *second]]
    assert record.get("partitionkey") == A
