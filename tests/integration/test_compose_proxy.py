"""Compose behind the proxy against the real engine, the real compose binary and a real HAProxy
(run: container: deploybot starts it, image deploybot/haproxy:2.6 of scripts/build-proxy-image.sh):
the backend driven the
way the core's staged rollout drives it (prepare, stage, direct check, switch, finalize or
rollback), with a client loop through the proxy counting failed requests."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import docker.errors
import httpx
import pytest
import yaml

from backends.deploy.compose import ComposeBackend, find_compose, run_streaming
from bot import config as config_mod
from bot.errors import BackendError
from fakes.waiting import wait_until

pytestmark = pytest.mark.integration

PROXY_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-proxy-image.sh"


@pytest.fixture(scope="module")
def haproxy_image(docker_client) -> str:
    """The proxy container's image; the script does nothing when it is up to date."""
    import subprocess

    built = subprocess.run([str(PROXY_SCRIPT)], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
    if built.returncode != 0:
        pytest.fail(f"{PROXY_SCRIPT}: exit {built.returncode}\n{built.stderr}", pytrace=False)
    return "deploybot/haproxy:2.6"



class VersionLoop:
    """GET /version through the proxy, one connection per request, until stopped; any exception
    or non-200 answer is a failure."""

    def __init__(self, listen: str) -> None:
        self.url = f"http://{listen}/version"
        self.seen: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                answer = httpx.get(self.url, timeout=5, headers={"Connection": "close"})
                if answer.status_code == 200:
                    self.seen.append(answer.text.strip())
                else:
                    self.failures.append(f"{answer.status_code} {answer.text[:80]}")
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
            time.sleep(0.005)

    def __enter__(self) -> "VersionLoop":
        self._thread.start()
        wait_until(lambda: self.seen or self.failures, 15, "the first answer through the proxy")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def more(self, n: int = 20) -> None:
        goal = len(self.seen) + len(self.failures) + n
        wait_until(lambda: len(self.seen) + len(self.failures) >= goal, 20,
                   f"{n} more requests through the proxy", every=0.01)


class Project:
    """A compose project `web` behind its own HAProxy container; all removed at the end."""

    def __init__(self, docker_client, repository: str, free_port, haproxy_image: str) -> None:
        self.client = docker_client
        self.folder = Path(tempfile.mkdtemp(prefix="czp-"))  # short: socket paths
        self.name = f"dbt-czp-{uuid.uuid4().hex[:8]}"
        self.listen = f"127.0.0.1:{free_port()}"
        self.file = self.folder / "compose.yml"
        self.direct = f"127.0.0.1:{free_port()}"
        self.file.write_text(yaml.safe_dump({"services": {"web": {
            "image": f"{repository}:latest",
            "ports": [f"{self.direct}:8080"],  # what a user had before proxy: (overridden)
            "stop_grace_period": "1s"}}}))
        from fakes.people import PEOPLE

        self.raw = {
            "tracker": {"kind": "local"}, "people": PEOPLE,
            "environments": {"staging": {}}, "services": {"web": {
            "image": repository,
            "backend": {"kind": "compose", "file": str(self.file), "project": self.name,
                        "pull": "never", "timeout": 60, "stop_timeout": 1,
                        "proxy": {"listen": self.listen, "port": 8080, "drain": 2,
                                  "run": "container", "image": haproxy_image,
                                  "container_name": f"{self.name}-proxy",
                                  "dir": str(self.folder / "proxy")}},
            "health": {"url": f"http://{self.listen}/health"},
            "verify": {"timeout": 15, "interval": 0.5}}}}
        self.config = config_mod.parse(self.raw, "test-config")
        self.cfg = self.config.service("web", "staging")
        self.steps: list[str] = []

    def backend(self) -> ComposeBackend:
        """A fresh backend, as a new deploybot process (after a kill -9) would build it."""
        return ComposeBackend("web", "staging", self.cfg)

    def backend_without_proxy(self) -> ComposeBackend:
        """The same service as before `proxy:` was added (published ports)."""
        without = config_mod.parse({**self.raw, "services": {"web": {
            **self.raw["services"]["web"],
            "backend": {k: v for k, v in self.raw["services"]["web"]["backend"].items()
                        if k != "proxy"}}}}, "test-config").service("web", "staging")
        return ComposeBackend("web", "staging", without)

    def step(self, message: str) -> None:
        self.steps.append(message)

    def deploy(self, backend: ComposeBackend, version: str, *, finalize: bool = True) -> str:
        """What the core's staged rollout does; returns the staged container's address."""
        backend.prepare(version, self.step)
        address = backend.stage(version, ticket_id=f"T-{version}", on_step=self.step)
        backend._staged._check_directly(backend._staged._find_candidate(backend._staged.view()),
                                        self.step)
        backend.switch(self.step)
        if finalize:
            backend.finalize(self.step)
        return address

    def containers(self) -> list:
        return self.client.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.name}"]})

    def serving_id(self, backend: ComposeBackend) -> str:
        current = backend._staged.view().current
        assert current is not None
        return current.id

    def close(self) -> None:
        run_streaming([*find_compose().argv, "-p", self.name, "-f", str(self.file), "down",
                       "--remove-orphans", "--timeout", "1"], timeout=60)
        try:
            self.client.containers.get(f"{self.name}-proxy").remove(force=True)
        except docker.errors.NotFound:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def project(docker_client, demo_image, free_port, haproxy_image):
    for tag, mode in (("v1", "healthy"), ("v2", "healthy"), ("v3", "unhealthy")):
        demo_image(tag, mode)
    p = Project(docker_client, demo_image.repository, free_port, haproxy_image)
    yield p
    p.close()


