"""A Docker service on two hosts: the session's engine and a second one of this session's own
(tests/integration/second_engine.py), each publishing the service's port on its own loopback
address (127.0.0.1 and 127.0.0.2), deployed host by host through bot/host_rollout.py."""

from __future__ import annotations

import os
import uuid

import docker
import httpx
import pytest

from backends.deploy import build_backend
from backends.monitoring.probe import HttpxProbe
from backends.trackers.local import LocalTracker
from bot import config as configuration
from bot.clock import SystemClock
from bot.models import DeploymentStatus, hosts_from_text
from bot.pipeline import Pipeline
from bot.store import Store
from fakes.core import RecordingReporter, ScriptedApprover
from fakes.hosts import use_host_rollout
from tests.integration.second_engine import EngineUnavailable, SecondEngine

pytestmark = [pytest.mark.integration, pytest.mark.realtime]

FIRST = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


@pytest.fixture(scope="session")
def second_engine():
    engine = SecondEngine()
    try:
        client = engine.start()
    except EngineUnavailable as exc:
        engine.stop()
        pytest.fail(f"cannot start the second Docker engine: {exc}", pytrace=False)
    yield engine, client
    engine.stop()


@pytest.fixture(scope="session")
def images(docker_client, demo_image, second_engine):
    """v1, v2, v9 healthy on the first engine; on the second, v9 is the unhealthy build of v9
    (the same tag, other bytes): v9 fails on host 2 only. (v9: v3 is an unhealthy build of other
    modules in the same session.)"""
    _, other = second_engine
    for tag, mode, version in (("v1", "healthy", "v1"), ("v2", "healthy", "v2"),
                               ("v9", "healthy", "v9"), ("v9-bad", "unhealthy", "v9")):
        demo_image(tag, mode, version)
    for tag in ("v1", "v2", "v9-bad"):
        name = f"{demo_image.repository}:{tag}"
        other.images.load(b"".join(docker_client.images.get(name).save(named=name)))
    other.images.get(f"{demo_image.repository}:v9-bad").tag(demo_image.repository, "v9")
    return demo_image.repository


class WindowHook(RecordingReporter):
    """RecordingReporter that runs `at_window()`, when set, as the watch window starts."""

    at_window = None

    def step(self, d, message: str) -> None:
        super().step(d, message)
        if message.startswith("watching for ") and self.at_window:
            self.at_window()


class TwoHosts:
    def __init__(self, tmp_path, repository: str, port: int, batch: int, second: str,
                 second_engine: str | None = None, watch: dict | None = None) -> None:
        self.name = f"dbt-hosts-{uuid.uuid4().hex[:6]}"
        self.port = port
        base = f"http://127.0.0.1:{port}"
        self.second = second
        self.config = configuration.parse({
            "tracker": {"kind": "local", "rules": {
                "cq_approval": {"pattern": r"(?im)^\s*CQ\s*approved\b", "authors": ["bob"]},
                "qa_pass": {"pattern": r"(?im)^\s*QA\s*PASS\b", "authors": ["carol"]}}},
            "environments": {"staging": {}},
            "people": {n: {"tracker": n} for n in ("alice", "bob", "carol")},
            "services": {self.name: {
                "image": repository,
                "backend": {"kind": "docker", "ports": {"8080": f"127.0.0.1:{port}"},
                            "stop_timeout": 1, "pull": "never", "restart_policy": "no",
                            "batch": batch,
                            "hosts": [{"engine": FIRST, "address": "127.0.0.1"},
                                      {"engine": second_engine or second, "address": "127.0.0.2"}]},
                "health": {"url": f"{base}/health"},
                "smoke": [{"url": f"{base}/api/ping", "contains": "pong"}],
                "verify": {"timeout": 15, "interval": 0.3},
                **({"watch": watch} if watch else {})}},
        })
        self.backend = build_backend(self.name, "staging",
                                     self.config.service(self.name, "staging"))
        self.store = Store(tmp_path / "deploybot.db")
        self.tracker = LocalTracker(self.store)
        self.reporter = WindowHook()
        self.pipeline = Pipeline(config=self.config, store=self.store, tracker=self.tracker,
                                 backend_for=lambda s, e: self.backend, reporter=self.reporter,
                                 approver=ScriptedApprover(), probe=HttpxProbe(),
                                 clock=SystemClock())
        use_host_rollout(self.pipeline, self.backend)

    def deploy(self, version: str):
        tid = self.tracker.create_ticket(f"release {version}", status="Ready for Production")
        self.tracker.add_comment(tid, "CQ approved", author="bob")
        self.tracker.add_comment(tid, "QA PASS", author="carol")
        d = self.pipeline.request_deploy(tid, requested_by="alice",
                                         target=f"{self.name}@{version}", environment="staging")
        return self.pipeline.run(d.id)

    def serves(self, address: str) -> str:
        return httpx.get(f"http://{address}:{self.port}/version", timeout=5).text.strip()

    def steps(self) -> list[str]:
        return [m for k, m in self.reporter.events if k == "step"]


