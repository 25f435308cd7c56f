"""POST /v1/import (CSV and NDJSON, streamed) and `pulse import`: per-line
errors, duplicates by content, concurrent duplicates; expectations computed
from the generated file."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import ROOT, wait_persisted
from tests.integration.test_client import stored_ids


def csv_file(rows: int, seed: str) -> tuple[bytes, list[int], set[str]]:
    """A CSV with some bad lines: (content, bad line numbers, explicit event ids)."""
    base = datetime.now(UTC) - timedelta(hours=1)
    lines = ["event_id,occurred_at,user_id,event_type,properties"]
    bad, explicit = [], set()
    for n in range(rows):
        line_no = n + 2
        when = (base + timedelta(milliseconds=n)).isoformat()
        event_id = str(uuid.uuid4()) if n % 10 == 0 else ""
        if n % 97 == 5:
            lines.append(f",{when},u{n},,{{}}")  # no event_type
            bad.append(line_no)
        elif n % 131 == 7:
            lines.append(f',{when},u{n},bad,"{{not json"')
            bad.append(line_no)
        elif n % 173 == 9:
            lines.append(f"{when},u{n}")  # wrong number of cells
            bad.append(line_no)
        else:
            lines.append(f'{event_id},{when},u{n % 50},{seed}-{n % 3},"{{""n"": {n}}}"')
            if event_id:
                explicit.add(event_id)
    return ("\n".join(lines) + "\n").encode(), bad, explicit


def test_csv_import_reports_bad_lines_and_refuses_the_same_file_twice(pulse: Any, project: Any) -> None:
    content, bad, explicit = csv_file(2500, "imp")
    answer = project.api.post("/v1/import", raw=content, headers={"Content-Type": "text/csv"})
    assert answer.status == 200, answer.body
    result = answer.json
    assert (result["status"], result["rows"], result["accepted"], result["rejected"]) == (
        "imported", 2500, 2500 - len(bad), len(bad))
    assert sorted({e["line"] for e in result["errors"]}) == bad
    wait_persisted(pulse)
    stored = stored_ids(pulse, project.project_id)
    assert len(stored) == 2500 - len(bad) and explicit <= set(stored)

    # The same bytes again: a duplicate, and no event is stored twice.
    again = project.api.post("/v1/import", raw=content, headers={"Content-Type": "text/csv"})
    assert again.status == 200 and again.json["status"] == "duplicate"
    assert (again.json["rows"], again.json["accepted"]) == (2500, 2500 - len(bad))
    wait_persisted(pulse)
    assert sorted(stored_ids(pulse, project.project_id)) == sorted(stored)


def test_ndjson_gzip_and_concurrent_duplicates(pulse: Any, project: Any) -> None:
    lines = [orjson.dumps({"event_type": "nd", "user_id": f"u{n}", "properties": {"n": n}}) for n in range(1500)]
    lines.insert(100, b"{broken")
    content = gzip.compress(b"\n".join(lines) + b"\n")
    answers: list[Any] = []

    def send() -> None:
        answers.append(project.api.post("/v1/import", raw=content, headers={
            "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.json["status"] for a in answers) == ["duplicate", "imported"]
    imported = next(a.json for a in answers if a.json["status"] == "imported")
    assert (imported["rows"], imported["accepted"]) == (1501, 1500)
    assert [e["line"] for e in imported["errors"]] == [101]
    wait_persisted(pulse)
    assert len(stored_ids(pulse, project.project_id)) == 1500


def test_import_input_errors(project: Any) -> None:
    bad_header = project.api.post("/v1/import", raw=b"who,what\n1,2\n", headers={"Content-Type": "text/csv"})
    assert bad_header.status == 400 and bad_header.json["errors"][0]["field"] == "header"
    assert project.api.post("/v1/import", raw=b"x", headers={"Content-Type": "text/plain"}).status == 415
    assert project.api.post("/v1/import", raw=b"", headers={"Content-Type": "text/csv"}).status == 400
    assert project.api.post("/v1/import", raw=b"event_type,user_id\na,b\n", key="",
                            headers={"Content-Type": "text/csv"}).status == 401
    digest = "sha-256=:" + "A" * 43 + "=:"
    mismatch = project.api.post("/v1/import", raw=b"event_type,user_id\na,b\n",
                                headers={"Content-Type": "text/csv", "Content-Digest": digest})
    assert mismatch.status == 400 and mismatch.json["errors"][0]["field"] == "Content-Digest"


def test_pulse_import_command(pulse: Any, project: Any, tmp_path: Path) -> None:
    content, bad, _ = csv_file(1200, "cli")
    path = tmp_path / "events.csv"
    path.write_bytes(content)
    command = [sys.executable, "-m", "pulse.cli", "import", str(path), "--url", pulse.gateway_url,
               "--key", project.key, "--json"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT,
                           env={**os.environ, "XDG_STATE_HOME": str(tmp_path)})
    assert first.returncode == 0, first.stderr
    assert "1,200 / 1,200 rows" in first.stderr
    result = orjson.loads(first.stdout)
    assert (result["status"], result["accepted"]) == ("imported", 1200 - len(bad))
    wait_persisted(pulse)
    count = len(stored_ids(pulse, project.project_id))
    second = subprocess.run(command + ["--quiet"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "XDG_STATE_HOME": str(tmp_path)})
    assert second.returncode == 0 and orjson.loads(second.stdout)["status"] == "duplicate"
    wait_persisted(pulse)
    assert len(stored_ids(pulse, project.project_id)) == count == 1200 - len(bad)
