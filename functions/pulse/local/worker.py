"""A function in a process of its own, for ``pulse up``.

Python runs one thread at a time per process. ingest's work (parsing and
validating every event of every request) and persist's (ledger, inserts,
notifications) would otherwise take turns for that one lock, and each
request would also wait for its Kafka acknowledgement behind the other's
work. ingest needs no ClickHouse, so it can live in another process (chDB
opens its path in one process only); the gateway proxies its paths there, as
a cluster's ingress routes to ingest's own pods.

The child gets the parent's resolved settings (the embedded services' URLs
included), answers on a free port, stops gracefully on SIGTERM (refuses new
work with 503, finishes what it holds) and dies with its parent.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from pulse.local.embedded import die_with_parent
from pulse.settings import Settings

FUNCTIONS_WITHOUT_CLICKHOUSE = ("ingest",)


@dataclass
class FunctionProcess:
    name: str
    settings: Settings
    url: str = ""
    process: BaseProcess | None = field(default=None, repr=False)

    def start(self, timeout_s: float = 90.0) -> FunctionProcess:
        if self.name not in FUNCTIONS_WITHOUT_CLICKHOUSE:
            raise ValueError(f"{self.name} needs the ClickHouse engine of the main process")
        context = multiprocessing.get_context("spawn")
        receiving, sending = context.Pipe(duplex=False)
        self.process = context.Process(target=_serve, args=(self.name, self.settings, sending),
                                       name=f"pulse-{self.name}", daemon=True)
        self.process.start()
        sending.close()
        if not receiving.poll(timeout_s):
            self.stop(0)
            raise RuntimeError(f"the {self.name} process did not start within {timeout_s:.0f} s")
        status, detail = receiving.recv()
        if status != "ok":
            self.stop(0)
            raise RuntimeError(f"the {self.name} process failed to start: {detail}")
        self.url = detail
        return self

    def stop(self, timeout_s: float) -> bool:
        """SIGTERM, then wait: True if it finished its requests and exited in time."""
        process = self.process
        if process is None or process.pid is None:
            return True
        if process.is_alive():
            process.terminate()
        process.join(timeout_s + 5)
        if process.is_alive():
            process.kill()
            process.join(5)
            return False
        return process.exitcode == 0


def _serve(name: str, settings: Settings, report: Connection) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us in order
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    from pulse.ingest import Ingest
    from pulse.local.gateway import Server
    from pulse.services import Services
    from pulse.telemetry import configure_logging

    configure_logging(settings.log_level, settings.log_format)  # the parent's format, on the same terminal
    try:
        services = Services(settings)
        function = {"ingest": Ingest}[name](services)  # FUNCTIONS_WITHOUT_CLICKHOUSE
        server = Server(name, function.wsgi, settings.host, 0).start()
    except BaseException as exc:
        report.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    report.send(("ok", server.url))
    report.close()
    stop.wait()
    function.begin_stop()
    function.wait_idle(settings.shutdown_timeout_s)
    server.stop()
    services.close()