@pytest.fixture
def two_hosts(tmp_path, images, second_engine, docker_client, free_port):
    engine, other = second_engine
    made: list[TwoHosts] = []

    def make(batch: int = 1, second_engine: str | None = None,
             watch: dict | None = None) -> TwoHosts:
        made.append(TwoHosts(tmp_path, images, free_port(), batch, engine.docker_host,
                             second_engine, watch))
        return made[-1]

    yield make
    for w in made:
        for client in (docker_client, other):
            for suffix in ("", "--previous"):
                try:
                    client.containers.get(f"{w.name}-staging{suffix}").remove(force=True)
                except docker.errors.NotFound:
                    pass


def test_a_deploy_reaches_both_hosts_and_the_record_lists_both(two_hosts):
    w = two_hosts()
    first = w.deploy("v1")
    assert first.status is DeploymentStatus.SUCCEEDED, first.failure
    d = w.deploy("v2")
    assert d.status is DeploymentStatus.SUCCEEDED, d.failure
    assert (w.serves("127.0.0.1"), w.serves("127.0.0.2")) == ("v2", "v2")
    assert f"- {FIRST} (checked at 127.0.0.1), before: v1: deployed and verified" in d.record
    assert (f"- {w.second} (checked at 127.0.0.2), before: v1: deployed and verified"
            in d.record)
    assert w.backend.current_version() == "v2"
    # host 1 was verified before host 2 was touched
    steps = w.steps()
    verified_first = steps.index(f"verifying {FIRST} at 127.0.0.1", steps.index("batch 1 of 2: "
                                                                                  f"{FIRST}"))
    assert verified_first < steps.index(f"batch 2 of 2: {w.second}")


def test_a_version_failing_health_on_host_two_puts_host_one_back(two_hosts):
    w = two_hosts()
    assert w.deploy("v2").status is DeploymentStatus.SUCCEEDED
    d = w.deploy("v9")
    assert d.status is DeploymentStatus.ROLLED_BACK, d.failure
    assert (w.serves("127.0.0.1"), w.serves("127.0.0.2")) == ("v2", "v2")
    outcomes = {o.host: o.outcome for o in hosts_from_text(d.hosts)}
    assert outcomes[FIRST] == "deployed and verified; rolled back to v2"
    assert outcomes[w.second].startswith("failed: health: ")
    assert outcomes[w.second].endswith("; rolled back to v2")
    assert "127.0.0.2" in d.failure and "### Hosts" in d.record
    # host 1's old version was health-checked again once it was back
    assert any(f"after rollback {FIRST} is healthy" in line for line in d.record.splitlines())


