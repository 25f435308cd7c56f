"""Static checks of the files around the chart: dashboards, pinned versions,
the image, the skaffold profiles, and the cluster manifests."""

from __future__ import annotations

import json
import re

import kubernetes_validate
import pytest
import yaml

from .conftest import CHART, K8S_VERSION, ROOT, load_yaml_dir, objects, of_kind

METRICS = (
    "pulse_http_requests_total", "pulse_http_request_duration_seconds_bucket", "pulse_events_accepted_total",
    "pulse_events_rejected_total", "pulse_persist_batch_size_bucket", "pulse_persist_duplicates_total",
    "pulse_dispatch_dead_letters_total", "pulse_consumer_lag", "pulse_query_duration_seconds_bucket",
)


def test_dashboard_configmaps_hold_valid_dashboards() -> None:
    maps = [c for c in of_kind(objects(), "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert maps
    exprs = []
    for cm in maps:
        for text in cm["data"].values():
            dash = json.loads(text)
            assert dash["uid"] and dash["title"]
            ids = [p["id"] for p in dash["panels"]]
            assert len(ids) == len(set(ids))
            exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for metric in METRICS:
        assert any(metric in e for e in exprs), metric
    assert any("histogram_quantile(0.99" in e and "by (function, le)" in e for e in exprs)
    assert any("histogram_quantile(0.5," in e and "by (function, le)" in e for e in exprs)
    for e in exprs:
        assert e.count("(") == e.count(")"), e


def test_dashboard_file_is_the_configmap_payload() -> None:
    on_disk = json.loads((CHART / "dashboards" / "pulse-overview.json").read_text())
    cm = next(c for c in of_kind(objects(), "ConfigMap") if "pulse-overview.json" in c.get("data", {}))
    assert json.loads(cm["data"]["pulse-overview.json"]) == on_disk


def _shell_and_yaml() -> str:
    paths = list((ROOT / "knative").glob("*")) + list((ROOT / "k8s").glob("*"))
    return "\n".join(p.read_text() for p in paths if p.is_file())


def test_versions_are_pinned() -> None:
    text = _shell_and_yaml() + (ROOT / "Dockerfile").read_text()
    assert not re.search(r"[:/]latest\b", re.sub(r"#.*", "", text).lower())
    env = {}
    for f in ("knative/versions.env", "k8s/versions.env"):
        for line in (ROOT / f).read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                env[key] = value
    for key, value in env.items():
        assert re.search(r"\d+\.\d+", value), f"{key}={value} is not a pinned version"
    images = re.findall(r"image:\s*(\S+)", _shell_and_yaml())
    assert images and all(re.search(r":v?\d+\.\d+", i) for i in images), images
    assert env["KIND_NODE_IMAGE"] in (ROOT / "k8s/kind-config.yaml").read_text()


def test_cluster_manifests_are_numbered_and_core_objects_validate() -> None:
    for directory in ("k8s", "knative"):
        numbered = sorted(p.name for p in (ROOT / directory).glob("*.yaml") if p.name[0].isdigit())
        assert numbered and all(re.match(r"^\d{3}-[a-z0-9-]+\.yaml$", n) for n in numbered)
    core = 0
    for doc in load_yaml_dir(ROOT / "k8s") + load_yaml_dir(ROOT / "knative"):
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            core += 1
        except kubernetes_validate.SchemaNotFoundError:
            assert doc["apiVersion"].split("/")[0] in (
                "kafka.strimzi.io", "gateway.networking.k8s.io", "projectcontour.io", "kind.x-k8s.io",
                "clickhouse.altinity.com", "clickhouse-keeper.altinity.com", "postgresql.cnpg.io"), doc["kind"]
    assert core >= 10


def test_statefulsets_run_as_non_root_with_limits() -> None:
    for sts in (d for d in load_yaml_dir(ROOT / "k8s") if d["kind"] == "StatefulSet"):
        spec = sts["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"]:
            assert {"requests", "limits"} <= set(c["resources"])
            assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_up_script_applies_in_order() -> None:
    up = (ROOT / "k8s/up.sh").read_text()
    order = ["kind-config.yaml", '"${root}/knative/install.sh"', "100-namespaces.yaml", "strimzi-cluster-operator",
             "200-kafka.yaml", "210-kafka-topics.yaml", "300-postgres.yaml", "helm upgrade --install pulse"]
    positions = [up.index(marker) for marker in order]
    assert positions == sorted(positions)
    install = (ROOT / "knative/install.sh").read_text()
    steps = [int(s) for s in re.findall(r'step "(\d{3}) ', install)]
    assert steps == sorted(steps)
    for kafka_part in ("eventing-kafka-controller", "eventing-kafka-source", "eventing-kafka-broker", "eventing-kafka-sink"):
        assert f"{kafka_part}.yaml" in install


def test_dockerfile_is_small_non_root_and_pinned() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"python:3\.11\.\d+-slim", text)
    assert "pip install ." in text
    assert re.search(r"^USER 10001", text, re.M)
    assert 'CMD ["pulse", "serve"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "tests", "charts"):
        assert path in ignored


def test_skaffold_builds_one_image_and_deploys_the_chart() -> None:
    cfg = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    (artifact,) = cfg["build"]["artifacts"]
    release = cfg["deploy"]["helm"]["releases"][0]
    assert release["chartPath"] == "charts/pulse"
    key = re.sub(r"[^A-Za-z0-9]", "_", artifact["image"])
    assert release["setValueTemplates"]["image.repository"] == f"{{{{.IMAGE_REPO_{key}}}}}"
    assert {p["name"] for p in cfg["profiles"]} == {"kind", "minikube"}
    skipped = next(d for d in load_yaml_dir(ROOT / "knative") if d["metadata"]["name"] == "config-deployment")
    assert artifact["image"].split("/")[0] in skipped["data"]["registries-skipping-tag-resolving"].split(",")


@pytest.mark.parametrize("doc", ["docs/operators.md"])
def test_operator_docs_cover_the_essentials(doc: str) -> None:
    text = (ROOT / doc).read_text().lower()
    for topic in ("kind", "minikube", "scale", "dashboard", "rotat", "kid", "cannot prove", "gateway api"):
        assert topic in text, topic
