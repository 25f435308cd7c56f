"""``pulse up``: the whole of Pulse in one process.

Embedded dependencies (what the settings leave unset), migrations, the five
functions each on its own port, the gateway on one port routing paths as the
cluster ingress does, and the eventing dispatcher delivering Kafka records to
persist as the KafkaSource does. ``stop`` is graceful: ingest refuses new
work (503), every acknowledged record is delivered, then everything stops.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pulse.aggregate import Aggregate
from pulse.auth import Auth
from pulse.bus import kafka as kafka_bus
from pulse.export import Export
from pulse.ingest import Ingest
from pulse.local.dispatcher import DeliverySpec, Dispatcher, Subscription
from pulse.local.embedded import EmbeddedStack
from pulse.local.gateway import Gateway, Server
from pulse.persist import Persist
from pulse.services import Services
from pulse.settings import Settings
from pulse.storage.migrations import migrate_clickhouse, migrate_postgres
from pulse.web.http import HttpFunction

log = logging.getLogger("pulse.runtime")
FUNCTIONS = ("ingest", "auth", "persist", "aggregate", "export")
ROUTES = {
    "/v1/events": "ingest",
    "/v1/stats": "aggregate",
    "/v1/auth": "auth",
    "/v1/projects": "auth",
    "/v1/export": "export",
    "/v1/exports": "export",
}


def route_for(path: str) -> str | None:
    best = None
    for prefix, function in ROUTES.items():
        if (path == prefix or path.startswith(prefix + "/")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, function)
    return best[1] if best else None


@dataclass
class Runtime:
    settings: Settings
    stack: EmbeddedStack | None = None
    services: Services | None = None
    functions: dict[str, HttpFunction] = field(default_factory=dict)
    servers: dict[str, Server] = field(default_factory=dict)
    dispatcher: Dispatcher | None = None
    gateway: Server | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Runtime:
        started = time.monotonic()
        self.stack = EmbeddedStack(self.settings)
        try:
            self.settings = self.stack.start()
            services = self.services = Services(self.settings)
            services.verify(("postgres", "clickhouse", "kafka"))
            migrate_postgres(services.db)
            migrate_clickhouse(services.ch, self.settings)
            kafka_bus.ensure_topics(self.settings.kafka_bootstrap or "", {
                self.settings.raw_topic: self.settings.raw_topic_partitions,
                self.settings.dlq_topic: 1,
            })
            host = self.settings.host
            self.functions = {
                "ingest": Ingest(services),
                "auth": Auth(services),
                "persist": Persist(services),
                "aggregate": Aggregate(services),
                "export": Export(services),
            }
            for name, function in self.functions.items():
                self.servers[name] = Server(name, function.wsgi, host, 0).start()
            self.dispatcher = Dispatcher(self.settings.kafka_bootstrap or "", self.subscriptions())
            self.dispatcher.start()
            gateway = Gateway(route_for, {name: f.wsgi for name, f in self.functions.items()})
            self.gateway = Server("gateway", gateway, host, self.settings.gateway_port).start()
        except BaseException:
            self.stop(drain=False)
            raise
        log.info("pulse is up", extra={"fields": {"gateway": self.gateway_url,
                                                  "seconds": round(time.monotonic() - started, 2)}})
        return self

    def subscriptions(self) -> list[Subscription]:
        return [Subscription(
            name="raw-events",
            topics=(self.settings.raw_topic,),
            group="pulse-persist",
            target=self.url("persist") + "/_ce/ingested",
            delivery=DeliverySpec(retry=5, backoff_policy="exponential", backoff_delay_s=0.2,
                                  timeout_s=30.0, dead_letter_topic=self.settings.dlq_topic),
        )]

    def url(self, function: str) -> str:
        return self.servers[function].url

    @property
    def gateway_url(self) -> str:
        return self.gateway.url if self.gateway else ""

    def drain(self, timeout_s: float = 60.0) -> bool:
        if self.dispatcher is None:
            return True
        return self.dispatcher.drain(timeout_s)

    def stop(self, drain: bool = True, timeout_s: float = 60.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        for function in self.functions.values():
            function.stopping = True
        if drain and self.dispatcher is not None:
            if not self.dispatcher.drain(timeout_s):
                log.warning("stopping before every acknowledged record was delivered")
        if self.gateway is not None:
            self.gateway.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        for server in self.servers.values():
            server.stop()
        if self.services is not None:
            self.services.close()
        if self.stack is not None:
            self.stack.stop()

    def describe(self) -> dict[str, Any]:
        return {"gateway": self.gateway_url, "functions": {n: s.url for n, s in self.servers.items()},
                "embedded": self.stack.started if self.stack else []}
