"""deploybot's own manifests (deploy/kubernetes, a kustomize base) on the real control plane.

An overlay in a temporary folder puts the base -- as it is in the repo -- into a fresh namespace
with the image deploybot:dev (present on the kubelet's engine), a test config and test secrets,
and what this single-machine cluster needs: the pod on the host network, so the bot reaches the
fake Slack (FakeSlack + a Socket Mode server on 127.0.0.1) and the API server, which listens on
127.0.0.1 only (hence KUBERNETES_SERVICE_HOST/PORT); the PVC binds to a hostPath PV made here.
Then: the pod becomes Ready through its real readiness probe (/readyz), /healthz answers through
the API server's pod proxy, and `deploybot status` run inside the pod reads a demo Deployment
through the in-cluster configuration (the ServiceAccount's projected token, bound to rbac.yaml's
Role) -- and is refused in a namespace where that Role is not bound.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from fakes.people import PEOPLE
from fakes.slack_api import FakeSlack, fake_token
from fakes.slack_harness import ALICE
from fakes.waiting import wait_until
from test_slack_run import SocketModeServer
from tests.integration.k8s.k8s_objects import demo_deployment, wait_for_rollout

REPO = Path(__file__).resolve().parents[3]
BASE = REPO / "deploy" / "kubernetes"
BOT_UID = 10001  # the image's user, and the base's runAsUser
BOT_TOKEN, APP_TOKEN = fake_token("bot", "kube"), fake_token("app", "kube")
READY_TIMEOUT = 120


def kubectl_path() -> str:
    found = shutil.which("kubectl")
    if found is None:  # fail, never skip: these tests are how the manifests are proven
        pytest.fail("kubectl is not on PATH: these tests render and apply deploy/kubernetes with "
                    "`kubectl kustomize` / `kubectl apply -k` (kubectl 1.21 or newer: its "
                    "kustomize knows `patches`)", pytrace=False)
    return found


def kubectl(cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([kubectl_path(), "--kubeconfig", cluster.state.admin_kubeconfig, *args],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)


def bot_config(namespace: str, demo_repository: str) -> dict:
    """`web` in the bot's namespace (the Role is bound there), `elsewhere` in `default` (not)."""
    def service(ns: str) -> dict:
        return {"image": demo_repository,
                "backend": {"kind": "kubernetes", "in_cluster": True, "namespace": ns,
                            "deployment": "web", "timeout": 10}}

    return {"channel": "#standup", "default_environment": "staging", "tracker": {"kind": "local"},
            "people": PEOPLE, "environments": {"staging": {"approvals_required": 0}},
            "services": {"web": service(namespace), "elsewhere": service("default")}}


