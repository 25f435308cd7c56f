"""The fault suite's stack: every component real, the ones we break in
processes of their own.

- the Tansu broker: its own process (SIGSTOP/SIGCONT pauses it);
- Postgres: a pgserver on its own data directory (stopped and started again
  with pg_ctl on the same directory);
- persist: its own process (tests/faults/persist_server.py) owning a chDB
  path, SIGKILLed and started again on the same port, stores and broker;
- ingest and the dispatcher (playing the KafkaSource) in this process.

A steady load posts batches and retries what was not acknowledged (same
event ids, as clients do). After each fault the suite checks, from the
store itself: every acknowledged event persisted exactly once, nothing
persisted that was never sent, and the service took new work again without
a restart by hand. ``pytest_terminal_summary`` prints the table.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import urllib3

from pulse.bus import kafka as kafka_bus
from pulse.bus.cloudevents import to_http
from pulse.ingest import Ingest
from pulse.local.demo import create_demo_key
from pulse.local.dispatcher import DeliverySpec, Dispatcher, Subscription
from pulse.local.embedded import Broker, Postgres, free_port
from pulse.local.gateway import Server
from pulse.security.eventauth import LocalIssuer
from pulse.security.tokens import generate_key_file
from pulse.services import Services
from pulse.settings import Settings
from tests.conftest import ROOT, make_event

RAW, DLQ = "faults.events.raw", "faults.events.dlq"
# Internal events carry a token, as everywhere (pulse.security.eventauth).
AUDIENCE = "serving.knative.dev/service/faults/persist"
SENDER = "system:serviceaccount:faults:faults-raw-oidc-sources.knative.dev-kafkasource"
RESULTS: list[dict[str, Any]] = []
http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=30), maxsize=8)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class PersistProcess:
    """tests/faults/persist_server.py on a fixed port."""

    def __init__(self, workdir: Path, postgres_url: str, event_key: Path) -> None:
        self.port = free_port()
        self.faults = workdir / "faults"
        self.faults.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "persist.log"
        self.env = {**os.environ, "PULSE_POSTGRES_URL": postgres_url,
                    "PULSE_CLICKHOUSE_URL": f"chdb://{workdir / 'clickhouse'}", "PULSE_STATE_DIR": str(workdir),
                    "PULSE_CE_TOKEN_KEY_FILE": str(event_key), "PULSE_CE_AUDIENCE": AUDIENCE,
                    "PULSE_CE_SUBJECTS": SENDER}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("persist_server.py")),
                 "--port", str(self.port), "--faults", str(self.faults)],
                env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        wait_until(self._ready, 60, "persist to come up")

    def _ready(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log.read_text()[-3000:]
        try:
            return http.request("GET", self.url + "/readyz", timeout=2).status == 200
        except urllib3.exceptions.HTTPError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def stats(self, project_id: str) -> dict[str, Any]:
        response = http.request("GET", f"{self.url}/_stats?project_id={project_id}")
        assert response.status == 200, response.data
        return dict(orjson.loads(response.data))

    def requests(self, status: str) -> float:
        """persist's own count of ce-ingested answers with this status (from /metrics)."""
        text = http.request("GET", self.url + "/metrics").data.decode()
        prefix = f'pulse_http_requests_total{{function="persist",route="ce-ingested",status="{status}"}} '
        return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