def test_deploys_and_rollbacks_through_the_proxy_fail_no_request(project):
    backend = project.backend()
    project.deploy(backend, "v1")
    v1_id = project.serving_id(backend)
    assert backend.current_version() == "v1"
    with VersionLoop(project.listen) as loop:
        # v2, then a rollback within the window (old one warm): a switch to the same container
        project.deploy(backend, "v2", finalize=False)
        loop.more()
        assert backend.current_version() == "v2" and loop.seen[-1] == "v2"
        backend.rollback("v1", project.step)
        assert project.serving_id(backend) == v1_id
        assert backend.current_version() == "v1"
        loop.more()
        assert loop.seen[-1] == "v1"
        # v2 again, finalized: v1 drains and is kept stopped; a rollback starts it and switches
        project.deploy(backend, "v2")
        kept = [c for c in project.containers() if c.id == v1_id]
        assert kept and kept[0].status == "exited"
        loop.more()
        backend.rollback("v1", project.step)
        assert project.serving_id(backend) == v1_id
        loop.more()
        assert loop.seen[-1] == "v1"
    assert loop.failures == [], loop.failures[:5]
    switches = [s for s in project.steps if "sends web-staging to v1" in s]
    print(f"\n{len(loop.seen)} requests through the proxy, 0 failed; rollbacks: {switches}")
    assert len(loop.seen) > 100 and {"v1", "v2"} <= set(loop.seen)
    assert any("in 0.0" in s and "sends web-staging to v1" in s for s in project.steps)
    # only v1 is left; the file compose would use again names it, not v2
    assert [c.id for c in project.containers()] == [v1_id]
    serving = yaml.safe_load((project.folder / ".deploybot" / f"{project.name}@serving.yml")
                             .read_text().replace("!override", ""))
    assert serving["services"]["web"]["labels"]["io.deploybot.version"] == "v1"
    # each run wrote it after its own switch: no later run found it stale
    assert not [s for s in project.steps if "rewritten to match" in s]