def write_overlay(folder: Path, *, namespace: str, image: str, api_port: int, metrics_port: int,
                  slack_api_url: str, config: dict) -> Path:
    """The test overlay over the repo's base, the way a user's overlay would replace config and
    secrets; plus what this loopback-only cluster needs (see the module docstring)."""
    folder.mkdir()
    (folder / "deploybot.yaml").write_text(yaml.safe_dump(config))
    (folder / "secrets.env").write_text(f"SLACK_BOT_TOKEN={BOT_TOKEN}\nSLACK_APP_TOKEN={APP_TOKEN}\n")
    name, _, tag = image.rpartition(":")
    container = "/spec/template/spec/containers/0"
    env = {"SLACK_API_URL": slack_api_url, "KUBERNETES_SERVICE_HOST": "127.0.0.1",
           "KUBERNETES_SERVICE_PORT": str(api_port)}
    ops = [
        {"op": "add", "path": "/spec/template/spec/hostNetwork", "value": True},
        {"op": "add", "path": "/spec/template/spec/dnsPolicy", "value": "ClusterFirstWithHostNet"},
        {"op": "replace", "path": f"{container}/imagePullPolicy", "value": "Never"},
        # On the host network the port must be free on this machine: not the default 9464.
        {"op": "replace", "path": f"{container}/args",
         "value": ["run", "--metrics-host", "0.0.0.0", "--metrics-port", str(metrics_port)]},
        {"op": "replace", "path": f"{container}/ports",
         "value": [{"name": "metrics", "containerPort": metrics_port}]},
        *({"op": "add", "path": f"{container}/env/-", "value": {"name": k, "value": v}}
          for k, v in env.items()),
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": namespace,
        "resources": [os.path.relpath(BASE, folder)],  # kustomize takes no absolute paths
        "images": [{"name": "deploybot", "newName": name, "newTag": tag}],
        "configMapGenerator": [{"name": "deploybot-config", "behavior": "replace",
                                "files": ["deploybot.yaml"]}],
        "secretGenerator": [{"name": "deploybot-secrets", "behavior": "replace",
                             "envs": ["secrets.env"]}],
        "patches": [{"target": {"kind": "Deployment", "name": "deploybot"},
                     "patch": yaml.safe_dump(ops)}],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return folder


@pytest.fixture
def bot_namespace(k8s_cluster, tmp_path):
    """(namespace, data folder): a fresh namespace and a hostPath PV reserved for its PVC
    deploybot-data. Teardown deletes the namespace, waits until it is gone (the bot's pod
    stopped, the claim released), then deletes the PV."""
    core = k8s_cluster.core()
    name = f"bot-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, BOT_UID, BOT_UID)  # a hostPath volume keeps its owner (fsGroup does not apply)
    data.chmod(0o700)
    core.create_namespace({"metadata": {"name": name}})
    pv = f"{name}-data"
    core.create_persistent_volume({
        "metadata": {"name": pv},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain",
                 "hostPath": {"path": str(data), "type": "Directory"},
                 "claimRef": {"namespace": name, "name": "deploybot-data"}}})
    yield name, data
    # The Deployments first, waiting for their pods: the namespace controller would otherwise
    # wait as long as the bot's terminationGracePeriodSeconds before it looks again.
    k8s_cluster.apps().delete_collection_namespaced_deployment(name, propagation_policy="Foreground")
    wait_until(lambda: not core.list_namespaced_pod(name).items, 90, f"the pods of {name} to stop")
    core.delete_namespace(name)
    wait_until(lambda: all(n.metadata.name != name for n in core.list_namespace().items), 90,
               f"namespace {name} to go")
    core.delete_persistent_volume(pv)


def wait_ready(cluster, namespace: str, timeout: float) -> object:
    """The bot's pod once its Ready condition is True; else AssertionError with its state."""
    core = cluster.core()
    deadline = time.monotonic() + timeout
    while True:
        pods = core.list_namespaced_pod(
            namespace, label_selector="app.kubernetes.io/name=deploybot").items
        for pod in pods:
            if pod.metadata.deletion_timestamp:  # a stopping pod may still say Ready
                continue
            ready = [c for c in (pod.status.conditions or []) if c.type == "Ready"]
            if ready and ready[0].status == "True":
                return pod
        if time.monotonic() > deadline:
            logs = kubectl(cluster, "-n", namespace, "logs", "deployment/deploybot", "--tail=40")
            raise AssertionError(
                f"no Ready deploybot pod in {timeout} s: "
                f"{json.dumps(cluster.admin.sanitize_for_serialization([p.status for p in pods]))}"
                f"\nlogs: {logs.stdout}{logs.stderr}")
        time.sleep(0.25)


def proxy_get(core, namespace: str, pod: str, port: int, path: str) -> tuple[int, dict]:
    """GET through /api/v1/namespaces/NS/pods/POD:PORT/proxy/PATH (a non-2xx raises)."""
    response = core.connect_get_namespaced_pod_proxy_with_path(
        f"{pod}:{port}", namespace, path, _preload_content=False, _request_timeout=10)
    return response.status, json.loads(response.data)


