"""`pulse dlq list` and `pulse dlq replay` against a running Pulse's Kafka:
a batch persist refused goes to the dead-letter topic; after the fix, replay
stores it, and replaying it again stores nothing twice."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import orjson

from pulse.errors import InvalidInput
from tests.conftest import ROOT, make_event, wait_persisted


def pulse_cli(pulse: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    return subprocess.run([sys.executable, "-m", "pulse.cli", "dlq", *args,
                           "--bootstrap", pulse.settings.kafka_bootstrap],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)


def dead_letters_of(pulse: Any, project_id: str) -> list[dict[str, Any]]:
    out = pulse_cli(pulse, "list", "--json").stdout
    return [row for row in map(orjson.loads, out.splitlines()) if row["key"] == project_id]


def top_events(project: Any) -> list[dict[str, Any]]:
    answer = project.api.get("/v1/stats/top-events")
    assert answer.status == 200, answer.body
    return answer.json if isinstance(answer.json, list) else answer.json["results"]


def test_refused_batch_is_listed_and_replayed_once(pulse: Any, project: Any) -> None:
    persister = pulse.functions["persist"].persister
    events = [make_event(event_type="checkout", user_id=f"u{i % 3}") for i in range(7)]

    def refuse(step: str) -> None:
        if step == "after-ledger":
            raise InvalidInput.field("data", "refused by an injected fault")

    persister.fault = refuse
    try:
        assert project.api.post("/v1/events", {"events": events}).status == 202
        wait_persisted(pulse)
    finally:
        persister.fault = lambda step: None
    assert top_events(project) == []

    letters = dead_letters_of(pulse, project.project_id)
    assert len(letters) == 1
    letter = letters[0]
    assert letter["type"] == "dev.pulse.events.ingested"
    assert letter["status"] == "400"
    assert letter["destination"].endswith("/_ce/ingested")
    assert "refused by an injected fault" in letter["error"]

    expected = [{"event_type": "checkout", "count": 7, "users": 3}]
    for _ in range(2):  # replaying again must not count anything twice
        replayed = pulse_cli(pulse, "replay", "--id", letter["id"])
        assert "replayed 1 record(s)" in replayed.stdout
        wait_persisted(pulse)
        assert top_events(project) == expected
    assert len(dead_letters_of(pulse, project.project_id)) == 1  # the topic keeps its record


def test_list_reads_an_empty_or_missing_topic(pulse: Any) -> None:
    out = pulse_cli(pulse, "list", "--topic", "pulse.no-such-topic")
    assert out.stdout == ""
    assert "0 dead-lettered record(s)" in out.stderr
