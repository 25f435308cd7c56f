"""/v1/cloudevents in binary, structured and batch modes, with the ``cloudevents``
SDK building the requests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from cloudevents.conversion import to_binary, to_dict, to_structured
from cloudevents.http import CloudEvent

from tests.conftest import wait_persisted
from tests.integration.test_segment import stored


def test_binary_structured_and_batch_modes(pulse: Any, project: Any) -> None:
    moment = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)
    binary_id = str(uuid.uuid4())
    event = CloudEvent({"type": "com.example.signup", "source": "/app", "id": binary_id,
                        "time": moment.isoformat(), "subject": "ce-user"}, {"properties": {"plan": "pro"}})
    headers, body = to_binary(event)
    answer = project.api.post("/v1/cloudevents", raw=body, headers=headers)
    assert answer.status == 202 and answer.json == {"accepted": 1, "errors": []}

    structured = CloudEvent({"type": "ignored.type", "source": "/app", "id": "order-42"},
                            {"event_type": "purchase", "user_id": "u-2", "occurred_at": moment.isoformat()})
    headers, body = to_structured(structured)
    assert project.api.post("/v1/cloudevents", raw=body, headers=headers).status == 202

    batch = [to_dict(CloudEvent({"type": "page_view", "source": "/web", "id": f"b-{n}"}, {"user_id": f"w{n}"}))
             for n in range(3)]
    batch.append(to_dict(CloudEvent({"type": "bad", "source": "/web", "id": "b-bad"}, {"properties": {}})))
    answer = project.api.post("/v1/cloudevents", raw=orjson.dumps(batch),
                              headers={"Content-Type": "application/cloudevents-batch+json"})
    assert answer.status == 202
    assert answer.json["accepted"] == 3
    assert [(e["index"], e["field"]) for e in answer.json["errors"]] == [(3, "user_id")]
    wait_persisted(pulse)

    events = stored(pulse, project.project_id)
    namespace = uuid.UUID(project.project_id)
    assert set(events) == {binary_id, str(uuid.uuid5(namespace, "order-42")),
                           *(str(uuid.uuid5(namespace, f"b-{n}")) for n in range(3))}
    signup = events[binary_id]
    assert (signup["event_type"], signup["user_id"], signup["occurred_at"]) == (
        "com.example.signup", "ce-user", moment.replace(tzinfo=None))
    assert '"plan":"pro"' in signup["properties"]
    purchase = events[str(uuid.uuid5(namespace, "order-42"))]
    assert (purchase["event_type"], purchase["user_id"]) == ("purchase", "u-2")
    assert sorted(r["user_id"] for r in events.values() if r["event_type"] == "page_view") == ["w0", "w1", "w2"]


def test_cloudevents_errors(pulse: Any, project: Any) -> None:
    assert project.api.post("/v1/cloudevents", raw=b"{}", headers={"Content-Type": "application/json"}).status == 400
    headers, body = to_binary(CloudEvent({"type": "t", "source": "/s"}, {"user_id": "u"}))
    assert project.api.post("/v1/cloudevents", raw=body, headers=headers, key="").status == 401
    not_json = CloudEvent({"type": "t", "source": "/s", "datacontenttype": "text/plain"}, "hello")
    headers, body = to_binary(not_json)
    answer = project.api.post("/v1/cloudevents", raw=body, headers=headers)
    assert answer.status == 400 and answer.json["errors"][0]["field"] == "data"
