"""Pulse's eventing and routing wiring, read from the rendered Helm chart.

`charts/pulse` is the one place where sources, the Broker, Triggers and their
filters, SinkBindings, PingSources, delivery settings and the public route
table are written. The embedded run renders that chart with helm-python-sdk
and turns the Knative and Gateway API objects into the plain frozen
dataclasses below, so the local dispatcher and gateway follow exactly what a
cluster would run.

Mapping rules:
- a sink or subscriber that references a Knative Service becomes
  ``Destination(function=<component>, path=<uri or "/">, broker=None)``, the
  component read from the Service's ``app.kubernetes.io/component`` label;
- a reference to a Broker becomes ``Destination(None, "/", broker=<name>)``;
- a destination's OIDC ``audience`` is the one the chart sets on it; a
  Broker's is the one Knative announces, ``eventing.knative.dev/broker/<ns>/<name>``;
- a delivery's ``deadLetterSink`` reference to a KafkaSink becomes that
  sink's topic; ISO-8601 durations become seconds;
- a Trigger without its own ``delivery`` inherits its Broker's, as Knative does;
- a PingSource always emits ``dev.knative.sources.ping`` (Knative does not let
  ``ceOverrides`` replace ``type``), so that is its ``ce_type``;
- routes come from the HTTPRoutes: each PathPrefix match to the function whose
  cluster-local host the rule rewrites to.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import yaml

__all__ = [
    "Broker",
    "Delivery",
    "Destination",
    "Ping",
    "Route",
    "SinkBinding",
    "Source",
    "Trigger",
    "Wiring",
    "WiringError",
    "load_wiring",
    "parse_duration",
    "render_chart",
]

RELEASE_NAME = "pulse"
RELEASE_NAMESPACE = "pulse"
PING_CE_TYPE = "dev.knative.sources.ping"
COMPONENT_LABEL = "app.kubernetes.io/component"
EXTERNAL_TOPIC_ANNOTATION = "kafka.eventing.knative.dev/external.topic"

# Laid over the caller's values: the embedded gateway needs the route table
# even where a cluster exposes no public host, and never touches another
# namespace.
EMBEDDED_OVERRIDES: Mapping[str, Any] = {"routing": {"enabled": True, "referenceGrant": False}}


class WiringError(ValueError):
    """The rendered chart does not describe a consistent wiring."""


@dataclass(frozen=True)
class Delivery:
    retry: int
    backoff_policy: str  # "exponential" | "linear"
    backoff_delay_s: float
    timeout_s: float | None
    dead_letter_topic: str | None


@dataclass(frozen=True)
class Destination:
    function: str | None  # component name, e.g. "persist"
    path: str
    broker: str | None  # set instead of function when the sink is a Broker
    audience: str | None = None  # the OIDC audience a sender's token is for


@dataclass(frozen=True)
class Source:
    name: str
    topics: tuple[str, ...]
    consumer_group: str
    initial_offset: str
    ordering: str
    sink: Destination
    delivery: Delivery


@dataclass(frozen=True)
class Broker:
    name: str
    delivery: Delivery
    topic: str | None = None  # the Kafka topic behind the Broker, when the chart names one


@dataclass(frozen=True)
class Trigger:
    name: str
    broker: str
    filter: tuple[tuple[str, str], ...]  # exact attribute filter pairs, sorted
    subscriber: Destination
    delivery: Delivery


@dataclass(frozen=True)
class SinkBinding:
    function: str
    sink: Destination
    name: str = ""


@dataclass(frozen=True)
class Ping:
    name: str
    schedule: str
    ce_type: str
    data: str
    sink: Destination


@dataclass(frozen=True)
class Route:
    prefix: str
    function: str


@dataclass(frozen=True)
class Wiring:
    sources: tuple[Source, ...]
    brokers: tuple[Broker, ...]
    triggers: tuple[Trigger, ...]
    sink_bindings: tuple[SinkBinding, ...]
    pings: tuple[Ping, ...]
    routes: tuple[Route, ...]

    def triggers_for(self, broker: str) -> tuple[Trigger, ...]:
        return tuple(t for t in self.triggers if t.broker == broker)

    def route_for(self, path: str) -> str | None:
        """The function serving ``path``: longest prefix on whole segments."""
        path = path.split("?", 1)[0] or "/"
        best: Route | None = None
        for route in self.routes:
            if _prefix_matches(route.prefix, path) and (best is None or len(route.prefix) > len(best.prefix)):
                best = route
        return best.function if best else None


def _prefix_matches(prefix: str, path: str) -> bool:
    prefix = prefix.rstrip("/")
    if not prefix:
        return True
    return path == prefix or path.startswith(prefix + "/")


_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> float:
    """Seconds in an ISO-8601 duration such as ``PT0.5S`` or ``PT10M``."""
    match = _DURATION.match(text.strip())
    if not match or text.strip() in ("P", "PT"):
        raise WiringError(f"not an ISO-8601 duration: {text!r}")
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    return parts.get("d", 0.0) * 86400 + parts.get("h", 0.0) * 3600 + parts.get("m", 0.0) * 60 + parts.get("s", 0.0)


def default_chart_dir() -> Path:
    """``charts/pulse`` at the repository root (the parent of ``functions/``)."""
    return Path(__file__).resolve().parents[3] / "charts" / "pulse"


def render_chart(values: dict[str, Any] | None = None, chart_dir: Path | None = None) -> dict[str, str]:
    """Render the chart offline: ``{template path: manifest text}``.

    Raises helm_python's HelmValuesError for values the schema rejects and
    HelmRenderError when a template fails (including the chart's own checks).
    """
    with helm_python.Chart.load(chart_dir or default_chart_dir()) as chart:
        return chart.render(values, name=RELEASE_NAME, namespace=RELEASE_NAMESPACE)


def load_wiring(values: dict[str, Any] | None = None, chart_dir: Path | None = None) -> Wiring:
    """The wiring of the chart rendered with ``values`` laid over its defaults."""
    if values is None and chart_dir is None:
        return _default_wiring()
    return _load(values, chart_dir)


@functools.cache
def _default_wiring() -> Wiring:
    return _load(None, None)


def _load(values: dict[str, Any] | None, chart_dir: Path | None) -> Wiring:
    merged = _deep_merge(dict(values or {}), EMBEDDED_OVERRIDES)
    return wiring_from_objects(_objects(render_chart(merged, chart_dir)))


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _objects(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(rendered):
        if not path.endswith((".yaml", ".yml")):
            continue
        docs.extend(d for d in yaml.safe_load_all(rendered[path]) if isinstance(d, dict))
    return docs


def wiring_from_objects(objects: Iterable[Mapping[str, Any]]) -> Wiring:
    """Build the wiring from parsed Kubernetes objects."""
    by_kind: dict[str, list[Mapping[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(str(obj.get("kind")), []).append(obj)
    functions = {
        _name(o): _component(o)
        for o in by_kind.get("Service", [])
        if str(o.get("apiVersion", "")).startswith("serving.knative.dev/")
    }
    dead_letter_topics = {_name(o): str(o["spec"]["topic"]) for o in by_kind.get("KafkaSink", [])}
    resolver = _Resolver(functions, dead_letter_topics)

    brokers = tuple(
        Broker(
            name=_name(o),
            delivery=resolver.delivery(o.get("spec", {}).get("delivery")),
            topic=o.get("metadata", {}).get("annotations", {}).get(EXTERNAL_TOPIC_ANNOTATION),
        )
        for o in sorted(by_kind.get("Broker", []), key=_name)
    )
    broker_delivery = {b.name: b.delivery for b in brokers}

    sources = tuple(
        Source(
            name=_name(o),
            topics=tuple(o["spec"]["topics"]),
            consumer_group=str(o["spec"].get("consumerGroup", "")),
            initial_offset=str(o["spec"].get("initialOffset", "latest")),
            ordering=str(o["spec"].get("ordering", "ordered")),
            sink=resolver.destination(o["spec"]["sink"]),
            delivery=resolver.delivery(o["spec"].get("delivery")),
        )
        for o in sorted(by_kind.get("KafkaSource", []), key=_name)
    )

    triggers = []
    for o in sorted(by_kind.get("Trigger", []), key=_name):
        spec = o["spec"]
        broker = str(spec["broker"])
        if broker not in broker_delivery:
            raise WiringError(f"Trigger {_name(o)} names Broker {broker!r}, which the chart does not render")
        attributes = (spec.get("filter") or {}).get("attributes") or {}
        own = spec.get("delivery")
        triggers.append(Trigger(
            name=_name(o),
            broker=broker,
            filter=tuple(sorted((str(k), str(v)) for k, v in attributes.items())),
            subscriber=resolver.destination(spec["subscriber"]),
            delivery=resolver.delivery(own) if own else broker_delivery[broker],
        ))

    sink_bindings = tuple(
        SinkBinding(function=resolver.function(o["spec"]["subject"]), sink=resolver.destination(o["spec"]["sink"]),
                    name=_name(o))
        for o in sorted(by_kind.get("SinkBinding", []), key=_name)
    )

    pings = tuple(
        Ping(
            name=_name(o),
            schedule=str(o["spec"]["schedule"]),
            ce_type=PING_CE_TYPE,
            data=str(o["spec"].get("data", "")),
            sink=resolver.destination(o["spec"]["sink"]),
        )
        for o in sorted(by_kind.get("PingSource", []), key=_name)
    )

    hosts = {f"{name}.{RELEASE_NAMESPACE}.svc": component for name, component in functions.items()}
    routes: list[Route] = []
    for o in sorted(by_kind.get("HTTPRoute", []), key=_name):
        for rule in o.get("spec", {}).get("rules", []):
            function = _rule_function(rule, hosts) or _component(o)
            for match in rule.get("matches", []):
                path = match.get("path") or {}
                if path.get("type", "PathPrefix") == "PathPrefix":
                    routes.append(Route(prefix=str(path.get("value", "/")), function=function))

    for broker in {d.broker for d in _destinations(sources, triggers, sink_bindings, pings) if d.broker}:
        if broker not in broker_delivery:
            raise WiringError(f"a sink names Broker {broker!r}, which the chart does not render")

    return Wiring(
        sources=sources,
        brokers=brokers,
        triggers=tuple(triggers),
        sink_bindings=sink_bindings,
        pings=pings,
        routes=tuple(sorted(routes, key=lambda r: (-len(r.prefix), r.prefix))),
    )


def _destinations(sources: Iterable[Source], triggers: Iterable[Trigger],
                  bindings: Iterable[SinkBinding], pings: Iterable[Ping]) -> list[Destination]:
    return ([s.sink for s in sources] + [t.subscriber for t in triggers]
            + [b.sink for b in bindings] + [p.sink for p in pings])


def _rule_function(rule: Mapping[str, Any], hosts: Mapping[str, str]) -> str | None:
    for flt in rule.get("filters", []):
        hostname = str((flt.get("urlRewrite") or {}).get("hostname", ""))
        for prefix, component in hosts.items():
            if hostname == prefix or hostname.startswith(prefix + "."):
                return component
    return None


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def _component(obj: Mapping[str, Any]) -> str:
    labels = obj.get("metadata", {}).get("labels") or {}
    return str(labels.get(COMPONENT_LABEL) or _name(obj))


class _Resolver:
    def __init__(self, functions: Mapping[str, str], dead_letter_topics: Mapping[str, str]) -> None:
        self.functions = functions
        self.dead_letter_topics = dead_letter_topics

    def function(self, ref: Mapping[str, Any]) -> str:
        name = str(ref.get("name", ""))
        if ref.get("kind") != "Service" or name not in self.functions:
            raise WiringError(f"{ref.get('kind')} {name!r} is not a Knative Service of the chart")
        return self.functions[name]

    def destination(self, dest: Mapping[str, Any]) -> Destination:
        ref = dest.get("ref")
        uri = str(dest.get("uri") or "")
        audience = str(dest["audience"]) if dest.get("audience") else None
        if not ref:
            if not uri:
                raise WiringError("a destination has neither ref nor uri")
            return Destination(function=None, path=uri, broker=None, audience=audience)
        if ref.get("kind") == "Broker":
            name = str(ref["name"])
            return Destination(function=None, path=uri or "/", broker=name,
                               audience=audience or f"eventing.knative.dev/broker/{RELEASE_NAMESPACE}/{name}")
        return Destination(function=self.function(ref), path=uri or "/", broker=None, audience=audience)

    def delivery(self, spec: Mapping[str, Any] | None) -> Delivery:
        spec = spec or {}
        dead_letter_topic = None
        dls = spec.get("deadLetterSink")
        if dls:
            ref = dls.get("ref") or {}
            name = str(ref.get("name", ""))
            if ref.get("kind") != "KafkaSink" or name not in self.dead_letter_topics:
                raise WiringError(f"deadLetterSink {ref.get('kind')} {name!r} is not a KafkaSink of the chart")
            dead_letter_topic = self.dead_letter_topics[name]
        timeout = spec.get("timeout")
        return Delivery(
            retry=int(spec.get("retry", 0)),
            backoff_policy=str(spec.get("backoffPolicy", "exponential")),
            backoff_delay_s=parse_duration(str(spec["backoffDelay"])) if spec.get("backoffDelay") else 0.0,
            timeout_s=parse_duration(str(timeout)) if timeout else None,
            dead_letter_topic=dead_letter_topic,
        )
