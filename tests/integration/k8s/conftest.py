"""A real Kubernetes cluster on loopback for the Kubernetes backend's tests.

`k8s_cluster` (session) starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
a kubelet running pods on the Docker engine at DOCKER_HOST (scripts/k8s-cluster.py; binaries
from scripts/k8s-build.sh, cached in /var/cache/deploybot so only the first run builds them),
and stops them by PID at the end. When it cannot start, the tests fail with the reason; they do
not skip.

`k8s_namespace` gives each test its own namespace in which the user `deploybot` (the bot's
kubeconfig) has exactly the Role of deploy/kubernetes/rbac.yaml -- the tests prove that Role is
enough. Pods run the demo image (examples/demo) from the same engine (imagePullPolicy: Never).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.integration.k8s.k8s_objects import demo_deployment, demo_service, grant_bot_role, wait_for_rollout

REPO = Path(__file__).resolve().parents[3]


BUILD_TIMEOUT = 3600  # the first, uncached build of the binaries: ~5 min alone, more under load


def pytest_collection_modifyitems(config, items):
    """Only while the binaries are not cached yet: give the first k8s test time to build them.

    CI should run scripts/k8s-build.sh as a step of its own before pytest; then this never applies.
    """
    here = Path(__file__).resolve().parent
    mine = [i for i in items if here in i.path.resolve().parents]
    if not mine:
        return
    check = subprocess.run([str(REPO / "scripts" / "k8s-build.sh"), "--check"],
                           capture_output=True, text=True, timeout=30, check=False)
    if check.returncode != 0:
        for item in mine:
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT))


def _cluster_module():
    spec = importlib.util.spec_from_file_location("k8s_cluster", REPO / "scripts" / "k8s-cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@dataclass
class Cluster:
    state: object
    admin: object  # kubernetes.client.ApiClient with system:masters
    server: str
    ca: str
    bot_kubeconfig: str
    bot_token: str

    def apps(self):
        from kubernetes import client
        return client.AppsV1Api(self.admin)

    def core(self):
        from kubernetes import client
        return client.CoreV1Api(self.admin)

    def rbac(self):
        from kubernetes import client
        return client.RbacAuthorizationV1Api(self.admin)


@pytest.fixture(scope="session")
def k8s_cluster(docker_client):
    from kubernetes import config as kube_config

    module = _cluster_module()
    folder = tempfile.mkdtemp(prefix="dbk8s-", dir="/tmp")
    docker_host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    problem = None
    try:
        state = module.start(folder, node=True, docker_host=docker_host)
    except Exception as exc:
        problem = exc
    if problem is not None:
        leftovers = module.stop(folder)
        pytest.fail(f"the local Kubernetes cluster did not start: {problem}\n"
                    f"(logs in {folder}/logs; stop: {leftovers or 'clean'})", pytrace=False)
    print(f"\nk8s cluster up: {state.timings}")
    token = yaml.safe_load(Path(state.bot_kubeconfig).read_text())["users"][0]["user"]["token"]
    admin = kube_config.new_client_from_config(config_file=state.admin_kubeconfig)
    cluster = Cluster(state=state, admin=admin, server=state.server, ca=state.ca,
                      bot_kubeconfig=state.bot_kubeconfig, bot_token=token)
    yield cluster
    admin.close()
    problems = module.stop(folder)
    assert not problems, f"stopping the cluster: {problems}"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def k8s_namespace(k8s_cluster):
    """A fresh namespace where the bot has exactly the Role of deploy/kubernetes/rbac.yaml."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    k8s_cluster.core().create_namespace({"metadata": {"name": name}})
    grant_bot_role(k8s_cluster, name)
    yield name
    k8s_cluster.core().delete_namespace(name)


@pytest.fixture
def make_demo(k8s_cluster, k8s_namespace):
    """`make_demo(name, image, version, replicas=2)`: Deployment + Service, rolled out (as admin)."""

    def make(name: str, image: str, version: str, replicas: int = 2) -> None:
        k8s_cluster.apps().create_namespaced_deployment(
            k8s_namespace, demo_deployment(name, image, version, replicas=replicas))
        k8s_cluster.core().create_namespaced_service(k8s_namespace, demo_service(name))
        wait_for_rollout(k8s_cluster, k8s_namespace, name)

    return make
