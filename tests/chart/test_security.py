"""Pods run as non-root on a read-only root filesystem, with requests and
limits; every object carries the standard labels."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import FUNCTIONS, PROFILES, ksvcs, name, objects, of_kind

STANDARD_LABELS = ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                   "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of")


def _pod_specs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = [(f"ksvc/{name(k)}", k["spec"]["template"]["spec"]) for k in ksvcs(objs)]
    specs += [(f"job/{name(j)}", j["spec"]["template"]["spec"]) for j in of_kind(objs, "Job")]
    specs += [(f"pod/{name(p)}", p["spec"]) for p in of_kind(objs, "Pod")]
    return specs


@pytest.mark.parametrize("profile", ["defaults", "created-secrets", "exports-emptydir", "otel"])
def test_every_pod_is_locked_down(profile: str) -> None:
    specs = _pod_specs(objects(PROFILES[profile]))
    assert len(specs) >= 7
    for where, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] > 0, where
        assert spec.get("automountServiceAccountToken") is False or spec.get("serviceAccountName"), where
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{where} {kind}"
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, where


def test_service_account_token_is_not_mounted() -> None:
    sa = of_kind(objects(), "ServiceAccount")[0]
    assert sa["automountServiceAccountToken"] is False


def test_jwt_keys_are_mounted_in_auth_only() -> None:
    for ksvc in ksvcs(objects()):
        spec = ksvc["spec"]["template"]["spec"]
        env = {e["name"] for e in spec["containers"][0]["env"]}
        has_keys = any(v.get("secret") for v in spec["volumes"])
        is_auth, is_host = name(ksvc) == "pulse-auth", name(ksvc) == "pulse-host"
        assert has_keys == is_auth == ("PULSE_JWT_PRIVATE_KEY_FILE" in env)
        assert ("PULSE_JWKS_URL" in env) != (is_auth or is_host)


def test_the_public_host_holds_no_credential() -> None:
    host = next(k for k in ksvcs(objects()) if name(k) == "pulse-host")
    env = host["spec"]["template"]["spec"]["containers"][0]["env"]
    assert not [e for e in env if "valueFrom" in e], "no secret reaches the public host"
    assert not {"PULSE_POSTGRES_URL", "PULSE_CLICKHOUSE_URL", "PULSE_KAFKA_BOOTSTRAP"} & {e["name"] for e in env}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_standard_labels_everywhere(profile: str) -> None:
    for obj in objects(PROFILES[profile]):
        labels = obj["metadata"].get("labels", {})
        for label in STANDARD_LABELS:
            assert labels.get(label), f"{obj['kind']} {name(obj)} lacks {label}"


def test_component_label_on_every_function_object(default_objects: list[dict[str, Any]]) -> None:
    for ksvc in ksvcs(default_objects):
        component = ksvc["metadata"]["labels"]["app.kubernetes.io/component"]
        assert component in FUNCTIONS and name(ksvc) == f"pulse-{component}"
        assert ksvc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component
        env = {e["name"]: e.get("value") for e in ksvc["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["FUNCTION_TARGET"] == component
        assert ksvc["spec"]["template"]["spec"]["containers"][0]["command"] == ["pulse", "serve"]
    per_function = [o for o in default_objects if o["kind"] in ("HTTPRoute", "SinkBinding", "Trigger", "KafkaSource")]
    for obj in per_function:
        assert obj["metadata"]["labels"]["app.kubernetes.io/component"] in FUNCTIONS, name(obj)


def test_probes_and_autoscaling_annotations(default_objects: list[dict[str, Any]]) -> None:
    for ksvc in ksvcs(default_objects):
        container = ksvc["spec"]["template"]["spec"]["containers"][0]
        # the host's /readyz asks every function; its own readiness is being alive
        ready = "/healthz" if name(ksvc) == "pulse-host" else "/readyz"
        assert container["readinessProbe"]["httpGet"]["path"] == ready
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["ports"] == [{"name": "http1", "containerPort": 8080}]
        annotations = ksvc["spec"]["template"]["metadata"]["annotations"]
        for key in ("class", "metric", "target", "min-scale", "max-scale"):
            assert f"autoscaling.knative.dev/{key}" in annotations
    ingest = next(k for k in ksvcs(default_objects) if name(k) == "pulse-ingest")
    assert ingest["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/metric"] == "rps"


def test_scaling_one_function_leaves_the_others(default_objects: list[dict[str, Any]]) -> None:
    scaled = objects({"functions": {"aggregate": {"autoscaling": {"maxScale": 30, "target": 5}}}})
    def scale(objs):  # noqa: ANN001, ANN202
        return {name(k): k["spec"]["template"]["metadata"]["annotations"] for k in ksvcs(objs)}
    before, after = scale(default_objects), scale(scaled)
    assert after["pulse-aggregate"]["autoscaling.knative.dev/max-scale"] == "30"
    assert after["pulse-aggregate"]["autoscaling.knative.dev/target"] == "5"
    assert {k: v for k, v in after.items() if k != "pulse-aggregate"} == {k: v for k, v in before.items() if k != "pulse-aggregate"}
