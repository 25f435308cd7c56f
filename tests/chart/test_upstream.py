"""The chart, k8s/ and knative/ held against the upstream CRDs, default
ConfigMaps and admission rules of the pinned versions (upstream/)."""

from __future__ import annotations

import copy
import hashlib
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from . import upstream
from .conftest import PROFILES, ROOT, ksvcs, load_yaml_dir, name, objects, of_kind
from .knative_admission import effective, gateway_config, serving_errors

KNATIVE = load_yaml_dir(ROOT / "knative")
K8S = load_yaml_dir(ROOT / "k8s")


def _versions() -> dict[str, str]:
    env = {}
    for f in ("knative/versions.env", "k8s/versions.env"):
        for line in (ROOT / f).read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                env[key] = value
    return env


def _cluster_objects() -> list[dict[str, Any]]:
    # kind-config.yaml configures `kind create cluster`; it is not applied to the cluster.
    return [d for d in K8S + KNATIVE if d["apiVersion"].split("/")[0] != "kind.x-k8s.io"]


# Provenance ---------------------------------------------------------------


def test_vendored_files_match_their_provenance_and_the_pinned_tags() -> None:
    pins = _versions()
    listed = set()
    for source, entry in upstream.provenance().items():
        assert entry["tag"] == pins[entry["version_variable"]], f"{source}: run upstream/refresh.sh {source}"
        assert entry["licence"] and (upstream.UPSTREAM / source / "LICENSE").is_file()
        assert re.fullmatch(r"[0-9a-f]{40}", entry["commit"])
        for path, digest in entry["files"].items():
            file = upstream.UPSTREAM / source / path
            assert hashlib.sha256(file.read_bytes()).hexdigest() == digest, f"{file} was edited by hand"
            listed.add(file)
    assert set(upstream.vendored_files()) == listed


def test_refresh_script_has_one_line_per_source_and_passes_shellcheck() -> None:
    script = (ROOT / "upstream/refresh.sh").read_text()
    lines = re.findall(r"^vendor (\S+) (\S+) (\S+) ", script, re.M)
    assert {n for n, _, _ in lines} == set(upstream.provenance())
    for source, repo, variable in lines:
        entry = upstream.provenance()[source]
        assert entry["repository"] == f"https://github.com/{repo}" and entry["version_variable"] == variable
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (.ci/run installs it)")
    subprocess.run(["shellcheck", "-x", "upstream/refresh.sh"], cwd=ROOT, check=True)


# CRD schemas --------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_custom_resources_of_every_profile_match_the_upstream_crds(profile: str) -> None:
    custom = [o for o in objects(PROFILES[profile]) if not upstream.is_core(o)]
    assert custom
    errors = [e for o in custom for e in upstream.validate(o)]
    assert not errors, "\n".join(errors)


def test_cluster_manifests_match_the_upstream_crds() -> None:
    custom = [o for o in _cluster_objects() if not upstream.is_core(o)]
    assert {o["kind"] for o in custom} >= {"Kafka", "KafkaNodePool", "KafkaTopic", "Gateway", "GatewayClass",
                                           "ContourDeployment", "ClickHouseInstallation",
                                           "ClickHouseKeeperInstallation", "Cluster"}
    errors = [e for o in custom for e in upstream.validate(o)]
    assert not errors, "\n".join(errors)


def test_the_validator_refuses_what_the_api_server_refuses() -> None:
    ksvc = ksvcs(objects())[0]
    topic = next(o for o in K8S if o["kind"] == "KafkaTopic")
    kafka = next(o for o in K8S if o["kind"] == "Kafka")
    assert upstream.validate(ksvc) == [] and upstream.validate(topic) == [] and upstream.validate(kafka) == []

    def broken(obj: dict[str, Any], path: str, value: Any) -> list[str]:
        out = copy.deepcopy(obj)
        *parents, last = path.split(".", path.count(".") if "config" not in path else 2)
        node = out
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[last] = value
        return upstream.validate(out)

    assert "was unexpected" in broken(ksvc, "spec.template.spec.containers.0.bogus", 1)[0]
    assert "is not of type 'integer'" in broken(ksvc, "spec.template.spec.containers.0.ports.0.containerPort", "80")[0]
    assert "is not one of" in broken(kafka, "spec.kafka.listeners.0.type", "bogus")[0]
    assert "was unexpected" in broken(topic, "spec.partitionz", 1)[0]
    assert broken(topic, "spec.config.any.kafka.setting", 1) == []  # config preserves unknown fields
    missing = upstream.validate({"apiVersion": "eventing.knative.dev/v1alpha1", "kind": "KafkaSink",
                                 "metadata": {"name": "t"}, "spec": {"topic": "b"}})
    assert any("'bootstrapServers' is a required property" in e for e in missing)
    assert "no matches for kind" in upstream.validate({**topic, "apiVersion": "kafka.strimzi.io/v1"})[0]