@dataclass
class FaultStack:
    broker: Broker
    postgres: Postgres
    persist: PersistProcess
    services: Services
    ingest_server: Server
    dispatcher: Dispatcher
    token: Callable[[], str]

    def deliver_headers(self, event: Any) -> dict[str, str]:
        """What the KafkaSource sends persist for ``event``: the CloudEvent and its token."""
        return {**to_http(event), "Authorization": f"Bearer {self.token()}"}

    @property
    def ingest_url(self) -> str:
        return self.ingest_server.url

    def project(self) -> tuple[str, str]:
        return create_demo_key(self.services, f"faults-{uuid.uuid4().hex[:8]}")

    def restart_postgres(self, while_down: Callable[[], None]) -> None:
        """``pg_ctl stop -m fast`` then start again on the same data directory."""
        from pgserver._commands import pg_ctl

        server = self.postgres.server
        socket_dir = server.get_postmaster_info().socket_dir
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=30)
        try:
            while_down()
        finally:
            pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(server.log), "start"],
                   pgdata=server.pgdata, user=server.system_user, timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    root = tmp_path_factory.mktemp("faults")
    broker = Broker.start(root / "broker")
    postgres = persist = services = ingest_server = dispatcher = None
    try:
        postgres = Postgres.start(root / "postgres")
        kafka_bus.ensure_topics(broker.bootstrap, {RAW: 4, DLQ: 1})
        issuer = LocalIssuer(generate_key_file(root / "eventing" / "oidc.pem"))
        token = issuer.source(AUDIENCE, SENDER)
        persist = PersistProcess(root / "persist", postgres.url, issuer.key_file)
        persist.start()  # applies the migrations
        settings = Settings(state_dir=root, postgres_url=postgres.url, kafka_bootstrap=broker.bootstrap,
                            raw_topic=RAW, dlq_topic=DLQ, kafka_ack_timeout_s=1.0, retry_after_s=1)
        services = Services(settings)
        ingest_server = Server("ingest", Ingest(services).wsgi, "127.0.0.1", 0).start()
        dispatcher = Dispatcher(broker.bootstrap, [Subscription(
            name="faults-raw", topics=(RAW,), group="faults-persist", target=persist.url + "/_ce/ingested",
            delivery=DeliverySpec(retry=25, backoff_policy="linear", backoff_delay_s=0.2, timeout_s=20,
                                  dead_letter_topic=DLQ), token=token)])
        dispatcher.start()
        yield FaultStack(broker, postgres, persist, services, ingest_server, dispatcher, token)
    finally:
        for closing in (dispatcher and dispatcher.stop, ingest_server and ingest_server.stop,
                        services and services.close, persist and persist.stop, broker.stop,
                        postgres and postgres.stop):
            if closing:
                with suppress(Exception):  # tear down the rest regardless
                    closing()


@dataclass
class Load:
    """Steady client traffic: batches of new events, each retried until acknowledged."""

    url: str
    key: str
    batch: int = 20
    clients: int = 2
    pause_s: float = 0.02
    sent: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    failures: int = 0
    acks: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def _run(self) -> None:
        client = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=30))
        headers = {"X-API-Key": self.key, "Content-Type": "application/json"}
        while not self._stop.is_set():
            events = [make_event(user_id=f"u{i % 7}") for i in range(self.batch)]
            ids = [e["event_id"] for e in events]
            with self._lock:
                self.sent.update(ids)
            body = orjson.dumps({"events": events})
            give_up = time.monotonic() + 60
            while time.monotonic() < give_up:  # a client retries the same events until acknowledged
                try:
                    answer = client.request("POST", self.url + "/v1/events", body=body, headers=headers)
                    status = answer.status
                    assert status != 503 or int(answer.headers["Retry-After"]) >= 1
                except urllib3.exceptions.HTTPError:
                    status = 0
                if status == 202:
                    with self._lock:
                        self.acked.update(ids)
                        self.acks += 1
                    break
                assert status in (0, 503), f"ingest answered {status}"
                with self._lock:
                    self.failures += 1
                self._stop.wait(0.2)
            self._stop.wait(self.pause_s)

    def acked_more(self, than: int, by: int = 3) -> Callable[[], bool]:
        return lambda: self.acks >= than + by

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)


def check_exactly_once(stack: FaultStack, fault: str, project_id: str, load: Load | None = None,
                       extra_sent: set[str] | frozenset[str] = frozenset(),
                       extra_acked: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Drain, count from ClickHouse, record the row, assert nothing lost or doubled."""
    assert stack.dispatcher.drain(120), "the dispatcher did not deliver every record"
    stats = stack.persist.stats(project_id)
    sent = (load.sent if load else set()) | set(extra_sent)
    acked = (load.acked if load else set()) | set(extra_acked)
    persisted = set(stats["event_ids"])
    row = {"fault": fault, "sent": len(sent), "acknowledged": len(acked), "persisted": stats["rows"],
           "lost": len(acked - persisted), "duplicated": stats["rows"] - stats["unique"],
           "client retries": load.failures if load else 0}
    RESULTS.append(row)
    assert row["lost"] == 0, f"{fault}: acknowledged events missing"
    assert row["duplicated"] == 0, f"{fault}: events stored twice"
    assert persisted <= sent, f"{fault}: stored events that were never sent"
    return row


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    columns = ["fault", "sent", "acknowledged", "persisted", "lost", "duplicated", "client retries"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in RESULTS)) for c in columns}
    terminalreporter.section("fault suite")
    terminalreporter.write_line("  ".join(c.ljust(widths[c]) for c in columns))
    for row in RESULTS:
        terminalreporter.write_line("  ".join(str(row[c]).ljust(widths[c]) for c in columns))
