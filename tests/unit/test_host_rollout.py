"""A service on several hosts (Docker `hosts:`): configuration, URLs and ports per host, batches,
and the rollout host by host (bot/host_rollout.py) with one in-memory backend per host."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest

from backends.deploy.several_hosts import SeveralHostsBackend, published_on
from backends.trackers.local import LocalTracker
from bot import config as configuration
from bot import host_rollout
from bot.errors import BackendError, ConfigError
from bot.models import Deployment, DeploymentStatus, hosts_from_text
from bot.pipeline import Pipeline
from bot.ports import ProbeResult
from bot.store import Store
from fakes.core import FakeBackend, InstantClock, RecordingReporter, ScriptedApprover
from fakes.hosts import use_host_rollout

H1, H2, H3 = "tcp://web1:2376", "ssh://deploy@web2", "unix:///run/web3.sock"


def parse(backend: dict, **service) -> configuration.Config:
    return configuration.parse({
        "tracker": {"kind": "local", "rules": {
            "cq_approval": {"pattern": r"(?im)^\s*CQ\s*approved\b", "authors": ["bob"]},
            "qa_pass": {"pattern": r"(?im)^\s*QA\s*PASS\b", "authors": ["carol"]}}},
        "environments": {"staging": {}},
        "services": {"web": {"image": "demo-web", "backend": backend,
                             "health": {"url": "http://127.0.0.1:18080/health",
                                        "detailed_path": "detailed"},
                             "smoke": [{"url": "http://127.0.0.1:18080/api/ping",
                                        "contains": "pong"}], **service}},
        "people": {"alice": {"tracker": "alice"}, "bob": {"tracker": "bob"},
                   "carol": {"tracker": "carol"}},
    })


# -- configuration --------------------------------------------------------------------------------

def test_a_host_is_an_engine_or_an_engine_with_the_address_its_ports_are_reached_at():
    cfg = parse({"hosts": [H1, {"engine": H2}, {"engine": H3, "address": "127.0.0.3"},
                           {"engine": "unix:///run/web4.sock"}], "batch": 2})
    hosts = cfg.service("web", "staging").backend.hosts
    assert [(h.engine, h.reached_at) for h in hosts] == [
        (H1, "web1"), (H2, "web2"), (H3, "127.0.0.3"), ("unix:///run/web4.sock", None)]


@pytest.mark.parametrize("hosts, says", [
    ([H1, {"engine": H1, "address": "10.0.0.1"}], "an engine is named twice"),
    ([{"engine": H1, "address": "http://web1:80"}], "a host name or IP address"),
    ([{"engine": "http://web1"}], "an engine address unix:///path"),
    ([{"engine": H1, "port": 2}], "hosts.0.port"),
    ([], "name at least one engine"),
])
def test_wrong_hosts_are_refused_naming_the_entry(hosts, says):
    with pytest.raises(ConfigError) as caught:
        parse({"hosts": hosts})
    assert says in str(caught.value) + caught.value.hint


def test_the_proxy_is_still_refused_with_several_hosts():
    with pytest.raises(ConfigError) as caught:
        parse({"hosts": [H1, H2], "proxy": {"listen": "127.0.0.1:18080", "port": 8080}})
    assert "proxy: works with one engine" in str(caught.value) + caught.value.hint


# -- URLs and ports per host ---------------------------------------------------------------------

@pytest.mark.parametrize("url, address, expected", [
    ("http://127.0.0.1:18080/health", "127.0.0.2", "http://127.0.0.2:18080/health"),
    ("https://shop.example/api/ping?x=1", "web2", "https://web2/api/ping?x=1"),
    ("http://u@lb:81/h", "[::1]", "http://u@[::1]:81/h"),
    ("http://127.0.0.1:18080/health", None, "http://127.0.0.1:18080/health"),
])
def test_a_hosts_checks_go_to_its_address_with_the_same_port_and_path(url, address, expected):
    assert host_rollout.url_on_host(url, address) == expected


def test_the_services_health_detailed_health_and_smoke_urls_are_rewritten_per_host():
    svc = parse({"hosts": [H1]}).service("web", "staging")
    moved = host_rollout.service_on_host(svc, "127.0.0.2")
    assert str(moved.health.url) == "http://127.0.0.2:18080/health"
    assert str(moved.smoke[0].url) == "http://127.0.0.2:18080/api/ping"
    assert moved.smoke[0].contains == "pong" and moved.health.detailed_path == "detailed"
    assert str(svc.health.url) == "http://127.0.0.1:18080/health"  # the service's own: unchanged


def test_ports_published_on_loopback_move_to_a_loopback_address_and_nothing_else_moves():
    ports = {"8080": "127.0.0.1:18080", "9090/tcp": "0.0.0.0:19090", "7070": "17070"}
    assert published_on(ports, "127.0.0.2") == {
        "8080": "127.0.0.2:18080", "9090/tcp": "0.0.0.0:19090", "7070": "17070"}
    assert published_on(ports, "web2") == ports
    assert published_on(ports, "[::1]") == ports  # only 127.x moves
    assert published_on(ports, None) == ports


def test_each_engine_runs_the_service_alone_with_its_ports_moved():
    from backends.deploy.several_hosts import settings_on

    svc = parse({"ports": {"8080": "127.0.0.1:18080"},
                 "hosts": ["unix:///run/web1.sock", {"engine": H3, "address": "127.0.0.3"}]}
                ).service("web", "staging")  # (web1 could not reach its 127.0.0.1 port)
    first, third = (settings_on(svc, h).backend for h in svc.backend.hosts)
    assert (first.hosts, first.ports) == (None, {"8080": "127.0.0.1:18080"})
    assert (third.hosts, third.ports) == (None, {"8080": "127.0.0.3:18080"})
    assert svc.backend.ports == {"8080": "127.0.0.1:18080"}


def test_hosts_are_cut_into_batches_in_their_order():
    assert host_rollout.in_batches(["a", "b", "c"], 2) == [["a", "b"], ["c"]]
    assert host_rollout.in_batches(["a", "b", "c"], 1) == [["a"], ["b"], ["c"]]
    assert host_rollout.in_batches(["a", "b"], 5) == [["a", "b"]]


# -- the rollout host by host -------------------------------------------------------------------

@dataclass
class HostBackend(FakeBackend):
    """FakeBackend that writes its calls to the log every host shares: the order across hosts."""

    name: str = ""
    log: list[str] = field(default_factory=list)
    broken_rollback: bool = False

    def prepare(self, version, on_step, *, image=None):
        self.log.append(f"{self.name} prepare {version}")
        super().prepare(version, on_step, image=image)

    def deploy(self, version, *, ticket_id, on_step, image=None):
        self.log.append(f"{self.name} deploy {version}")
        super().deploy(version, ticket_id=ticket_id, on_step=on_step, image=image)

    def rollback(self, to_version, on_step, *, image=None):
        self.log.append(f"{self.name} rollback {to_version}")
        if self.broken_rollback:
            raise BackendError("the engine refused to start the container")
        super().rollback(to_version, on_step, image=image)


@dataclass
class HostProbe:
    """Answers for the host whose address the URL names; versions in `bad` answer 500."""

    hosts: dict[str, HostBackend]  # address -> backend
    log: list[str]
    bad: set[str] = field(default_factory=set)
    bad_only_at: set[str] = field(default_factory=set)  # addresses; empty: everywhere
    latency_ms: dict[str, float] = field(default_factory=dict)  # address -> ms; default 1

    def get(self, url: str, timeout: float) -> ProbeResult:
        address = urlsplit(url).hostname
        backend = self.hosts[address]
        self.log.append(f"{backend.name} probe")
        version = backend.running
        ms = self.latency_ms.get(address, 1.0)
        if version is None:
            return ProbeResult(url, None, "", ms, "connection refused")
        if version in self.bad and (not self.bad_only_at or address in self.bad_only_at):
            return ProbeResult(url, 500, "broken", ms)
        if url.endswith("/health/detailed"):
            return ProbeResult(url, 200, '{"status": "ok"}', ms)
        return ProbeResult(url, 200, f"ok {version} pong", ms)


class Killed(BaseException):
    """deploybot killed (kill -9) at this point: nothing after it runs."""


class Hosts:
    """Three hosts (loopback addresses 127.0.0.1..3) running v1, a pipeline to deploy there."""

    def __init__(self, tmp_path, batch: int = 1, running=("v1", "v1", "v1"),
                 reporter=None, **service) -> None:
        engines = [f"unix:///run/h{i}.sock" for i in (1, 2, 3)]
        self.config = parse({"hosts": [{"engine": e, "address": f"127.0.0.{i}"}
                                       for i, e in enumerate(engines, 1)], "batch": batch},
                            **service)
        self.log: list[str] = []
        self.one = {f"h{i}": HostBackend(name=f"h{i}", log=self.log, running=v)
                    for i, v in enumerate(running, 1)}
        self.backend = SeveralHostsBackend(self.config.service("web", "staging").backend.hosts,
                                           batch, dict(zip(engines, self.one.values())))
        self.probe = HostProbe({f"127.0.0.{i}": b for i, b in enumerate(self.one.values(), 1)},
                               self.log)
        self.store = Store(tmp_path / "deploybot.db")
        self.tracker = LocalTracker(self.store)
        self.reporter = reporter(self.probe) if reporter else RecordingReporter()
        self.pipeline = Pipeline(config=self.config, store=self.store, tracker=self.tracker,
                                 backend_for=lambda s, e: self.backend, reporter=self.reporter,
                                 approver=ScriptedApprover(), probe=self.probe,
                                 clock=InstantClock())
        use_host_rollout(self.pipeline, self.backend)

    def deploy(self, version="v2"):
        tid = self.tracker.create_ticket("Ship it", status="Ready for Production")
        self.tracker.add_comment(tid, "CQ approved", author="bob")
        self.tracker.add_comment(tid, "QA PASS", author="carol")
        d = self.pipeline.request_deploy(tid, requested_by="alice", target=f"web@{version}",
                                         environment="staging")
        return self.pipeline.run(d.id)

    def calls(self, *kinds: str) -> list[str]:
        return [c for c in self.log if c.split()[1] in kinds]

    def deploy_killed_after_starting(self, host: str) -> Deployment:
        """A deploy killed (kill -9) right after `host` started the new version: the stored row."""
        started = self.one[host].deploy

        def killed_after_starting(version, **kw):
            started(version, **kw)
            raise Killed()

        self.one[host].deploy = killed_after_starting
        with pytest.raises(Killed):
            self.deploy()
        [d] = self.store.deployments(limit=1)
        return d


def test_every_host_is_prepared_first_then_deployed_and_verified_one_after_the_other(tmp_path):
    w = Hosts(tmp_path)
    d = w.deploy()
    assert d.status is DeploymentStatus.SUCCEEDED, d.failure
    assert [b.running for b in w.one.values()] == ["v2", "v2", "v2"]
    assert w.calls("prepare", "deploy") == [
        "h1 prepare v2", "h2 prepare v2", "h3 prepare v2",
        "h1 deploy v2", "h2 deploy v2", "h3 deploy v2"]
    # each host's checks go to its own address, before the next host is touched
    order = w.log[w.log.index("h1 deploy v2"):]  # (the checklist probed before)
    assert order.index("h1 probe") < order.index("h2 deploy v2")
    assert order.index("h2 probe") < order.index("h3 deploy v2")
    assert all(b.calls[-1] == "finalize" for b in w.one.values())
    assert "### Hosts" in d.record
    for i in (1, 2, 3):
        assert (f"- unix:///run/h{i}.sock (checked at 127.0.0.{i}), before: v1: deployed and "
                "verified") in d.record
    assert d.previous_version == "v1" and d.method == "Direct Container on 3 hosts"


def test_a_version_failing_on_host_two_rolls_back_host_two_then_host_one(tmp_path):
    w = Hosts(tmp_path)
    w.probe.bad = {"v2"}
    w.one["h1"].running_bytes = "sha256:" + "1" * 64
    w.one["h1"].running = "v1"
    w.probe.bad_only_at = {"127.0.0.2"}
    d = w.deploy()
    assert d.status is DeploymentStatus.ROLLED_BACK
    assert w.calls("deploy", "rollback") == ["h1 deploy v2", "h2 deploy v2",
                                             "h2 rollback v1", "h1 rollback v1"]
    assert [b.running for b in w.one.values()] == ["v1", "v1", "v1"]
    assert w.one["h1"].pins[-1] == "sha256:" + "1" * 64  # the bytes h1 ran before
    outcomes = {o.host: o.outcome for o in hosts_from_text(d.hosts)}
    assert outcomes["unix:///run/h1.sock"] == "deployed and verified; rolled back to v1"
    assert outcomes["unix:///run/h2.sock"].startswith("failed: health: ")
    assert outcomes["unix:///run/h2.sock"].endswith("; rolled back to v1")
    assert outcomes["unix:///run/h3.sock"] == "not reached"
    assert "127.0.0.2:18080/health answered 500" in d.failure
    assert "- unix:///run/h3.sock (checked at 127.0.0.3), before: v1: not reached" in d.record
    assert any(k == "alert" and "on unix:///run/h2.sock, unix:///run/h1.sock" in m
               for k, m in w.reporter.events)


def test_each_host_goes_back_to_what_it_ran_itself(tmp_path):
    w = Hosts(tmp_path, running=("v1", "v0", "v1"))
    w.probe.bad, w.probe.bad_only_at = {"v2"}, {"127.0.0.2"}
    d = w.deploy()
    assert d.status is DeploymentStatus.ROLLED_BACK
    assert d.previous_version == ("mixed: unix:///run/h1.sock v1, unix:///run/h2.sock v0, "
                                  "unix:///run/h3.sock v1")
    assert w.calls("deploy", "rollback") == ["h1 deploy v2", "h2 deploy v2",
                                             "h2 rollback v0", "h1 rollback v1"]
    assert [b.running for b in w.one.values()] == ["v1", "v0", "v1"]


def test_with_batch_two_both_hosts_of_a_batch_are_deployed_before_either_is_verified(tmp_path):
    w = Hosts(tmp_path, batch=2)
    d = w.deploy()
    assert d.status is DeploymentStatus.SUCCEEDED, d.failure
    order = w.log[w.log.index("h1 deploy v2"):]
    assert order.index("h2 deploy v2") < order.index("h1 probe")
    assert order.index("h2 probe") < order.index("h3 deploy v2")


def test_a_failure_in_the_second_batch_rolls_back_it_and_the_first_batch(tmp_path):
    w = Hosts(tmp_path, batch=2)
    w.probe.bad, w.probe.bad_only_at = {"v2"}, {"127.0.0.3"}
    d = w.deploy()
    assert d.status is DeploymentStatus.ROLLED_BACK
    assert w.calls("deploy", "rollback") == [
        "h1 deploy v2", "h2 deploy v2", "h3 deploy v2",
        "h3 rollback v1", "h2 rollback v1", "h1 rollback v1"]
    assert [b.running for b in w.one.values()] == ["v1", "v1", "v1"]


def test_an_image_missing_on_one_host_changes_no_host(tmp_path):
    w = Hosts(tmp_path)
    w.one["h3"].missing = {"v2"}
    d = w.deploy()
    assert d.status is DeploymentStatus.FAILED
    assert "could not prepare v2: on unix:///run/h3.sock: image web:v2 not found" in d.failure
    assert w.calls("deploy", "rollback") == []


def test_a_host_whose_rollback_fails_is_named_and_the_others_are_still_restored(tmp_path):
    w = Hosts(tmp_path)
    w.probe.bad = {"v2"}
    w.one["h1"].broken_rollback = True
    w.one["h2"].running = "v1"
    w.probe.bad_only_at = {"127.0.0.2"}
    d = w.deploy()
    assert d.status is DeploymentStatus.ROLLBACK_FAILED
    assert "the rollback failed on unix:///run/h1.sock" in d.failure
    assert w.one["h2"].running == "v1"
    outcome = hosts_from_text(d.hosts)[0].outcome
    assert "ROLLBACK FAILED: on unix:///run/h1.sock: the engine refused" in outcome
    assert any(k == "alert" and "ROLLBACK FAILED" in m and "h1.sock" in m
               for k, m in w.reporter.events)


def test_a_deploy_failing_on_the_first_host_fails_with_nothing_else_changed(tmp_path):
    w = Hosts(tmp_path)

    def refuse(version, *, ticket_id, on_step, image=None):
        w.log.append("h1 deploy refused")
        raise BackendError("cannot start web-staging: port is already allocated; v1 restored")

    w.one["h1"].deploy = refuse
    d = w.deploy()
    assert d.status is DeploymentStatus.FAILED
    assert d.failure.startswith("deploying v2 failed on unix:///run/h1.sock: cannot start")
    assert "nothing else was changed" in d.failure
    assert w.calls("deploy", "rollback") == ["h1 deploy refused"]


# -- the service as a whole ---------------------------------------------------------------------

def test_status_and_version_are_per_host_and_mixed_when_the_hosts_disagree(tmp_path):
    w = Hosts(tmp_path, running=("v2", "v1", "v2"))
    assert w.backend.current_version() == ("mixed: unix:///run/h1.sock v2, unix:///run/h2.sock "
                                           "v1, unix:///run/h3.sock v2")
    status = w.backend.status()
    assert status.running and status.detail.startswith("unix:///run/h1.sock: running; ")
    w.one["h2"].running = "v2"
    assert w.backend.current_version() == "v2"
    w.one["h2"].running = None
    assert not w.backend.status().running


def test_a_rollback_of_the_whole_service_leaves_hosts_already_running_it(tmp_path):
    w = Hosts(tmp_path, running=("v2", "v1", "v2"))
    w.backend.rollback("v1", lambda m: None)
    assert w.calls("rollback") == ["h3 rollback v1", "h1 rollback v1"]
    with pytest.raises(BackendError, match="does not name the configured hosts"):
        w.backend.rollback("mixed: a v1, b v2", lambda m: None)


def test_versions_the_hosts_disagreed_on_are_put_back_host_by_host(tmp_path):
    w = Hosts(tmp_path, running=("v1", "v0", None))
    before = w.backend.current_version()
    assert host_rollout.per_host(before) == {"unix:///run/h1.sock": "v1",
                                             "unix:///run/h2.sock": "v0",
                                             "unix:///run/h3.sock": None}
    assert host_rollout.per_host("v1") is None
    for b in w.one.values():
        b.running = "v2"
    w.backend.rollback(before, lambda m: None, image="sha256:" + "9" * 64)
    assert [b.running for b in w.one.values()] == ["v1", "v0", None]
    assert [b.pins[-1] for b in w.one.values()] == [None, None, None]  # by tag: bytes differed


def test_the_hand_commands_name_each_hosts_engine(tmp_path):
    from backends.deploy.several_hosts import OneHost

    one = OneHost("ssh://deploy@web2", FakeBackend())
    one.backend.rollback_steps = lambda v: ["docker rm -f web", f"docker run -d demo-web:{v}"]
    assert one.rollback_steps("v1") == ["docker -H ssh://deploy@web2 rm -f web",
                                        "docker -H ssh://deploy@web2 run -d demo-web:v1"]


def test_the_recovery_puts_back_each_host_a_killed_rollout_had_changed(tmp_path):
    w = Hosts(tmp_path, running=("v1", "v0", "v1"))
    d = w.deploy_killed_after_starting("h2")
    assert [o.outcome for o in hosts_from_text(d.hosts)] == [
        "deployed and verified", "interrupted while being deployed", "not reached"]
    w.log.clear()
    said = host_rollout.recover(w.pipeline.context, d, w.backend)
    assert w.calls("rollback") == ["h2 rollback v0", "h1 rollback v1"]
    assert [b.running for b in w.one.values()] == ["v1", "v0", "v1"]
    assert [s.split(": ", 1)[0] for s in said] == [
        "unix:///run/h3.sock", "unix:///run/h2.sock", "unix:///run/h1.sock"]
    assert [o.outcome for o in hosts_from_text(w.store.deployment(d.id).hosts)] == [
        "deployed and verified; rolled back to v1 by the recovery",
        "interrupted while being deployed; rolled back to v0 by the recovery", "not reached"]


def test_the_recovery_names_the_hosts_it_could_not_restore_and_restores_the_others(tmp_path):
    w = Hosts(tmp_path)
    d = w.deploy()
    w.one["h1"].broken_rollback = True
    with pytest.raises(BackendError) as caught:
        host_rollout.recover(w.pipeline.context, d, w.backend)
    assert str(caught.value).startswith("on unix:///run/h1.sock: the engine refused")
    assert [b.running for b in w.one.values()] == ["v2", "v1", "v1"]


def test_an_engine_that_does_not_answer_is_named_in_the_error(tmp_path):
    from backends.deploy import build_backend

    missing = tmp_path / "no-engine.sock"
    cfg = parse({"hosts": [f"unix://{missing}"], "timeout": 5})
    backend = build_backend("web", "staging", cfg.service("web", "staging"))
    with pytest.raises(BackendError) as caught:
        backend.current_version()
    assert str(caught.value).startswith(
        f"on unix://{missing}: Docker: the Docker engine is not reachable at unix://{missing}")


def test_the_whole_service_deploy_puts_back_the_hosts_done_when_one_fails(tmp_path):
    w = Hosts(tmp_path)
    w.one["h3"].missing = {"v2"}

    def refuse(version, *, ticket_id, on_step, image=None):
        w.log.append("h3 deploy refused")
        raise BackendError("cannot start web-staging; v1 restored")

    w.one["h3"].deploy = refuse
    with pytest.raises(BackendError) as caught:
        w.backend.deploy("v2", ticket_id="T-1", on_step=lambda m: None)
    assert "unix:///run/h1.sock, unix:///run/h2.sock put back" in str(caught.value)
    assert w.calls("deploy", "rollback") == ["h1 deploy v2", "h2 deploy v2", "h3 deploy refused",
                                             "h2 rollback v1", "h1 rollback v1"]


class FlippingReporter(RecordingReporter):
    """Makes `version` answer 500 everywhere once the watch window starts."""

    def __init__(self, probe: HostProbe, version: str) -> None:
        super().__init__()
        self.probe, self.version = probe, version

    def step(self, d, message: str) -> None:
        super().step(d, message)
        if message.startswith("watching for "):
            self.probe.bad.add(self.version)


def test_a_rule_tripped_in_the_watch_window_after_every_host_rolls_every_host_back(tmp_path):
    w = Hosts(tmp_path, reporter=lambda probe: FlippingReporter(probe, "v2"),
              watch={"window": 5.0, "interval": 1.0})
    d = w.deploy()
    assert d.status is DeploymentStatus.ROLLED_BACK, d.failure
    assert ("watch window on unix:///run/h1.sock, unix:///run/h2.sock, unix:///run/h3.sock: "
            in d.failure)
    assert w.calls("rollback") == ["h3 rollback v1", "h2 rollback v1", "h1 rollback v1"]
    assert all(o.outcome.startswith("deployed and verified; failed in the watch window: ")
               and o.outcome.endswith("; rolled back to v1") for o in hosts_from_text(d.hosts))


def test_the_record_says_each_host_goes_back_to_its_own_version(tmp_path):
    w = Hosts(tmp_path, running=("v1", "v0", "v1"))
    w.probe.bad = {"v2"}
    d = w.deploy()
    assert d.status is DeploymentStatus.ROLLED_BACK
    assert ("the hosts ran different versions before (unix:///run/h1.sock v1, "
            "unix:///run/h2.sock v0, unix:///run/h3.sock v1): put each back to its own (the "
            "Hosts section); by hand: `run v1`; `run v0`; `run v1`") in d.record


def test_resource_usage_is_the_busiest_hosts(tmp_path):
    from bot.ports import Usage

    w = Hosts(tmp_path)
    for b, (cpu, mem) in zip(w.one.values(), ((10.0, 300.0), (80.0, 100.0), (5.0, 200.0))):
        b.usage = lambda cpu=cpu, mem=mem: Usage(cpu_percent=cpu, memory_bytes=mem)
    assert w.backend.usage() == Usage(cpu_percent=80.0, memory_bytes=300.0)
    del w.one["h2"].usage
    with pytest.raises(BackendError, match="on unix:///run/h2.sock: no resource usage"):
        w.backend.usage()


def test_an_ssh_engine_without_paramiko_says_which_extra_to_install():
    import docker.errors

    from backends.deploy.docker import explain

    said = explain(docker.errors.DockerException("Install paramiko package to enable ssh:// "
                                                 "support"))
    assert said == ("an ssh:// engine needs the ssh extra: pip install 'deploybot[ssh]' "
                    "(and an ssh client on PATH)")


# -- the watch window host by host ----------------------------------------------------------------

class WindowOpens(RecordingReporter):
    """Runs `then(probe)` when the watch window starts (after every host was verified)."""

    def __init__(self, probe: HostProbe, then) -> None:
        super().__init__()
        self.probe, self.then = probe, then

    def step(self, d, message: str) -> None:
        super().step(d, message)
        if message.startswith("watching for "):
            self.probe.log.append("-- window")
            self.then(self.probe)


def bad_at_h2_from_now(probe: HostProbe) -> None:
    probe.bad, probe.bad_only_at = {"v2"}, {"127.0.0.2"}


def test_one_host_going_bad_only_in_the_watch_window_is_caught_named_and_all_rolled_back(
        tmp_path):
    w = Hosts(tmp_path, reporter=lambda probe: WindowOpens(probe, bad_at_h2_from_now),
              watch={"window": 5.0, "interval": 1.0})
    d = w.deploy()
    assert d.status is DeploymentStatus.ROLLED_BACK, d.failure
    # (the service's URLs as written name 127.0.0.1, host 1: sampling them would see nothing)
    assert "watch window on unix:///run/h2.sock: " in d.failure
    assert "127.0.0.2:18080/api/ping answered 500" in d.failure
    assert "h1.sock:" not in d.failure.split("; rolled back on")[0]
    assert w.calls("rollback") == ["h3 rollback v1", "h2 rollback v1", "h1 rollback v1"]
    assert [b.running for b in w.one.values()] == ["v1", "v1", "v1"]
    outcomes = {o.host: o.outcome for o in hosts_from_text(d.hosts)}
    assert outcomes["unix:///run/h1.sock"] == "deployed and verified; rolled back to v1"
    assert outcomes["unix:///run/h3.sock"] == "deployed and verified; rolled back to v1"
    assert outcomes["unix:///run/h2.sock"].startswith(
        "deployed and verified; failed in the watch window: smoke test broken: "
        "http://127.0.0.2:18080/api/ping answered 500")
    assert outcomes["unix:///run/h2.sock"].endswith("; rolled back to v1")
    assert "- unix:///run/h2.sock (checked at 127.0.0.2), before: v1: deployed and verified; " \
           "failed in the watch window: " in d.record
    steps = [m for k, m in w.reporter.events if k == "step"]
    assert any(m.startswith("watch: smoke test broken on unix:///run/h2.sock: ") for m in steps)
    assert any(k == "alert" and "watch window on unix:///run/h2.sock" in m
               for k, m in w.reporter.events)


def test_a_healthy_watch_window_samples_every_host_at_its_address(tmp_path):
    w = Hosts(tmp_path, reporter=lambda probe: WindowOpens(probe, lambda p: None),
              watch={"window": 5.0, "interval": 1.0})
    d = w.deploy()
    assert d.status is DeploymentStatus.SUCCEEDED, d.failure
    window = w.log[w.log.index("-- window"):]
    # 6 rounds (0..5 s every second), health and smoke on each host each round
    assert [window.count(f"h{i} probe") for i in (1, 2, 3)] == [12, 12, 12]
    for i in (1, 2, 3):
        assert f"rror rate on unix:///run/h{i}.sock 0.0% → 0.0%" in d.record
        assert f"95 on unix:///run/h{i}.sock 1 ms → 1 ms, p50 1 ms → 1 ms" in d.record
    assert all(o.outcome == "deployed and verified" for o in hosts_from_text(d.hosts))


def test_the_baseline_is_taken_on_each_host_before_the_first_batch_and_judges_that_host(
        tmp_path):
    def h1_slows_down(probe: HostProbe) -> None:
        probe.latency_ms["127.0.0.1"] = 300.0

    w = Hosts(tmp_path, reporter=lambda probe: WindowOpens(probe, h1_slows_down),
              watch={"window": 5.0, "interval": 1.0})
    w.probe.latency_ms["127.0.0.2"] = 400.0  # h2 was always slow: its own normal
    d = w.deploy()
    before_deploy = w.log[:w.log.index("h1 deploy v2")]
    assert {"h1 probe", "h2 probe", "h3 probe"} <= set(before_deploy)
    steps = [m for k, m in w.reporter.events if k == "step"]
    said = [m for m in steps if m.startswith("baseline on ")]
    assert said == ["baseline on unix:///run/h1.sock: error rate 0.0%, p50 1 ms, p95 1 ms",
                    "baseline on unix:///run/h2.sock: error rate 0.0%, p50 400 ms, p95 400 ms",
                    "baseline on unix:///run/h3.sock: error rate 0.0%, p50 1 ms, p95 1 ms"]
    assert steps.index(said[-1]) < steps.index("batch 1 of 3: unix:///run/h1.sock")
    # 300 ms is within 3× the hosts' p95 taken together (400 ms), not within h1's own (1 ms)
    assert d.status is DeploymentStatus.ROLLED_BACK, d.failure
    assert "watch window on unix:///run/h1.sock: " in d.failure
    assert "rule 'p95 latency' tripped on unix:///run/h1.sock: p95 1 ms → 300 ms" in d.failure
    assert "h2.sock" not in d.failure.split("; rolled back on")[0]


def test_a_host_that_answered_nothing_before_is_watched_without_a_baseline_and_named(tmp_path):
    from bot.models import VerificationResult
    from bot.watch import Watcher, apply

    w = Hosts(tmp_path, watch={"window": 2.0, "interval": 1.0})
    w.one["h3"].running = None  # the service is new on host 3
    svc = w.config.service("web", "staging")
    hosts = {f"h{i}": host_rollout.service_on_host(svc, f"127.0.0.{i}") for i in (1, 2, 3)}
    watcher = Watcher(svc, w.backend, w.probe, InstantClock(), hosts=hosts)
    steps: list[str] = []
    baseline = watcher.baseline(steps.append)
    assert baseline.notes == ["baseline: nothing answered on h3 (first deployment there?); its "
                              "error rate and latency are judged without a baseline"]
    assert [baseline.by_host[h].probes for h in ("h1", "h2", "h3")] == [2, 2, 0]
    assert baseline.measures.probes == 4
    w.one["h3"].running = "v2"
    report = watcher.watch(baseline, steps.append)
    assert not report.trips and report.by_host["h3"].probes == 6  # 3 rounds, health + smoke
    result = VerificationResult()
    apply(result, baseline, report, svc)
    assert not result.failed
    assert "error rate on h3 0.0% → 0.0%" in result.error_rate_reason
    assert "p95 on h3 n/a → 1 ms" in result.latency_reason
