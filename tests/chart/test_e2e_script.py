"""k8s/e2e.sh: its dry run lists the whole end-to-end run in order, without
docker, kind or a cluster; every shell script passes shellcheck; the CI
workflow runs it with the pinned tools."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from .conftest import ROOT

SCRIPTS = ["k8s/e2e.sh", "k8s/up.sh", "k8s/down.sh", "knative/install.sh", "upstream/refresh.sh", ".ci/run"]


def test_dry_run_prints_every_step_in_order_and_runs_nothing(tmp_path: object) -> None:
    # a PATH with none of the cluster tools: a dry run must not call them
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    assert not any(shutil.which(tool, path=env["PATH"]) for tool in ("kind", "helm"))
    out = subprocess.run(["bash", "k8s/e2e.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    commands = [line[2:] for line in out.splitlines() if line.startswith("+ ")]
    order = ["kind create cluster --name pulse-e2e", "knative/install.sh", "kubectl apply -f " + str(ROOT / "k8s/200-kafka.yaml"),
             "kubectl apply -f " + str(ROOT / "k8s/300-postgres.yaml"), "docker build -t dev.local/pulse:e2e",
             "kind load docker-image dev.local/pulse:e2e", "helm upgrade --install pulse",
             "kubectl -n pulse wait ksvc --all --for=condition=Ready", "kubectl -n contour-external port-forward",
             "k8s/e2e_check.py http://127.0.0.1:18080", "helm uninstall pulse",
             "kubectl -n kafka get kafkatopic pulse-events-dlq", "kind delete cluster --name pulse-e2e"]
    positions = []
    for marker in order:
        hits = [i for i, c in enumerate(commands) if marker in c]
        assert hits, f"{marker!r} not in the dry run:\n{out}"
        positions.append(hits[0])
    assert positions == sorted(positions), out
    compile((ROOT / "k8s/e2e_check.py").read_text(), "e2e_check.py", "exec")


@pytest.mark.parametrize("script", SCRIPTS)
def test_shell_scripts_pass_shellcheck(script: str) -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (.ci/run installs it)")
    result = subprocess.run(["shellcheck", "-x", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert os.access(ROOT / script, os.X_OK)


def test_ci_workflow_runs_the_e2e_script_with_the_pinned_tools() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/e2e.yaml").read_text())
    steps = workflow["jobs"]["kind"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert [s["run"].strip() for s in steps if "e2e.sh" in s.get("run", "")] == ["k8s/e2e.sh --dry-run", "k8s/e2e.sh"]
    for tool in ("KIND_VERSION", "KUBECTL_VERSION", "HELM_VERSION"):
        assert "${" + tool + "}" in runs
        assert f"{tool}=" in (ROOT / "k8s/versions.env").read_text()
    assert "latest" not in workflow["jobs"]["kind"]["runs-on"]
