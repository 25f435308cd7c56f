"""A function in a process of its own, for ``pulse up``.

Python runs one thread at a time per process. ingest's work (parsing and
validating every event of every request) and persist's (ledger, inserts,
notifications) would otherwise take turns for that one lock, and each
request would also wait for its Kafka acknowledgement behind the other's
work. ingest needs no ClickHouse, so it can live in another process (chDB
opens its path in one process only), as a cluster's ingress routes to
ingest's own pods.

Given a ``Front`` (the public port's socket, the main process's gateway URL,
the route table), the child also serves the public port: a gateway that
answers ingest's paths itself and proxies every other path to the main
process (pulse.local.gateway). Several ingest processes share that socket;
the kernel hands each connection to one of them. So ingest's requests never
wait for the main process's interpreter.

The child gets the parent's resolved settings (the embedded services' URLs
included), answers on a free port as well, stops gracefully on SIGTERM
(refuses new work with 503, finishes what it holds) and dies with its parent.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from pulse.local.embedded import die_with_parent
from pulse.local.wiring import Wiring
from pulse.settings import Settings

FUNCTIONS_WITHOUT_CLICKHOUSE = ("ingest",)


@dataclass(frozen=True)
class Front:
    """What a process needs to serve the public port."""

    listener: socket.socket  # bound and listening, shared with the other ingest processes
    upstream: str  # the main process's gateway
    wiring: Wiring  # its route table
    key: str  # vouches to the main gateway for the client address a front passes on


@dataclass
class FunctionProcess:
    name: str
    settings: Settings
    front: Front | None = None
    url: str = ""
    process: BaseProcess | None = field(default=None, repr=False)

    def start(self, timeout_s: float = 90.0) -> FunctionProcess:
        if self.name not in FUNCTIONS_WITHOUT_CLICKHOUSE:
            raise ValueError(f"{self.name} needs the ClickHouse engine of the main process")
        context = multiprocessing.get_context("spawn")
        receiving, sending = context.Pipe(duplex=False)
        self.process = context.Process(target=_serve, args=(self.name, self.settings, self.front, sending),
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


def _serve(name: str, settings: Settings, front: Front | None, report: Connection) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us in order
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    from pulse.ingest import Ingest
    from pulse.local.gateway import Gateway, Proxy, Server
    from pulse.services import Services
    from pulse.telemetry import configure_logging

    configure_logging(settings.log_level, settings.log_format)  # the parent's format, on the same terminal
    try:
        services = Services(settings)
        function = {"ingest": Ingest}[name](services)  # FUNCTIONS_WITHOUT_CLICKHOUSE
        server = Server(name, function.wsgi, settings.host, 0).start()
        public = None
        if front is not None:
            gateway = Gateway(front.wiring.route_for, {name: function.wsgi}, Proxy([front.upstream], front.key))
            public = Server("front", gateway, settings.host, 0, front.listener).start()
            front.listener.close()  # the server holds its own copy
    except BaseException as exc:
        report.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    report.send(("ok", server.url))
    report.close()
    stop.wait()
    function.begin_stop()
    function.wait_idle(settings.shutdown_timeout_s)
    if public is not None:
        public.stop()
    server.stop()
    function.close()
    services.close()