def test_with_batch_two_both_hosts_are_deployed_before_either_is_verified(two_hosts):
    w = two_hosts(batch=2)
    assert w.deploy("v1").status is DeploymentStatus.SUCCEEDED
    d = w.deploy("v2")
    assert d.status is DeploymentStatus.SUCCEEDED, d.failure
    assert (w.serves("127.0.0.1"), w.serves("127.0.0.2")) == ("v2", "v2")
    steps = w.steps()
    start = steps.index(f"batch 1 of 1: {FIRST}, {w.second}")
    started_second = next(i for i, s in enumerate(steps) if i > start
                          and s.startswith(f"{w.second}: ") and " started (" in s)
    assert started_second < steps.index(f"verifying {FIRST} at 127.0.0.1", start)


def test_host_two_failing_only_in_the_watch_window_is_named_and_both_hosts_go_back(
        two_hosts, second_engine):
    _, other = second_engine
    # no latency rule: a loaded machine's slow probe on host 1 must not be what trips
    w = two_hosts(watch={"window": 8, "interval": 0.5, "rules": {"latency_factor": None}})
    assert w.deploy("v1").status is DeploymentStatus.SUCCEEDED

    def host_two_turns_unhealthy() -> None:
        # the demo reads its mode on every request: v2 on host 2 passed its checks, and
        # from now on answers 500 on /health (the service's URLs name host 1 only)
        done = other.containers.get(f"{w.name}-staging").exec_run(
            ["sed", "-i", "s/^MODE=.*/MODE=unhealthy/", "/etc/demo.conf"])
        assert done.exit_code == 0, done.output

    w.reporter.at_window = host_two_turns_unhealthy
    d = w.deploy("v2")
    assert d.status is DeploymentStatus.ROLLED_BACK, d.failure
    assert (w.serves("127.0.0.1"), w.serves("127.0.0.2")) == ("v1", "v1")
    assert d.failure.startswith(f"verification failed (watch window on {w.second}: ")
    assert f"http://127.0.0.2:{w.port}/health answered 500" in d.failure
    outcomes = {o.host: o.outcome for o in hosts_from_text(d.hosts)}
    assert outcomes[FIRST] == "deployed and verified; rolled back to v1"
    assert outcomes[w.second].startswith("deployed and verified; failed in the watch window: "
                                         "health check failing: ")
    assert outcomes[w.second].endswith("; rolled back to v1")
    steps = w.steps()
    assert any(s.startswith(f"baseline on {FIRST}: ") for s in steps)
    assert any(s.startswith(f"baseline on {w.second}: ") for s in steps)
    assert any(s.startswith(f"watch: health check failing on {w.second}: ") for s in steps)


FAKE_SSH = """#!/bin/sh
# ssh as the Docker SDK runs it (ssh -l USER [-p PORT] -- HOST 'docker system dial-stdio'),
# reaching the second engine on this machine instead of a remote host.
printf '%s\\n' "$*" >> "$FAKE_SSH_LOG"
exec docker -H "$FAKE_SSH_ENGINE" system dial-stdio
"""


def test_an_ssh_engine_is_reached_through_the_ssh_binary(two_hosts, second_engine, tmp_path,
                                                          monkeypatch):
    engine, _ = second_engine
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    log = tmp_path / "ssh.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    monkeypatch.setenv("FAKE_SSH_ENGINE", engine.docker_host)
    w = two_hosts(second_engine="ssh://deploy@web2.test")
    assert w.deploy("v1").status is DeploymentStatus.SUCCEEDED
    d = w.deploy("v2")
    assert d.status is DeploymentStatus.SUCCEEDED, d.failure
    assert (w.serves("127.0.0.1"), w.serves("127.0.0.2")) == ("v2", "v2")
    assert "- ssh://deploy@web2.test (checked at 127.0.0.2), before: v1: deployed and " \
           "verified" in d.record
    # the SDK always names the port: 22 unless the engine says ssh://USER@HOST:PORT
    assert set(log.read_text().splitlines()) == {
        "-l deploy -p 22 -- web2.test docker system dial-stdio"}
