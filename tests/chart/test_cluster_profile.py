"""The cluster profile (k8s/up.sh --cluster): ClickHouse shards and replicas
with ClickHouse Keeper under clickhouse-operator, Postgres with a standby under
CloudNativePG. Each object is held against its operator's upstream CRD
(upstream/clickhouse-operator, upstream/cloudnative-pg), and the pieces
against one another: the names Pulse connects to, the cluster its
migrations run ON, the pinned images."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from pulse.settings import Settings
from pulse.storage.clickhouse import Layout
from pulse.storage.migrations import cluster_statements

from . import upstream
from .conftest import ROOT, ksvcs, objects, of_kind

K8S = ROOT / "k8s"


def _one(path: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((K8S / path).read_text()) if d]
    return doc


KEEPER = _one("320-clickhouse-keeper.yaml")
CLICKHOUSE = _one("330-clickhouse-cluster.yaml")
POSTGRES = _one("340-postgres-cluster.yaml")
UP = (ROOT / "k8s/up.sh").read_text()


def _versions() -> dict[str, str]:
    lines = (K8S / "versions.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    node: Any = out
    *parents, last = path.split(".")
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[last] = value
    return out


def test_the_operators_objects_pass_their_crds() -> None:
    assert (KEEPER["apiVersion"], KEEPER["kind"]) == ("clickhouse-keeper.altinity.com/v1",
                                                      "ClickHouseKeeperInstallation")
    assert (CLICKHOUSE["apiVersion"], CLICKHOUSE["kind"]) == ("clickhouse.altinity.com/v1", "ClickHouseInstallation")
    assert (POSTGRES["apiVersion"], POSTGRES["kind"]) == ("postgresql.cnpg.io/v1", "Cluster")
    for obj in (KEEPER, CLICKHOUSE, POSTGRES):
        assert upstream.validate(obj) == [], obj["kind"]


@pytest.mark.parametrize(("obj", "path", "value", "message"), [
    (CLICKHOUSE, "spec.configuration.clusters.0.layout.shardCount", 2, "was unexpected"),
    (CLICKHOUSE, "spec.configuration.zookeeper.nodes.0.port", "2181", "is not of type 'integer'"),
    (KEEPER, "spec.configuration.clusters.0.layouts", {}, "was unexpected"),
    (POSTGRES, "spec.instances", "2", "is not of type 'integer'"),
    (POSTGRES, "spec.instance", 2, "was unexpected"),
    (POSTGRES, "spec.primaryUpdateMethod", "failover", "is not one of"),
])
def test_the_crds_refuse_what_the_operators_refuse(obj: dict[str, Any], path: str, value: Any, message: str) -> None:
    errors = upstream.validate(_set(obj, path, value))
    assert any(message in e for e in errors), errors


def test_clickhouse_is_sharded_replicated_and_coordinated_by_the_keeper() -> None:
    (cluster,) = CLICKHOUSE["spec"]["configuration"]["clusters"]
    assert cluster["layout"]["shardsCount"] >= 2 and cluster["layout"]["replicasCount"] >= 2
    (keeper_cluster,) = KEEPER["spec"]["configuration"]["clusters"]
    replicas = keeper_cluster["layout"]["replicasCount"]
    assert replicas >= 3 and replicas % 2 == 1  # a Raft quorum that survives one loss
    (node,) = CLICKHOUSE["spec"]["configuration"]["zookeeper"]["nodes"]
    # clickhouse-operator serves a ClickHouseKeeperInstallation as Service keeper-<name>, client port 2181
    assert node == {"host": f"keeper-{KEEPER['metadata']['name']}", "port": 2181}
    assert KEEPER["metadata"]["namespace"] == CLICKHOUSE["metadata"]["namespace"] == "pulse-data"


def test_pulse_runs_its_migrations_on_the_installations_cluster() -> None:
    (cluster,) = CLICKHOUSE["spec"]["configuration"]["clusters"]
    name = cluster["name"]
    assert f"--set database.clickhouseCluster={name}" in UP
    assert f"ON CLUSTER {name}" in UP  # the database, on every node
    statements = [s for _, ss in cluster_statements(Layout(name), "pulse", Settings()) for s in ss]
    assert all(f"ON CLUSTER '{name}'" in s for s in statements if not s.startswith("INSERT"))
    env = {e["name"]: e.get("value") for e in ksvcs(objects({"database": {"clickhouseCluster": name}}))[0]["spec"][
        "template"]["spec"]["containers"][0]["env"]}
    assert env["PULSE_CLICKHOUSE_CLUSTER"] == name
    (job,) = of_kind(objects({"database": {"clickhouseCluster": name}}), "Job")  # pulse migrate: ON CLUSTER
    assert {"name": "PULSE_CLICKHOUSE_CLUSTER", "value": name} in job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "PULSE_CLICKHOUSE_CLUSTER" not in {e["name"] for e in ksvcs(objects())[0]["spec"]["template"]["spec"][
        "containers"][0]["env"]}


def test_pulse_connects_through_the_services_the_operators_create() -> None:
    # clickhouse-operator: Service clickhouse-<installation>; CloudNativePG: <cluster>-rw, the primary
    assert f"ch_host=clickhouse-{CLICKHOUSE['metadata']['name']}" in UP
    assert f"pg_host={POSTGRES['metadata']['name']}-rw" in UP
    initdb = POSTGRES["spec"]["bootstrap"]["initdb"]
    assert initdb["database"] == initdb["owner"] == "pulse"
    assert f"pg_secret={initdb['secret']['name']}" in UP
    assert re.search(rf"create secret generic {initdb['secret']['name']} \\\n\s+--type=kubernetes.io/basic-auth", UP)
    users = CLICKHOUSE["spec"]["configuration"]["users"]
    assert users["pulse/k8s_secret_password"] == "pulse-data/clickhouse-credentials/password"
    assert POSTGRES["spec"]["instances"] == 2 and POSTGRES["spec"]["primaryUpdateMethod"] == "switchover"


def test_images_and_operators_are_the_pinned_ones() -> None:
    pins = _versions()
    containers = {c["name"]: c for t in (KEEPER, CLICKHOUSE) for p in t["spec"]["templates"]["podTemplates"]
                  for c in p["spec"]["containers"]}
    assert containers["clickhouse"]["image"] == pins["CLICKHOUSE_IMAGE"]
    assert containers["clickhouse-keeper"]["image"] == pins["CLICKHOUSE_KEEPER_IMAGE"]
    assert POSTGRES["spec"]["imageName"] == pins["CNPG_POSTGRES_IMAGE"]
    assert "clickhouse-operator/${CLICKHOUSE_OPERATOR_VERSION}/deploy/operator/" in UP
    assert "cloudnative-pg/releases/download/${CNPG_VERSION}/cnpg-${CNPG_VERSION#v}.yaml" in UP
    provenance = upstream.provenance()
    assert provenance["clickhouse-operator"]["tag"] == pins["CLICKHOUSE_OPERATOR_VERSION"]
    assert provenance["cloudnative-pg"]["tag"] == pins["CNPG_VERSION"]


def test_pods_run_as_non_root_with_limits() -> None:
    for installation in (KEEPER, CLICKHOUSE):
        for template in installation["spec"]["templates"]["podTemplates"]:
            spec = template["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True
            for c in spec["containers"]:
                assert {"requests", "limits"} <= set(c["resources"])
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"requests", "limits"} <= set(POSTGRES["spec"]["resources"])


def test_up_script_keeps_one_node_by_default_and_orders_the_cluster_profile() -> None:
    default, clustered = UP.index('step "Postgres and ClickHouse"'), UP.index('step "ClickHouse Keeper')
    assert UP.index("if ((cluster_profile)); then") < clustered < UP.index("else", clustered) < default
    assert "cluster_profile=0" in UP
    order = ["clickhouse-operator-install-bundle.yaml", "cnpg-${CNPG_VERSION#v}.yaml", "deployment/clickhouse-operator",
             "deployment/cnpg-controller-manager", "320-clickhouse-keeper.yaml", "330-clickhouse-cluster.yaml",
             "340-postgres-cluster.yaml", "chk/pulse-keeper", "chi/pulse", "cluster.postgresql.cnpg.io/pulse-postgres",
             "CREATE DATABASE IF NOT EXISTS pulse ON CLUSTER", 'step "Pulse secrets"', "helm upgrade --install pulse"]
    positions = [UP.index(marker) for marker in order]
    assert positions == sorted(positions)