def test_the_base_renders_with_kubectl_kustomize():
    done = subprocess.run([kubectl_path(), "kustomize", str(BASE)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(done.stdout)}
    assert set(docs) == {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Secret",
                         "PersistentVolumeClaim", "Deployment"}
    assert docs["RoleBinding"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "deploybot", "namespace": "apps"}]
    assert all(v == "" for v in docs["Secret"]["data"].values())  # the example holds no values
    spec = docs["Deployment"]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "deploybot:dev"
    assert pod["serviceAccountName"] == "deploybot"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    # Burstable, not Guaranteed: requests set, and not equal to the limits.
    assert container["resources"]["requests"] != container["resources"].get("limits")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert {"/tmp", "/var/lib/deploybot", "/etc/deploybot",
            "/var/run/secrets/kubernetes.io/serviceaccount"} <= set(mounts)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DEPLOYBOT_DB"].startswith("/var/lib/deploybot/")


@pytest.mark.timeout(1800)  # bot_image may pay for a cold build of deploybot:dev
def test_the_bot_runs_in_the_cluster_from_the_manifests(k8s_cluster, bot_namespace, bot_image,
                                                         demo_image, free_port, tmp_path):
    namespace, data = bot_namespace
    core = k8s_cluster.core()
    demo = demo_image("v1")
    k8s_cluster.apps().create_namespaced_deployment(
        namespace, demo_deployment("web", demo.rpartition(":")[0], "v1", replicas=1))
    wait_for_rollout(k8s_cluster, namespace, "web")
    metrics_port = free_port()
    api_port = int(k8s_cluster.server.rpartition(":")[2])

    with SocketModeServer() as ws, FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as slack:
        slack.socket_url = ws.url
        overlay = write_overlay(
            tmp_path / "overlay", namespace=namespace, image=bot_image, api_port=api_port,
            metrics_port=metrics_port, slack_api_url=slack.api_url,
            config=bot_config(namespace, demo.rpartition(":")[0]))
        started = time.monotonic()
        applied = kubectl(k8s_cluster, "apply", "-k", str(overlay))
        assert applied.returncode == 0, applied.stderr
        pod = wait_ready(k8s_cluster, namespace, READY_TIMEOUT)
        ready_after = time.monotonic() - started
        print(f"\nkubectl apply -k -> pod Ready in {ready_after:.1f} s")
        assert ws.connected.is_set(), "Ready, but the bot never opened the Socket Mode connection"

        # The pod runs as the manifests say: non-root, root filesystem read-only.
        (status,) = pod.status.container_statuses
        assert status.ready and status.restart_count == 0
        name = pod.metadata.name
        who = kubectl(k8s_cluster, "-n", namespace, "exec", name, "--", "python3", "-c",
                      "import os; print(os.getuid()); open('/probe', 'w')")
        assert who.stdout.split()[0] == str(BOT_UID), who
        assert "Read-only file system" in who.stderr, who.stderr

        # /healthz, /readyz and /metrics through the API server's proxy to the pod's metrics port.
        code, health = proxy_get(core, namespace, name, metrics_port, "healthz")
        assert code == 200 and health["alive"] is True, health
        assert health["leader"] is True, health  # one replica on SQLite leads alone
        assert health["replica"].count("/") == 2, health  # HOST/PID/START
        code, body = proxy_get(core, namespace, name, metrics_port, "readyz")
        assert code == 200 and body["ready"] is True, body
        metrics = core.connect_get_namespaced_pod_proxy_with_path(
            f"{name}:{metrics_port}", namespace, "metrics", _preload_content=False,
            _request_timeout=10).data.decode()
        assert re.search(r"^deploybot_store_up 1(\.0)?$", metrics, re.M), metrics[:2000]

        # The Kubernetes backend's in-cluster path, from inside the pod: the projected token of
        # the ServiceAccount, bound to rbac.yaml's Role in this namespace and nowhere else.
        status = kubectl(k8s_cluster, "-n", namespace, "exec", name, "--", "deploybot", "status")
        assert status.returncode == 0, status.stderr
        assert re.search(r"staging\s+web\s+v1\s", status.stdout), status.stdout
        refused = (rf"staging\s+elsewhere\s+[-?]\s.*forbidden \(403\).*"
                   rf"system:serviceaccount:{namespace}:deploybot\b")
        assert re.search(refused, status.stdout), status.stdout

        # Slack works through the pod: a slash command is answered.
        ack = ws.wait_ack(ws.push("slash_commands", {
            "command": "/deploy", "text": "help", "user_id": ALICE, "channel_id": "C0STANDUP",
            "channel_name": "standup", "team_id": "T0FAKE", "trigger_id": "1.1.k8s",
            "api_app_id": "A0"}), timeout=15)
        assert "/deploy TICKET-123" in ack["payload"]["text"]

        # The SQLite file is on the claim's volume; no token reached the logs.
        assert (data / "deploybot.db").is_file()
        logs = kubectl(k8s_cluster, "-n", namespace, "logs", name)
        assert logs.returncode == 0, logs.stderr
        assert BOT_TOKEN not in logs.stdout and APP_TOKEN not in logs.stdout

        # A restart (Recreate: the old pod is gone before the new one opens the file) keeps the
        # database: a ticket written by this pod is read by the next one.
        created = kubectl(k8s_cluster, "-n", namespace, "exec", name, "--",
                          "deploybot", "ticket", "create", "kept on the claim", "--id", "KUBE-1")
        assert created.returncode == 0, created.stderr
        started = time.monotonic()
        restart = kubectl(k8s_cluster, "-n", namespace, "rollout", "restart", "deployment/deploybot")
        assert restart.returncode == 0, restart.stderr
        wait_until(lambda: all(p.metadata.name != name for p in core.list_namespaced_pod(
            namespace).items), 90, f"the old pod {name} to stop")
        stopped_after = time.monotonic() - started
        rollout = kubectl(k8s_cluster, "-n", namespace, "rollout", "status",
                          "deployment/deploybot", "--timeout=120s", timeout=150)
        assert rollout.returncode == 0, rollout.stdout + rollout.stderr
        again = wait_ready(k8s_cluster, namespace, READY_TIMEOUT)
        print(f"kubectl rollout restart -> the old pod gone in {stopped_after:.1f} s, "
              f"the new one Ready in {time.monotonic() - started:.1f} s")
        assert again.metadata.name != name
        shown = kubectl(k8s_cluster, "-n", namespace, "exec", again.metadata.name, "--",
                        "deploybot", "ticket", "show", "KUBE-1")
        assert "kept on the claim" in shown.stdout, shown.stdout + shown.stderr


