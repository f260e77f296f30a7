"""deploy/kubernetes-replicas: two replicas of deploybot on a PostgreSQL store, rendered with
kubectl's kustomize (no cluster needed): the properties a second replica relies on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.k8s.test_bot_manifests import BASE, kubectl_path

pytestmark = pytest.mark.integration

OVERLAY = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes-replicas"
LABELS = {"app.kubernetes.io/name": "deploybot"}


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    done = subprocess.run([kubectl_path(), "kustomize", str(OVERLAY)], capture_output=True,
                          text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return {d["kind"]: d for d in yaml.safe_load_all(done.stdout)}


def test_two_replicas_rolled_one_at_a_time_without_a_volume(docs):
    assert "PersistentVolumeClaim" not in docs
    assert {d["metadata"].get("namespace") for d in docs.values()} == {"apps"}
    spec = docs["Deployment"]["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    assert "data" not in {v["name"] for v in pod["volumes"]}
    (container,) = pod["containers"]
    assert "/var/lib/deploybot" not in {m["mountPath"] for m in container["volumeMounts"]}
    # the base's hardening stays
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_store_comes_from_the_secret_and_is_empty_in_the_example(docs):
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert "DEPLOYBOT_DB" not in {e["name"] for e in container["env"]}  # no SQLite path
    secret = docs["Secret"]
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert secret["data"]["DEPLOYBOT_DB"] == ""  # the bot refuses to start until it is set
    assert secret["data"]["SLACK_SIGNING_SECRET"] == ""  # HTTP mode verifies Slack's requests
    assert all(v == "" for v in secret["data"].values())


def test_http_mode_behind_a_service_with_probes_on_its_port(docs):
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["run", "--http"]
    assert args[args.index("--host") + 1] == "0.0.0.0" and args[args.index("--port") + 1] == "3000"
    assert container["ports"] == [{"name": "http", "containerPort": 3000}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = docs["Service"]["spec"]
    assert service["selector"] == LABELS
    assert service["ports"] == [{"name": "http", "port": 3000, "targetPort": "http"}]
    assert docs["Deployment"]["spec"]["template"]["metadata"]["labels"] == LABELS


def test_a_disruption_budget_and_replicas_spread_over_nodes(docs):
    pdb = docs["PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": LABELS}}
    anti = docs["Deployment"]["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti  # one node still works
    (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {"topologyKey": "kubernetes.io/hostname",
                                       "labelSelector": {"matchLabels": LABELS}}


def test_the_base_keeps_its_single_sqlite_replica():
    """The overlay changes nothing in the base: one pod, Recreate, the SQLite path set there
    (it wins over the Secret's empty DEPLOYBOT_DB)."""
    done = subprocess.run([kubectl_path(), "kustomize", str(BASE)], capture_output=True,
                          text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    base = {d["kind"]: d for d in yaml.safe_load_all(done.stdout)}
    spec = base["Deployment"]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    (container,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DEPLOYBOT_DB"] == "/var/lib/deploybot/deploybot.db"
    assert "DEPLOYBOT_DB" in base["Secret"]["data"]
