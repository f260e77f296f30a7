"""Kubernetes objects and waits the Kubernetes backend's integration tests share."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
RBAC = REPO / "deploy" / "kubernetes" / "rbac.yaml"


def grant_bot_role(cluster: Cluster, namespace: str) -> None:
    """deploy/kubernetes/rbac.yaml's Role in `namespace`, bound to the kubeconfig user deploybot."""
    docs = {d["kind"]: d for d in yaml.safe_load_all(RBAC.read_text())}
    role = docs["Role"]
    role["metadata"]["namespace"] = namespace
    binding = docs["RoleBinding"]
    binding["metadata"]["namespace"] = namespace
    binding["subjects"] = [{"kind": "User", "name": "deploybot",
                            "apiGroup": "rbac.authorization.k8s.io"}]
    cluster.rbac().create_namespaced_role(namespace, role)
    cluster.rbac().create_namespaced_role_binding(namespace, binding)


def demo_deployment(name: str, image: str, version: str, *, replicas: int = 2,
                    deadline: int = 8) -> dict:
    """The demo service as a Deployment with a real readiness probe on /health."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas, "progressDeadlineSeconds": deadline, "revisionHistoryLimit": 10,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "containers": [{
                        "name": "web", "image": f"{image}:{version}", "imagePullPolicy": "Never",
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "readinessProbe": {"httpGet": {"path": "/health", "port": 8080},
                                           "periodSeconds": 1, "failureThreshold": 1,
                                           "timeoutSeconds": 2},
                    }],
                },
            },
        },
    }


def demo_service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 8080, "targetPort": 8080}]}}


def wait_for_rollout(cluster: Cluster, namespace: str, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        d = cluster.apps().read_namespaced_deployment(name, namespace)
        s = d.status
        want = d.spec.replicas
        if (s.observed_generation or 0) >= d.metadata.generation and \
                (s.updated_replicas or 0) == want and (s.available_replicas or 0) == want and \
                (s.replicas or 0) == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{namespace}/{name} did not roll out in {timeout} s: "
                                 f"{json.dumps(cluster.admin.sanitize_for_serialization(s))}")
        time.sleep(0.3)
