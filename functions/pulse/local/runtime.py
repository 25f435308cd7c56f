"""``pulse up``: the whole of Pulse, one main process and its ingest processes.

Embedded dependencies (what the settings leave unset), migrations, the five
functions each on its own port, and the eventing and routing of the Helm chart
(``charts/pulse``, rendered by pulse.local.wiring): the gateway routes paths as
the chart's HTTPRoutes do (ingest runs in processes of its own, see
pulse.local.worker), the dispatcher plays its KafkaSource and Triggers,
a Broker ingress per Broker, SinkBindings become each function's sink, and
PingSources fire on their schedules. ``stop`` is graceful and bounded: ingest
refuses new work (503) and finishes what it holds, every acknowledged record
is delivered, then the other functions finish their requests and everything
stops (each wait bounded by ``shutdown_timeout_s``, the drain by ``timeout_s``).
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pulse import telemetry
from pulse.aggregate import Aggregate
from pulse.auth import Auth
from pulse.bus import kafka as kafka_bus
from pulse.bus import sink
from pulse.bus.cloudevents import CloudEvent
from pulse.errors import InvalidInput
from pulse.export import Export
from pulse.host import Host, probe_functions
from pulse.ingest import Ingest
from pulse.local import wiring as wiring_mod
from pulse.local.dispatcher import Dispatcher, Subscription, error_headers
from pulse.local.embedded import EmbeddedStack
from pulse.local.eventing import (
    BrokerIngress,
    Cron,
    PingScheduler,
    broker_check,
    broker_topic,
    function_senders,
    ping_event,
    sender,
    subscriptions,
    token_for,
)
from pulse.local.gateway import Gateway, Proxy, Server, WSGIApp
from pulse.local.recovery import replay_spool
from pulse.local.worker import Front, FunctionProcess
from pulse.persist import Persist
from pulse.security.eventauth import LocalIssuer
from pulse.security.tokens import generate_key_file
from pulse.services import NEEDS, Services
from pulse.settings import Settings, SettingsError
from pulse.storage import persons
from pulse.storage.migrations import migrate_clickhouse, migrate_postgres
from pulse.web.http import HttpFunction

log = logging.getLogger("pulse.runtime")


@dataclass
class Runtime:
    settings: Settings
    chart_values: dict[str, Any] | None = None
    wiring: wiring_mod.Wiring | None = None
    stack: EmbeddedStack | None = None
    services: Services | None = None
    functions: dict[str, HttpFunction] = field(default_factory=dict)
    servers: dict[str, Server] = field(default_factory=dict)
    processes: list[FunctionProcess] = field(default_factory=list)
    dispatcher: Dispatcher | None = None
    gateway: Server | None = None
    host: Host | None = None
    brokers: dict[str, Server] = field(default_factory=dict)
    pings: PingScheduler | None = None
    public_url: str = ""
    _stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Runtime:
        started = time.monotonic()
        self.stack = EmbeddedStack(self.settings)
        try:
            self.settings = with_event_key(with_signing_key(self.stack.start()))
            services = self.services = Services(self.settings)
            services.verify(sorted({need for needs in NEEDS.values() for need in needs}))
            migrate_postgres(services.db)
            persons.after_migrations(services.db, services.ch, migrate_clickhouse(services.ch, self.settings))
            if services.ch.embedded:
                telemetry.watch_engine_memory(services.ch.memory)
            wiring = self.wiring = wiring_mod.load_wiring(self.chart_values)
            self._check(wiring)
            kafka_bus.ensure_topics(self.settings.kafka_bootstrap or "", self._topics(wiring))
            host = self.settings.host
            issuer = self.issuer
            for broker in wiring.brokers:
                ingress = BrokerIngress(broker.name, broker_topic(broker), services.producer,
                                        broker_check(issuer, broker))
                self.brokers[broker.name] = Server(ingress.name, ingress.wsgi, host, 0).start()
            services.sinks.update({b.function: self._address(b.sink) for b in wiring.sink_bindings})
            # Internal events carry tokens as in a cluster with authentication-oidc (pulse.local.eventing).
            services.ce_audiences, services.ce_senders = function_senders(wiring)
            services.sink_tokens.update({b.function: issuer.source(b.sink.audience or "", sender("SinkBinding", b.name))
                                         for b in wiring.sink_bindings})
            persist = Persist(services)
            if self.settings.spool_dir:  # what ingest acknowledged before a hard stop (pulse.local.recovery)
                replay_spool(Path(self.settings.spool_dir), persist, self._dead_letter)
            # The public port; with ingest in processes of its own (unless settings say 0), they serve it
            # and hand other paths to the main process's gateway on a loopback port (pulse.local.worker).
            public = socket.create_server((host, self.settings.gateway_port))
            self.public_url = f"http://{host}:{public.getsockname()[1]}"
            inner = socket.create_server(("127.0.0.1", 0)) if self.settings.ingest_processes else None
            front = Front(public, f"http://127.0.0.1:{inner.getsockname()[1]}", wiring, secrets.token_urlsafe(24)) \
                if inner is not None else None
            self.processes = [FunctionProcess("ingest", self.settings, front).start()
                              for _ in range(self.settings.ingest_processes)]
            self.functions = {
                **({} if self.processes else {"ingest": Ingest(services)}),
                "auth": Auth(services),
                "persist": persist,
                "aggregate": Aggregate(services),
                "export": Export(services),
            }
            for name, function in self.functions.items():
                self.servers[name] = Server(name, function.wsgi, host, 0).start()
            self.dispatcher = Dispatcher(self.settings.kafka_bootstrap or "", self.subscriptions(),
                                         Path(self.settings.spool_dir) if self.settings.spool_dir else None)
            self.dispatcher.start()
            ping_tokens = {self._address(p.sink): token_for(issuer, p.sink, sender("PingSource", p.name))
                           for p in wiring.pings}
            self.pings = PingScheduler(
                [(p.name, Cron(p.schedule), ping_event(p.name, p.ce_type, p.data), self._address(p.sink))
                 for p in wiring.pings], lambda url, event: sink.publish(url, event, token=ping_tokens.get(url)))
            self.pings.start()
            apps: dict[str, WSGIApp] = {name: f.wsgi for name, f in self.functions.items()}
            if self.processes:
                apps["ingest"] = Proxy([p.url for p in self.processes])
            self.host = Host(self.function_readiness, self.settings.public_url)
            if front is not None and inner is not None:  # behind the ingest processes' fronts
                gateway = Gateway(wiring.route_for, apps, self.host, front.key, log_access=False)
                self.gateway = Server("gateway", gateway, host, 0, inner).start()
            else:
                self.gateway = Server("gateway", Gateway(wiring.route_for, apps, self.host), host, 0, public).start()
            for listener in (public, inner):  # the servers, and the fronts, hold their own copies
                if listener is not None:
                    listener.close()
        except BaseException:
            self.stop(drain=False)
            raise
        log.info("pulse is up", extra={"fields": {"gateway": self.gateway_url,
                                                  "seconds": round(time.monotonic() - started, 2)}})
        return self

    def _dead_letter(self, event: CloudEvent, refusal: InvalidInput, position: str) -> None:
        """A spooled record persist refuses goes where the raw source's refusals go."""
        if self.wiring is None or self.services is None:
            raise RuntimeError("the runtime is not started")
        source = next(s for s in self.wiring.sources if self.settings.raw_topic in s.topics)
        topic = source.delivery.dead_letter_topic
        if not topic:
            log.error("dropped spooled record %s that persist refused (no dead-letter sink)", event.id)
            return
        answer = orjson.dumps({"status": refusal.status, "detail": refusal.detail})
        errors = error_headers(refusal.status, self._address(source.sink), answer, "spool", position)
        attributes = {**event.attributes, **{name[3:]: value.decode() for name, value in errors}}
        self.services.producer.send(topic, event.get("partitionkey") or "", CloudEvent(attributes, event.data))
        log.warning("spooled record %s refused by persist, dead-lettered", event.id)

    def _check(self, wiring: wiring_mod.Wiring) -> None:
        topics = {topic for source in wiring.sources for topic in source.topics}
        if self.settings.raw_topic not in topics:
            raise SettingsError(f"PULSE_RAW_TOPIC={self.settings.raw_topic} is not a topic of the chart's "
                                f"KafkaSource ({', '.join(sorted(topics))}); set kafka.topics.raw to match")

    def _topics(self, wiring: wiring_mod.Wiring) -> dict[str, int]:
        topics = {topic: self.settings.raw_topic_partitions for s in wiring.sources for topic in s.topics}
        for broker in wiring.brokers:
            topics[broker_topic(broker)] = self.settings.raw_topic_partitions
        deliveries = [s.delivery for s in wiring.sources] + [t.delivery for t in wiring.triggers]
        topics.update({d.dead_letter_topic: 1 for d in deliveries if d.dead_letter_topic})
        return topics

    def _address(self, destination: wiring_mod.Destination) -> str:
        if destination.broker is not None:
            return self.brokers[destination.broker].url + "/"
        return self.url(destination.function or "") + destination.path

    @property
    def issuer(self) -> LocalIssuer:
        """The embedded run's event-token issuer (pulse.security.eventauth)."""
        if self.services is None:
            raise RuntimeError("the runtime is not started")
        keys = self.services.event_keys
        if not isinstance(keys, LocalIssuer):
            raise SettingsError("the embedded run signs its own event tokens: PULSE_CE_TOKEN_KEY_FILE")
        return keys

    def subscriptions(self) -> list[Subscription]:
        if self.wiring is None:
            raise RuntimeError("the runtime is not started")
        return subscriptions(self.wiring, self._address, self.issuer, self.settings.dispatch_window)

    def function_readiness(self) -> dict[str, bool]:
        """Each function's readiness, for the host's /readyz: in process, asked
        directly; ingest in processes of its own, ready when every one is."""
        states = {name: f.readiness()["status"] == "ready" for name, f in self.functions.items()}
        if self.processes:
            probed = probe_functions({str(i): p.url for i, p in enumerate(self.processes)})
            states["ingest"] = all(probed.values())
        return dict(sorted(states.items()))

    def url(self, function: str) -> str:
        if function == "ingest" and self.processes:
            return self.processes[0].url
        return self.servers[function].url

    @property
    def gateway_url(self) -> str:
        """The public port's address (served by the ingest processes when there are any)."""
        return self.public_url if self.gateway else ""

    def drain(self, timeout_s: float = 60.0) -> bool:
        if self.dispatcher is None:
            return True
        return self.dispatcher.drain(timeout_s)

    def stop(self, drain: bool = True, timeout_s: float = 60.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        bound_s = self.settings.shutdown_timeout_s
        entry = [f for name, f in self.functions.items() if name == "ingest"]
        rest = [f for name, f in self.functions.items() if name != "ingest"]
        for function in entry:
            function.begin_stop()
            if not function.wait_idle(bound_s):
                log.warning("%s still had requests in hand after %ss", function.name, bound_s)
        for process in self.processes:  # each refuses new work, finishes its requests, exits
            if not process.stop(bound_s):
                log.warning("the %s process did not stop cleanly within %ss", process.name, bound_s)
        if drain and self.dispatcher is not None and not self.dispatcher.drain(timeout_s):
            log.warning("stopping before every acknowledged record was delivered")
        if self.gateway is not None:
            self.gateway.stop()
        if self.pings is not None:
            self.pings.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        for function in rest:
            function.begin_stop()
        for function in rest:
            if not function.wait_idle(bound_s):
                log.warning("%s still had requests in hand after %ss", function.name, bound_s)
        for server in [*self.servers.values(), *self.brokers.values()]:
            server.stop()
        for function in self.functions.values():
            function.close()
        if self.services is not None:
            self.services.close()
        if self.stack is not None:
            self.stack.stop()

    def describe(self) -> dict[str, Any]:
        functions = {n: s.url for n, s in self.servers.items()}
        if self.processes:
            functions = {"ingest": self.processes[0].url, **functions}
        return {"gateway": self.gateway_url, "functions": functions,
                "embedded": self.stack.started if self.stack else []}


def with_event_key(settings: Settings) -> Settings:
    """Embedded mode signs internal events' tokens with a key of its own under
    the state directory (made on first start), as the cluster's issuer would."""
    if settings.ce_token_key_file:
        return settings
    path = settings.state_dir / "eventing" / "oidc.pem"
    if not path.exists():
        generate_key_file(path)
    return settings.with_(ce_token_key_file=str(path))


def with_signing_key(settings: Settings) -> Settings:
    """Embedded mode signs access tokens with an Ed25519 key kept under the
    state directory (made on first start) unless a key or a JWKS is configured."""
    if settings.jwt_private_key_file or settings.jwks_url:
        return settings
    path = settings.state_dir / "jwt" / "signing.pem"
    if not path.exists():
        generate_key_file(path)
    return settings.with_(jwt_private_key_file=str(path))

