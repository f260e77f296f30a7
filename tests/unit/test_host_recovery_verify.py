"""A rollout on several hosts killed after its last host started, before that host's checks:
the recovery verifies each host at its own address, not the service's URLs as written (which
reach the first host only), so an unchecked bad host is not declared deployed."""

from __future__ import annotations

import subprocess
import sys

from bot.models import DeploymentStatus
from bot.recovery import recover
from test_host_rollout import Hosts


def killed_after_the_last_host_started(tmp_path, bad_at: set[str]):
    w = Hosts(tmp_path)
    w.probe.bad, w.probe.bad_only_at = ({"v2"}, bad_at) if bad_at else (set(), set())
    d = w.deploy_killed_after_starting("h3")
    assert d.status is DeploymentStatus.VERIFYING
    assert [b.running for b in w.one.values()] == ["v2", "v2", "v2"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    w.store.update_deployment(d.id, owner_pid=dead.pid, owner_start="")
    w.log.clear()
    return w


def test_a_bad_host_the_kill_left_unchecked_is_found_and_every_host_rolled_back(tmp_path):
    w = killed_after_the_last_host_started(tmp_path, bad_at={"127.0.0.3"})
    [done] = recover(w.pipeline)
    assert done.status is DeploymentStatus.ROLLED_BACK, done.failure
    assert "unix:///run/h3.sock" in done.failure and "500" in done.failure
    assert [b.running for b in w.one.values()] == ["v1", "v1", "v1"]


def test_a_good_rollout_is_verified_on_every_host_then_succeeds(tmp_path):
    w = killed_after_the_last_host_started(tmp_path, bad_at=set())
    [done] = recover(w.pipeline)
    assert done.status is DeploymentStatus.SUCCEEDED, done.failure
    assert [c for c in w.log if c.endswith("probe")][:1] == ["h1 probe"]
    assert {"h1 probe", "h2 probe", "h3 probe"} <= set(w.log)
