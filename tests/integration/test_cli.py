"""`pulse up` as a user runs it: a separate process, stopped by a signal, started
again on the same state directory (which keeps the Postgres and ClickHouse data)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import ROOT, Api, make_event

PULSE = [sys.executable, "-m", "pulse.cli"]


def start_up(state: Path, *extra: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    process = subprocess.Popen([*PULSE, "up", "--port", "0", "--state-dir", str(state), *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    found: dict[str, str] = {}
    deadline = time.monotonic() + 120
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if match := re.match(r"Pulse is up: (\S+)", line):
            found["url"] = match.group(1)
        if match := re.match(r"API key \(ingest \+ read\): (\S+)", line):
            found["key"] = match.group(1)
        if match := re.match(r"  (\w+) +(http://\S+)  \(/healthz", line):
            found[match.group(1)] = match.group(2)
        if line.startswith("Ctrl-C stops Pulse"):
            return process, found
    process.kill()
    process.wait(10)
    process.stdout.close()
    pytest.fail(f"pulse up did not come up: {found}")


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        raise
    finally:
        if process.stdout is not None:
            process.stdout.close()


def test_up_demo_then_restart_keeps_data_and_stops_cleanly(tmp_path: Path) -> None:
    process, found = start_up(tmp_path, "--demo", "--demo-events", "1500")
    try:
        api = Api(found["url"], found["key"])
        top = api.get("/v1/stats/top-events")
        assert top.status == 200
        assert sum(row["count"] for row in top.json) == 1500
        extra = [make_event(event_type="drained") for _ in range(5)]
        assert api.post("/v1/events", {"events": extra}).status == 202
    finally:
        assert stop(process) == 0  # SIGTERM drains: the 5 acknowledged events are persisted first

    process, restarted = start_up(tmp_path)
    try:
        top = Api(restarted["url"], found["key"]).get("/v1/stats/top-events").json
        assert sum(row["count"] for row in top) == 1505
        assert {"event_type": "drained", "count": 5, "users": 1} in top
    finally:
        assert stop(process) == 0


def test_ingest_runs_in_a_process_of_its_own_that_serves_the_public_port(tmp_path: Path) -> None:
    """`pulse up` serves ingest from a child process, which also serves the
    public port and proxies every other path to the main process: statuses,
    problem bodies and request ids come back, bodies stream both ways (a CSV
    import sent chunked), and a stop ends the child too."""
    import psutil
    import urllib3

    from tests.integration.test_import import csv_file

    process, found = start_up(tmp_path, "--demo", "--demo-events", "200")
    child_pids: list[int] = []
    try:
        ingest_port = int(found["ingest"].rsplit(":", 1)[1])
        gateway_port = int(found["url"].rsplit(":", 1)[1])
        listeners = {c.laddr.port: pid for pid in [process.pid, *(p.pid for p in psutil.Process(process.pid).children())]
                     for c in psutil.Process(pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert listeners[ingest_port] != process.pid
        assert listeners[gateway_port] == listeners[ingest_port]  # ingest's requests never enter the main process
        assert psutil.Process(listeners[ingest_port]).ppid() == process.pid
        child_pids.append(listeners[ingest_port])

        api = Api(found["url"], found["key"])
        refused = Api(found["url"], "pk_wrong").post("/v1/events", make_event())
        assert refused.status == 401
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert refused.headers.get("X-Request-ID")
        accepted = api.post("/v1/events", {"events": [make_event(event_type="proxied") for _ in range(7)]})
        assert accepted.status == 202 and accepted.json["accepted"] == 7

        content, bad, _ = csv_file(3000, "chunked")
        chunks = iter([content[i:i + 4096] for i in range(0, len(content), 4096)])
        imported = urllib3.PoolManager().request(
            "POST", found["url"] + "/v1/import", body=chunks, chunked=True,
            headers={"X-API-Key": found["key"], "Content-Type": "text/csv"})
        assert imported.status == 200, imported.data[:300]
        assert imported.json()["accepted"] == 3000 - len(bad)
    finally:
        assert stop(process) == 0  # drains: what ingest acknowledged is persisted
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in child_pids)

    process, restarted = start_up(tmp_path)
    try:
        top = {row["event_type"]: row["count"]
               for row in Api(restarted["url"], found["key"]).get("/v1/stats/top-events?limit=100").json}
        assert top["proxied"] == 7
        assert sum(n for name, n in top.items() if name.startswith("chunked-")) == 3000 - len(bad)
    finally:
        assert stop(process) == 0


def kill_everything(process: subprocess.Popen[str], state: Path) -> None:
    """SIGKILL for every process of the embedded run at once: pulse up, its ingest
    process, the broker, the Postgres server and its backends. Nobody gets to
    clean up (children first, so none is told by its parent's death to stop)."""
    import psutil

    victims = psutil.Process(process.pid).children(recursive=True)
    postmaster = state / "postgres" / "postmaster.pid"
    if postmaster.exists():
        server = psutil.Process(int(postmaster.read_text().split()[0]))
        victims += [*server.children(recursive=True), server]
    for victim in [*victims, psutil.Process(process.pid)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.send_signal(signal.SIGKILL)
    process.wait(10)
    assert process.stdout is not None
    process.stdout.close()
    psutil.wait_procs(victims, timeout=10)


def exported_ids(api: Api, event_type: str) -> list[str]:
    answer = api.get(f"/v1/export?format=ndjson&event_type={event_type}")
    assert answer.status == 200, answer.body[:300]
    return [orjson.loads(line)["event_id"] for line in answer.body.splitlines() if line]


def ingest_records(url: str) -> tuple[float, float]:
    """(records sent, requests they carried) from an ingest process's /metrics."""
    import urllib3
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib3.PoolManager().request("GET", url + "/metrics").data.decode()
    found = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name.startswith("pulse_ingest_record_requests_")}
    return found.get("pulse_ingest_record_requests_count", 0.0), found.get("pulse_ingest_record_requests_sum", 0.0)


@pytest.mark.slow
def test_a_kill_9_of_the_whole_stack_right_after_the_last_202_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """The embedded broker keeps records in memory; ingest's spool keeps what it
    acknowledged, and the next start hands that to persist. Small requests
    sent at once share records, re-sending ids of the requests beside them."""
    import random

    process, found = start_up(tmp_path, "--demo", "--demo-events", "1")
    events = [make_event(event_type="kill9") for _ in range(12_000)]
    rng = random.Random(9)
    batches = [events[i:i + 500] for i in range(0, 6_000, 500)]
    small = [events[i:i + 50] for i in range(6_000, len(events), 50)]
    for n, batch in enumerate(small):  # each also carries 5 events of the one sent beside it
        batches.append(batch + rng.sample(small[n ^ 1], 5))
    rng.shuffle(batches)
    answers: list[int] = []
    try:
        records_before, requests_before = ingest_records(found["ingest"])  # the demo's

        def client(mine: list[list[dict[str, object]]]) -> None:
            api = Api(found["url"], found["key"])
            answers.extend(api.post("/v1/events", {"events": batch}).status for batch in mine)

        threads = [threading.Thread(target=client, args=(batches[n::4],)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        records, requests = ingest_records(found["ingest"])
        records, requests = records - records_before, requests - requests_before
    finally:
        kill_everything(process, tmp_path)
    assert answers == [202] * len(batches)
    assert requests == len(batches) and records < requests  # requests did share records
    assert list((tmp_path / "spool").glob("*.spool"))  # what the kill left for the next start

    process, restarted = start_up(tmp_path)
    try:
        ids = exported_ids(Api(restarted["url"], found["key"]), "kill9")
        assert len(ids) == len(events)  # nothing doubled
        assert set(ids) == {e["event_id"] for e in events}  # nothing lost
    finally:
        assert stop(process) == 0


def test_an_unreachable_configured_dependency_stops_the_start_naming_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env["PULSE_POSTGRES_URL"] = "postgresql://pulse:secret-pw@127.0.0.1:9/pulse"
    for command in (["up", "--port", "0", "--state-dir", str(tmp_path)], ["serve", "ingest"]):
        done = subprocess.run([*PULSE, *command], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "postgres" in done.stderr and "does not answer" in done.stderr
        assert "secret-pw" not in done.stderr + done.stdout
