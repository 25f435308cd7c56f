"""The fast path of ``parse_batch`` (typed decoding, pulse.core.events) gives
the same answers as the general path, event by event: random events built
from valid and invalid values of every field, in batches that are all valid
(the fast path answers) or hold an invalid one (the general path answers)."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from pulse.core.events import _fast_batch, parse_batch, validate_events
from pulse.settings import Limits

NOW = datetime(2026, 5, 17, 12, 30, 0, 250000, tzinfo=UTC)
LIMITS = Limits()


def variants(rng: random.Random) -> dict[str, tuple[list[Any], list[Any]]]:
    """For each field: values the general path accepts, and values it refuses."""
    past = NOW - timedelta(days=rng.randrange(60), seconds=rng.randrange(86400), microseconds=rng.randrange(10**6))
    local = past.astimezone(timezone(timedelta(hours=rng.choice([-7, 2, 5.5]))))
    return {
        "event_id": ([str(uuid.UUID(int=rng.getrandbits(128))), None, str(uuid.uuid4()).upper(),
                      "{" + str(uuid.uuid4()) + "}"], ["not-a-uuid", 17]),
        "event_type": (["page_view", "signup", " padded "], ["", "   ", "x" * 129, 5, None]),
        "event": (["legacy_name", None], [3]),
        "user_id": (["u-1", 42, "", None], ["x" * 257, True, 1.5, ["u"]]),
        "anonymous_id": (["anon-9", None, "", 7], [False]),
        "session_id": (["s-1", None, 3], ["y" * 300]),
        "occurred_at": ([past.isoformat(), past.isoformat().replace("+00:00", "Z"), local.isoformat(),
                         past.strftime("%Y-%m-%dT%H:%M:%S"), past.strftime("%Y-%m-%d %H:%M:%S.%f"),
                         past.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "-00:00",
                         past.strftime("%Y-%m-%dT%H:%M:%S.") + "5Z", past.isoformat()[:10],
                         int(past.timestamp()), past.timestamp() * 1000, None],
                        [(NOW + timedelta(hours=1)).isoformat(), "1969-12-31T23:59:59Z", "2026-02-30T00:00:00Z",
                         "yesterday", True]),
        "timestamp": ([past.isoformat(), None], ["soon"]),
        "properties": ([{"plan": "pro", "amount": 29.5, "tags": ["a", "b"], "nested": {"ok": True, "n": None}},
                        {}, None, {"big": 10**30}, {"é": "ü", "emoji": "🙂"}], [{"text": "z" * 40000}, [1, 2], "text"]),
        "metadata": ([{"from": "metadata"}, None], [7]),
        "context": ([{"page": {"path": "/p", "url": "https://x.test/a/b?q=1", "referrer": "https://r.test/",
                               "title": "T"}, "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
                      "ip": "203.0.113.9", "locale": "en-US", "country": "DE"},
                     {"page": {"url": "https://x.test/only-url"}}, {"page": {}}, {"page": None},
                     {"user_agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"}, None],
                    [{"page": "x"}, 7, {"country": 5}, {"locale": "l" * 3000}]),
        "path": (["/top", None], [9]),
        "page_url": (["https://x.test/top", None], [{}]),
        "referrer": (["https://ref.test/", None], [1]),
    }


def random_event(rng: random.Random, valid: bool) -> dict[str, Any]:
    event: dict[str, Any] = {}
    for name, (good, bad) in variants(rng).items():
        if rng.random() < 0.4 and name not in ("event_type", "user_id"):
            continue  # absent
        event[name] = rng.choice(good if valid or rng.random() < 0.8 else bad)
    if valid:  # one that takes no other field's fallback
        event["event_type"] = rng.choice(["page_view", "signup"])
        event["user_id"] = rng.choice(["u-1", 42])
    return event


def general(body: bytes) -> tuple[list[dict[str, str]], list[dict[str, object]]]:
    batch = validate_events(orjson.loads(body)["events"], LIMITS, NOW)
    return batch.rows, batch.error_list()


def without_generated_ids(rows: list[dict[str, str]], sent: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "event_id" or event.get("event_id")}
            for row, event in zip(rows, sent, strict=True)]


def compare(events: list[dict[str, Any]]) -> bool:
    """Assert both paths agree on a body of these events; True if the fast path answered."""
    body = json.dumps({"events": events}).encode()  # (orjson refuses the 10**30 a client may send)
    fast = _fast_batch(body, LIMITS, NOW)
    rows, errors = general(body)
    answer = parse_batch(body, LIMITS, NOW)
    if fast is not None:
        assert errors == []
        assert without_generated_ids(fast.rows, events) == without_generated_ids(rows, events)
    assert answer.error_list() == errors
    refused = {error["index"] for error in errors}
    kept = [event for index, event in enumerate(events) if index not in refused]
    assert without_generated_ids(answer.rows, kept) == without_generated_ids(rows, kept)
    return fast is not None


def test_the_fast_path_answers_as_the_general_path() -> None:
    rng = random.Random(2026)
    answered = 0
    for _ in range(300):
        events = [random_event(rng, True) for _ in range(rng.randrange(1, 8))]
        answered += compare(events)
        compare(events + [random_event(rng, False)])
    assert answered > 40  # the fast path answered many (a batch holding a form only the general path takes does not)


def test_a_large_valid_batch_takes_the_fast_path() -> None:
    rng = random.Random(99)
    events = [random_event(rng, True) for _ in range(500)]
    for event in events:  # forms the general path rewrites (upper-case ids, 10**30) leave the fast path
        event["event_id"] = str(uuid.UUID(int=rng.getrandbits(128)))
        event.pop("properties", None)
    assert compare(events)


@pytest.mark.parametrize("body", [
    b'{"events": []}', b'{"events": {}}', b'{"event_type": "a", "user_id": "u"}', b'[]', b'{"events": [1]}',
    b'{"events": [{"event_type": "a", "user_id": "u"}]} x', b'{"events": [{"event_type": "a\\ud800", "user_id": "u"}]}',
])
def test_other_shapes_are_left_to_the_general_path(body: bytes) -> None:
    assert _fast_batch(body, LIMITS, NOW) is None
