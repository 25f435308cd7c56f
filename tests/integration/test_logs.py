"""Logs are JSON lines naming the request, trace and project, and never carry
a secret: not an API key, a password, a token, whatever the request held."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from pulse import telemetry
from tests.conftest import make_event, wait_persisted

PASSWORD = "hunter2-Sup3rSecret"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLXNlY3JldA"


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(telemetry.JsonFormatter())
    pulse_log = logging.getLogger("pulse")
    level = pulse_log.level
    pulse_log.addHandler(handler)
    pulse_log.setLevel(logging.INFO)
    yield out
    pulse_log.removeHandler(handler)
    pulse_log.setLevel(level)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def test_no_secret_reaches_the_logs(pulse: Any, project: Any, logs: io.StringIO) -> None:
    key, secret_part = project.key, project.key.rsplit("_", 1)[1]
    wrong_key = key[:-4] + "zzzz"
    basic = base64.b64encode(f"{key}:".encode()).decode()
    api = project.api
    answers = [
        api.post("/v1/events", {"events": [make_event(properties={"password": PASSWORD, "api_key": key})]}),
        api.post(f"/v1/events?api_key={key}&password={PASSWORD}", {"events": [make_event()]}, key=wrong_key),
        api.post("/v1/events", {"events": [make_event()]}, key="", headers={"Authorization": f"Basic {basic}"}),
        api.get("/v1/stats/top-events", key="", headers={"Authorization": f"Bearer {TOKEN}"}),
        api.post("/v1/events", raw=f'{{"events": [{{"password": "{PASSWORD}", "api_key": "{key}"'.encode(),
                 headers={"Content-Type": "application/json"}),
        api.post("/v1/auth/login", {"email": "a@example.com", "password": PASSWORD}),
    ]
    assert [a.status for a in answers[:5]] == [202, 401, 202, 401, 400]
    wait_persisted(pulse)

    text = logs.getvalue()
    assert text, "nothing was logged"
    for secret in (secret_part, wrong_key.rsplit("_", 1)[1], PASSWORD, TOKEN, basic):
        assert secret not in text


def test_lines_name_request_trace_and_project(pulse: Any, project: Any, logs: io.StringIO) -> None:
    answer = project.api.post("/v1/events", {"events": [make_event()]}, headers={"X-Request-ID": "req-logs-1"})
    assert answer.status == 202
    wait_persisted(pulse)
    entries = lines(logs)
    request_line = next(e for e in entries if e.get("request_id") == "req-logs-1")
    assert request_line["function"] == "ingest"
    assert request_line["project_id"] == project.project_id
    assert request_line["status"] == 202 and request_line["route"] == "events"
    assert len(request_line["trace_id"]) == 32
    persisted = [e for e in entries if e["msg"] == "batch persisted" and e.get("project_id") == project.project_id]
    assert len(persisted) == 1
    assert persisted[0]["trace_id"] == request_line["trace_id"]  # one trace across Kafka, in the logs too
    assert persisted[0]["function"] == "persist"


@pytest.mark.parametrize("text, secret", [
    ("key pulse_abcdefgh_0123456789abcdefghij0123 used", "0123456789abcdefghij0123"),
    ("Authorization: Bearer abc.def.ghijklmnopqrst", "ghijklmnopqrst"),
    ('{"password": "hunter2", "n": 1}', "hunter2"),
    ('"msg": "{\\"password\\": \\"hunter2\\"}"', "hunter2"),
    ("dsn postgresql://pulse:s3cr3t@db:5432/pulse", "s3cr3t"),
    ("GET /x?api_key=abcd1234&token=zzzz9999", "abcd1234"),
])
def test_scrub_masks_secrets(text: str, secret: str) -> None:
    assert secret not in telemetry.scrub(text)
