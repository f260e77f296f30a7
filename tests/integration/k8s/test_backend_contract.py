"""The DeployBackend contract (bot/ports.py), the same behaviours for Docker, Compose and
Kubernetes, through the backends' public methods only, against real engines.

- prepare never touches what runs (whether or not it can tell a version is missing);
- a version that cannot run is never reported running, and the previous one runs afterwards;
- rollback restores the previous version and the very bytes it ran as;
- after an interrupted deployment (switched, never finalized; the process gone) a fresh
  backend restores the previous version, and the next deployment goes through;
- a first deployment rolled back leaves nothing running.

It lives beside the Kubernetes tests for their cluster fixtures (tests/integration/k8s/
conftest.py); the Docker and Compose cases start no cluster.
"""

from __future__ import annotations

import uuid

import pytest
import yaml

from backends.deploy.compose import ComposeBackend
from backends.deploy.docker import DockerBackend
from backends.deploy.kubernetes import KubernetesBackend
from bot import config as configuration
from bot.errors import BackendError
from tests.integration.k8s.k8s_objects import demo_deployment, demo_service

pytestmark = pytest.mark.integration

KINDS = ["docker", "compose", "kubernetes"]
MISSING = "v-never-built"


class Steps(list):
    def __call__(self, message: str) -> None:
        self.append(message)


def _docker(request, image: str):
    free_port, cleanup = request.getfixturevalue("free_port"), request.getfixturevalue("container_cleanup")
    name = f"dbt-contract-{uuid.uuid4().hex[:6]}"
    cleanup(f"{name}-staging")
    cleanup(f"{name}-staging--previous")
    cfg = configuration.parse({"environments": {"staging": {}}, "services": {name: {
        "image": image,
        "backend": {"kind": "docker", "ports": {"8080": f"127.0.0.1:{free_port()}"},
                    "stop_timeout": 1, "pull": "never", "restart_policy": "no"}}}})
    return lambda: DockerBackend(name, "staging", cfg.service(name, "staging"))


def _compose(request, image: str):
    env = request.getfixturevalue("compose_env")
    cfg = env.config(image)
    return lambda: ComposeBackend("web", "staging", cfg.service("web", "staging"))


def _kubernetes(request, image: str):
    cluster = request.getfixturevalue("k8s_cluster")
    namespace = request.getfixturevalue("k8s_namespace")
    tmp_path = request.getfixturevalue("tmp_path")
    manifest = tmp_path / "web.yaml"  # the backend creates the Deployment: it starts from nothing
    manifest.write_text(yaml.safe_dump_all([
        demo_service("web"), demo_deployment("web", image, "placeholder", replicas=1)]))
    cfg = configuration.parse({"environments": {"staging": {}}, "services": {"web": {
        "image": image,
        "backend": {"kind": "kubernetes", "kubeconfig": cluster.bot_kubeconfig,
                    "namespace": namespace, "deployment": "web", "manifest": str(manifest),
                    "progress_deadline": 6, "rollout_timeout": 60, "poll_interval": 0.5,
                    "timeout": 10}}}})
    return lambda: KubernetesBackend("web", "staging", cfg.service("web", "staging"))


@pytest.fixture(params=KINDS)
def make_backend(request, demo_image):
    """`make_backend()` -> a new backend object for one service in `staging` (as a new process
    would build it), with v1 and v2 of the demo image present and nothing running yet."""
    image = demo_image("v1").rsplit(":", 1)[0]
    demo_image("v2")
    return {"docker": _docker, "compose": _compose, "kubernetes": _kubernetes}[request.param](
        request, image)


def _ship(backend, version: str, steps: Steps, *, finalize: bool = True) -> None:
    backend.prepare(version, steps)
    backend.deploy(version, ticket_id=f"T-{version}", on_step=steps)
    if finalize:
        backend.finalize(steps)


def _what_runs(backend) -> tuple[str | None, str | None]:
    return backend.current_version(), backend.running_image()


def test_prepare_never_touches_what_runs(make_backend):
    backend, steps = make_backend(), Steps()
    _ship(backend, "v1", steps)
    before = _what_runs(backend)
    assert before[0] == "v1" and before[1]
    backend.prepare("v2", steps)
    assert _what_runs(backend) == before
    try:
        backend.prepare(MISSING, steps)  # may or may not be able to tell: either way
    except BackendError:
        pass
    assert _what_runs(backend) == before and backend.status().running


def test_a_version_that_cannot_run_is_never_taken_for_running(make_backend):
    """Docker and Compose refuse it before the switch; Kubernetes rolls out, says the rollout
    failed and leaves the undo to the pipeline's verification and rollback: either way the
    previous version is what runs once the backend is done with it."""
    backend, steps = make_backend(), Steps()
    _ship(backend, "v1", steps)
    before = _what_runs(backend)
    try:
        _ship(backend, MISSING, steps, finalize=False)
    except BackendError:
        assert _what_runs(backend) == before  # refused before anything was switched
    else:
        assert not backend.status().running, backend.status().detail  # verification sees it
        backend.rollback("v1", steps, image=before[1])
    assert _what_runs(backend) == before and backend.status().running


def test_rollback_restores_the_previous_version_and_its_bytes(make_backend):
    backend, steps = make_backend(), Steps()
    _ship(backend, "v1", steps)
    v1_bytes = backend.running_image()
    _ship(backend, "v2", steps, finalize=False)
    assert backend.current_version() == "v2" and backend.running_image() != v1_bytes
    backend.rollback("v1", steps, image=v1_bytes)
    assert _what_runs(backend) == ("v1", v1_bytes) and backend.status().running


def test_after_an_interrupted_deployment_a_fresh_backend_restores_the_previous_version(
        make_backend):
    first, steps = make_backend(), Steps()
    _ship(first, "v1", steps)
    v1_bytes = first.running_image()
    _ship(first, "v2", steps, finalize=False)  # the process dies here: never verified
    recovering = make_backend()  # another process, knowing only the store's record
    assert recovering.current_version() == "v2"
    recovering.rollback("v1", steps, image=v1_bytes)
    assert _what_runs(recovering) == ("v1", v1_bytes) and recovering.status().running
    _ship(recovering, "v2", steps)  # nothing left over stands in the next deployment's way
    assert recovering.current_version() == "v2" and recovering.status().running


def test_a_first_deployment_rolled_back_leaves_nothing_running(make_backend):
    backend, steps = make_backend(), Steps()
    assert backend.current_version() is None
    _ship(backend, "v1", steps, finalize=False)
    assert backend.current_version() == "v1"
    backend.rollback(None, steps)
    assert backend.current_version() is None and backend.running_image() is None