def test_with_the_base_s_empty_secrets_the_bot_refuses_to_start(k8s_cluster, bot_namespace,
                                                                 bot_image, tmp_path):
    """Applied without an overlay's secrets, the pod fails closed: exit 2, a message naming the
    missing tokens (never their values), never Ready."""
    namespace, _ = bot_namespace
    overlay = tmp_path / "bare"
    overlay.mkdir()
    name, _, tag = bot_image.rpartition(":")
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": namespace, "resources": [os.path.relpath(BASE, overlay)],
        "images": [{"name": "deploybot", "newName": name, "newTag": tag}],
        "patches": [{"target": {"kind": "Deployment", "name": "deploybot"}, "patch": yaml.safe_dump(
            [{"op": "replace", "path": "/spec/template/spec/containers/0/imagePullPolicy",
              "value": "Never"}])}]}))
    applied = kubectl(k8s_cluster, "apply", "-k", str(overlay))
    assert applied.returncode == 0, applied.stderr
    core = k8s_cluster.core()

    def exited():
        for pod in core.list_namespaced_pod(namespace).items:
            for status in pod.status.container_statuses or []:
                assert not status.ready, "the bot became ready without tokens"
                done = status.state.terminated or status.last_state.terminated
                if done:
                    return pod.metadata.name, done
        return None

    wait_until(exited, READY_TIMEOUT, "the bot's container to exit")
    pod, terminated = exited()
    assert terminated.exit_code == 2, terminated
    said = []

    def refusal_logged() -> bool:
        # The exited run is the current one until the kubelet restarts it, then the previous one.
        said[:] = [kubectl(k8s_cluster, "-n", namespace, "logs", pod, *flag).stdout
                   for flag in ((), ("--previous",))]
        return any("SLACK_BOT_TOKEN, SLACK_APP_TOKEN not set" in text for text in said)

    try:
        wait_until(refusal_logged, 30, "the refusal in the logs")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; current and previous logs: {said}") from None
