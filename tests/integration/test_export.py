"""GET /v1/export in every format, and async exports through the Broker and the
export function's Trigger; expectations computed from the generated events."""

from __future__ import annotations

import csv
import io
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_event, wait_persisted

COLUMNS = ["event_id", "occurred_at", "event_type", "user_id", "anonymous_id", "session_id", "path", "properties"]


@pytest.fixture
def loaded(pulse: Any, project: Any) -> tuple[Any, list[dict[str, Any]]]:
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    users = ["alice", "=HYPERLINK(\"x\")", "+1", "-2", "@sum", "bob"]
    events = [make_event(event_type=("signup" if n % 3 == 0 else "page_view"), user_id=users[n % len(users)],
                         session_id=f"s{n % 4}", path=f"/p/{n % 5}", properties={"n": n, "text": "a,b\"c"},
                         occurred_at=(base + timedelta(seconds=n)).isoformat())
              for n in range(60)]
    events.append(make_event(event_type="anon", user_id=None, anonymous_id="anon-1",
                             occurred_at=base.isoformat()))
    assert project.api.post("/v1/events", {"events": events}).status == 202
    wait_persisted(pulse)
    return project, events


def expected_rows(events: list[dict[str, Any]], event_type: str | None = None) -> dict[str, dict[str, Any]]:
    out = {}
    for e in events:
        if event_type and e["event_type"] != event_type:
            continue
        moment = datetime.fromisoformat(e["occurred_at"]).astimezone(UTC)
        out[e["event_id"]] = {
            "event_id": e["event_id"],
            "occurred_at": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "event_type": e["event_type"], "user_id": e.get("user_id", ""),
            "anonymous_id": e.get("anonymous_id", ""), "session_id": e.get("session_id", ""),
            "path": e.get("path", ""),
            "properties": orjson.dumps(e["properties"]).decode() if "properties" in e else "{}",
        }
    return out


def neutralised(value: str) -> str:
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


def window() -> str:
    today = datetime.now(UTC).date()
    return f"from={today - timedelta(days=1)}&to={today + timedelta(days=1)}"


def test_csv_is_streamed_with_header_and_neutralised_cells(loaded: Any) -> None:
    project, events = loaded
    answer = project.api.get(f"/v1/export?format=csv&{window()}")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/csv")
    assert answer.headers["Content-Disposition"].startswith('attachment; filename="pulse-events-')
    rows = list(csv.reader(io.StringIO(answer.body.decode())))
    assert rows[0] == COLUMNS
    got = {r[0]: dict(zip(COLUMNS, r, strict=True)) for r in rows[1:]}
    want = expected_rows(events)
    for row in want.values():
        for column in ("event_type", "user_id", "anonymous_id", "session_id", "path"):
            row[column] = neutralised(row[column])
    assert got == want
    assert any(r["user_id"] == "'=HYPERLINK(\"x\")" for r in got.values())


@pytest.mark.parametrize("fmt", ["json", "ndjson", "parquet"])
def test_json_ndjson_parquet(loaded: Any, fmt: str) -> None:
    project, events = loaded
    answer = project.api.get(f"/v1/export?format={fmt}&event_type=signup&{window()}")
    assert answer.status == 200
    assert answer.headers["Content-Disposition"].endswith(f'.{fmt}"')
    if fmt == "json":
        rows = orjson.loads(answer.body)
    elif fmt == "ndjson":
        rows = [orjson.loads(line) for line in answer.body.splitlines()]
    else:
        table = pq.read_table(io.BytesIO(answer.body))
        rows = table.to_pylist()
        for row in rows:
            moment = row["occurred_at"].astimezone(UTC)
            row["occurred_at"] = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    assert {r["event_id"]: r for r in rows} == expected_rows(events, "signup")


def test_segments_empty_results_and_access(loaded: Any, pulse: Any) -> None:
    project, events = loaded
    answer = project.api.get(f"/v1/export?format=ndjson&segment=user_id:bob&segment=session_id:s1&{window()}")
    want = {e["event_id"] for e in events if e.get("user_id") == "bob" and e.get("session_id") == "s1"}
    assert {orjson.loads(line)["event_id"] for line in answer.body.splitlines()} == want
    empty = project.api.get(f"/v1/export?format=json&event_type=none&{window()}")
    assert (empty.status, orjson.loads(empty.body)) == (200, [])
    empty = project.api.get(f"/v1/export?format=parquet&event_type=none&{window()}")
    assert empty.status == 200 and pq.read_table(io.BytesIO(empty.body)).num_rows == 0
    assert project.api.get("/v1/export?format=xml").json["errors"][0]["field"] == "format"
    assert project.api.get("/v1/export", key="").status == 401
    assert project.api.get(f"/v1/export?project_id={uuid.uuid4()}").status == 403


def wait_job(api: Any, export_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = api.get(f"/v1/exports/{export_id}")
        assert status.status == 200
        if status.json["status"] in ("done", "failed") or time.monotonic() > deadline:
            return status.json
        time.sleep(0.1)


def test_async_export_runs_through_the_broker(loaded: Any, pulse: Any) -> None:
    project, events = loaded
    today = datetime.now(UTC).date()
    answer = project.api.post("/v1/exports", {"format": "ndjson", "from": str(today - timedelta(days=1)),
                                              "to": str(today + timedelta(days=1)), "segment": "user_id:alice"})
    assert answer.status == 202
    export_id = answer.json["export_id"]
    job = wait_job(project.api, export_id)
    want = {k: v for k, v in expected_rows(events).items() if v["user_id"] == "alice"}
    assert job["status"] == "done" and job["rows"] == len(want)
    assert job["download_url"] == f"/v1/exports/{export_id}/file"
    download = project.api.get(job["download_url"])
    assert download.status == 200 and "attachment" in download.headers["Content-Disposition"]
    assert {orjson.loads(line)["event_id"]: orjson.loads(line) for line in download.body.splitlines()} == want
    assert project.api.get(job["download_url"], key="").status == 401
    # Another project's key does not see the job.
    from pulse.local.demo import create_demo_key

    _, other = create_demo_key(pulse.services, "other")
    assert project.api.get(f"/v1/exports/{export_id}", key=other).status == 404
    assert project.api.post("/v1/exports", {"format": "xls"}).status == 400
