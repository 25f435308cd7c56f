"""load_wiring: the embedded run's routes come from the rendered chart."""

from __future__ import annotations

import dataclasses

import pytest

from pulse.local import wiring
from pulse.local.wiring import Delivery, Destination, WiringError, load_wiring, parse_duration

AUD = "serving.knative.dev/service/pulse/pulse-"  # the audience the chart sets for a function
BROKER_AUD = "eventing.knative.dev/broker/pulse/pulse"  # the one Knative announces for the Broker


def test_kafka_source_raw_to_persist_with_its_delivery() -> None:
    (source,) = load_wiring().sources
    assert source.topics == ("pulse.events.raw",)
    assert source.consumer_group == "pulse-persist"
    assert (source.initial_offset, source.ordering) == ("earliest", "unordered")
    assert source.sink == Destination(function="persist", path="/_ce/ingested", broker=None,
                                      audience="serving.knative.dev/service/pulse/pulse-persist")
    assert source.delivery == Delivery(retry=6, backoff_policy="exponential", backoff_delay_s=0.5,
                                       timeout_s=30.0, dead_letter_topic="pulse.events.dlq")


def test_triggers_with_their_filters() -> None:
    w = load_wiring()
    (broker,) = w.brokers
    assert broker.name == "pulse" and broker.topic == "pulse.broker"
    assert broker.delivery.dead_letter_topic == "pulse.events.dlq"
    triggers = {t.filter: (t.subscriber, t.delivery.timeout_s) for t in w.triggers_for("pulse")}
    assert triggers == {
        (("type", "dev.pulse.events.persisted"),): (Destination("aggregate", "/_ce/persisted", None, AUD + "aggregate"), 30.0),
        (("type", "dev.pulse.export.requested"),): (Destination("export", "/_ce/export-requested", None, AUD + "export"), 600.0),
        (("type", "dev.pulse.person.deletion.requested"),): (Destination("export", "/_ce/deletion-requested", None, AUD + "export"),
                                                             600.0),
        (("type", "dev.knative.sources.ping"),): (Destination("persist", "/_ce/maintenance", None, AUD + "persist"), 600.0),
    }
    assert w.triggers_for("elsewhere") == ()


def test_changing_a_trigger_filter_in_values_changes_the_wiring() -> None:
    before = {t.name: t.filter for t in load_wiring().triggers}
    changed = load_wiring({"eventing": {"triggers": {"persisted": {"filter": {"type": "dev.pulse.events.stored"}}}}})
    after = {t.name: t.filter for t in changed.triggers}
    assert before["pulse-persisted"] == (("type", "dev.pulse.events.persisted"),)
    assert after["pulse-persisted"] == (("type", "dev.pulse.events.stored"),)
    assert {k: v for k, v in after.items() if k != "pulse-persisted"} == {k: v for k, v in before.items() if k != "pulse-persisted"}


def test_filters_are_sorted_pairs_and_new_triggers_appear() -> None:
    extra = {"eventing": {"triggers": {"audit": {
        "filter": {"type": "dev.pulse.events.persisted", "source": "/pulse/persist"},
        "subscriber": {"function": "export", "path": "/_ce/audit"},
        "delivery": {"retry": 1, "backoffPolicy": "linear", "backoffDelay": "PT1M"}}}}}
    trigger = next(t for t in load_wiring(extra).triggers if t.name == "pulse-audit")
    assert trigger.filter == (("source", "/pulse/persist"), ("type", "dev.pulse.events.persisted"))
    assert trigger.delivery == Delivery(1, "linear", 60.0, None, "pulse.events.dlq")


def test_sink_bindings_and_ping() -> None:
    w = load_wiring()
    assert {b.function: b.sink for b in w.sink_bindings} == {
        "persist": Destination(None, "/", "pulse", BROKER_AUD), "export": Destination(None, "/", "pulse", BROKER_AUD)}
    (ping,) = w.pings
    assert ping.ce_type == "dev.knative.sources.ping" and ping.sink.broker == "pulse"
    assert ping.schedule == "17 3 * * *"
    assert w.pings == load_wiring({"eventing": {"pings": {"maintenance": {"enabled": True}}}}).pings
    assert load_wiring({"eventing": {"pings": {"maintenance": {"enabled": False}}}}).pings == ()