def test_a_candidate_failing_health_is_discarded_and_the_old_one_keeps_serving(project):
    backend = project.backend()
    project.deploy(backend, "v1")
    v1_id = project.serving_id(backend)
    with VersionLoop(project.listen) as loop:
        backend.prepare("v3", project.step)
        address = backend.stage("v3", ticket_id="T-v3", on_step=project.step)
        assert httpx.get(f"http://{address}/health", timeout=5).status_code >= 500
        assert not backend.candidate_status().running or \
            backend.candidate_status().version == "v3"
        backend.discard(project.step)
        loop.more()
    assert loop.failures == [] and set(loop.seen) == {"v1"}
    assert [c.id for c in project.containers()] == [v1_id]
    # the whole deploy() (a core that does not stage) says why and changes nothing
    with pytest.raises(BackendError, match="v3 failed its checks beside what serves"):
        backend.deploy("v3", ticket_id="T-v3b", on_step=project.step)
    assert [c.id for c in project.containers()] == [v1_id]
    assert backend.status().running and backend.status().version == "v1"


def test_half_states_left_by_a_killed_run_are_repaired(project):
    first = project.backend()
    project.deploy(first, "v1")
    v1_id = project.serving_id(first)
    # killed after stage: the next run's stage removes the leftover candidate
    first.prepare("v2", project.step)
    first.stage("v2", ticket_id="T-v2", on_step=project.step)
    assert len(project.containers()) == 2
    second = project.backend()
    assert second.current_version() == "v1"  # the proxy's serving address is the truth
    second.prepare("v2", project.step)
    second.stage("v2", ticket_id="T-v2", on_step=project.step)
    assert len(project.containers()) == 2
    assert any("left from an earlier deploy" in s for s in project.steps)
    # killed after the switch, before finalize: the recovery's rollback is a switch back
    second.switch(project.step)
    third = project.backend()
    assert third.current_version() == "v2"
    with VersionLoop(project.listen) as loop:
        third.rollback("v1", project.step)
        loop.more()
    assert loop.failures == [] and loop.seen[-1] == "v1"
    assert [c.id for c in project.containers()] == [v1_id]
    # killed after stage, and the recovery rolls back to what serves: the staged one goes
    third.prepare("v2", project.step)
    third.stage("v2", ticket_id="T-v2", on_step=project.step)
    project.backend().rollback("v1", project.step)
    assert [c.id for c in project.containers()] == [v1_id]
    # a manual rollback after finalize stages the kept container itself (started, not created)
    backend = project.backend()
    project.deploy(backend, "v2")
    assert backend.stage("v1", ticket_id="T-back", on_step=project.step)
    backend.switch(project.step)
    backend.finalize(project.step)
    assert project.serving_id(backend) == v1_id
    assert any("starting the kept" in s and "instead of creating it" in s for s in project.steps)


def test_through_the_pipeline_deploys_are_switched_and_a_bad_version_never_serves(
        project, compose_env):
    bot = compose_env.bot(project.config)  # the real Pipeline, store and tracker in a tmp dir
    d1 = bot.deploy("v1")
    assert d1.status.value == "succeeded", d1.failure
    backend = bot.pipeline.backend_for("web", "staging")
    v1_id = project.serving_id(backend)
    with VersionLoop(project.listen) as loop:
        d2 = bot.deploy("v2")
        assert d2.status.value == "succeeded", d2.failure
        loop.more()
        # a manual rollback to v1 starts the kept v1 container itself, checked before the switch
        back = bot.pipeline.run(bot.pipeline.request_rollback(
            requested_by="alice", service="web", environment="staging", to_version="v1").id)
        loop.more()
        assert back.status.value == "succeeded", back.failure
        assert project.serving_id(backend) == v1_id
        d3 = bot.deploy("v3", "v3 with the new cache")
        loop.more()
    assert d2.previous_version == "v1" and d2.method == "Docker Compose (blue/green behind HAProxy)"
    # checked on its own address, discarded before the switch
    assert d3.status.value == "failed", d3.failure
    assert "before the switch" in d3.failure and "no request reached v3" in d3.failure
    assert loop.failures == [], loop.failures[:5]
    assert set(loop.seen) == {"v1", "v2"} and loop.seen[-1] == "v1"
    assert backend.current_version() == "v1" and backend.status().running
    assert project.serving_id(backend) == v1_id
    # the record names the commands of a rollback by hand: the proxy's switch
    assert "admin.sock" in d2.record and "docker start " in d2.record


