"""Bad parameters get 400 problem+json naming the parameter; injection attempts
through every parameter change nothing and never reach SQL as text."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import pytest

from tests.conftest import make_event, wait_persisted

BAD = [
    ("/v1/stats/events", {"group_by": "minute"}, "group_by"),
    ("/v1/stats/events", {"group_by": "properties.a b"}, "group_by"),
    ("/v1/stats/events", {"group_by": "properties."}, "group_by"),
    ("/v1/stats/dau", {"from": "2026-13-01"}, "from"),
    ("/v1/stats/dau", {"from": "yesterday"}, "from"),
    ("/v1/stats/dau", {"to": "2026-02-30"}, "to"),
    ("/v1/stats/dau", {"from": "2026-05-02", "to": "2026-05-01"}, "from"),
    ("/v1/stats/dau", {"from": "2020-01-01", "to": "2026-01-01"}, "to"),
    ("/v1/stats/dau", {"tz": "Mars/Olympus"}, "tz"),
    ("/v1/stats/dau", {"tz": "UTC", "segment": "planet:mars"}, "segment"),
    ("/v1/stats/dau", {"segment": "country"}, "segment"),
    ("/v1/stats/dau", {"segment": "properties.a'b:1"}, "segment"),
    ("/v1/stats/dau", {"segment": "country:" + "x" * 1025}, "segment"),
    ("/v1/stats/overview", {"segment": ["country:UA"] * 11}, "segment"),
    ("/v1/stats/events", {"event_type": "x" * 129}, "event_type"),
    ("/v1/stats/top-events", {"limit": "0"}, "limit"),
    ("/v1/stats/top-events", {"limit": "1001"}, "limit"),
    ("/v1/stats/top-events", {"limit": "ten"}, "limit"),
    ("/v1/stats/pages", {"limit": "-1"}, "limit"),
    ("/v1/stats/active-users", {"interval": "year"}, "interval"),
    ("/v1/stats/retention", {"windows": "53"}, "windows"),
    ("/v1/stats/retention", {"windows": "0"}, "windows"),
    ("/v1/stats/retention", {"start_date": "2026/01/01"}, "start_date"),
    ("/v1/stats/retention", {"start_date": "2999-01-05"}, "start_date"),
    ("/v1/stats/summary", {"tz": "Not/AZone"}, "tz"),
]


def fields_named(answer: Any) -> set[str]:
    return {error["field"] for error in answer.json["errors"]}


@pytest.mark.parametrize(("path", "params", "field"), BAD)
def test_bad_parameters_are_named(project: Any, path: str, params: dict[str, str], field: str) -> None:
    answer = project.api.get(path + "?" + urlencode(params, doseq=True))
    assert answer.status == 400, answer.body
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert field in fields_named(answer)
    assert field in answer.json["detail"]


BAD_FUNNELS = [
    ({"steps": ["a"]}, "steps"),
    ({"steps": "a,b"}, "steps"),
    ({"steps": ["a", 5]}, "steps[1]"),
    ({"steps": ["a", {"event_type": ""}]}, "steps[1].event_type"),
    ({"steps": ["a", {"event_type": "b", "segment": ["nope:1"]}]}, "steps[1].segment"),
    ({"steps": ["a", "b"], "window_seconds": 0}, "window_seconds"),
    ({"steps": ["a", "b"], "window_seconds": "60"}, "window_seconds"),
    ({"steps": ["a", "b"], "from": "2026-05-02", "to": "2026-05-01"}, "from"),
    ({"steps": ["a", "b"], "tz": "Nowhere/Land"}, "tz"),
    ({"steps": ["a", "b"], "segment": ["x"]}, "segment"),
    ({"steps": ["a", "b"], "colour": "red"}, "colour"),
    ([], "body"),
]


@pytest.mark.parametrize(("body", "field"), BAD_FUNNELS)
def test_bad_funnels_are_named(project: Any, body: Any, field: str) -> None:
    answer = project.api.post("/v1/stats/funnel", body)
    assert answer.status == 400, answer.body
    assert field in fields_named(answer)


def test_funnel_body_must_be_json(project: Any) -> None:
    answer = project.api.post("/v1/stats/funnel", raw=b"{nope", headers={"Content-Type": "application/json"})
    assert answer.status == 400
    assert fields_named(answer) == {"body"}


ATTACKS = [
    "'; DROP TABLE events; --",
    "x' OR '1'='1",
    "1) OR (1=1",
    "{f_project:UUID}",
    "\\'; SELECT 1; --",
    "properties') OR 1=1 --",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_injection_through_every_parameter(pulse: Any, project: Any, attack: str) -> None:
    project.api.post("/v1/events", {"events": [make_event(user_id="victim", context={"country": "UA"})]})
    wait_persisted(pulse)
    count_before = project.api.get("/v1/stats/overview").json["events"]
    q = quote(attack, safe="")
    for path in ("/v1/stats/events", "/v1/stats/dau", "/v1/stats/top-events", "/v1/stats/pages",
                 "/v1/stats/overview", "/v1/stats/summary", "/v1/stats/retention", "/v1/stats/active-users"):
        for name in ("from", "to", "tz", "group_by", "limit", "interval", "start_date", "windows", "project_id"):
            answer = project.api.get(f"{path}?{name}={q}")
            assert answer.status in (200, 400, 403), (path, name, answer.status, answer.body)
        for segment in (f"country:{q}", f"properties.{q}:1", f"properties.plan:{q}", f"{q}:1"):
            answer = project.api.get(f"{path}?segment={segment}")
            assert answer.status in (200, 400), (path, segment, answer.status, answer.body)
            if answer.status == 200 and path == "/v1/stats/overview":
                assert answer.json["events"] == 0
        answer = project.api.get(f"{path}?event_type={q}")
        assert answer.status == 200
    assert project.api.get(f"/v1/stats/users/{q}").status in (400, 404)
    for body in ({"steps": [attack, "b"]}, {"steps": ["a", {"event_type": "b", "segment": [f"country:{attack}"]}]},
                 {"steps": ["a", "b"], "from": attack}, {"steps": ["a", "b"], "segment": [f"path:{attack}"]}):
        answer = project.api.post("/v1/stats/funnel", body)
        assert answer.status in (200, 400), (body, answer.body)
    assert project.api.get("/v1/stats/overview").json["events"] == count_before == 1
    assert project.api.get("/v1/stats/users/victim").status == 200


def test_reading_needs_a_read_credential(project: Any) -> None:
    assert project.api.get("/v1/stats/overview", key="").status == 401
    assert project.api.get("/v1/stats/overview", key="pk_not_a_real_key").status == 401
