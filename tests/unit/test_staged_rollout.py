"""The rollout behind a proxy (bot/ports.StagedDeploy): checks on the staged version's own address
before the switch, a rollback within the window is a switch back, nothing serving changes when
the staged version fails."""

from __future__ import annotations

import pytest

from bot.models import DeploymentStatus
from bot.ports import ProbeResult
from bot.staged import at_address, direct_service
from bot import config as configuration
from fakes.core import FakeStagedBackend, StagedProbe
from test_pipeline import CONFIG, World


@pytest.fixture
def world(tmp_path):
    backend = FakeStagedBackend(running="v1")
    w = World(tmp_path, backend=backend, probe=StagedProbe(backend))
    return w



def test_staged_deploy_checks_the_new_version_on_its_own_address_then_switches(world):
    asked = []
    real_get = world.probe.get
    world.probe.get = lambda url, timeout: (asked.append((url, world.backend.running)),
                                            real_get(url, timeout))[1]
    d = world.deploy(world.ticket())
    assert d.status is DeploymentStatus.SUCCEEDED
    assert world.backend.calls == ["prepare v2", "stage v2", "switch v2", "finalize"]
    direct = [u for u, serving in asked if "127.0.0.1:40001" in u]
    # health, detailed health and the smoke test, all before the switch (v1 still served)
    assert direct == ["http://127.0.0.1:40001/health", "http://127.0.0.1:40001/health/detailed",
                      "http://127.0.0.1:40001/api/ping"]
    assert all(serving == "v1" for u, serving in asked if "127.0.0.1:40001" in u)
    # then once more through the proxy, with v2 serving
    assert ("http://127.0.0.1:9/health", "v2") in asked
    assert "checked at 127.0.0.1:40001 before the switch" in d.record


def test_a_staged_version_failing_its_checks_never_gets_traffic(world):
    world.probe.bad.add("v2")
    d = world.deploy(world.ticket())
    assert d.status is DeploymentStatus.FAILED
    assert world.backend.calls[-2:] == ["stage v2", "discard v2"]
    assert "switch v2" not in world.backend.calls
    assert world.backend.running == "v1"
    assert "before the switch" in d.failure and "v1 kept serving" in d.failure
    assert "no request reached v2" in d.failure
    assert "v2 never received traffic; v1 kept serving" in d.record


def test_failing_through_the_proxy_after_the_switch_switches_back_to_the_warm_version(world):
    real_get = world.probe.get

    def through_proxy_broken(url, timeout):  # v2 answers on its own port, not through the proxy
        if world.backend.running == "v2" and "127.0.0.1:9/" in url:
            return ProbeResult(url, 502, "no server available", 1.0)
        return real_get(url, timeout)

    world.probe.get = through_proxy_broken
    d = world.deploy(world.ticket())
    assert d.status is DeploymentStatus.ROLLED_BACK, d.failure
    assert world.backend.running == "v1"
    assert "switch v2" in world.backend.calls
    assert "rollback v1 (switch back)" in world.backend.calls
    assert "finalize" not in world.backend.calls


def test_a_failed_stage_changes_nothing(world):
    world.backend.fail_stage = "port taken"
    d = world.deploy(world.ticket())
    assert d.status is DeploymentStatus.FAILED
    assert "port taken" in d.failure and "v1 kept serving, nothing changed" in d.failure
    assert world.backend.running == "v1"


def test_a_failed_switch_removes_the_staged_version_and_keeps_the_old_one(world):
    world.backend.fail_switch = "the proxy did not answer"
    d = world.deploy(world.ticket())
    assert d.status is DeploymentStatus.FAILED
    assert world.backend.calls[-2:] == ["switch v2", "discard v2"]
    assert "the proxy did not answer" in d.failure and "v1 kept serving" in d.failure
    assert world.backend.running == "v1"