def test_through_the_pipeline_a_version_failing_the_watch_window_is_switched_back(
        project, compose_env, demo_image):
    # passes its checks, writes an error line per request (a tag no other module builds)
    demo_image("v4-logs", "log-errors")
    web = {**project.raw["services"]["web"],
           "watch": {"window": 4, "interval": 0.5,
                     "rules": {"new_log_errors": 0, "latency_factor": None,
                               "error_rate_points": None}}}
    bot = compose_env.bot(config_mod.parse({**project.raw, "services": {"web": web}},
                                           "test-config"))
    assert bot.deploy("v2").status.value == "succeeded"
    backend = bot.pipeline.backend_for("web", "staging")
    v2_id = project.serving_id(backend)
    with VersionLoop(project.listen) as loop:
        d4 = bot.deploy("v4-logs")
        loop.more()
    assert d4.status.value == "rolled_back", d4.failure
    assert "log" in d4.failure.lower()
    assert project.serving_id(backend) == v2_id  # the warm v2: a switch back, not a start
    assert loop.failures == [], loop.failures[:5]
    assert "v4-logs" in loop.seen and loop.seen[-1] == "v2"
    assert [c.id for c in project.containers()] == [v2_id]

def test_moving_from_published_ports_to_the_proxy_keeps_the_old_version_for_a_rollback(project):
    plain = project.backend_without_proxy()
    plain.prepare("v1", project.step)
    plain.deploy("v1", ticket_id="T-v1", on_step=project.step)
    assert httpx.get(f"http://{project.direct}/version", timeout=5).text.strip() == "v1"
    before = [c.id for c in project.containers()]
    backend = project.backend()
    assert backend.current_version() == "v1"  # runs, though the proxy routes nothing yet
    assert "not routed by the proxy yet" in backend.status().detail
    project.deploy(backend, "v2")
    assert httpx.get(f"http://{project.listen}/version", timeout=5).text.strip() == "v2"
    kept = [c for c in project.containers() if c.id in before]
    assert len(kept) == 1 and kept[0].status == "exited"
    with VersionLoop(project.listen) as loop:
        backend.rollback("v1", project.step)
        loop.more()
    assert loop.failures == [] and loop.seen[-1] == "v1"
    assert [c.id for c in project.containers()] == before


def test_a_fixed_container_name_is_refused_before_anything_changes(project):
    data = yaml.safe_load(project.file.read_text())
    data["services"]["web"]["container_name"] = f"{project.name}-web"
    project.file.write_text(yaml.safe_dump(data))
    plain = project.backend_without_proxy()  # fine without the proxy: one container
    plain.prepare("v1", project.step)
    plain.deploy("v1", ticket_id="T-v1", on_step=project.step)
    before = [(c.id, c.name, c.status) for c in project.containers()]
    assert before == [(before[0][0], f"{project.name}-web", "running")]
    backend = project.backend()
    with pytest.raises(BackendError, match=f"compose service web in {project.file} sets "
                                           f"container_name: {project.name}-web") as err:
        backend.prepare("v2", project.step)
    assert "remove container_name from web" in err.value.hint
    with pytest.raises(BackendError, match="container_name"):
        backend.stage("v2", ticket_id="T-v2", on_step=project.step)
    assert [(c.id, c.name, c.status) for c in project.containers()] == before
    with pytest.raises(docker.errors.NotFound):  # the proxy was not even started
        project.client.containers.get(f"{project.name}-proxy")
    assert not (project.folder / ".deploybot" / f"{project.name}.v2.yml").exists()
    assert httpx.get(f"http://{project.direct}/version", timeout=5).text.strip() == "v1"
