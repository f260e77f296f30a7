"""Opt-in: the Kubernetes backend against a cluster of yours (DEPLOYBOT_TEST_KUBECONFIG).

    DEPLOYBOT_TEST_KUBECONFIG=~/.kube/config [DEPLOYBOT_TEST_K8S_CONTEXT=ctx] \
    [DEPLOYBOT_TEST_K8S_IMAGE=registry.k8s.io/pause DEPLOYBOT_TEST_K8S_TAGS=3.9,3.10] \
        python -m pytest tests/integration/k8s/test_real_cluster.py

It creates its own namespace (deploybot-test-XXXXXXXX), deploys two tags of an image the
cluster's nodes can pull, rolls back, scales, and deletes the namespace at the end. Every wait is
bounded. The kubeconfig's user needs to create and delete namespaces.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from backends.deploy.kubernetes import KubernetesBackend
from bot import config as configuration

KUBECONFIG = os.environ.get("DEPLOYBOT_TEST_KUBECONFIG")
pytestmark = pytest.mark.skipif(
    not KUBECONFIG,
    reason="opt-in test against a real cluster: set DEPLOYBOT_TEST_KUBECONFIG to a kubeconfig "
           "to run it (the local control plane tests beside it always run)")


def test_deploy_rollback_history_and_scale_on_a_real_cluster():
    from kubernetes import client, config

    context = os.environ.get("DEPLOYBOT_TEST_K8S_CONTEXT") or None
    image = os.environ.get("DEPLOYBOT_TEST_K8S_IMAGE", "registry.k8s.io/pause")
    old, new = os.environ.get("DEPLOYBOT_TEST_K8S_TAGS", "3.9,3.10").split(",")
    api = config.new_client_from_config(config_file=os.path.expanduser(KUBECONFIG), context=context)
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    ns = f"deploybot-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": ns}}, _request_timeout=30)
    try:
        apps.create_namespaced_deployment(ns, {
            "metadata": {"name": "web"},
            "spec": {"replicas": 1, "progressDeadlineSeconds": 120,
                     "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": f"{image}:{old}"}]}}},
        }, _request_timeout=30)
        svc = configuration.parse({"environments": {"test": {}}, "services": {"web": {
            "image": image, "backend": {"kind": "kubernetes", "kubeconfig": KUBECONFIG,
                                        "context": context, "namespace": ns,
                                        "rollout_timeout": 180, "timeout": 30}}}}).service("web", "test")
        backend = KubernetesBackend("web", "test", svc)
        steps: list[str] = []
        state = backend.wait_for_rollout(steps.append, timeout=180)
        assert state.done, state.message
        backend.deploy(new, ticket_id="REAL-1", on_step=steps.append)
        assert backend.status().running and backend.current_version() == new, steps
        backend.rollback(old, steps.append)
        assert backend.current_version() == old
        assert [h.version for h in backend.history()][-1] == old
        backend.scale(2, steps.append)
        assert backend.status().running
    finally:
        core.delete_namespace(ns, _request_timeout=30)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                core.read_namespace(ns, _request_timeout=10)
            except client.exceptions.ApiException as exc:
                if exc.status == 404:
                    break
                raise
            time.sleep(2)
        api.close()
