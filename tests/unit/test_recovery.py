"""Recovery of interrupted deployments (bot/recovery.py): a deployment's process is "killed" at
each step (an exception nothing catches, as abrupt as kill -9 for the store), its owner made a
dead process, and the next process recovers it."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bot import liveness
from bot.errors import BackendError
from bot.models import BackendStatus, DeploymentStatus, VerificationResult
from bot.recovery import recover
from bot.store import SCHEMA_VERSION, Store
from bot.verify import wait_healthy
from fakes.core import FakeBackend
from fakes.schedule import ScheduleWorld


class Killed(BaseException):
    """The process dies here: nothing in deploybot catches it."""


class CrashingBackend(FakeBackend):
    """A fake engine that can die mid-step and go unreachable."""

    kill_at: str = ""
    down: bool = False

    def _engine(self) -> None:
        if self.down:
            raise BackendError("Docker: cannot connect to the engine")

    def current_version(self):
        self._engine()
        return super().current_version()

    def status(self) -> BackendStatus:
        self._engine()
        return super().status()

    def deploy(self, version, *, ticket_id, on_step, image=None):
        self._engine()
        if self.kill_at == "after-stop":  # the old one stopped and kept; the new one not started
            self.kept, self.running = self.running, None
            raise Killed()
        super().deploy(version, ticket_id=ticket_id, on_step=on_step, image=image)

    def rollback(self, to_version, on_step, *, image=None):
        self._engine()
        super().rollback(to_version, on_step, image=image)
        if self.kill_at == "after-rollback":  # the previous one is back; the store never heard
            raise Killed()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def world(tmp_path):
    w = ScheduleWorld(tmp_path / "deploybot.db")
    w.backend = CrashingBackend(running="v1")
    w.probe.backend = w.backend
    yield w
    w.close()


def orphan(world, kill_at: str = "", *, target="web@v2", bad=False, in_probe=False):
    """Run a deployment until it is killed; its process is then a dead one."""
    if bad:
        world.probe.bad.add(target.split("@")[1])
    world.backend.kill_at = kill_at
    d = world.request(world.ticket(), target=target)
    if in_probe:  # killed at the first health probe after the new version started
        real_get, real_deploy = world.probe.get, world.backend.deploy

        def killed_get(url, timeout):
            world.probe.get = real_get
            raise Killed()

        def deploy(version, **kw):
            world.backend.deploy = real_deploy
            real_deploy(version, **kw)
            world.probe.get = killed_get
        world.backend.deploy = deploy
    with pytest.raises(Killed):
        world.pipeline.run(d.id)
    world.backend.kill_at = ""
    world.store.update_deployment(d.id, owner_pid=dead_pid(), owner_start="")
    return world.store.deployment(d.id)


def alerts(world) -> list[str]:
    return [m for k, m in world.reporter.events if k == "alert"]


def test_killed_after_the_old_container_stopped_restarts_the_previous_version(world):
    d = orphan(world, "after-stop")
    assert d.status is DeploymentStatus.DEPLOYING and world.backend.running is None
    [done] = recover(world.pipeline)
    assert done.status is DeploymentStatus.ROLLED_BACK
    assert world.backend.running == "v1"
    assert world.store.lock("env:staging") is None
    said = alerts(world)
    assert any("recovered by process" in a and "interrupted while deploying" in a
               and "rolled back to v1" in a for a in said)
    comments = [c.body for c in world.tracker.comments(d.ticket_id)]
    assert any("Deployment Record" in c and "rolled back to v1" in c for c in comments)
    # Killed before verifying: the record must not claim a verification that never ran.
    record = world.store.deployment(d.id).record
    assert "no verification completed" in record and "never completed its verification" in record
    assert "verification failed" not in record and "did not pass verification" not in record
    assert recover(world.pipeline) == []  # resolved: nothing left to do


def test_killed_during_verification_of_a_bad_version_rolls_back(world):
    d = orphan(world, bad=True, in_probe=True)
    assert d.status is DeploymentStatus.VERIFYING and world.backend.running == "v2"
    [done] = recover(world.pipeline)
    assert done.status is DeploymentStatus.ROLLED_BACK and world.backend.running == "v1"
    assert "verification failed" in done.failure and "answered 500" in done.failure


def test_killed_during_verification_of_a_good_version_completes_within_its_window(world):
    d = orphan(world, in_probe=True)
    [done] = recover(world.pipeline)
    assert done.status is DeploymentStatus.SUCCEEDED and world.backend.running == "v2"
    assert "finalize" in world.backend.calls
    assert any("passed verification" in a for a in alerts(world))
    assert world.store.deployment(d.id).record_posted


def test_a_verification_window_that_is_over_rolls_back_without_waiting(world):
    orphan(world, in_probe=True)
    world.clock.advance(seconds=3)  # verify.timeout is 2 s
    [done] = recover(world.pipeline)
    assert done.status is DeploymentStatus.ROLLED_BACK and world.backend.running == "v1"
    assert "verification window is over" in done.failure


def test_killed_during_the_automatic_rollback_finishes_it_without_touching_a_good_service(world):
    d = orphan(world, "after-rollback", bad=True)
    assert d.status is DeploymentStatus.ROLLING_BACK and world.backend.running == "v1"
    calls = len(world.backend.calls)
    [done] = recover(world.pipeline)
    assert done.status is DeploymentStatus.ROLLED_BACK
    assert world.backend.calls[calls:] == []  # v1 already ran healthy: nothing redone


def test_requested_and_checking_orphans_become_interrupted_and_free_their_lock(world):
    d = world.request(world.ticket())
    world.store.transition(d.id, DeploymentStatus.CHECKING)
    assert world.store.acquire_lock("env:staging", holder="alice", reason="x",
                                    deployment_id=d.id, ttl=600)[0]
    world.store.update_deployment(d.id, owner_pid=dead_pid())
    [done] = recover(world.pipeline)
    assert done.status is DeploymentStatus.INTERRUPTED and "before anything was deployed" in done.failure
    assert world.store.lock("env:staging") is None and world.backend.calls == []


def test_waiting_deployments_and_live_owners_are_never_taken_over(world):
    gated = world.request(world.ticket(), env="production")
    world.store.transition(gated.id, DeploymentStatus.CHECKING)
    world.store.transition(gated.id, DeploymentStatus.AWAITING_APPROVAL)
    scheduled = world.request(world.ticket(), at="2026-11-26T18:00")
    queued = world.request(world.ticket(), queue=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = world.request(world.ticket())
        world.store.transition(running.id, DeploymentStatus.CHECKING)
        world.store.transition(running.id, DeploymentStatus.DEPLOYING)
        world.store.update_deployment(running.id, owner_pid=live.pid,
                                      owner_start=liveness.start_marker(live.pid))
        for d in (gated, scheduled, queued):
            world.store.update_deployment(d.id, owner_pid=dead_pid())
        assert world.store.deployment(gated.id).status is DeploymentStatus.AWAITING_APPROVAL
        assert recover(world.pipeline) == []
        # the same pid started at another time is another process: pid reuse is not life
        world.store.update_deployment(running.id, owner_start="1")
        assert [d.id for d in recover(world.pipeline)] == [running.id]
    finally:
        live.kill()
        live.wait()


def test_exactly_one_thread_claims_an_orphan(world):
    d = orphan(world, "after-stop")
    stores = [Store(world.db_path) for _ in range(8)]
    barrier, wins = threading.Barrier(len(stores)), []

    def claim(store):
        barrier.wait()
        wins.append(store.claim_recovery(d.id) is not None)
    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]


def _claim_in_a_process(path: str, deployment_id: int, barrier, results) -> None:
    store = Store(path)
    results.put(store.claim_recovery(deployment_id) is not None)
    barrier.wait(timeout=60)  # stay alive until everyone tried: a dead claimer's claim is free


def test_exactly_one_process_claims_an_orphan(world):
    d = orphan(world, "after-stop")
    ctx = multiprocessing.get_context("spawn")
    n = 6
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_claim_in_a_process, args=(str(world.db_path), d.id, barrier,
                                                           results)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
    assert [p.exitcode for p in procs] == [0] * n
    assert sorted(results.get(timeout=5) for _ in range(n)) == [False] * (n - 1) + [True]
    # every claimer has ended now: the next process may claim it again
    assert world.store.claim_recovery(d.id) is not None


def test_engine_down_during_recovery_fails_the_rollback_and_retries_when_it_is_back(world):
    orphan(world, "after-stop")
    world.backend.down = True
    [done] = recover(world.pipeline)
    assert done.status is DeploymentStatus.ROLLBACK_FAILED
    assert "retried when the engine answers again" in done.failure
    assert any("ROLLBACK FAILED" in a and "retries" in a for a in alerts(world))
    assert recover(world.pipeline) == []  # still down: nothing to say, nothing done
    world.backend.down = False
    [again] = world.scheduler.tick() and [world.store.deployment(done.id)]
    assert again.status is DeploymentStatus.ROLLED_BACK and world.backend.running == "v1"
    assert recover(world.pipeline) == []


def test_engine_blips_during_verification_are_retried_within_the_window(world):
    svc = world.config.service("web", "staging")
    world.backend.running = "v2"
    answers = iter([True, True, False])

    def status():
        world.backend.down = next(answers, False)
        return CrashingBackend.status(world.backend)
    world.backend.status = status
    result, why = wait_healthy(svc, world.backend, world.probe, world.clock, 5, 1)
    assert result.value == "passed" and "after 3 probe(s)" in why


def engine_down_after_deploy(world):
    """A deployment whose engine stops answering once the new version started."""
    real_deploy = world.backend.deploy

    def deploy_then_engine_dies(version, **kw):
        real_deploy(version, **kw)
        world.backend.down = True
    world.backend.deploy = deploy_then_engine_dies
    d = world.pipeline.run(world.request(world.ticket()).id)
    assert d.status is DeploymentStatus.ROLLBACK_FAILED
    return d


def test_engine_down_for_the_whole_verification_is_rollback_failed_then_recovered(world):
    d = engine_down_after_deploy(world)
    assert "engine did not answer" in d.failure
    world.backend.down = False
    [done] = recover(world.pipeline)
    assert done.status is DeploymentStatus.ROLLED_BACK and world.backend.running == "v1"


def test_the_next_deploy_recovers_an_unresolved_one_first_or_refuses(world):
    first = orphan(world, "after-stop")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    world.clock.advance(minutes=11)  # its lock expired: the guard in _deploy is what is left
    try:  # another process is recovering it right now
        world.store.update_deployment(first.id, recovery_pid=live.pid,
                                      recovery_start=liveness.start_marker(live.pid))
        refused = world.pipeline.run(world.request(world.ticket(), target="web@v3").id)
    finally:
        live.kill()
        live.wait()
    assert refused.status is DeploymentStatus.FAILED, refused.failure
    assert f"deployment #{first.id}" in refused.failure and "nothing was changed" in refused.failure
    assert world.backend.running is None and world.backend.kept == "v1"  # untouched
    ok = world.pipeline.run(world.request(world.ticket(), target="web@v3").id)
    assert world.store.deployment(first.id).status is DeploymentStatus.ROLLED_BACK
    assert ok.status is DeploymentStatus.SUCCEEDED and ok.previous_version == "v1"


def test_rollback_finds_the_previous_version_in_history_after_an_interruption(world):
    world.pipeline.run(world.request(world.ticket(), target="web@v2").id)
    orphan(world, "after-stop", target="web@v3")
    world.backend.running = "v2"  # someone restarted it by hand; no kept container
    world.backend.kept = None
    d = world.pipeline.request_rollback(requested_by="alice", service="web",
                                        environment="staging")
    assert d.version == "v1" and d.previous_version == "v2"


def test_a_stop_before_the_rollout_changes_nothing(world):
    d = world.request(world.ticket())
    world.pipeline.stop.set("SIGTERM")
    d = world.pipeline.run(d.id)
    assert d.status is DeploymentStatus.FAILED and "stopped (SIGTERM)" in d.failure
    assert world.backend.calls == []


@pytest.mark.parametrize("bad,outcome", [(True, DeploymentStatus.ROLLED_BACK),
                                         (False, DeploymentStatus.SUCCEEDED)])
def test_a_stop_during_verification_completes_or_rolls_back(world, bad, outcome):
    if bad:
        world.probe.bad.add("v2")
    world.pipeline.stop.rollout_started = True
    real_deploy = world.backend.deploy

    def deploy_then_signal(version, **kw):
        real_deploy(version, **kw)
        world.pipeline.stop.set("SIGTERM")
    world.backend.deploy = deploy_then_signal
    d = world.pipeline.run(world.request(world.ticket()).id)
    assert d.status is outcome
    assert world.clock.t < 2  # no waiting out the window
    if bad:
        assert "stopped (SIGTERM)" in d.failure and world.backend.running == "v1"


def test_an_unexpected_error_during_verification_is_rolled_back(world, monkeypatch):
    def broken(*a, **kw) -> VerificationResult:
        raise RuntimeError("a bug")
    monkeypatch.setattr("bot.rollout.verify", broken)
    d = world.pipeline.run(world.request(world.ticket()).id)
    assert d.status is DeploymentStatus.ROLLED_BACK and world.backend.running == "v1"
    assert "internal error while verifying: a bug" in d.failure


def test_kubernetes_killed_while_the_new_replicaset_is_not_available_is_undone(tmp_path):
    from backends.deploy.kubernetes import KubernetesBackend
    from tests.unit.test_kubernetes_backend import NS, FakeKube

    kube_settings = {"kind": "kubernetes", "namespace": NS, "rollout_timeout": 5,
                     "poll_interval": 0.5}
    world = ScheduleWorld(tmp_path / "deploybot.db", overrides={"services": {"web": {
        "image": "demo-web", "backend": kube_settings, "verify": {"timeout": 2, "interval": 1}}}})
    try:
        kube = FakeKube()
        world.backend = KubernetesBackend("web", "staging", world.config.service("web", "staging"),
                                          api=kube, clock=world.clock)
        assert world.pipeline.run(world.request(world.ticket(), target="web@v2").id).status \
            is DeploymentStatus.SUCCEEDED
        kube.healthy = {"v1", "v2"}  # v3's pods never become ready
        real_deploy = world.backend.deploy

        def deploy_then_die(version, **kw):
            real_deploy(version, **kw)
            raise Killed()
        world.backend.deploy = deploy_then_die
        d = world.request(world.ticket(), target="web@v3")
        with pytest.raises(Killed):
            world.pipeline.run(d.id)
        world.backend.deploy = real_deploy
        world.store.update_deployment(d.id, owner_pid=dead_pid())
        assert not world.backend.status().running
        [done] = recover(world.pipeline)
        assert done.status is DeploymentStatus.ROLLED_BACK
        state = world.backend.status()
        assert state.running and state.version == "v2"
        # like `rollout undo`: revision 2's own change-cause, with the bytes it is pinned to
        cause = world.backend.history()[-1].change_cause
        assert cause.startswith("deploybot DEMO-1: demo-web:v2 as sha256:")
    finally:
        world.close()


def test_a_deployment_an_older_version_left_interrupted_is_rolled_back_after_the_upgrade(tmp_path):
    path = tmp_path / "deploybot.db"
    world = ScheduleWorld(path)
    world.backend = CrashingBackend(running="v1")
    world.probe.backend = world.backend
    d = orphan(world, "after-stop")
    older = world.request(world.ticket(), target="web@v0")  # superseded rows stay as they are
    world.store.db.execute("UPDATE deployments SET status = 'interrupted', failure = ? "
                           "WHERE id = ?", ["interrupted while deploying: the deploybot process "
                                            "ended; check the service by hand", d.id])
    world.store.db.execute("UPDATE deployments SET status = 'cancelled' WHERE id = ?",
                           [older.id])
    # the database as schema 5 had it: no recovery columns
    for column in ("owner_start", "recovery_pid", "recovery_start", "recovery_claimed_at",
                   "needs_recovery", "owner_replica", "recovery_replica", "thread_claimed",
                   "resume_claimed", "hosts"):  # m6, m9, m10
        world.store.db.execute(f"ALTER TABLE deployments DROP COLUMN {column}")
    world.store.db.execute("DROP TABLE outbox")  # m7
    world.store.db.execute("DROP TABLE ticket_times")  # m8
    world.store.db.execute("DROP TABLE replicas")  # m9
    world.store.db.execute("DROP TABLE requests_seen")  # m9
    world.store.db.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    world.store.close()
    world.open()  # the upgraded deploybot starts
    try:
        assert world.store.schema_version == SCHEMA_VERSION
        [done] = recover(world.pipeline)
        assert done.id == d.id and done.status is DeploymentStatus.ROLLED_BACK
        assert world.backend.running == "v1"
        assert "recovered by process" in done.failure
    finally:
        world.close()


def _terminal(tmp_path, monkeypatch):
    from tests.unit.test_terminal_identity import Terminal

    return Terminal(tmp_path, monkeypatch)


def test_ctrl_c_during_the_checks_stops_at_once_and_marks_it_interrupted(tmp_path, monkeypatch,
                                                                        capsys):
    import os
    import signal

    term = _terminal(tmp_path, monkeypatch)
    real = term.tracker.current_account
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in the background (CI)

    def interrupted_here():
        os.kill(os.getpid(), signal.SIGINT)
        return real()
    term.tracker.current_account = interrupted_here
    assert term("deploy", term.ticket(), "web@v2", "--env", "staging") == 130
    d = term.store.deployments(limit=1)[0]
    assert d.status is DeploymentStatus.INTERRUPTED and "nothing was changed" in d.failure
    assert term.backend.calls == [] and term.store.locks() == []
    assert signal.getsignal(signal.SIGINT) is before  # put back


@pytest.mark.parametrize("bad,status,code", [(False, DeploymentStatus.SUCCEEDED, 0),
                                             (True, DeploymentStatus.ROLLED_BACK, 1)])
def test_sigterm_during_the_rollout_finishes_the_step_then_completes_or_rolls_back(
        tmp_path, monkeypatch, capsys, bad, status, code):
    import os
    import signal

    term = _terminal(tmp_path, monkeypatch)
    probe = term.edges.probe
    if bad:
        probe.bad.add("v2")
    real = term.backend.deploy

    def deploy_then_two_signals(version, **kw):
        real(version, **kw)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
    term.backend.deploy = deploy_then_two_signals
    assert term("deploy", term.ticket(), "web@v2", "--env", "staging") == code
    d = term.store.deployments(limit=1)[0]
    assert d.status is status
    err = capsys.readouterr().err
    assert "SIGTERM: finishing the current step" in err and "already stopping" in err
    assert term.backend.running == ("v1" if bad else "v2")


def test_the_scheduler_recovers_at_start_before_anything_else_runs(world):
    d = orphan(world, "after-stop")
    said = world.scheduler.start()
    try:
        assert said[0].startswith(f"deployment #{d.id} recovered: rolled_back")
        assert world.backend.running == "v1"
    finally:
        world.scheduler.shutdown()


def test_a_killed_process_not_yet_reaped_is_dead_and_a_live_one_is_alive():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        marker = liveness.start_marker(proc.pid)
        assert marker and liveness.is_alive(proc.pid, marker)
        assert not liveness.is_alive(proc.pid, str(int(marker) + 1))  # another process, same pid
        proc.kill()
        # wait until it has exited without reaping it (WNOWAIT): a zombie now, on no clock
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        assert Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] == "Z"
        assert not liveness.is_alive(proc.pid, marker)  # a zombie until wait(): dead already
    finally:
        proc.kill()
        proc.wait()
    assert liveness.is_alive(liveness.os.getpid(), liveness.my_marker())
    assert not liveness.is_alive(None) and not liveness.is_alive(0)


def test_a_recovery_that_crashes_says_so_without_a_traceback_and_is_retried(world, caplog):
    d = orphan(world, "after-stop")
    real = world.backend.rollback

    def crash(*a, **kw):
        raise RuntimeError("a bug in the backend")
    world.backend.rollback = crash
    assert recover(world.pipeline) == []
    assert any("a bug in the backend" in r.getMessage() and r.exc_info is None
               for r in caplog.records if r.levelname == "ERROR")
    world.backend.rollback = real
    [done] = recover(world.pipeline)  # the claim was released: the next try succeeds
    assert done.id == d.id and done.status is DeploymentStatus.ROLLED_BACK


def test_a_deployment_that_finished_but_died_before_its_record_gets_it_from_the_next_process(world):
    d = world.request(world.ticket(), target="web@v2")
    finish = world.pipeline.finishing.finish
    world.pipeline.finishing.finish = lambda *a, **kw: (_ for _ in ()).throw(Killed())
    with pytest.raises(Killed):  # killed right after the final status, before the record
        world.pipeline.run(d.id)
    world.pipeline.finishing.finish = finish
    d = world.store.deployment(d.id)
    assert d.status is DeploymentStatus.SUCCEEDED and not d.record
    world.store.update_deployment(d.id, owner_pid=dead_pid())
    [done] = recover(world.pipeline)
    assert done.id == d.id and "Deployment Record" in done.record
    comments = [c.body for c in world.tracker.comments(d.ticket_id)]
    assert sum("Deployment Record" in c for c in comments) == 1
    assert recover(world.pipeline) == []  # written once: nothing left for the next process


def test_a_finished_deployment_whose_process_still_runs_is_left_to_it(world):
    d = world.request(world.ticket(), target="web@v2")
    world.pipeline.finishing.finish = lambda *a, **kw: (_ for _ in ()).throw(Killed())
    with pytest.raises(Killed):
        world.pipeline.run(d.id)
    # its owner is this (live) process: it may still be writing the record
    assert world.store.unrecorded() == []


def test_a_finished_deployment_whose_recovering_process_still_runs_is_left_to_it(world):
    d = world.request(world.ticket(), target="web@v2")
    world.pipeline.finishing.finish = lambda *a, **kw: (_ for _ in ()).throw(Killed())
    with pytest.raises(Killed):
        world.pipeline.run(d.id)
    # the owner died; a live process has claimed it and is writing the record right now
    world.store.update_deployment(d.id, owner_pid=dead_pid(), recovery_pid=os.getpid(),
                                  recovery_start=liveness.my_marker())
    assert world.store.unrecorded() == []


def test_status_lists_a_failed_rollback_until_it_is_repaired(world):
    from bot.service import RequestService

    d = engine_down_after_deploy(world)
    [line] = RequestService(world.pipeline).status(running=False).active
    assert line.deployment.id == d.id
    assert "rollback_failed, not repaired yet" in line.waiting
    world.backend.down = False
    recover(world.pipeline)
    assert RequestService(world.pipeline).status(running=False).active == ()


def test_status_lists_a_failed_rollback_that_needs_a_person_until_a_later_rollout(world):
    from bot.service import RequestService

    d = engine_down_after_deploy(world)
    world.backend.down = False
    del world.backend.deploy  # deploys work again
    world.store.update_deployment(d.id, needs_recovery=0)  # as when the engine answered again
    [line] = RequestService(world.pipeline).status(running=False).active
    assert line.deployment.id == d.id and "needs a person: nothing retries it" in line.waiting
    world.pipeline.run(world.request(world.ticket(), target="web@v3").id)
    assert RequestService(world.pipeline).status(running=False).active == ()
