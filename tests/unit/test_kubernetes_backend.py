"""The Kubernetes backend against an in-memory API: settings, rollout reading, errors, undo."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from backends.deploy import build_backend
from backends.deploy import pins
from backends.deploy.kubernetes import (
    VERSION_ANNOTATION, KubernetesBackend, rollout_state, strip_template, tag_of, version_in)
from bot import config as configuration
from bot.errors import BackendError, ConfigError
from fakes.core import InstantClock

NS, NAME = "shop", "web"


def service(**backend):
    cfg = configuration.parse({
        "environments": {"staging": {}},
        "services": {"web": {"image": "demo-web",
                             "backend": {"kind": "kubernetes", "namespace": NS, **backend}}},
    })
    return cfg.service("web", "staging")


def template(version: str, hash_: str | None = None) -> dict:
    labels = {"app": "web", **({"pod-template-hash": hash_} if hash_ else {})}
    return {"metadata": {"labels": labels},
            "spec": {"containers": [{"name": "web", "image": f"demo-web:{version}"}]}}


def api_error(status: int, message: str) -> ApiException:
    return ApiException(status=status, reason="x", body=json.dumps({"message": message}))


class FakeKube:
    """A Deployment with its ReplicaSets and pods; `controller` decides how a rollout goes."""

    def __init__(self, version: str = "v1") -> None:
        self.dep = {
            "metadata": {"name": NAME, "namespace": NS, "uid": "dep-uid", "generation": 1,
                         "annotations": {"deployment.kubernetes.io/revision": "1"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": template(version), "progressDeadlineSeconds": 600},
            "status": {},
        }
        self.sets: list[dict] = []
        self.pods_: list[dict] = []
        self.patches: list[tuple] = []
        self.fail: dict[str, Exception] = {}
        self.healthy: set[str] = {"v1", "v2"}  # versions whose pods become ready
        self.image_ids: dict[str, str] = {}  # image -> the imageID its pods report
        self.settle()

    def image_id(self, image: str) -> str:
        """What the kubelet's Docker shim reports as a pod's imageID for `image`."""
        if image in self.image_ids:
            return self.image_ids[image]
        if "@" in image:
            return "docker-pullable://" + image
        if pins.is_image_id(image):
            return "docker://" + image
        return "docker://sha256:" + hashlib.sha256(image.encode()).hexdigest()

    # the controller, reduced to what the backend reads
    def settle(self) -> None:
        tmpl = self.dep["spec"]["template"]
        image = tmpl["spec"]["containers"][0]["image"]
        version = version_in(tmpl, image)
        rs = next((r for r in self.sets if strip_template(r["spec"]["template"]) == tmpl), None)
        revision = max([int(r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]) for r in self.sets] or [0]) + 1
        if rs is None:
            name = f"web-{version}" + (f"-{image[-6:]}" if pins.is_pinned(image) else "")
            labelled = copy.deepcopy(tmpl)
            labelled["metadata"]["labels"]["pod-template-hash"] = f"h{name}"
            rs = {"metadata": {"name": name, "uid": f"rs-{name}",
                               "annotations": {}, "ownerReferences": [{"uid": "dep-uid"}]},
                  "spec": {"template": labelled}, "status": {}}
            self.sets.append(rs)
        current = int(self.dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"])
        if rs["metadata"]["annotations"].get("deployment.kubernetes.io/revision") != str(current) or len(self.sets) == 1:
            rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = str(revision if len(self.sets) > 1 else 1)
        rev = rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        self.dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = rev
        cause = self.dep["metadata"]["annotations"].get("kubernetes.io/change-cause")
        if cause:
            rs["metadata"]["annotations"]["kubernetes.io/change-cause"] = cause
        ready = version in self.healthy
        want = self.dep["spec"]["replicas"]
        self.pods_ = [{"metadata": {"name": f"{rs['metadata']['name']}-{i}",
                                    "ownerReferences": [{"uid": rs["metadata"]["uid"]}],
                                    "annotations": dict(tmpl["metadata"].get("annotations") or {})},
                       "spec": {"containers": [{"name": "web", "image": image}]},
                       "status": {"phase": "Running",
                                  "conditions": [{"type": "Ready", "status": str(ready)}],
                                  "containerStatuses": [{"name": "web", "ready": ready,
                                                         "restartCount": 0,
                                                         "state": {"running": {}},
                                                         "imageID": self.image_id(image)}]}}
                      for i in range(want)]
        status = self.dep["status"]
        status["observedGeneration"] = self.dep["metadata"]["generation"]
        status["updatedReplicas"] = want
        status["replicas"] = want if ready else want + 1
        status["availableReplicas"] = want if ready else 0
        status["conditions"] = [] if ready else [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]

    def _maybe_fail(self, op: str) -> None:
        if op in self.fail:
            raise self.fail[op]

    def get_deployment(self, namespace, name):
        self._maybe_fail("get")
        return copy.deepcopy(self.dep) if name == NAME else None

    def patch_deployment(self, namespace, name, patch, content_type):
        self._maybe_fail("patch")
        self.patches.append((content_type, copy.deepcopy(patch)))
        if content_type == "application/json-patch+json":
            for op in patch:
                if op["path"] == "/spec/template":
                    self.dep["spec"]["template"] = copy.deepcopy(op["value"])
                if op["path"] == "/metadata/annotations":
                    self.dep["metadata"]["annotations"] = copy.deepcopy(op["value"])
        else:
            image = patch["spec"]["template"]["spec"]["containers"][0]["image"]
            self.dep["spec"]["template"]["spec"]["containers"][0]["image"] = image
            self.dep["metadata"]["annotations"].update(patch["metadata"]["annotations"])
            extra = (patch["spec"]["template"].get("metadata") or {}).get("annotations")
            if extra:
                meta = self.dep["spec"]["template"]["metadata"]
                meta["annotations"] = {**(meta.get("annotations") or {}), **extra}
        self.dep["metadata"]["generation"] += 1
        self.settle()
        return copy.deepcopy(self.dep)

    def apply(self, namespace, obj):
        raise AssertionError("not used")

    def delete_deployment(self, namespace, name):
        self.dep = None

    def scale_deployment(self, namespace, name, replicas):
        self._maybe_fail("scale")
        self.dep["spec"]["replicas"] = replicas
        self.dep["metadata"]["generation"] += 1
        self.settle()

    def replica_sets(self, namespace, selector):
        assert selector == "app=web"
        return copy.deepcopy(self.sets)

    def pods(self, namespace, selector):
        return copy.deepcopy(self.pods_)

    def events(self, namespace):
        return [{"type": "Warning", "reason": "Unhealthy", "count": 4,
                 "involvedObject": {"kind": "Pod", "name": p["metadata"]["name"]},
                 "message": "Readiness probe failed: HTTP probe failed with statuscode: 500"}
                for p in self.pods_ if p["status"]["conditions"][0]["status"] != "True"]

    def pod_log(self, namespace, pod, container, since_seconds, tail_lines):
        return f"log of {pod}\n"


@pytest.fixture
def kube():
    return FakeKube()


@pytest.fixture
def backend(kube):
    return KubernetesBackend("web", "staging", service(rollout_timeout=5, poll_interval=0.5),
                             api=kube, clock=InstantClock())


def steps():
    seen: list[str] = []
    return seen, seen.append


# -- settings ---------------------------------------------------------------------------------------


def test_settings_errors_name_their_path():
    with pytest.raises(ConfigError) as err:
        KubernetesBackend("web", "staging", service(deployment="Web_App", rollout_timout=3))
    text = str(err.value)
    assert "services.web.backend.deployment: not a valid Kubernetes name" in text
    assert "services.web.backend.rollout_timout: unknown setting" in text


def test_in_cluster_cannot_be_combined_with_a_kubeconfig():
    with pytest.raises(ConfigError, match="services.web.backend.in_cluster"):
        KubernetesBackend("web", "staging", service(in_cluster=True, kubeconfig="/k"))


def test_factory_builds_the_kubernetes_backend():
    b = build_backend("web", "staging", service(deployment="shop-web"))
    assert isinstance(b, KubernetesBackend)
    assert b.method == "Kubernetes" and b.name == "shop-web"


def test_a_missing_kubeconfig_is_a_backend_error_not_a_crash(tmp_path):
    b = KubernetesBackend("web", "staging", service(kubeconfig=str(tmp_path / "nope")))
    with pytest.raises(BackendError, match="cannot reach the API: no kubeconfig at .*nope"):
        b.current_version()
    # not "not running, no version": that reads as a first deployment (issue 11)
    with pytest.raises(BackendError, match="no kubeconfig at .*nope"):
        b.status()


# -- reading a rollout like kubectl -----------------------------------------------------------------


@pytest.mark.parametrize("status,generation,expected", [
    ({"observedGeneration": 1}, 2, "spec update to be observed"),
    ({"observedGeneration": 2, "updatedReplicas": 1, "replicas": 2, "availableReplicas": 1}, 2,
     "1 of 2 new replicas have been updated"),
    ({"observedGeneration": 2, "updatedReplicas": 2, "replicas": 3, "availableReplicas": 2}, 2,
     "1 old replicas are pending termination"),
    ({"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 1}, 2,
     "1 of 2 updated replicas are available"),
    ({"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 2}, 2,
     "successfully rolled out"),
])
def test_rollout_state_reads_like_kubectl_rollout_status(status, generation, expected):
    dep = {"metadata": {"name": "web", "generation": generation}, "spec": {"replicas": 2},
           "status": status}
    state = rollout_state(dep)
    assert expected in state.message
    assert state.done is (expected == "successfully rolled out")


def test_progress_deadline_exceeded_is_a_failed_rollout():
    dep = {"metadata": {"name": "web", "generation": 3},
           "spec": {"replicas": 1, "progressDeadlineSeconds": 4},
           "status": {"observedGeneration": 3, "conditions": [
               {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}}
    state = rollout_state(dep)
    assert state.failed and "exceeded its progress deadline (4 s)" in state.message


# -- deploy, status, rollback -----------------------------------------------------------------------


def test_deploy_sets_the_image_records_the_ticket_and_waits_for_the_rollout(backend, kube):
    seen, step = steps()
    assert backend.current_version() == "v1"
    backend.deploy("v2", ticket_id="LOCAL-7", on_step=step)
    content_type, patch = kube.patches[0]
    assert content_type == "application/strategic-merge-patch+json"
    assert patch["spec"]["template"]["spec"]["containers"] == [{"name": "web", "image": "demo-web:v2"}]
    assert patch["metadata"]["annotations"]["kubernetes.io/change-cause"] == "deploybot LOCAL-7: demo-web:v2"
    assert "rollout of v2 complete" in seen
    state = backend.status()
    assert state.running and state.version == "v2"
    assert "2/2 pods ready" in state.detail


def test_a_rollout_that_never_becomes_available_fails_verification_then_undo_restores(backend, kube):
    backend.deploy("v2", ticket_id="T-1", on_step=lambda s: None)
    kube.healthy = {"v1", "v2"}
    seen, step = steps()
    backend.deploy("v3", ticket_id="T-2", on_step=step)  # does not raise: verification decides
    failed = [s for s in seen if "rollout of v3 FAILED" in s]
    assert failed and "exceeded its progress deadline" in failed[0]
    assert "Readiness probe failed" in failed[0] or "not ready" in failed[0]
    state = backend.status()
    assert not state.running and state.version == "v3"

    seen, step = steps()
    backend.rollback("v2", step)
    content_type, patch = kube.patches[-1]
    assert content_type == "application/json-patch+json"
    restored = patch[0]["value"]
    assert restored["spec"]["containers"][0]["image"] == "demo-web:v2"
    assert "pod-template-hash" not in restored["metadata"]["labels"]
    assert any("--to-revision=2" in s for s in seen)
    assert backend.status().running and backend.current_version() == "v2"
    history = backend.history()
    assert [h.version for h in history] == ["v1", "v3", "v2"]  # v2 is the newest revision again
    assert history[-1].revision == 4
    assert history[-1].change_cause == "deploybot T-1: demo-web:v2"  # its own, as kubectl undo


def test_the_rollout_timeout_bounds_the_wait_even_before_the_deadline(backend, kube):
    original = kube.settle

    def stuck():
        original()
        kube.dep["status"]["availableReplicas"] = 0
        kube.dep["status"]["conditions"] = []

    kube.settle = stuck
    seen, step = steps()
    backend.deploy("v2", ticket_id="T", on_step=step)
    assert any("rollout not complete after 5 s" in s for s in seen)
    assert backend.clock.monotonic() == pytest.approx(5.0, abs=0.6)


@pytest.mark.parametrize("status,expected", [
    (403, 'forbidden \\(403\\): deployments.apps "web" is forbidden'),
    (404, "not found \\(404\\)"),
    (409, "conflict \\(409\\)"),
    (422, "rejected as invalid \\(422\\)"),
    (500, "the API server failed \\(500\\)"),
])
def test_api_errors_on_the_change_say_what_failed_and_that_v1_still_serves(backend, kube, status, expected):
    kube.fail["patch"] = api_error(status, 'deployments.apps "web" is forbidden: User "deploybot"')
    with pytest.raises(BackendError) as err:
        backend.deploy("v2", ticket_id="T", on_step=lambda s: None)
    assert err.match(expected)
    assert "nothing changed, v1 is still serving" in str(err.value)
    assert backend.current_version() == "v1"
    if status == 403:
        assert "deploy/kubernetes/rbac.yaml" in str(err.value)


def test_an_unreachable_api_server_is_a_clear_error(backend, kube):
    pool = type("Pool", (), {"host": "127.0.0.1"})()
    kube.fail["get"] = urllib3.exceptions.MaxRetryError(pool, "/apis", reason=ConnectionRefusedError())
    with pytest.raises(BackendError, match="API server 127.0.0.1 is not reachable"):
        backend.prepare("v2", lambda s: None)
    # unknown, not "not running": a missing version would read as a first deployment
    with pytest.raises(BackendError, match="not reachable"):
        backend.status()


def test_an_api_timeout_is_a_clear_error(backend, kube):
    kube.fail["patch"] = urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out")
    with pytest.raises(BackendError, match="did not answer within 30 s.*v1 is still serving"):
        backend.deploy("v2", ticket_id="T", on_step=lambda s: None)


def test_a_missing_deployment_is_named_with_what_to_do(kube):
    b = KubernetesBackend("web", "staging", service(deployment="billing"), api=kube,
                          clock=InstantClock())
    assert b.current_version() is None
    with pytest.raises(BackendError, match="Deployment shop/billing does not exist") as err:
        b.prepare("v2", lambda s: None)
    assert "backend.manifest" in str(err.value)


def test_scale_waits_for_the_replicas(backend, kube):
    seen, step = steps()
    backend.scale(3, step)
    assert kube.dep["spec"]["replicas"] == 3
    assert "3/3 pods ready" in backend.status().detail
    with pytest.raises(BackendError, match="cannot scale"):
        backend.scale(-1, step)


def test_plan_and_rollback_steps_are_kubectl_commands(backend, kube):
    backend.deploy("v2", ticket_id="T", on_step=lambda s: None)
    plan = backend.plan("v3")
    assert plan[0] == "Deployment shop/web runs v2 (revision 2)"
    assert "kubectl --namespace shop set image deployment/web web=demo-web:v3" in plan[1]
    assert backend.rollback_steps("v1") == [
        "kubectl --namespace shop rollout undo deployment/web --to-revision=1",
        "kubectl --namespace shop rollout status deployment/web --timeout=5s"]
    assert backend.rollback_steps(None) == ["kubectl --namespace shop delete deployment/web"]


def test_logs_and_events_cover_the_deployments_pods(backend, kube):
    from datetime import datetime, timezone
    text = backend.logs(datetime.now(timezone.utc))
    assert "==> pod/web-v1-0 <==\nlog of web-v1-0" in text
    kube.healthy = {"v1"}
    backend.deploy("v9", ticket_id="T", on_step=lambda s: None)
    assert any(e.startswith("Warning Unhealthy Pod/web-v9-0: Readiness probe failed") for e in backend.events())
    assert [p.ready for p in backend.pods()] == [False, False]


# -- the bytes, not the tag -------------------------------------------------------------------------

DIGEST = "demo-web@sha256:" + "d" * 64
IMAGE_ID = "sha256:" + "e" * 64


def test_running_image_reads_the_ready_pods_image_ids(backend, kube):
    kube.image_ids["demo-web:v1"] = "docker-pullable://" + DIGEST
    kube.settle()
    assert backend.running_image() == DIGEST
    kube.image_ids["demo-web:v1"] = "docker://" + IMAGE_ID
    kube.settle()
    assert backend.running_image() == IMAGE_ID
    # pods of the current ReplicaSet that disagree (the tag was pushed again meanwhile)
    kube.pods_[1]["status"]["containerStatuses"][0]["imageID"] = "docker-pullable://" + DIGEST
    with pytest.raises(BackendError, match="run different images") as err:
        backend.running_image()
    assert "web-v1-0" in str(err.value) and "web-v1-1" in str(err.value)
    assert "rollout restart deployment/web" in str(err.value.hint)
    kube.dep = None
    assert backend.running_image() is None


def test_a_pinned_deploy_runs_the_bytes_and_is_still_called_by_its_version(backend, kube):
    seen, step = steps()
    backend.deploy("v2", ticket_id="T-9", on_step=step, image=DIGEST)
    _, patch = kube.patches[-1]
    assert patch["spec"]["template"]["spec"]["containers"] == [{"name": "web", "image": DIGEST}]
    assert patch["spec"]["template"]["metadata"]["annotations"] == {VERSION_ANNOTATION: "v2"}
    assert patch["metadata"]["annotations"]["kubernetes.io/change-cause"] == \
        f"deploybot T-9: demo-web:v2 as {DIGEST}"
    assert backend.current_version() == "v2" and backend.status().version == "v2"
    assert backend.running_image() == DIGEST
    assert [h.version for h in backend.history()] == ["v1", "v2"]
    assert {p.version for p in backend.pods()} == {"v2"}


def test_a_pinned_rollback_ends_with_the_pinned_image_in_the_template(backend, kube):
    backend.deploy("v2", ticket_id="T-1", on_step=lambda s: None)
    backend.deploy("v3", ticket_id="T-2", on_step=lambda s: None)
    seen, step = steps()
    backend.rollback("v2", step, image=IMAGE_ID)
    content_type, patch = kube.patches[-1]
    assert content_type == "application/json-patch+json"
    restored = patch[0]["value"]
    # revision 2's template, with its image replaced by the bytes v2 ran as
    assert restored["spec"]["containers"][0]["image"] == IMAGE_ID
    assert restored["metadata"]["annotations"][VERSION_ANNOTATION] == "v2"
    assert any("--to-revision=2" in s and f"pinned to {IMAGE_ID}" in s for s in seen)
    assert kube.dep["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE_ID
    assert backend.current_version() == "v2" and backend.status().running
    history = backend.history()
    assert [h.version for h in history] == ["v1", "v2", "v3", "v2"]  # a new revision: the bytes
    assert history[-1].image == IMAGE_ID and history[-1].change_cause == f"deploybot T-1: demo-web:v2 as {IMAGE_ID}"

    # back on v3, then to v2 again: the pinned revision is reused as it is
    backend.deploy("v3", ticket_id="T-3", on_step=lambda s: None)
    backend.rollback("v2", step, image=IMAGE_ID)
    assert [h.version for h in backend.history()] == ["v1", "v2", "v3", "v2"]
    assert backend.history()[-1].revision == 6


def test_a_pinned_rollback_with_no_revision_left_sets_the_pinned_image(backend, kube):
    kube.healthy.add("v0")
    seen, step = steps()
    backend.rollback("v0", step, image=DIGEST)
    assert any(f"setting the image to {DIGEST}" in s for s in seen)
    assert kube.dep["spec"]["template"]["spec"]["containers"][0]["image"] == DIGEST
    assert backend.current_version() == "v0"


def test_prepare_refuses_bytes_the_registry_no_longer_has(backend, kube, monkeypatch):
    asked = []

    def registry_has(ref, timeout):
        asked.append(ref)
        return False, "registry.example answered 404 for web@sha256:… (manifest unknown)"

    monkeypatch.setattr(pins, "registry_has", registry_has)
    with pytest.raises(BackendError, match="the bytes of v1 are gone: .*manifest unknown") as err:
        backend.prepare("v1", lambda s: None, image=DIGEST)
    assert "nothing changed" in str(err.value) and asked == [DIGEST]
    assert not kube.patches
    monkeypatch.setattr(pins, "registry_has", lambda ref, timeout: (None, "401"))
    seen, step = steps()
    backend.prepare("v1", step, image=DIGEST)
    assert any("could not ask the registry (401)" in s for s in seen)


def test_prepare_of_an_image_id_says_only_the_nodes_hold_it(backend, kube):
    seen, step = steps()
    backend.prepare("v1", step, image=IMAGE_ID)
    assert any("only the nodes that ran it hold" in s for s in seen)
    kube.dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    with pytest.raises(BackendError, match="imagePullPolicy Always"):
        backend.prepare("v1", step, image=IMAGE_ID)


def test_rollback_steps_name_the_bytes_when_they_are_known(backend, kube):
    kube.image_ids["demo-web:v1"] = "docker-pullable://" + DIGEST
    kube.settle()
    assert backend.running_image() == DIGEST  # the pipeline asks before every deploy
    backend.deploy("v2", ticket_id="T", on_step=lambda s: None)
    first, status = backend.rollback_steps("v1")
    patch = {"spec": {"template": {"metadata": {"annotations": {VERSION_ANNOTATION: "v1"}},
                                   "spec": {"containers": [{"name": "web", "image": DIGEST}]}}}}
    assert first == ("kubectl --namespace shop patch deployment/web -p "
                     f"'{json.dumps(patch, separators=(',', ':'))}'")
    assert status.startswith("kubectl --namespace shop rollout status deployment/web")


def test_version_in_reads_the_annotation_only_for_pinned_images():
    pod = {"metadata": {"annotations": {VERSION_ANNOTATION: "v7"}}}
    assert version_in(pod, DIGEST) == "v7" and version_in(pod, IMAGE_ID) == "v7"
    assert version_in(pod, "demo-web:v8") == "v8"  # a tag set by hand wins over a stale note
    assert version_in({}, DIGEST) == "sha256:" + "d" * 64


def test_a_digest_of_another_repository_is_replaced_by_the_pods_own_when_it_serves_it(
        backend, kube, monkeypatch):
    elsewhere = "old-registry.example/web@sha256:" + "d" * 64
    kube.image_ids["demo-web:v1"] = "docker-pullable://" + elsewhere
    kube.settle()
    answers = {"demo-web@sha256:" + "d" * 64: (True, "served")}
    monkeypatch.setattr(pins, "registry_has",
                        lambda ref, timeout: answers.get(ref, (None, "not asked")))
    assert backend.running_image() == "demo-web@sha256:" + "d" * 64
    backend._served.clear()
    answers.clear()  # the pod's own registry cannot say: keep what the kubelet reported
    assert backend.running_image() == elsewhere
    # a pod pinned by digest is named as it asked, whichever repository the shim reports
    backend.deploy("v2", ticket_id="T", on_step=lambda s: None, image=DIGEST)
    kube.image_ids[DIGEST] = "docker-pullable://" + elsewhere
    kube.settle()
    assert backend.running_image() == DIGEST


# -- deciding a failed rollout as soon as it is certain -----------------------------------------


def waiting(kube, reason, message="back-off restarting failed container", conditions=()):
    """The controller of `kube`, with the new pods waiting for `reason` and no deadline yet."""
    original = kube.settle

    def settle():
        original()
        if kube.dep["status"]["availableReplicas"] == 0:
            kube.dep["status"]["conditions"] = list(conditions)
            for pod in kube.pods_:
                pod["status"]["containerStatuses"][0]["state"] = {
                    "waiting": {"reason": reason, "message": message}}
    kube.settle = settle


@pytest.mark.parametrize("reason", ["CrashLoopBackOff", "ImagePullBackOff", "InvalidImageName"])
def test_pods_that_cannot_start_end_the_rollout_wait_at_once(backend, kube, reason):
    waiting(kube, reason)
    seen, step = steps()
    backend.deploy("v3", ticket_id="T-3", on_step=step)
    assert backend.clock.monotonic() == 0.0  # not the 5 s rollout timeout
    failed = [s for s in seen if "rollout of v3 FAILED" in s]
    assert failed and f"web-v3-0: {reason}" in failed[0]
    state = backend.status()
    assert not state.running and not state.final and f"web-v3-0: {reason}" in state.failing


def test_a_first_image_pull_error_is_waited_on(backend, kube):
    waiting(kube, "ErrImagePull", "registry timeout")
    seen, step = steps()
    backend.deploy("v3", ticket_id="T-3", on_step=step)
    assert any("rollout not complete after 5 s" in s for s in seen)
    assert backend.status().failing == ""


def test_a_progress_deadline_is_final_for_verification(backend, kube):
    backend.deploy("v3", ticket_id="T-3", on_step=lambda s: None)
    state = backend.status()
    assert state.final and "exceeded its progress deadline" in state.failing


def test_a_healthy_rollout_is_not_failing(backend, kube):
    backend.deploy("v2", ticket_id="T-2", on_step=lambda s: None)
    state = backend.status()
    assert state.running and state.failing == "" and not state.final


def test_diagnosis_names_only_the_new_replica_sets_pods_and_their_warnings(backend, kube):
    backend.deploy("v3", ticket_id="T-3", on_step=lambda s: None)
    old_pod = {"metadata": {"name": "web-v1-0", "ownerReferences": [{"uid": "rs-web-v1"}]},
               "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
    kube.pods_.append(old_pod)
    events = kube.events

    def with_old_warnings(namespace):  # the node's warning, on old and new pods alike
        return events(namespace) + [
            {"type": "Warning", "reason": "MissingClusterDNS", "involvedObject":
             {"kind": "Pod", "name": name}, "message": "kubelet does not have ClusterDNS"}
            for name in ("web-v1-0", "web-v3-0")]
    kube.events = with_old_warnings
    why = backend.diagnose()
    assert "web-v3-0" in why and "Readiness probe failed" in why
    assert "web-v1-0" not in why and "MissingClusterDNS" not in why