@pytest.mark.parametrize(("path", "function"), [
    ("/v1/events", "ingest"), ("/v1/batch", "ingest"), ("/batch/", "ingest"), ("/i/v0/e/", "ingest"),
    ("/i/v1/analytics/events", "ingest"), ("/e", "ingest"), ("/v1/cloudevents", "ingest"),
    ("/v1/auth/login", "auth"), ("/v1/projects/p1/api-keys", "auth"), ("/.well-known/jwks.json", "auth"),
    ("/v1/admin/users", "auth"), ("/v1/stats/dau", "aggregate"), ("/dashboard", "aggregate"),
    ("/static/app.js", "aggregate"), ("/v1/export", "export"), ("/v1/exports", "export"),
    ("/v1/exports/abc", "export"), ("/v1/export?format=csv", "export"),
    ("/healthz", "host"), ("/readyz", "host"), ("/openapi.json", "host"), ("/docs", "host"), ("/docs/init.js", "host"),
    # the public host answers every path no function serves (a problem+json 404)
    ("/v1/exportsx", "host"), ("/events", "host"), ("/v1", "host"), ("/", "host"), ("/_ce/ingested", "host"),
])
def test_route_for_matches_whole_segments(path: str, function: str | None) -> None:
    assert load_wiring().route_for(path) == function


def test_routes_follow_values_and_longest_prefix_wins() -> None:
    w = load_wiring({"functions": {"aggregate": {"routes": ["/v1/stats", "/v1/stats/live"]},
                                   "export": {"routes": ["/v1/export"]}}})
    assert w.route_for("/v1/stats/live") == "aggregate"
    assert w.route_for("/v1/exports/1") == "host"
    moved = load_wiring({"functions": {"aggregate": {"routes": ["/v1/stats"]},
                                       "export": {"routes": ["/v1/export", "/v1/exports", "/v1/stats/export"]}}})
    assert moved.route_for("/v1/stats/export/x") == "export" and moved.route_for("/v1/stats/dau") == "aggregate"


def test_routes_survive_routing_disabled_for_the_embedded_gateway() -> None:
    assert load_wiring({"routing": {"enabled": False}}).route_for("/v1/events") == "ingest"


def test_default_wiring_is_cached_and_frozen() -> None:
    w = load_wiring()
    assert load_wiring() is w
    assert load_wiring({}) is not w and load_wiring({}) == w
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.routes = ()  # type: ignore[misc]


def test_render_chart_returns_templates() -> None:
    rendered = wiring.render_chart()
    assert "pulse/templates/eventing-source.yaml" in rendered
    assert "KafkaSource" in rendered["pulse/templates/eventing-source.yaml"]


def test_bad_values_fail_loudly() -> None:
    import helm_python

    with pytest.raises(helm_python.HelmValuesError):
        load_wiring({"eventing": {"source": {"initialOffset": "middle"}}})


def test_a_dangling_reference_is_an_error() -> None:
    objs = [{"apiVersion": "sources.knative.dev/v1", "kind": "SinkBinding", "metadata": {"name": "x"},
             "spec": {"subject": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "nope"},
                      "sink": {"ref": {"kind": "Broker", "name": "b"}}}}]
    with pytest.raises(WiringError):
        wiring.wiring_from_objects(objs)


@pytest.mark.parametrize(("text", "seconds"), [("PT0.5S", 0.5), ("PT30S", 30.0), ("PT10M", 600.0),
                                               ("PT1H30M", 5400.0), ("P1D", 86400.0), ("P1DT1S", 86401.0)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "P", "PT", "500ms", "PT-1S", "1S"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(WiringError):
        parse_duration(text)