def test_the_dead_letter_sink_is_a_kafka_sink_of_its_real_group() -> None:
    """`helm install` failed with: no matches for kind "KafkaSink" in version
    "eventing.kafka.knative.dev/v1alpha1"."""
    objs = objects()
    (sink,) = of_kind(objs, "KafkaSink")
    assert sink["apiVersion"] == "eventing.knative.dev/v1alpha1"
    assert ("eventing.knative.dev", "v1alpha1", "KafkaSink") in upstream.crds()
    refs = [o["spec"]["delivery"]["deadLetterSink"]["ref"] for o in objs if "delivery" in o.get("spec", {})]
    assert len(refs) >= 5 and all(r["apiVersion"] == sink["apiVersion"] for r in refs)


# Knative Serving admission ------------------------------------------------


def _serving(name_: str) -> dict[str, str]:
    return effective(name_, "knative-serving", KNATIVE)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_knative_serving_admits_every_function(profile: str) -> None:
    features, defaults, autoscaler = _serving("config-features"), _serving("config-defaults"), \
        _serving("config-autoscaler")
    errors = [f"{name(k)}: {e}" for k in ksvcs(objects(PROFILES[profile]))
              for e in serving_errors(k, features, defaults, autoscaler)]
    assert not errors, "\n".join(errors)


def test_export_timeout_is_within_the_clusters_max_revision_timeout() -> None:
    """Knative refused the export Service: timeoutSeconds 900 > max-revision-timeout-seconds (600)."""
    limit = int(_serving("config-defaults")["max-revision-timeout-seconds"])
    export = next(k for k in ksvcs(objects()) if name(k) == "pulse-export")
    assert 0 < export["spec"]["template"]["spec"]["timeoutSeconds"] <= limit
    # and long Trigger deliveries fit inside the revision timeout of their subscriber
    timeouts = {name(k): k["spec"]["template"]["spec"]["timeoutSeconds"] for k in ksvcs(objects())}
    for trigger in of_kind(objects(), "Trigger"):
        seconds = _iso_seconds(trigger["spec"]["delivery"]["timeout"])
        assert seconds <= timeouts[trigger["spec"]["subscriber"]["ref"]["name"]], name(trigger)


def _iso_seconds(text: str) -> float:
    m = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?", text)
    assert m, text
    h, mi, s = m.groups()
    return int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


@pytest.mark.parametrize(("change", "message"), [
    (lambda s, c: c.update(env=[*c["env"], {"name": "PORT", "value": "9"}]), "reserved environment variable"),
    (lambda s, c: c["ports"][0].update(name="http"), "port name http is not allowed"),
    (lambda s, c: c["ports"].append({"containerPort": 9000}), "more than one container port"),
    (lambda s, c: c["ports"][0].update(containerPort=8012), "reserved port"),
    (lambda s, c: c["readinessProbe"]["httpGet"].update(port="metrics"), "probe port must match"),
    (lambda s, c: s.update(timeoutSeconds=900), "max-revision-timeout-seconds"),
    (lambda s, c: c["volumeMounts"].append({"name": "tmp", "mountPath": "/dev"}), "reserved path"),
    (lambda s, c: s.update(terminationGracePeriodSeconds=30), "terminationGracePeriodSeconds: must not set"),
    (lambda s, c: c.update(lifecycle={"preStop": {"exec": {"command": ["sleep", "5"]}}}), "lifecycle: must not set"),
])
def test_serving_rules_refuse(change: Any, message: str) -> None:
    ksvc = copy.deepcopy(next(k for k in ksvcs(objects()) if name(k) == "pulse-export"))
    spec = ksvc["spec"]["template"]["spec"]
    change(spec, spec["containers"][0])
    errors = serving_errors(ksvc, _serving("config-features"), _serving("config-defaults"),
                            _serving("config-autoscaler"))
    assert any(message in e for e in errors), errors


def test_serving_rules_follow_the_feature_flags() -> None:
    export = next(k for k in ksvcs(objects()) if name(k) == "pulse-export")
    upstream_only = effective("config-features", "knative-serving", [])
    errors = serving_errors(export, upstream_only, _serving("config-defaults"), _serving("config-autoscaler"))
    assert any("persistentVolumeClaim volumes are disabled" in e for e in errors)
    assert any("securityContext: must not set" in e for e in errors)
    assert not any("emptyDir" in e for e in errors)  # on by default upstream
    no_emptydir = {**upstream_only, "kubernetes.podspec-volumes-emptydir": "disabled"}
    assert any("emptyDir volumes are disabled" in e
               for e in serving_errors(export, no_emptydir, _serving("config-defaults"), _serving("config-autoscaler")))


