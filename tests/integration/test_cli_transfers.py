"""`pulse import` and `pulse export` as a user runs them: separate processes
against the gateway, the address and key from flags or the environment, a
progress bar with rows, bytes and rates, a summary at the end; an import
killed half-way and run again stores every row once."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from tests.conftest import ROOT, make_event, wait_persisted
from tests.integration.test_client import stored_ids
from tests.integration.test_import import csv_file

PULSE = [sys.executable, "-m", "pulse.cli"]
BAR = re.compile(r"([\d,]+)(?: / ([\d,]+))? rows\s+[\d,–]+ rows/s\s+[\d.]+(?:/[\d.]+)? (?:bytes|kB|MB)\s+[\d.?]+ \S*B/s")


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")  # where import checkpoints go
    env["COLUMNS"] = "200"
    return {**env, **extra}


def ndjson_file(path: Path, rows: int) -> None:
    base = datetime.now(UTC) - timedelta(hours=2)
    with path.open("w") as f:
        for n in range(rows):  # no event_id: ids come from the bytes, so a re-sent row is recognised
            f.write(orjson.dumps({"event_type": f"resumed-{n % 4}", "user_id": f"u{n % 97}",
                                  "occurred_at": (base + timedelta(milliseconds=n)).isoformat(),
                                  "properties": {"n": n, "pad": "x" * 40}}).decode() + "\n")


def test_import_shows_rows_bytes_and_rates_then_a_summary(pulse: Any, project: Any, tmp_path: Path) -> None:
    content, bad, _ = csv_file(3000, "bar")
    path = tmp_path / "events.csv"
    path.write_bytes(content)
    env = environment(tmp_path, PULSE_URL=pulse.gateway_url, PULSE_API_KEY=project.key)
    done = subprocess.run([*PULSE, "import", str(path), "--part-bytes", "32768"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    bars = [m for line in done.stderr.splitlines() if (m := BAR.search(line))]
    assert bars, done.stderr
    assert bars[-1].group(1) == bars[-1].group(2) == "3,000"  # every line of the file went, out of 3,000
    assert done.stdout.startswith(f"{path}: 3,000 rows, {3000 - len(bad):,} accepted, {len(bad):,} rejected")
    shown_lines = sorted(int(n) for n in re.findall(r"^  line (\d+):", done.stdout, re.M))
    assert shown_lines == sorted(bad)[:10], "errors name the file's own line numbers, not a part's"
    wait_persisted(pulse)
    ids = stored_ids(pulse, project.project_id)
    assert len(ids) == len(set(ids)) == 3000 - len(bad)

    again = subprocess.run([*PULSE, "import", str(path), "--part-bytes", "32768", "--json", "--quiet"], env=env,
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stderr == ""
    assert json.loads(again.stdout)["status"] == "duplicate"
    wait_persisted(pulse)
    assert len(stored_ids(pulse, project.project_id)) == 3000 - len(bad)


def test_an_import_killed_half_way_resumes_without_duplicates(pulse: Any, project: Any, tmp_path: Path) -> None:
    path = tmp_path / "big.ndjson"
    rows = 40_000
    ndjson_file(path, rows)
    env = environment(tmp_path)
    command = [*PULSE, "import", str(path), "--url", pulse.gateway_url, "--key", project.key,
               "--part-bytes", str(64 * 1024)]
    checkpoints = tmp_path / "state" / "pulse" / "imports"
    first = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts_done = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        for saved in checkpoints.glob("*.json"):
            try:
                parts_done = len(json.loads(saved.read_text())["parts"])
            except (ValueError, OSError):
                continue
        if parts_done >= 3:
            break
        time.sleep(0.01)
    assert first.poll() is None, "the import ended before it could be interrupted"
    first.send_signal(signal.SIGKILL)  # a crash: no chance to tidy up
    first.communicate(timeout=30)
    wait_persisted(pulse)
    partial = stored_ids(pulse, project.project_id)
    assert 0 < len(partial) < rows

    second = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "Resuming:" in second.stderr
    match = re.search(r"resumed: (\d+) part\(s\) were done before", second.stdout)
    assert match and int(match.group(1)) >= parts_done, second.stdout
    assert second.stdout.startswith(f"{path}: {rows:,} rows, {rows:,} accepted, 0 rejected")
    assert not list(checkpoints.glob("*.json")), "a finished import leaves no checkpoint"
    wait_persisted(pulse)
    ids = stored_ids(pulse, project.project_id)
    assert len(ids) == len(set(ids)) == rows


def test_export_streams_to_a_file_with_the_bar(pulse: Any, project: Any, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    events = [make_event(event_type=f"exp-{n % 3}", user_id=f"u{n % 50}",
                         occurred_at=(now - timedelta(minutes=n)).isoformat(),
                         properties={"note": "line one\nline two, \"quoted\"", "n": n}) for n in range(2500)]
    for start in range(0, len(events), 1000):
        assert project.api.post("/v1/events", {"events": events[start:start + 1000]}).status == 202
    wait_persisted(pulse)
    env = environment(tmp_path)
    day = now.date()
    base = [*PULSE, "export", "--url", pulse.gateway_url, "--key", project.key,
            "--from", (day - timedelta(days=3)).isoformat(), "--to", day.isoformat()]

    out = tmp_path / "events.csv"
    done = subprocess.run([*base, "--format", "csv", "-o", str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    bars = [m for line in done.stderr.splitlines() if (m := BAR.search(line))]
    assert bars and bars[-1].group(1) == "2,500", done.stderr
    assert done.stdout.strip() == f"{out}: 2,500 rows, {out.stat().st_size / 1e6:,.1f} MB in " + \
        done.stdout.strip().rsplit(" in ", 1)[1]
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert sorted(r["event_id"] for r in table) == sorted(e["event_id"] for e in events)
    assert {json.loads(r["properties"])["note"] for r in table} == {"line one\nline two, \"quoted\""}
    assert not list(tmp_path.glob(".*.part"))

    parquet = tmp_path / "events.parquet"
    done = subprocess.run([*base, "--format", "parquet", "-o", str(parquet), "--json", "--quiet"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert json.loads(done.stdout)["rows"] == pq.ParquetFile(parquet).metadata.num_rows == 2500

    for fmt in ("json", "ndjson"):
        target = tmp_path / f"events.{fmt}"
        done = subprocess.run([*base, "--format", fmt, "-o", str(target), "--json", "--quiet"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        rows = json.loads(target.read_text()) if fmt == "json" else target.read_text().splitlines()
        assert json.loads(done.stdout)["rows"] == len(rows) == 2500

    refused = subprocess.run([*base[:-4], "--key", f"pulse_{uuid.uuid4().hex[:8]}_nope", "-o", str(tmp_path / "x")],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr
    assert not (tmp_path / "x").exists()
