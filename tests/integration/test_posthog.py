"""PostHog-compatible ingest through the real ``posthog`` client (v0 /batch/ by
default, and v1 /i/v1/analytics/events), plus the capture endpoints' answers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from posthog import Posthog

from tests.conftest import wait_persisted
from tests.integration.test_segment import stored


@pytest.mark.parametrize("mode", [None, "v1"], ids=["default-v0", "v1"])
def test_posthog_client_lands_events(pulse: Any, project: Any, mode: str | None) -> None:
    errors: list[Any] = []
    options: dict[str, Any] = {"capture_mode": mode, "capture_compression": "gzip"} if mode else {"gzip": True}
    client = Posthog(project.key, host=pulse.gateway_url, on_error=lambda e, batch: errors.append(e),
                     flush_interval=0.1, max_retries=0, **options)
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    client.capture("$pageview", distinct_id="ph-user", uuid=ids[0], timestamp=moment,
                   properties={"$current_url": "https://x.test/docs?a=1", "$session_id": "s-1"})
    client.capture("signed_up", distinct_id="ph-user", uuid=ids[1], timestamp=moment, properties={"plan": "free"})
    client.capture("purchase", distinct_id="ph-other", uuid=ids[2], timestamp=moment)
    client.flush()
    client.shutdown()
    assert errors == []
    wait_persisted(pulse)

    events = stored(pulse, project.project_id)
    assert set(events) == set(ids)
    assert [(events[i]["event_type"], events[i]["user_id"]) for i in ids] == [
        ("page_view", "ph-user"), ("signed_up", "ph-user"), ("purchase", "ph-other")]
    for event_id in ids:
        assert abs(events[event_id]["occurred_at"] - moment.replace(tzinfo=None)) < timedelta(seconds=30)
    assert events[ids[0]]["path"] == "/docs"
    assert events[ids[0]]["url"] == "https://x.test/docs?a=1"
    assert '"plan":"free"' in events[ids[1]]["properties"]


def test_capture_endpoints_answer_as_posthog(pulse: Any, project: Any) -> None:
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"batch": [{"event": "ok", "distinct_id": "u", "uuid": good},
                      {"event": "x" * 200, "distinct_id": "u", "uuid": bad}], "created_at": "2024-01-01T00:00:00Z"}
    answer = project.api.post("/i/v1/analytics/events", body, key="",
                              headers={"Authorization": f"Bearer {project.key}"})
    assert answer.status == 200
    assert answer.json["results"][good] == {"result": "ok"}
    assert answer.json["results"][bad]["result"] == "drop"
    assert "event_type" in answer.json["results"][bad]["details"]

    # /i/v0/e/ takes a single event with its key in the body; /batch/ a batch.
    single = str(uuid.uuid4())
    answer = project.api.post("/i/v0/e/", {"api_key": project.key, "event": "single", "distinct_id": "u2",
                                           "uuid": single}, key="")
    assert (answer.status, answer.json) == (200, {"status": 1})
    answer = project.api.post("/batch/", {"api_key": project.key, "batch": [{"event": "b", "distinct_id": "u3"}]},
                              key="", gzip_body=True)
    assert (answer.status, answer.json) == (200, {"status": 1})
    assert project.api.post("/batch/", {"api_key": "wrong", "batch": [{"event": "b", "distinct_id": "u"}]},
                            key="").status == 401
    assert project.api.post("/batch/", {"batch": [{"event": "b", "distinct_id": "u"}]}, key="").status == 401
    assert project.api.post("/batch/", {"api_key": project.key, "batch": []}, key="").status == 400
    wait_persisted(pulse)
    events = stored(pulse, project.project_id)
    assert sorted(r["event_type"] for r in events.values()) == ["b", "ok", "single"]
    assert good in events and single in events