# Knative configuration ----------------------------------------------------


def test_knative_configmaps_set_only_keys_the_pinned_components_read() -> None:
    """Every ConfigMap in knative/ patches an upstream ConfigMap (server-side
    apply) with keys that component reads: `kubernetes.podspec-emptydir` and
    `new-trigger-filters` were read by nothing."""
    upstream_maps = upstream.configmaps()
    checked = 0
    for cm in (d for d in KNATIVE if d["kind"] == "ConfigMap"):
        key = (cm["metadata"]["namespace"], name(cm))
        assert key in upstream_maps, f"{key} is not a ConfigMap of the pinned components"
        if name(cm) == "config-domain":
            assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", d) for d in cm["data"])
            continue
        unknown = set(cm["data"]) - upstream.known_keys(upstream_maps[key])
        assert not unknown, f"{key}: {sorted(unknown)} are not read by the pinned version"
        checked += 1
    assert checked >= 8


def test_data_plane_properties_keep_upstreams_and_change_only_sizes() -> None:
    allowed = {"max.request.size", "max.partition.fetch.bytes"}
    changed_any = False
    for cm in (d for d in KNATIVE if d["kind"] == "ConfigMap" and name(d).endswith("-data-plane")):
        theirs = upstream.configmaps()[("knative-eventing", name(cm))]["data"]
        for key, text in cm["data"].items():
            ours, base = upstream.properties(text), upstream.properties(theirs[key])
            assert set(ours) == set(base), (name(cm), key, set(ours) ^ set(base))
            changed = {k for k in ours if ours[k] != base[k]}
            assert changed <= allowed, (name(cm), key, changed)
            changed_any |= bool(changed)
    assert changed_any


def test_hpa_class_needs_knatives_hpa_autoscaler_installed() -> None:
    install = (ROOT / "knative/install.sh").read_text()
    classes = {k["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/class"]
               for p in PROFILES.values() for k in ksvcs(objects(p))}
    assert "hpa.autoscaling.knative.dev" in classes
    assert re.search(r'apply "\$\{serving\}/serving-hpa\.yaml"', install)
    assert install.index("serving-core.yaml") < install.index("serving-hpa.yaml")


def test_eventing_features_are_flags_of_the_pinned_eventing() -> None:
    ours = next(d for d in KNATIVE if name(d) == "config-features" and d["metadata"]["namespace"] == "knative-eventing")
    flags = upstream.known_keys(upstream.configmaps()[("knative-eventing", "config-features")])
    assert set(ours["data"]) <= flags, set(ours["data"]) - flags


def test_config_gateway_is_in_net_gateway_apis_format_and_names_real_gateways() -> None:
    """net-gateway-api 1.21 reads only external-gateways/local-gateways: the old
    `visibility` form was ignored and Knative looked for Istio's gateways."""
    data = effective("config-gateway", "knative-serving", KNATIVE)
    errors, parsed = gateway_config(data)
    assert not errors, errors
    classes = {name(d) for d in KNATIVE if d["kind"] == "GatewayClass"}
    gateways = {f"{d['metadata']['namespace']}/{name(d)}": d for d in KNATIVE if d["kind"] == "Gateway"}
    values = yaml.safe_load((ROOT / "charts/pulse/values.yaml").read_text())["routing"]
    for key in ("external-gateways", "local-gateways"):
        (entry,) = parsed[key]
        gateway = gateways[entry["gateway"]]
        assert entry["class"] == gateway["spec"]["gatewayClassName"] and entry["class"] in classes
        namespace, gateway_name = entry["gateway"].split("/")
        assert entry["service"] == f"{namespace}/envoy-{gateway_name}"  # Contour's provisioner names it so
    (external,) = parsed["external-gateways"]
    (local,) = parsed["local-gateways"]
    assert external["gateway"] == f"{values['gateway']['namespace']}/{values['gateway']['name']}"
    assert local["service"] == f"{values['localGatewayService']['namespace']}/{values['localGatewayService']['name']}"


@pytest.mark.parametrize(("data", "message"), [
    ({"visibility": "ExternalIP: {}"}, "'visibility' is not read"),
    ({"external-gateways": "- {class: c, gateway: a/b}"}, "local-gateways is missing"),
    ({"external-gateways": "- {class: c, gateway: a/b}\n- {class: c, gateway: a/c}",
      "local-gateways": "- {class: c, gateway: a/b}"}, "exactly one"),
    ({"external-gateways": "- {gateway: a/b}", "local-gateways": "- {class: c, gateway: a/b}"}, '"class" is required'),
    ({"external-gateways": "- {class: c, gateway: b}", "local-gateways": "- {class: c, gateway: a/b}"},
     "is not namespace/name"),
    ({"external-gateways": "- {class: c, gateway: a/b, httpListenerName: http}",
      "local-gateways": "- {class: c, gateway: a/b}"}, "unknown field"),
])
def test_config_gateway_check_refuses(data: dict[str, str], message: str) -> None:
    errors, _ = gateway_config(data)
    assert any(message in e for e in errors), errors


