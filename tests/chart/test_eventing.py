"""Knative, Gateway API and Strimzi objects: shape and cross-references."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import FUNCTIONS, PROFILES, ROOT, ksvcs, load_yaml_dir, name, objects, of_kind

REQUIRED: dict[tuple[str, str], tuple[str, ...]] = {
    ("serving.knative.dev/v1", "Service"): ("spec.template.spec.containers",),
    ("sources.knative.dev/v1", "KafkaSource"): ("spec.bootstrapServers", "spec.topics", "spec.consumerGroup",
                                                "spec.initialOffset", "spec.ordering", "spec.consumers",
                                                "spec.delivery", "spec.sink"),
    ("eventing.knative.dev/v1alpha1", "KafkaSink"): ("spec.topic", "spec.bootstrapServers", "spec.contentMode"),
    ("eventing.knative.dev/v1", "Broker"): ("spec.config", "spec.delivery.deadLetterSink"),
    ("eventing.knative.dev/v1", "Trigger"): ("spec.broker", "spec.filter.attributes", "spec.subscriber"),
    ("sources.knative.dev/v1", "SinkBinding"): ("spec.subject", "spec.sink"),
    ("sources.knative.dev/v1", "PingSource"): ("spec.schedule", "spec.data", "spec.sink"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): ("spec.parentRefs", "spec.hostnames", "spec.rules"),
    ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"): ("spec.from", "spec.to"),
    ("monitoring.coreos.com/v1", "PodMonitor"): ("spec.selector", "spec.podMetricsEndpoints"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("spec.selector", "spec.endpoints"),
}


def _get(obj: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        obj = obj[part]
    return obj


CORE = ("v1", "batch/v1", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1")  # kubernetes-validate's


def _custom(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["apiVersion"] not in CORE]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_custom_objects_have_known_kinds_and_required_fields(profile: str) -> None:
    for obj in _custom(objects(PROFILES[profile])):
        key = (obj["apiVersion"], obj["kind"])
        assert key in REQUIRED, f"unexpected {key}"
        assert obj["metadata"]["name"] and len(name(obj)) <= 63
        for field in REQUIRED[key]:
            assert _get(obj, field) not in (None, "", [], {}), f"{obj['kind']} {name(obj)}: {field}"


def _destinations(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for o in objs:
        spec = o.get("spec", {})
        for key in ("sink", "subscriber"):
            if key in spec:
                out.append(spec[key])
        if "delivery" in spec and "deadLetterSink" in spec["delivery"]:
            out.append(spec["delivery"]["deadLetterSink"])
    return out


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_reference_names_a_rendered_object(profile: str) -> None:
    objs = objects(PROFILES[profile])
    rendered = {(o["apiVersion"], o["kind"], name(o)) for o in objs}
    destinations = _destinations(objs)
    assert destinations
    for dest in destinations:
        ref = dest["ref"]
        assert (ref["apiVersion"], ref["kind"], ref["name"]) in rendered, ref
        assert ref["kind"] in ("Service", "KafkaSink", "Broker")
        assert dest.get("uri", "/").startswith("/")
    for binding in of_kind(objs, "SinkBinding"):
        subject = binding["spec"]["subject"]
        assert (subject["apiVersion"], subject["kind"], subject["name"]) in rendered
    brokers = {name(b) for b in of_kind(objs, "Broker")}
    for trigger in of_kind(objs, "Trigger"):
        assert trigger["spec"]["broker"] in brokers
    for broker in of_kind(objs, "Broker"):
        cfg = broker["spec"]["config"]
        assert ("v1", "ConfigMap", cfg["name"]) in rendered and cfg["namespace"] == "pulse"
        assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "Kafka"


def test_kafka_source_feeds_persist(default_objects: list[dict[str, Any]]) -> None:
    source = of_kind(default_objects, "KafkaSource")[0]["spec"]
    assert source["topics"] == ["pulse.events.raw"]
    assert source["sink"] == {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                                      "name": "pulse-persist"}, "uri": "/_ce/ingested",
                              "audience": "serving.knative.dev/service/pulse/pulse-persist"}
    assert source["initialOffset"] in ("earliest", "latest") and source["ordering"] in ("ordered", "unordered")
    assert source["delivery"]["deadLetterSink"]["ref"]["kind"] == "KafkaSink"


def test_triggers_filter_by_type(default_objects: list[dict[str, Any]]) -> None:
    routes = {t["spec"]["filter"]["attributes"]["type"]: (t["spec"]["subscriber"]["ref"]["name"], t["spec"]["subscriber"]["uri"])
              for t in of_kind(default_objects, "Trigger")}
    assert routes == {
        "dev.pulse.events.persisted": ("pulse-aggregate", "/_ce/persisted"),
        "dev.pulse.export.requested": ("pulse-export", "/_ce/export-requested"),
        "dev.pulse.person.deletion.requested": ("pulse-export", "/_ce/deletion-requested"),
        "dev.knative.sources.ping": ("pulse-persist", "/_ce/maintenance"),
    }


def test_sink_bindings_give_k_sink_to_persist_and_export(default_objects: list[dict[str, Any]]) -> None:
    bound = {b["spec"]["subject"]["name"]: b["spec"]["sink"]["ref"]["kind"] for b in of_kind(default_objects, "SinkBinding")}
    assert bound == {"pulse-persist": "Broker", "pulse-export": "Broker"}


def test_ping_goes_through_the_broker_daily(default_objects: list[dict[str, Any]]) -> None:
    ping = of_kind(default_objects, "PingSource")[0]["spec"]
    minute, hour, dom, month, dow = ping["schedule"].split()
    assert (dom, month, dow) == ("*", "*", "*") and minute.isdigit() and hour.isdigit()
    assert ping["sink"]["ref"]["kind"] == "Broker"


def test_every_function_is_cluster_local_and_public_paths_are_routed(default_objects: list[dict[str, Any]]) -> None:
    visibility = {name(k): k["metadata"]["labels"].get("networking.knative.dev/visibility") for k in ksvcs(default_objects)}
    assert set(visibility.values()) == {"cluster-local"} and len(visibility) == len(FUNCTIONS)
    routed = {r["metadata"]["labels"]["app.kubernetes.io/component"] for r in of_kind(default_objects, "HTTPRoute")}
    assert routed == set(FUNCTIONS) - {"persist"}


def test_http_routes_rewrite_to_their_own_function(default_objects: list[dict[str, Any]]) -> None:
    grant = of_kind(default_objects, "ReferenceGrant")[0]
    for route in of_kind(default_objects, "HTTPRoute"):
        rule = route["spec"]["rules"][0]
        rewrite = rule["filters"][0]["urlRewrite"]["hostname"]
        assert rewrite == f"{name(route)}.pulse.svc.cluster.local"
        backend = rule["backendRefs"][0]
        assert backend["namespace"] == grant["metadata"]["namespace"]
        assert grant["spec"]["to"][0]["name"] == backend["name"]
        assert all(m["path"]["type"] == "PathPrefix" for m in rule["matches"])
        assert route["spec"]["parentRefs"][0]["name"] == "knative-gateway"


def _strimzi_topics() -> dict[str, dict[str, Any]]:
    docs = load_yaml_dir(ROOT / "k8s")
    return {d["spec"]["topicName"]: d for d in docs if d["kind"] == "KafkaTopic"}


@pytest.mark.parametrize("profile", ["defaults", "keda"])
def test_every_topic_exists_as_a_kafka_topic(profile: str) -> None:
    objs = objects(PROFILES[profile])
    topics = _strimzi_topics()
    named = set()
    for src in of_kind(objs, "KafkaSource"):
        named.update(src["spec"]["topics"])
    for sink in of_kind(objs, "KafkaSink"):
        named.add(sink["spec"]["topic"])
    for broker in of_kind(objs, "Broker"):
        named.add(broker["metadata"]["annotations"]["kafka.eventing.knative.dev/external.topic"])
    for ksvc in ksvcs(objs):
        env = {e["name"]: e.get("value") for e in ksvc["spec"]["template"]["spec"]["containers"][0]["env"]}
        if name(ksvc) != "pulse-host":  # the public host talks to no broker
            named.update({env["PULSE_RAW_TOPIC"], env["PULSE_DLQ_TOPIC"]})
    assert named == {"pulse.events.raw", "pulse.events.dlq", "pulse.broker"}
    assert named <= set(topics)


def test_kafka_topics_match_chart_values() -> None:
    import yaml

    values = yaml.safe_load((ROOT / "charts/pulse/values.yaml").read_text())["kafka"]
    topics = _strimzi_topics()
    for topic in values["topics"].values():
        kt = topics[topic["name"]]["spec"]
        assert (kt["partitions"], kt["replicas"]) == (topic["partitions"], topic["replicationFactor"])
    bootstrap = values["bootstrapServers"]
    kafka = next(d for d in load_yaml_dir(ROOT / "k8s") if d["kind"] == "Kafka")
    assert bootstrap == f"{name(kafka)}-kafka-bootstrap.{kafka['metadata']['namespace']}.svc:9092"
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"


def test_knative_config_enables_what_the_chart_uses() -> None:
    serving = {d["metadata"]["name"]: d for d in load_yaml_dir(ROOT / "knative")
               if d["kind"] == "ConfigMap" and d["metadata"]["namespace"] == "knative-serving"}
    assert serving["config-network"]["data"]["ingress-class"] == "gateway-api.ingress.networking.knative.dev"
    features = serving["config-features"]["data"]
    for flag in ("kubernetes.podspec-securitycontext", "kubernetes.podspec-volumes-emptydir",
                 "kubernetes.podspec-persistent-volume-claim", "kubernetes.podspec-persistent-volume-write"):
        assert features[flag] == "enabled", flag


def test_the_public_host_route_set_is_the_hosts_own(default_objects: list[dict[str, Any]]) -> None:
    """The same paths as the embedded gateway's (pulse.host.PATHS), plus "/" for
    every path no function serves; its /readyz asks each of the five functions."""
    from pulse.host import PATHS, function_urls

    (route,) = [r for r in of_kind(default_objects, "HTTPRoute") if name(r) == "pulse-host"]
    (rule,) = route["spec"]["rules"]
    assert {m["path"]["value"] for m in rule["matches"]} == {*PATHS, "/"}
    assert {m["path"]["type"] for m in rule["matches"]} == {"PathPrefix"}
    host = next(k for k in ksvcs(default_objects) if name(k) == "pulse-host")
    env = {e["name"]: e.get("value") for e in host["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert function_urls(env["PULSE_HOST_FUNCTIONS"]) == {
        f: f"http://pulse-{f}.pulse.svc.cluster.local" for f in ("ingest", "auth", "persist", "aggregate", "export")}
    assert env["PULSE_PUBLIC_URL"] == "http://pulse.127.0.0.1.sslip.io"
    assert env["FUNCTION_TARGET"] == "host"
