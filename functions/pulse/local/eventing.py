"""The embedded eventing objects, driven by the chart's wiring: the
dispatcher's subscriptions, the Broker ingress and the PingSource.

``BrokerIngress`` plays a Kafka-class Broker's ingress: it accepts CloudEvents
over HTTP (binary, structured or batch) and appends them to the Broker's
topic, answering 202 once the broker acknowledged them. Triggers are
dispatcher subscriptions on that topic.

``PingScheduler`` fires each PingSource's CloudEvent at its cron schedule
(minute resolution, the five standard fields, evaluated in UTC as Knative does
by default).

Sender identity (pulse.security.eventauth) is played as Knative plays it with
``authentication-oidc`` enabled: each sender resource (KafkaSource, Trigger,
PingSource, SinkBinding) presents a token for its destination's audience, as
the OIDC identity Knative would give it; each function accepts exactly the
senders the chart points at it, and the Broker ingress any sender of its
namespace (Knative's default ``allow-same-namespace``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from werkzeug.wrappers import Request, Response

from pulse.bus.cloudevents import CloudEvent, receive
from pulse.bus.kafka import Producer
from pulse.errors import InvalidInput
from pulse.local.dispatcher import WINDOW, DeliverySpec, Subscription
from pulse.local.wiring import RELEASE_NAMESPACE, Broker, Delivery, Destination, Wiring, WiringError
from pulse.security.eventauth import EventAuth, LocalIssuer, TokenSource, knative_oidc_subject
from pulse.web.http import EventCheck, HttpFunction, Route

log = logging.getLogger("pulse.eventing")


def broker_topic(broker: Broker) -> str:
    return broker.topic or f"knative-broker-pulse-{broker.name}"


def delivery_spec(delivery: Delivery) -> DeliverySpec:
    return DeliverySpec(retry=delivery.retry, backoff_policy=delivery.backoff_policy,
                        backoff_delay_s=delivery.backoff_delay_s, timeout_s=delivery.timeout_s,
                        dead_letter_topic=delivery.dead_letter_topic)


SENDER_GROUPS = {"KafkaSource": "sources.knative.dev", "PingSource": "sources.knative.dev",
                 "SinkBinding": "sources.knative.dev", "Trigger": "eventing.knative.dev"}


def sender(kind: str, name: str) -> str:
    """The token subject Knative gives the sender resource ``kind``/``name``."""
    return knative_oidc_subject(RELEASE_NAMESPACE, name, SENDER_GROUPS[kind], kind)


def function_senders(wiring: Wiring) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """(audience, allowed senders) of each function that takes internal events."""
    audiences: dict[str, str] = {}
    senders: dict[str, set[str]] = {}
    pairs = ([(s.sink, sender("KafkaSource", s.name)) for s in wiring.sources]
             + [(t.subscriber, sender("Trigger", t.name)) for t in wiring.triggers])
    for destination, subject in pairs:
        if destination.function is None:
            continue
        if not destination.audience:
            raise WiringError(f"the events to {destination.function}{destination.path} name no OIDC audience")
        if audiences.setdefault(destination.function, destination.audience) != destination.audience:
            raise WiringError(f"{destination.function} is given two audiences")
        senders.setdefault(destination.function, set()).add(subject)
    return audiences, {k: tuple(sorted(v)) for k, v in senders.items()}


def token_for(issuer: LocalIssuer | None, destination: Destination, subject: str) -> TokenSource | None:
    if issuer is None or not destination.audience:
        return None
    return issuer.source(destination.audience, subject)


def subscriptions(wiring: Wiring, address: Callable[[Destination], str],
                  issuer: LocalIssuer | None = None, source_window: int = WINDOW) -> list[Subscription]:
    """The dispatcher's work as the chart describes it: one subscription per
    KafkaSource and one per Trigger (its own consumer group on the Broker's
    topic, its exact attribute filter, replies back into the Broker), each
    presenting its sender's token when an issuer is given. An unordered
    KafkaSource keeps up to ``source_window`` records in flight."""
    subs = [Subscription(
        name=source.name, topics=source.topics, group=source.consumer_group,
        target=address(source.sink), delivery=delivery_spec(source.delivery),
        initial_offset=source.initial_offset, ordered=source.ordering == "ordered",
        source_uri=f"/apis/v1/namespaces/pulse/kafkasources/{source.name}",
        token=token_for(issuer, source.sink, sender("KafkaSource", source.name)), window=source_window,
    ) for source in wiring.sources]
    brokers = {b.name: b for b in wiring.brokers}
    for trigger in wiring.triggers:
        topic = broker_topic(brokers[trigger.broker])
        subs.append(Subscription(
            name=trigger.name, topics=(topic,), group=f"knative-trigger-pulse-{trigger.name}",
            target=address(trigger.subscriber), delivery=delivery_spec(trigger.delivery),
            # A Trigger reads from when it was created; the embedded Broker's topic is
            # created with it, so "earliest" is that moment and loses nothing to a slow join.
            initial_offset="earliest", ordered=False, filter=trigger.filter, reply_to=topic,
            token=token_for(issuer, trigger.subscriber, sender("Trigger", trigger.name)),
        ))
    return subs


def broker_check(issuer: LocalIssuer, broker: Broker) -> EventAuth:
    """What a Broker's ingress accepts: a token for its audience from any
    sender of its namespace (Knative's default authorization mode)."""
    return EventAuth(issuer, issuer.issuer, f"eventing.knative.dev/broker/{RELEASE_NAMESPACE}/{broker.name}",
                     (f"system:serviceaccount:{RELEASE_NAMESPACE}:*",))


class BrokerIngress(HttpFunction):
    def __init__(self, broker: str, topic: str, producer: Producer, check: EventCheck | None = None) -> None:
        self.name = f"broker-{broker}"
        self.topic = topic
        self.producer = producer
        self.check = check
        super().__init__()

    def routes(self) -> Iterable[Route]:
        return [Route("POST", "/", self.ingress, "ingress")]

    def ingress(self, request: Request) -> Response:
        if self.check is not None:
            self.check.verify(request.headers.get("Authorization"))
        events = receive(request.headers, request.get_data())
        for event in events:
            self.append(event)
        return Response(status=202)

    def append(self, event: CloudEvent) -> None:
        key = event.get("partitionkey") or event.id
        self.producer.send(self.topic, key, event)


def _field(text: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            start, end = low, high
        elif "-" in body:
            start, end = (int(x) for x in body.split("-", 1))
        else:
            start = end = int(body)
            if step_text:
                end = high
        if not (low <= start <= end <= high) or step < 1:
            raise InvalidInput.field("schedule", f"{text!r} is out of range {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


class Cron:
    """A five-field cron expression: minute hour day-of-month month day-of-week."""

    def __init__(self, expression: str) -> None:
        fields = expression.split()
        if len(fields) != 5:
            raise InvalidInput.field("schedule", f"{expression!r} must have five fields")
        self.expression = expression
        self.minutes = _field(fields[0], 0, 59)
        self.hours = _field(fields[1], 0, 23)
        self.days = _field(fields[2], 1, 31)
        self.months = _field(fields[3], 1, 12)
        self.weekdays = frozenset(d % 7 for d in _field(fields[4], 0, 7))
        self.any_day, self.any_weekday = fields[2] == "*", fields[4] == "*"

    def matches(self, moment: datetime) -> bool:
        weekday = (moment.weekday() + 1) % 7  # cron: 0 = Sunday
        day_ok = moment.day in self.days
        weekday_ok = weekday in self.weekdays
        calendar_ok = day_ok and weekday_ok if self.any_day or self.any_weekday else day_ok or weekday_ok
        return (moment.minute in self.minutes and moment.hour in self.hours
                and moment.month in self.months and calendar_ok)

    def next_after(self, moment: datetime) -> datetime:
        probe = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        for _ in range(366 * 24 * 60):
            if self.matches(probe):
                return probe
            probe += timedelta(minutes=1)
        raise InvalidInput.field("schedule", f"{self.expression!r} never fires")


class PingScheduler:
    def __init__(self, pings: Iterable[tuple[str, Cron, CloudEvent, str]], send: Callable[[str, CloudEvent], Any],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.pings = list(pings)
        self.send = send
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pings", daemon=True)

    def start(self) -> None:
        if self.pings:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def due(self, since: datetime, until: datetime) -> list[tuple[str, datetime]]:
        """Every (ping, minute) that fell in (since, until]."""
        fired = []
        for name, cron, _event, _url in self.pings:
            moment = cron.next_after(since)
            while moment <= until:
                fired.append((name, moment))
                moment = cron.next_after(moment)
        return fired

    def _run(self) -> None:
        last = self.clock()
        while not self._stop.wait(max(1.0, 60 - self.clock().second)):
            now = self.clock()
            for name, _moment in self.due(last, now):
                event, url = next((e, u) for n, _c, e, u in self.pings if n == name)
                fresh = CloudEvent.new(event.type, event.source, event.data,
                                       content_type=event.get("datacontenttype") or "application/json")
                try:
                    self.send(url, fresh)
                    log.info("ping %s fired", name)
                except Exception:  # noqa: BLE001 - a failed ping is logged; the next one comes
                    log.exception("ping %s could not be sent", name)
            last = now


def ping_event(name: str, ce_type: str, data: str, namespace: str = "pulse") -> CloudEvent:
    body = data.encode()
    try:
        orjson.loads(body)
        content_type = "application/json"
    except orjson.JSONDecodeError:
        content_type = "text/plain"
    return CloudEvent.new(ce_type, f"/apis/v1/namespaces/{namespace}/pingsources/{name}", body,
                          content_type=content_type)