# Kafka --------------------------------------------------------------------


def test_the_dead_letter_topic_belongs_to_strimzi_not_to_the_sink() -> None:
    """A KafkaSink with numPartitions and replicationFactor owns its topic and
    deletes it on `helm uninstall`."""
    for profile in PROFILES.values():
        for sink in of_kind(objects(profile), "KafkaSink"):
            assert "numPartitions" not in sink["spec"] and "replicationFactor" not in sink["spec"]
            topics = {d["spec"]["topicName"] for d in K8S if d["kind"] == "KafkaTopic"}
            assert sink["spec"]["topic"] in topics


def _largest_ingest_record() -> tuple[int, int]:
    """(body bytes, largest record bytes) for the request that grows the most
    when ingest encodes it: the body limit filled with 1000 events whose
    properties are all quote characters (each escaped again in the record)."""
    import orjson

    from pulse.bus.cloudevents import to_kafka_headers
    from pulse.core.events import parse_batch
    from pulse.core.ingestion import encode_records
    from pulse.settings import Limits

    limits = Limits()
    per_event = (limits.max_body_bytes - 100) // limits.max_batch_events
    event = {"event_type": "a", "user_id": "u", "properties": {"k": [""] * ((per_event - 80) // 3)}}
    body = orjson.dumps({"events": [event] * limits.max_batch_events})
    assert len(body) <= limits.max_body_bytes
    batch = parse_batch(body, limits)
    assert len(batch.rows) == limits.max_batch_events and not batch.errors
    records = encode_records("00000000-0000-4000-8000-000000000000", batch.rows, limits.max_record_bytes)
    assert sum(len(r.json()["events"]) for r in records) == limits.max_batch_events
    sizes = [len(r.data) + sum(len(k) + len(v) for k, v in to_kafka_headers(r)) for r in records]
    return len(body), max(sizes)


def test_the_largest_request_ingest_accepts_fits_every_hop() -> None:
    """ingest accepted 5 MB bodies that encode to 8.9 MB records, over the
    topics' 8 MB; Knative's KafkaSink and Broker produced with Kafka's 1 MB
    default, so a large batch that failed delivery could not be dead-lettered."""
    from pulse.bus import kafka
    from pulse.services import Services
    from pulse.settings import Settings

    body, record = _largest_ingest_record()
    assert body > 5_000_000
    settings = Settings.load({"PULSE_KAFKA_BOOTSTRAP": "kafka:9092"})
    bound = settings.limits.max_record_bytes + kafka.RECORD_HEADROOM_BYTES
    assert record <= bound
    hops: dict[str, int] = {"ingest producer max_request_size": Services(settings).producer.max_request_bytes,
                            "persist body limit": kafka.MAX_RECORD_BYTES}
    broker = next(d for d in K8S if d["kind"] == "Kafka")["spec"]["kafka"]["config"]
    hops["Kafka message.max.bytes"] = int(broker["message.max.bytes"])
    for topic in (d for d in K8S if d["kind"] == "KafkaTopic"):
        limit = topic["spec"].get("config", {}).get("max.message.bytes", broker["message.max.bytes"])
        hops[f"KafkaTopic {topic['spec']['topicName']} max.message.bytes"] = int(limit)
    for cm_name, key, prop in [
            ("config-kafka-sink-data-plane", "config-kafka-sink-producer.properties", "max.request.size"),
            ("config-kafka-broker-data-plane", "config-kafka-broker-producer.properties", "max.request.size"),
            ("config-kafka-broker-data-plane", "config-kafka-broker-consumer.properties", "max.partition.fetch.bytes"),
            ("config-kafka-source-data-plane", "config-kafka-source-consumer.properties", "max.partition.fetch.bytes")]:
        text = effective(cm_name, "knative-eventing", KNATIVE)[key]
        hops[f"{cm_name} {prop}"] = int(upstream.properties(text)[prop])
    too_small = {hop: limit for hop, limit in hops.items() if limit < bound}
    assert not too_small, f"records up to {bound} bytes: {too_small}"
    # the topic is the ceiling: nothing upstream of it produces more than it takes
    assert hops["ingest producer max_request_size"] <= min(v for k, v in hops.items() if "max.message.bytes" in k)
