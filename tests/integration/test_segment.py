"""Segment-compatible ingest: the real segment-analytics-python client, and the
HTTP Tracking API's shapes, limits and answers, read back from ClickHouse."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from segment.analytics import Client

from tests.conftest import wait_persisted


def stored(pulse: Any, project_id: str) -> dict[str, dict[str, Any]]:
    """The project's events in ClickHouse, by event_id."""
    rows = pulse.services.ch.dicts(
        "SELECT toString(event_id) AS event_id, event_type, user_id, anonymous_id, occurred_at, properties,"
        " path, url, ip, locale, country FROM events WHERE project_id = {p:UUID}", {"p": project_id})
    return {row["event_id"]: row for row in rows}


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def test_segment_python_client_lands_every_call_type(pulse: Any, project: Any) -> None:
    errors: list[Any] = []
    client = Client(project.key, host=pulse.gateway_url, on_error=lambda e, batch: errors.append(e),
                    upload_interval=0.1, max_retries=0)
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    ids = {name: str(uuid.uuid4()) for name in ("track", "page", "screen", "identify", "group", "alias")}
    client.track("u-1", "Order Completed", {"revenue": 12.5}, timestamp=moment, message_id=ids["track"])
    client.page("u-1", "Docs", "Pricing", {"path": "/pricing", "url": "https://x.test/pricing"},
                timestamp=moment, message_id=ids["page"])
    client.screen("u-2", "App", "Home", timestamp=moment, message_id=ids["screen"])
    client.identify("u-1", {"plan": "pro"}, timestamp=moment, message_id=ids["identify"])
    client.group("u-1", "acme", {"seats": 5}, timestamp=moment, message_id=ids["group"])
    client.alias("anon-9", "u-1", timestamp=moment, message_id=ids["alias"])
    client.flush()
    client.join()
    assert errors == []
    wait_persisted(pulse)

    events = stored(pulse, project.project_id)
    assert set(events) == set(ids.values())
    expected = {"track": ("Order Completed", "u-1"), "page": ("page_view", "u-1"), "screen": ("screen_view", "u-2"),
                "identify": ("$identify", "u-1"), "group": ("$group", "u-1"), "alias": ("$alias", "u-1")}
    for name, (event_type, user) in expected.items():
        row = events[ids[name]]
        assert (row["event_type"], row["user_id"]) == (event_type, user), name
        # sentAt and timestamp come from one clock: the corrected time is within
        # the request's transit of the original.
        assert abs(row["occurred_at"] - moment.replace(tzinfo=None)) < timedelta(seconds=30), name
    assert events[ids["page"]]["path"] == "/pricing"
    assert '"revenue":12.5' in events[ids["track"]]["properties"]
    assert '"plan":"pro"' in events[ids["identify"]]["properties"]
    assert '"group_id":"acme"' in events[ids["group"]]["properties"]
    assert '"previous_id":"anon-9"' in events[ids["alias"]]["properties"]


def test_clock_skew_is_corrected_from_sent_at(pulse: Any, project: Any) -> None:
    # The device's clock is two hours fast: it says it sent at +2h an event from +2h-10min.
    device_now = datetime.now(UTC) + timedelta(hours=2)
    body = {"batch": [{"type": "track", "event": "skewed", "userId": "u", "messageId": "m-skew",
                       "timestamp": (device_now - timedelta(minutes=10)).isoformat()}],
            "sentAt": device_now.isoformat()}
    before = datetime.now(UTC)
    answer = project.api.post("/v1/batch", body, headers=basic(project.key))
    after = datetime.now(UTC)
    assert answer.status == 200 and answer.json == {"success": True}
    wait_persisted(pulse)
    (row,) = stored(pulse, project.project_id).values()
    occurred = row["occurred_at"].replace(tzinfo=UTC)
    assert before - timedelta(minutes=10, milliseconds=5) <= occurred <= after - timedelta(minutes=10) + timedelta(
        milliseconds=5)
    # A messageId that is not a UUID becomes uuid5(project, messageId).
    assert row["event_id"] == str(uuid.uuid5(uuid.UUID(project.project_id), "m-skew"))


def test_single_call_endpoints_and_write_key_in_body(pulse: Any, project: Any) -> None:
    answer = project.api.post("/v1/track", {"event": "a", "userId": "u", "messageId": "one"}, key="",
                              headers=basic(project.key))
    assert (answer.status, answer.json) == (200, {"success": True})
    answer = project.api.post("/v1/page", {"anonymousId": "anon", "name": "Home", "messageId": "two",
                                           "writeKey": project.key,
                                           "context": {"page": {"path": "/"}, "ip": "10.0.0.1", "locale": "de-DE",
                                                       "location": {"country": "DE"}}}, key="")
    assert (answer.status, answer.json) == (200, {"success": True})
    # The same messageId again is the same event: stored once.
    assert project.api.post("/v1/track", {"event": "a", "userId": "u", "messageId": "one"},
                            headers=basic(project.key)).status == 200
    wait_persisted(pulse)
    events = stored(pulse, project.project_id)
    assert len(events) == 2
    page = events[str(uuid.uuid5(uuid.UUID(project.project_id), "two"))]
    assert (page["event_type"], page["anonymous_id"], page["path"], page["ip"], page["locale"], page["country"]) == (
        "page_view", "anon", "/", "10.0.0.1", "de-DE", "DE")


def test_segment_limits_and_errors_are_answered_as_segment_does(pulse: Any, project: Any) -> None:
    headers = basic(project.key)
    big = {"type": "track", "event": "big", "userId": "u", "properties": {"blob": "x" * (33 * 1024)}}
    answer = project.api.post("/v1/batch", {"batch": [big]}, headers=headers)
    assert answer.status == 400 and answer.json["errors"][0]["field"] == "batch"
    many = [{"type": "track", "event": "e", "userId": "u", "properties": {"blob": "x" * 30_000}} for _ in range(18)]
    answer = project.api.post("/v1/batch", {"batch": many}, headers=headers)
    assert answer.status == 400 and answer.json["errors"][0]["field"] == "body"
    assert project.api.post("/v1/batch", raw=b"{nope", headers=headers).status == 400
    assert project.api.post("/v1/batch", {"batch": [{"type": "track", "event": "e"}]}, headers=headers).status == 400
    assert project.api.post("/v1/track", {"event": "e", "userId": "u"}, key="",
                            headers=basic("pulse_nope_" + "x" * 32)).status == 401
    # One invalid message among valid ones: the valid ones are taken, answered 200.
    mixed = [{"type": "track", "event": "ok", "userId": "u"}, {"type": "bogus", "userId": "u"}]
    answer = project.api.post("/v1/batch", {"batch": mixed}, headers=headers)
    assert (answer.status, answer.json) == (200, {"success": True})
    wait_persisted(pulse)
    assert [r["event_type"] for r in stored(pulse, project.project_id).values()] == ["ok"]
