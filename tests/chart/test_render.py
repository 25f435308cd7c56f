"""The chart renders, lints clean, and every core object validates."""

from __future__ import annotations

import helm_python
import kubernetes_validate
import pytest

from .conftest import CHART, FUNCTIONS, K8S_VERSION, MONITORED, PROFILES, ksvcs, name, objects, of_kind, render


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profile_renders(profile: str) -> None:
    rendered = render(PROFILES[profile])
    assert "pulse/templates/NOTES.txt" in rendered
    assert {name(s) for s in ksvcs(objects(PROFILES[profile]))} == {f"pulse-{f}" for f in FUNCTIONS}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_helm_lint_strict_is_clean(profile: str) -> None:
    report = helm_python.lint(CHART, PROFILES[profile], strict=True, namespace="pulse", kube_version=f"v{K8S_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], problems or report["errors"]


def _pod_of(ksvc: dict) -> dict:
    """A Knative Service's revision template as the Pod it becomes."""
    template = ksvc["spec"]["template"]
    knative_only = {"containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds", "idleTimeoutSeconds"}
    spec = {k: v for k, v in template["spec"].items() if k not in knative_only}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name(ksvc), "labels": template["metadata"]["labels"]},
            "spec": spec}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_core_objects_validate(profile: str) -> None:
    core, custom = 0, 0
    for obj in objects(PROFILES[profile]):
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            core += 1
        except kubernetes_validate.SchemaNotFoundError:
            custom += 1
    for ksvc in ksvcs(objects(PROFILES[profile])):
        kubernetes_validate.validate(_pod_of(ksvc), K8S_VERSION, strict=True)
    assert core >= 4 and custom >= 10


def test_validation_catches_a_broken_core_object() -> None:
    job = next(o for o in objects() if o["kind"] == "Job")
    broken = {**job, "spec": {**job["spec"], "backoffLimit": "three"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_optional_objects_follow_their_toggles() -> None:
    kinds = lambda values: {o["kind"] for o in objects(values)}  # noqa: E731
    assert "PodMonitor" in kinds(PROFILES["podmonitor"]) and "ServiceMonitor" not in kinds(PROFILES["podmonitor"])
    assert "ServiceMonitor" in kinds(PROFILES["servicemonitor"])
    assert not {"PodMonitor", "ServiceMonitor"} & kinds({})
    assert "HTTPRoute" not in kinds(PROFILES["no-routing"])
    assert "KafkaSource" not in kinds(PROFILES["no-source"])
    assert "PersistentVolumeClaim" not in kinds(PROFILES["exports-emptydir"])
    off = objects(PROFILES["no-dashboards-no-tests"])
    assert not [o for o in off if o["kind"] in ("Pod", "ConfigMap") and "test" in name(o) or "dashboard" in name(o)]
    assert not of_kind(objects(), "Secret")
    assert {name(s) for s in of_kind(objects(PROFILES["created-secrets"]), "Secret")} == {"pulse-database", "pulse-jwt"}


def test_servicemonitor_selects_the_metrics_services() -> None:
    objs = objects(PROFILES["servicemonitor"])
    monitor = of_kind(objs, "ServiceMonitor")[0]
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [o for o in of_kind(objs, "Service") if o["apiVersion"] == "v1"
                and all(o["metadata"]["labels"].get(k) == v for k, v in selector.items())]
    assert {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in services} == set(MONITORED)
    for svc in services:
        pods = [k for k in ksvcs(objs) if all(k["spec"]["template"]["metadata"]["labels"].get(a) == b
                                              for a, b in svc["spec"]["selector"].items())]
        assert len(pods) == 1, name(svc)


def test_podmonitor_scrapes_every_function_on_the_user_port() -> None:
    monitor = of_kind(objects(PROFILES["podmonitor"]), "PodMonitor")[0]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchExpressions"][0]["values"] == list(MONITORED)
    assert monitor["spec"]["podMetricsEndpoints"][0] == {**monitor["spec"]["podMetricsEndpoints"][0],
                                                         "port": "user-port", "path": "/metrics"}


def test_keda_annotations_only_when_enabled() -> None:
    on = of_kind(objects(PROFILES["keda"]), "KafkaSource")[0]["metadata"]["annotations"]
    off = of_kind(objects(), "KafkaSource")[0]["metadata"]["annotations"]
    assert on["autoscaling.eventing.knative.dev/max-scale"] == "6"
    assert on["autoscaling.eventing.knative.dev/lag-threshold"] == "500"
    assert "autoscaling.eventing.knative.dev/class" not in on
    assert off == {"autoscaling.eventing.knative.dev/class": "disabled"}


def test_hooks() -> None:
    objs = objects(PROFILES["created-secrets"])
    job = of_kind(objs, "Job")[0]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["pulse", "migrate"]
    db = next(s for s in of_kind(objs, "Secret") if name(s) == "pulse-database")
    # The migrations hook reads the database Secret, so it is created first.
    assert int(db["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    test_pod = of_kind(objs, "Pod")[0]
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = next(c for c in of_kind(objs, "ConfigMap") if "roundtrip.py" in c.get("data", {}))
    compile(script["data"]["roundtrip.py"], "roundtrip.py", "exec")
    assert "/v1/events" in script["data"]["roundtrip.py"] and "/v1/export" in script["data"]["roundtrip.py"]
