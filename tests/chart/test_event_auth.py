"""The chart's side of internal-event authentication and visibility: every
sender names the audience its target function checks, the function knows
which senders to accept, it can read the cluster's issuer, and its pods are
reached only through Knative's data plane."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import pytest

from .conftest import FUNCTIONS, NAMESPACE, PROFILES, ksvcs, name, objects, of_kind


def env_of(ksvc: dict[str, Any]) -> dict[str, str]:
    (container,) = ksvc["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def function_of(ksvc: dict[str, Any]) -> str:
    return str(ksvc["metadata"]["labels"]["app.kubernetes.io/component"])


def knative_identity(kind: str, group: str, resource: str) -> str:
    """The subject Knative's OIDC identity for a sender resource has (knative/eventing pkg/auth)."""
    return f"system:serviceaccount:{NAMESPACE}:{resource}-oidc-{group}-{kind}".lower()


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_sender_names_the_audience_its_target_checks_and_is_accepted_there(profile: str) -> None:
    objs = objects(PROFILES[profile])
    services = {name(k): env_of(k) for k in ksvcs(objs)}
    deliveries = [(s["spec"]["sink"], knative_identity("KafkaSource", "sources.knative.dev", name(s)))
                  for s in of_kind(objs, "KafkaSource")]
    deliveries += [(t["spec"]["subscriber"], knative_identity("Trigger", "eventing.knative.dev", name(t)))
                   for t in of_kind(objs, "Trigger")]
    assert deliveries or profile == "no-source"
    targeted = set()
    for destination, sender in deliveries:
        env = services[destination["ref"]["name"]]
        assert destination["audience"] == env["PULSE_CE_AUDIENCE"], destination
        assert any(fnmatchcase(sender, p) for p in env["PULSE_CE_SUBJECTS"].split(",")), (sender, env)
        targeted.add(destination["ref"]["name"])
    for service, env in services.items():
        assert ("PULSE_CE_AUDIENCE" in env) == (service in targeted), service
    audiences = [env["PULSE_CE_AUDIENCE"] for env in services.values() if "PULSE_CE_AUDIENCE" in env]
    assert len(audiences) == len(set(audiences)), "each function has an audience of its own"


def test_a_function_accepts_only_the_kinds_of_sender_pointed_at_it() -> None:
    services = {function_of(k): env_of(k) for k in ksvcs(objects())}
    trigger = knative_identity("Trigger", "eventing.knative.dev", "pulse-persisted")
    source = knative_identity("KafkaSource", "sources.knative.dev", "pulse-raw-events")
    assert fnmatchcase(source, services["persist"]["PULSE_CE_SUBJECTS"].split(",")[0])
    for function in ("aggregate", "export"):
        patterns = services[function]["PULSE_CE_SUBJECTS"].split(",")
        assert any(fnmatchcase(trigger, p) for p in patterns)
        assert not any(fnmatchcase(source, p) for p in patterns)
        assert not any(fnmatchcase(trigger.replace(f":{NAMESPACE}:", ":elsewhere:"), p) for p in patterns)
    assert "PULSE_CE_SUBJECTS" not in services["ingest"] and "PULSE_CE_SUBJECTS" not in services["auth"]


def test_functions_with_internal_events_can_read_the_cluster_issuer() -> None:
    objs = objects()
    for ksvc in ksvcs(objs):
        spec = ksvc["spec"]["template"]["spec"]
        env = env_of(ksvc)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        if "PULSE_CE_AUDIENCE" not in env:
            assert "kube-api" not in volumes
            continue
        sources = volumes["kube-api"]["projected"]["sources"]
        assert {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}} in sources
        assert env["PULSE_CE_OIDC_TOKEN_FILE"] == "/var/run/pulse/kube/token"
        assert env["PULSE_CE_OIDC_DISCOVERY_URL"].startswith("https://")
        assert spec.get("automountServiceAccountToken") is not True
    (binding,) = of_kind(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == "system:service-account-issuer-discovery"
    (account,) = of_kind(objs, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name(account), "namespace": NAMESPACE}]
    assert not of_kind(objects({"eventAuth": {"issuerDiscoveryBinding": False}}), "ClusterRoleBinding")


def test_the_functions_pods_are_reached_only_through_knatives_data_plane() -> None:
    objs = objects()
    (policy,) = of_kind(objs, "NetworkPolicy")
    spec = policy["spec"]
    selector = spec["podSelector"]
    assert selector["matchLabels"]["app.kubernetes.io/instance"] == "pulse"
    (components,) = selector["matchExpressions"]
    assert components["key"] == "app.kubernetes.io/component" and set(components["values"]) == set(FUNCTIONS)
    for ksvc in ksvcs(objs):  # the policy selects every function's pods
        labels = ksvc["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector["matchLabels"].items())
    assert spec["policyTypes"] == ["Ingress"]
    knative, monitoring = spec["ingress"]
    allowed = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in knative["from"]}
    assert allowed == {"knative-serving", "contour-internal"} and "ports" not in knative
    assert monitoring["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert not of_kind(objects({"networkPolicy": {"enabled": False}}), "NetworkPolicy")
