"""Kubernetes backend: the bytes pods run are recorded from their status (imageID) and rollbacks
put `image@digest` (or the image id) into the pod template, whatever the tag names by then.

Real control plane and kubelet (dockershim) on the test engine, the session's registry on
127.0.0.1 (the kubelet pulls through the same engine), the real Pipeline, health through the API
server's service proxy. The Deployments here use imagePullPolicy IfNotPresent, as clusters
pulling from a registry do: a node that holds a tag uses it as it is, which is exactly why a
rollback to a tag could run bytes that never ran before.
"""

from __future__ import annotations

import os
import uuid

import pytest

from backends.monitoring.probe import HttpxProbe
from bot.models import DeploymentStatus
from tests.integration.k8s.k8s_objects import demo_deployment, demo_service, wait_for_rollout
from tests.integration.pins_harness import PinBot, build, build_and_push, delete_from_registry

DEADLINE = 6


@pytest.fixture
def k8s_pins(k8s_cluster, k8s_namespace, tmp_path):
    """make(repository, first_version) -> a PinBot for Deployment `web` (created by an admin
    running `repository:first_version`, pull policy IfNotPresent) and the probe of its proxy."""
    proxy = f"{k8s_cluster.server}/api/v1/namespaces/{k8s_namespace}/services/web:8080/proxy"
    environ = {**os.environ, "DEPLOYBOT_TEST_KUBE_TOKEN": k8s_cluster.bot_token}

    def make(repository: str, first: str) -> PinBot:
        dep = demo_deployment("web", repository, first)
        dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
        k8s_cluster.apps().create_namespaced_deployment(k8s_namespace, dep)
        k8s_cluster.core().create_namespaced_service(k8s_namespace, demo_service("web"))
        wait_for_rollout(k8s_cluster, k8s_namespace, "web")
        bot = PinBot({"web": {
            "image": repository,
            "backend": {"kind": "kubernetes", "kubeconfig": k8s_cluster.bot_kubeconfig,
                        "namespace": k8s_namespace, "progress_deadline": DEADLINE,
                        "rollout_timeout": 60, "poll_interval": 0.5, "timeout": 10},
            "health": {"url": f"{proxy}/health", "timeout": 5, "detailed_path": "detailed"},
            "http_auth": {"bearer_token_env": "DEPLOYBOT_TEST_KUBE_TOKEN",
                          "ca_file": k8s_cluster.ca},
            "smoke": [{"url": f"{proxy}/api/ping", "contains": "pong"}],
            "verify": {"timeout": 8, "interval": 0.5}}}, tmp_path, environ=environ)
        bot.probe = HttpxProbe.for_config(bot.config, environ)
        bot.version = lambda: bot.probe.get(f"{proxy}/version", 5).body.strip()
        return bot

    return make


def template_image(k8s_cluster, namespace: str) -> str:
    dep = k8s_cluster.apps().read_namespaced_deployment("web", namespace)
    return dep.spec.template.spec.containers[0].image


def pod_image_ids(backend) -> set[str]:
    dep = backend._deployment()
    new = backend._new_replica_set(dep, backend._replica_sets(dep))
    return {cs["imageID"] for p in backend._pods(dep)
            if new and any(r.get("uid") == new["metadata"]["uid"]
                           for r in p["metadata"].get("ownerReferences") or [])
            and not p["metadata"].get("deletionTimestamp")
            for cs in p["status"].get("containerStatuses") or []}


