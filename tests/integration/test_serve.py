"""`pulse serve` as the container runs it: SIGTERM in the middle of a delivery.

The request in hand finishes (answered 202 once Kafka acknowledged its
record), the server takes no new connection, each worker then closes its
function's clients (the producer flushes), and the process exits 0 within the
shutdown bound. The events then arrive, each counted once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import orjson
import urllib3

from pulse.local.embedded import free_port
from tests.conftest import ROOT, make_event, wait_persisted

http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=10))


def _serve_ingest(pulse: Any, tmp_path: Any) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "WORKERS": "2", "THREADS": "2", "PORT": str(port), "HOST": "127.0.0.1",
           "PULSE_POSTGRES_URL": pulse.settings.postgres_url, "PULSE_KAFKA_BOOTSTRAP": pulse.settings.kafka_bootstrap,
           "PULSE_STATE_DIR": str(tmp_path), "PULSE_SHUTDOWN_TIMEOUT_S": "15", "PULSE_LOG_LEVEL": "INFO"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(tmp_path / "serve.log", "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "pulse.cli", "serve", "ingest"], env=env, cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            if http.request("GET", f"http://127.0.0.1:{port}/readyz").status == 200:
                return process, port
        except urllib3.exceptions.HTTPError:
            pass
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        assert time.monotonic() < deadline, "pulse serve ingest did not become ready"
        time.sleep(0.1)


def test_sigterm_mid_delivery_finishes_it_then_closes_the_clients(pulse: Any, project: Any, tmp_path: Any) -> None:
    process, port = _serve_ingest(pulse, tmp_path)
    opened: list[socket.socket] = []
    try:
        events = [make_event(event_type="sigterm-drain") for _ in range(300)]
        body = orjson.dumps({"events": events})
        request = (f"POST /v1/events HTTP/1.1\r\nHost: ingest\r\nContent-Length: {len(body)}\r\n"
                   f"Content-Type: application/json\r\nX-API-Key: {project.key}\r\nConnection: close\r\n\r\n").encode()
        # the delivery starts: headers and half the body are in the server's hands
        conn = socket.create_connection(("127.0.0.1", port), timeout=30)
        opened.append(conn)
        conn.sendall(request + body[: len(body) // 2])
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        time.sleep(3.0)  # gunicorn's workers notice within a second and close their listeners
        # no new connection is taken while the delivery is still in hand
        refused = False
        try:
            http.request("GET", f"http://127.0.0.1:{port}/healthz", timeout=2)
        except urllib3.exceptions.HTTPError:
            refused = True
        assert refused
        assert process.poll() is None  # still finishing the delivery
        conn.sendall(body[len(body) // 2:])
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        conn.close()
        assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
        assert process.wait(30) == 0
    finally:
        for conn in opened:
            conn.close()
        if process.poll() is None:
            process.kill()
            process.wait(10)
    log = (tmp_path / "serve.log").read_text()
    stopped = [line for line in log.splitlines() if '"msg": "ingest stopped"' in line]
    # each worker that built the function closed its clients after its requests finished
    assert stopped and all('"finished": true' in line and '"clients_closed": true' in line for line in stopped), log
    # the record was in Kafka before the 202: the events arrive, each counted once
    wait_persisted(pulse)
    top = project.api.get("/v1/stats/top-events?limit=10")
    assert top.status == 200
    assert [(r["event_type"], r["count"]) for r in top.json if r["event_type"] == "sigterm-drain"] == [
        ("sigterm-drain", len(events))]


def test_each_functions_readiness_probes_the_dependencies_declared_for_it(pulse: Any) -> None:
    from pulse.services import NEEDS, PROBED

    assert set(NEEDS) == {"ingest", "auth", "persist", "aggregate", "export", "host"}
    for name, function in pulse.functions.items():
        checks = function._readiness()
        assert set(checks) == {need for need in NEEDS[name] if need in PROBED}, name
        assert all(checks.values()), (name, checks)
