"""DockerBackend behind a real HAProxy (run: container, the image of scripts/build-proxy-image.sh)
on the real engine: stage, switch, finalize and rollback of the demo image, with a client loop
through the proxy counting failed requests; half states left by a kill -9; the move from ports:."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import docker.errors
import httpx
import pytest

from backends.deploy.docker import DockerBackend
from bot.config import Service
from bot.errors import BackendError
from docker_gate import DockerGate
from fakes.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.realtime]

ROOT = Path(__file__).resolve().parents[2]
PROXY_IMAGE = os.environ.get("DEPLOYBOT_PROXY_IMAGE", "deploybot/haproxy:2.6")  # as the script


@pytest.fixture(scope="session")
def proxy_image(docker_client) -> str:
    """The HAProxy image (the host's Debian haproxy); the script does nothing when it is there."""
    done = subprocess.run([str(ROOT / "scripts" / "build-proxy-image.sh")], capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        pytest.fail(f"scripts/build-proxy-image.sh failed (exit {done.returncode}):\n"
                    f"{done.stdout}{done.stderr}", pytrace=False)
    return PROXY_IMAGE


class Loop:
    """GET /version through the proxy, one connection per request, until stopped; anything but
    a 200 is a failure."""

    def __init__(self, base: str) -> None:
        self.url = f"{base}/version"
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5.0, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while not self._stop.is_set():
                try:
                    r = c.get(self.url)
                    (self.answers if r.status_code == 200 else self.failures).append(
                        r.text.strip() if r.status_code == 200 else f"{r.status_code} {r.text[:60]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))

    def __enter__(self) -> "Loop":
        self._thread.start()
        wait_until(lambda: self.answers or self.failures, 15, "a first answer through the proxy")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def sees(self, version: str, n: int = 3) -> None:
        """Wait until the last `n` answers are all `version`."""
        wait_until(lambda: self.answers[-n:] == [version] * n, 20,
                   f"{version} answering through the proxy (last: {self.answers[-3:]})",
                   every=0.05)


class Proxied:
    """One demo service `web` behind its own HAProxy container, on a free 127.0.0.1 port."""

    def __init__(self, client, demo_image, listen_port: int, run: str, proxy_image: str) -> None:
        self.client = client
        self.repo = demo_image.repository
        self.token = uuid.uuid4().hex[:6]
        self.service = f"dbt-px-{self.token}"
        self.name = f"{self.service}-staging"
        # short: HAProxy's sockets live there (108 bytes of sun_path)
        self.dir = Path(tempfile.mkdtemp(prefix="dz-", dir="/tmp"))
        self.listen_port = listen_port
        self.base = f"http://127.0.0.1:{listen_port}"
        self.proxy = {"listen": f"127.0.0.1:{listen_port}", "port": 8080, "drain": 2,
                      "run": run, "image": proxy_image,
                      "container_name": f"dbt-proxy-{self.token}", "dir": str(self.dir)}
        self.steps: list[str] = []
        self.host_haproxy = None
        if run == "host":  # started as the systemd unit would, once ensure() wrote its files
            from haproxy_harness import HostHaproxy

            with pytest.raises(BackendError, match="the proxy is not running"):
                self.backend().proxy.ensure(self.step)
            self.host_haproxy = HostHaproxy(self.dir)
            self.host_haproxy.start()

    def settings(self, **backend) -> Service:
        return Service.model_validate({
            "image": self.repo,
            "backend": {"kind": "docker", "container_name": self.name, "pull": "never",
                        "stop_timeout": 1, "timeout": 30, **backend},
            "health": {"url": f"{self.base}/health"},
            "verify": {"timeout": 15, "interval": 0.5}})

    def backend(self) -> DockerBackend:
        """A new backend each time: the next deploybot process, knowing nothing of the last."""
        return DockerBackend(self.service, "staging", self.settings(proxy=self.proxy))

    def step(self, message: str) -> None:
        self.steps.append(message)

    def container(self, name: str):
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    def names(self) -> dict[str, tuple[str, str]]:
        """NAME, NAME--next, NAME--previous that exist -> (version label, status)."""
        out = {}
        for suffix in ("", "--next", "--previous"):
            c = self.container(self.name + suffix)
            if c is not None:
                out[suffix or "NAME"] = (c.labels.get("io.deploybot.version"), c.status)
        return out

    def deploy(self, version: str, backend: DockerBackend | None = None) -> str:
        b = backend or self.backend()
        address = b.stage(version, ticket_id="T-1", on_step=self.step)
        assert httpx.get(f"http://{address}/version", timeout=5).text.strip() == version
        b.switch(self.step)
        return address

    def version(self) -> str:
        return httpx.get(f"{self.base}/version", timeout=5).text.strip()

    def cleanup(self) -> None:
        for suffix in ("", "--next", "--previous"):
            c = self.container(self.name + suffix)
            if c is not None:
                c.remove(force=True)
        c = self.container(self.proxy["container_name"])
        if c is not None:
            c.remove(force=True)
        if self.host_haproxy is not None:
            self.host_haproxy.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(params=["container"])
def web(request, docker_client, demo_image, free_port):
    """run: container by default; a test parametrized with "host" gets a host HAProxy."""
    for tag, mode in (("v1", "healthy"), ("v2", "healthy"), ("v3", "unhealthy")):
        demo_image(tag, mode)
    run = request.param
    image = request.getfixturevalue("proxy_image") if run == "container" else PROXY_IMAGE
    env = Proxied(docker_client, demo_image, free_port(), run, image)
    try:
        yield env
    finally:
        env.cleanup()


def started_at(c) -> str:
    c.reload()
    return c.attrs["State"]["StartedAt"]


@pytest.mark.parametrize("web", ["container", "host"], indirect=True)
def test_deploy_and_rollback_in_the_window_lose_no_request_and_restart_nothing(web):
    web.deploy("v1")
    web.backend().finalize(web.step)
    with Loop(web.base) as loop:
        web.deploy("v2")
        loop.sees("v2")
        warm = web.container(f"{web.name}--previous")
        assert warm.status == "running" and warm.labels["io.deploybot.version"] == "v1"
        warm_id, warm_start = warm.id, started_at(warm)
        web.backend().rollback("v1", web.step)
        loop.sees("v1")
    assert loop.failures == [], loop.failures[:5]
    assert {"v1", "v2"} <= set(loop.answers)
    served = web.container(web.name)
    assert served.id == warm_id and started_at(served) == warm_start  # a switch, not a start
    assert web.names() == {"NAME": ("v1", "running")}


def test_finalize_stops_the_old_one_and_a_later_rollback_checks_it_before_the_switch(web):
    web.deploy("v1")
    with Loop(web.base) as loop:
        web.deploy("v2")
        loop.sees("v2")
        web.backend().finalize(web.step)
        assert web.names() == {"NAME": ("v2", "running"), "--previous": ("v1", "exited")}
        web.backend().rollback("v1", web.step)
        loop.sees("v1")
    assert loop.failures == [], loop.failures[:5]
    assert any("--previous (v1) is healthy on 127.0.0.1:" in s for s in web.steps)
    assert web.names() == {"NAME": ("v1", "running")}


def test_a_kept_version_failing_its_health_is_not_switched_to(web):
    web.deploy("v3")  # unhealthy: the core's checks would have refused it; here it served
    web.deploy("v2")
    web.backend().finalize(web.step)
    with pytest.raises(BackendError, match=r"v3 cannot serve again: .*/health answered 500"):
        web.backend().rollback("v3", web.step)
    assert web.version() == "v2"
    assert web.names() == {"NAME": ("v2", "running"), "--previous": ("v3", "exited")}


def test_a_kept_version_is_checked_with_the_services_http_auth_token(web):
    from bot.config import HttpAuth

    web.deploy("v1")
    web.deploy("v2")
    web.backend().finalize(web.step)
    settings = web.settings(proxy=web.proxy).model_copy(
        update={"http_auth": HttpAuth(bearer_token_env="DBT_WEB_TOKEN")})
    unset = DockerBackend(web.service, "staging", settings, environ={})
    with pytest.raises(BackendError, match=r"v1 cannot serve again: .*environment variable "
                                           r"DBT_WEB_TOKEN is not set"):
        unset.rollback("v1", web.step)
    assert web.version() == "v2"
    assert web.names() == {"NAME": ("v2", "running"), "--previous": ("v1", "exited")}
    # the demo checks no token: with one, the kept v1 passes and is switched to
    DockerBackend(web.service, "staging", settings,
                  environ={"DBT_WEB_TOKEN": "t0ken"}).rollback("v1", web.step)
    assert web.version() == "v1" and web.names() == {"NAME": ("v1", "running")}


def test_discarded_candidate_and_failed_stage_leave_what_serves(web):
    web.deploy("v1")
    b = web.backend()
    b.stage("v2", ticket_id="T-2", on_step=web.step)
    assert b.candidate_status().version == "v2" and web.version() == "v1"
    b.discard(web.step)
    assert web.names() == {"NAME": ("v1", "running")} and web.version() == "v1"
    with pytest.raises(BackendError, match="cannot create"):
        b.stage("v9-missing", ticket_id="T-3", on_step=web.step)
    assert web.names() == {"NAME": ("v1", "running")} and web.version() == "v1"


def test_half_states_of_a_killed_run_are_repaired_by_the_next_one(web):
    web.deploy("v1")
    # killed right after the proxy's switch, before any rename
    candidate = web.backend().stage("v2", ticket_id="T-2", on_step=web.step)
    web.backend().proxy.route(candidate, web.step)
    assert web.backend().current_version() == "v2"  # read from the proxy's serving address
    web.backend().finalize(web.step)
    assert web.names() == {"NAME": ("v2", "running"), "--previous": ("v1", "exited")}
    # killed between the two renames: NAME is missing, the warm v2 half moved
    third = web.backend().stage("v3", ticket_id="T-3", on_step=web.step)
    web.backend().proxy.route(third, web.step)
    web.container(f"{web.name}--previous").remove(force=True)
    warm = web.container(web.name)
    warm.rename(f"{web.name}--previous")
    warm_start = started_at(warm)
    with Loop(web.base) as loop:
        web.backend().rollback("v2", web.step)
        loop.sees("v2")
    assert loop.failures == [], loop.failures[:5]
    assert web.names() == {"NAME": ("v2", "running")}
    assert started_at(web.container(web.name)) == warm_start


def test_a_candidate_left_by_a_killed_run_is_replaced(web):
    web.deploy("v1")
    web.backend().stage("v3", ticket_id="T-2", on_step=web.step)
    left = web.container(f"{web.name}--next").id
    web.deploy("v2")
    assert web.version() == "v2"
    assert web.container(f"{web.name}--previous").labels["io.deploybot.version"] == "v1"
    assert all(c.id != left for c in web.client.containers.list(all=True))


def test_first_deploy_after_ports_moves_the_port_to_the_proxy(web):
    # run: container: deploybot starts the proxy once the old container gave the port up
    # (with run: host the person starts HAProxy, after stopping the old container themselves)
    plain = DockerBackend(web.service, "staging",
                          web.settings(ports={"8080": f"127.0.0.1:{web.listen_port}"}))
    plain.deploy("v1", ticket_id="T-1", on_step=web.step)
    wait_until(lambda: _answers(web.base), 15, "v1 on its published port")
    b = web.backend()
    assert b.current_version() == "v1"
    assert any("first switch to the proxy" in s for s in b.plan("v2"))
    web.deploy("v2", b)
    assert f"first switch to the proxy: {web.name} gives up {web.listen_port}" in web.steps
    assert web.version() == "v2"
    assert web.names() == {"NAME": ("v2", "running"), "--previous": ("v1", "exited")}
    with Loop(web.base) as loop:
        web.backend().rollback("v1", web.step)  # the ports: container cannot run beside it
        loop.sees("v1")
    assert loop.failures == [], loop.failures[:5]
    served = web.container(web.name)
    assert served.attrs["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostPort"] in ("", "0")


# A deploybot process: stage VERSION and switch, with the service's settings as JSON.
SWITCH_SCRIPT = """
import json, sys
from backends.deploy.docker import DockerBackend
from bot.config import Service
service, settings, version = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
b = DockerBackend(service, "staging", Service.model_validate(settings))
b.stage(version, ticket_id="T-9", on_step=print)
b.switch(print)
"""


def test_a_switch_killed_9_between_its_renames_is_repaired_and_rolled_back_warm(web, tmp_path):
    web.deploy("v1")
    engine = os.environ.get("DOCKER_HOST", "")
    assert engine.startswith("unix://"), "needs DOCKER_HOST=unix://… (scripts/dockerd.sh start)"
    settings = web.settings(proxy=web.proxy).model_dump(mode="json")
    # held: v2 becoming NAME, after the proxy's switch and v1's move to NAME--previous
    second_rename = rf"^POST \S*/containers/\S+/rename\?name={re.escape(web.name)} "
    with DockerGate(engine[len("unix://"):], tmp_path, second_rename) as gate:
        proc = subprocess.Popen(
            [sys.executable, "-c", SWITCH_SCRIPT, web.service, json.dumps(settings), "v2"],
            env={**os.environ, "DOCKER_HOST": gate.docker_host, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: gate.held.is_set() or proc.poll() is not None, 90,
                       "the held rename")
            assert gate.held.is_set(), f"ended before the rename: {proc.communicate()}"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
    assert web.names() == {"--next": ("v2", "running"), "--previous": ("v1", "running")}
    assert web.version() == "v2"  # the proxy's switch had happened: v2 serves
    warm = web.container(f"{web.name}--previous")
    warm_start = started_at(warm)
    assert web.backend().current_version() == "v2"
    with Loop(web.base) as loop:
        web.backend().rollback("v1", web.step)
        loop.sees("v1")
    assert loop.failures == [], loop.failures[:5]
    assert web.names() == {"NAME": ("v1", "running")}
    assert web.container(web.name).id == warm.id and started_at(warm) == warm_start


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/version", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# -- the whole rollout (bot/rollout.py) through a real Pipeline -------------------------------------


class Steps:
    """A Reporter that keeps the steps and alerts people would have seen."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.alerts: list[str] = []

    def step(self, d, message): self.steps.append(message)
    def alert(self, d, message): self.alerts.append(message)
    def deployment_started(self, d): ...
    def checklist_updated(self, d, checks): ...
    def gate_requested(self, d, gate): ...
    def gate_decided(self, d, gate): ...
    def blocked(self, d, blockers): self.alerts.append("blocked")
    def finished(self, d, record): ...


class NoApprover:
    def request(self, deployment, gate):
        return None


def pipeline_for(web: Proxied, folder: Path, watch: dict | None = None):
    """(pipeline, tracker, reporter): deploybot with a local tracker, `web` behind its proxy."""
    from backends.trackers.local import LocalTracker
    from bot import config as config_mod
    from bot.store import Store
    from fakes.people import PEOPLE
    from handlers.wiring import build_pipeline

    service = web.settings(proxy=web.proxy).model_dump(mode="json", exclude_unset=True)
    service["smoke"] = [{"url": f"{web.base}/api/ping", "contains": "pong"}]
    if watch:
        service["watch"] = watch
    cfg = config_mod.parse({"tracker": {"kind": "local"}, "environments": {"staging": {}},
                            "services": {web.service: service}, "people": PEOPLE}, "test-config")
    store = Store(folder / "deploybot.db")
    tracker = LocalTracker(store)
    reporter = Steps()
    return (build_pipeline(cfg, store, reporter=reporter, approver=NoApprover(), tracker=tracker),
            tracker, reporter)


def deploy_through(pipeline, tracker, service: str, version: str):
    tid = tracker.create_ticket(f"release {version}", status="Ready for Production")
    tracker.add_comment(tid, "CQ approved", author="bob")
    tracker.add_comment(tid, "QA PASS", author="carol")
    d = pipeline.request_deploy(tid, requested_by="alice", target=f"{service}@{version}")
    return pipeline.run(d.id)


def test_the_rollout_checks_the_new_version_directly_and_no_request_fails(web, tmp_path):
    from bot.models import DeploymentStatus

    pipeline, tracker, reporter = pipeline_for(web, tmp_path)
    assert deploy_through(pipeline, tracker, web.service, "v1").status is DeploymentStatus.SUCCEEDED
    with Loop(web.base) as loop:
        d = deploy_through(pipeline, tracker, web.service, "v2")
        assert d.status is DeploymentStatus.SUCCEEDED, d.failure
        loop.sees("v2")
        bad = deploy_through(pipeline, tracker, web.service, "v3")  # /health answers 500
    assert bad.status is DeploymentStatus.FAILED and "before the switch" in bad.failure
    assert loop.failures == [], loop.failures[:5]
    assert "v3" not in loop.answers  # checked on its own address: no request reached it
    assert web.version() == "v2"
    assert web.names() == {"NAME": ("v2", "running"), "--previous": ("v1", "exited")}


def test_a_rollback_in_the_watch_window_switches_back_to_the_warm_version(web, tmp_path,
                                                                          demo_image):
    from bot.models import DeploymentStatus

    # healthy, but writes errors the watch rolls back on (v4 is a healthy build of other
    # modules in the same session; v4-logs is test_compose_proxy's build of the same)
    demo_image("v4-logs", "log-errors")
    # latency off: on a busy test machine a p95 of a few ms triples by itself
    watch = {"window": 3, "interval": 0.5,
             "rules": {"latency_factor": None, "error_rate_points": None}}
    pipeline, tracker, reporter = pipeline_for(web, tmp_path, watch=watch)
    deploy_through(pipeline, tracker, web.service, "v1")
    second = deploy_through(pipeline, tracker, web.service, "v2")
    assert second.status is DeploymentStatus.SUCCEEDED, (second.failure, reporter.steps)
    with Loop(web.base) as loop:
        warm_before = {}

        def remember(message: str) -> None:  # the warm v2 as the switch left it
            if not warm_before and "v2 is " in message and "--previous" in message:
                c = web.container(f"{web.name}--previous")
                warm_before.update(id=c.id, started=started_at(c))

        reporter_step = reporter.step
        reporter.step = lambda d, m: (remember(m), reporter_step(d, m))
        d = deploy_through(pipeline, tracker, web.service, "v4-logs")
        loop.sees("v2")
    assert d.status is DeploymentStatus.ROLLED_BACK, (d.status, d.failure)
    assert loop.failures == [], loop.failures[:5]
    assert "v4-logs" in loop.answers  # it served, then the switch back
    served = web.container(web.name)
    assert served.labels["io.deploybot.version"] == "v2"
    assert warm_before and served.id == warm_before["id"]
    assert started_at(served) == warm_before["started"]  # a switch, not a start
    assert web.names() == {"NAME": ("v2", "running")}