def test_a_watch_window_failure_rolls_back_by_a_switch(tmp_path):
    backend = FakeStagedBackend(running="v1")
    probe = StagedProbe(backend)
    overrides = {"services": {"web": {
        **CONFIG["services"]["web"],
        "watch": {"window": 5, "interval": 1, "rules": {"health_failures": 2}}}}}
    w = World(tmp_path, backend=backend, probe=probe, overrides=overrides)
    calls = {"n": 0}
    real_get = probe.get

    def flaky(url, timeout):  # v2 is fine at first, then fails during the watch window
        if backend.running == "v2" and url.endswith("/health") and "40001" not in url:
            calls["n"] += 1
            if calls["n"] > 2:
                probe.bad.add("v2")
        return real_get(url, timeout)

    probe.get = flaky
    d = w.deploy(w.ticket())
    assert d.status is DeploymentStatus.ROLLED_BACK, d.failure
    assert "rollback v1 (switch back)" in backend.calls
    assert backend.running == "v1"


def test_manual_rollback_behind_the_proxy_is_staged_and_checked_first(world):
    d = world.deploy(world.ticket())
    assert d.status is DeploymentStatus.SUCCEEDED
    r = world.pipeline.request_rollback(requested_by="alice", service="web", environment="staging")
    r = world.pipeline.run(r.id)
    assert r.status is DeploymentStatus.SUCCEEDED, r.failure
    assert world.backend.calls[-3:] == ["stage v1", "switch v1", "finalize"]
    assert world.backend.running == "v1"


def test_direct_urls_keep_path_and_query_and_speak_http():
    assert at_address("https://web.example.com/health?deep=1", "127.0.0.1:32768") == \
        "http://127.0.0.1:32768/health?deep=1"
    assert at_address("http://127.0.0.1:18080", "127.0.0.1:1") == "http://127.0.0.1:1/"
    svc = configuration.parse(CONFIG).service("web", "staging")
    direct = direct_service(svc, "127.0.0.1:5")
    assert str(direct.health.url) == "http://127.0.0.1:5/health"
    assert [str(t.url) for t in direct.smoke] == ["http://127.0.0.1:5/api/ping"]
    assert str(svc.health.url) == "http://127.0.0.1:9/health"  # the original is untouched


# -- killed mid-way (as abrupt as kill -9 for the store), recovered by the next process ----------

class Killed(BaseException):
    """The process dies here: nothing in deploybot catches it."""


@pytest.fixture
def crashed(tmp_path):
    from fakes.schedule import ScheduleWorld

    w = ScheduleWorld(tmp_path / "deploybot.db")
    w.backend = FakeStagedBackend(running="v1")
    w.probe = StagedProbe(w.backend)
    w.open()
    yield w
    w.close()


def kill_at(world, method: str):
    real = getattr(world.backend, method)

    def dies(*a, **kw):
        real(*a, **kw)
        raise Killed()
    setattr(world.backend, method, dies)
    d = world.request(world.ticket())
    with pytest.raises(Killed):
        world.pipeline.run(d.id)
    setattr(world.backend, method, real)
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    world.store.update_deployment(d.id, owner_pid=proc.pid, owner_start="")
    return world.store.deployment(d.id)


def test_killed_with_the_new_version_staged_removes_it_and_v1_never_stopped(crashed):
    from bot.recovery import recover

    d = kill_at(crashed, "stage")
    assert crashed.backend.candidate == "v2" and crashed.backend.running == "v1"
    [done] = recover(crashed.pipeline)
    assert done.status is DeploymentStatus.ROLLED_BACK, done.failure
    assert crashed.backend.candidate is None and crashed.backend.running == "v1"
    assert "rollback v1 (already serving)" in crashed.backend.calls  # removes the staged one
    assert "switch v2" not in crashed.backend.calls


def test_killed_right_after_the_switch_switches_back_to_the_warm_version(crashed):
    from bot.recovery import recover

    crashed.backend.calls.clear()
    d = kill_at(crashed, "switch")
    assert crashed.backend.running == "v2" and crashed.backend.warm == "v1"
    crashed.clock.advance(seconds=3)  # its verification window is over
    [done] = recover(crashed.pipeline)
    assert done.status is DeploymentStatus.ROLLED_BACK, done.failure
    assert "rollback v1 (switch back)" in crashed.backend.calls
    assert crashed.backend.running == "v1"