def test_k8s_records_pod_digests_and_the_automatic_rollback_pins_the_old_bytes(
        k8s_cluster, k8s_namespace, k8s_pins, docker_client, registry):
    repo = f"{registry}/kpins-{uuid.uuid4().hex[:8]}"
    v1 = build_and_push(docker_client, f"{repo}:v1", "v1-first")
    v2 = build_and_push(docker_client, f"{repo}:v2", "v2-first")
    build(docker_client, f"{repo}:v3", "v3", mode="unhealthy")
    bot = k8s_pins(repo, "v1")
    backend = bot.backend()
    assert backend.running_image() == v1.digest_ref  # docker-pullable://… of the ready pods

    d2 = bot.deploy("v2")
    assert d2.status is DeploymentStatus.SUCCEEDED, d2.failure
    assert (d2.previous_image_ref, d2.image_ref) == (v1.digest_ref, v2.digest_ref)
    assert f"Bytes deployed: {repo}:v2 = {v2.digest_ref} (before: {v1.digest_ref})" in d2.record
    assert f'"image":"{v1.digest_ref}"' in d2.record  # the by-hand rollback pins v1's bytes

    # v2 is pushed again; the node's tag v2 now names the new bytes
    v2b = build_and_push(docker_client, f"{repo}:v2", "v2-repushed")
    assert docker_client.images.get(f"{repo}:v2").id == v2b.id
    d3 = bot.deploy("v3")
    assert d3.status is DeploymentStatus.ROLLED_BACK, d3.failure
    assert d3.previous_image_ref == v2.digest_ref
    assert template_image(k8s_cluster, k8s_namespace) == v2.digest_ref
    assert backend.current_version() == "v2" and backend.status().running
    # the new pods run v2's first bytes (the shim names the image's first repository digest,
    # which can be another repository the same bytes were pushed to)
    assert {i.rpartition("@")[2] for i in pod_image_ids(backend)} == {v2.digest}
    assert backend.running_image() == v2.digest_ref
    assert bot.version() == "v2-first"
    history = backend.history()
    assert [h.version for h in history] == ["v1", "v2", "v3", "v2"]
    assert history[-1].image == v2.digest_ref


def test_k8s_manual_rollback_after_the_tag_was_pushed_again_runs_the_old_bytes(
        k8s_cluster, k8s_namespace, k8s_pins, docker_client, registry):
    repo = f"{registry}/kpins-{uuid.uuid4().hex[:8]}"
    v1 = build_and_push(docker_client, f"{repo}:v1", "v1-first")
    build_and_push(docker_client, f"{repo}:v2", "v2-first")
    bot = k8s_pins(repo, "v1")
    assert bot.deploy("v2").status is DeploymentStatus.SUCCEEDED
    build_and_push(docker_client, f"{repo}:v1", "v1-repushed")  # the node's v1 moves too

    back = bot.rollback("v1")
    assert back.status is DeploymentStatus.SUCCEEDED, back.failure
    assert template_image(k8s_cluster, k8s_namespace) == v1.digest_ref
    assert bot.version() == "v1-first"  # the tag would give v1-repushed on this node
    assert back.image_ref == v1.digest_ref
    assert bot.backend().current_version() == "v1"
    assert any(v1.digest_ref in s and "the nodes pull it by digest" in s for s in bot.steps())


def test_k8s_rollback_to_bytes_the_registry_lost_fails_at_prepare_and_changes_nothing(
        k8s_cluster, k8s_namespace, k8s_pins, docker_client, registry):
    repo = f"{registry}/kpins-{uuid.uuid4().hex[:8]}"
    v1 = build_and_push(docker_client, f"{repo}:v1", "v1-first")
    build_and_push(docker_client, f"{repo}:v2", "v2-first")
    bot = k8s_pins(repo, "v1")
    assert bot.deploy("v2").status is DeploymentStatus.SUCCEEDED
    build_and_push(docker_client, f"{repo}:v1", "v1-repushed")
    delete_from_registry(registry, v1)
    before = k8s_cluster.apps().read_namespaced_deployment("web", k8s_namespace)

    back = bot.rollback("v1")
    assert back.status is DeploymentStatus.FAILED
    assert "could not prepare v1: Kubernetes: the bytes of v1 are gone" in back.failure
    assert "404" in back.failure and "v2 is still running, nothing changed" in back.failure
    after = k8s_cluster.apps().read_namespaced_deployment("web", k8s_namespace)
    assert after.metadata.generation == before.metadata.generation
    assert after.spec.template.spec.containers[0].image == f"{repo}:v2"
    assert bot.version() == "v2-first"
