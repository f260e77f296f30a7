"""Several replicas on one store: heartbeats and liveness across machines, the claims that one
replica wins, leadership and what only the leader does."""

from __future__ import annotations

import json
import os

import pytest

from bot import liveness
from bot.errors import ConfigError
from bot.leadership import Elector, ReplicaHeartbeat, SoleLeader
from bot.models import DeploymentStatus
from bot.store import Store
from handlers import ops_http
from handlers.wiring import ReplicaRole
from fakes.schedule import ManualClock

ELSEWHERE = "other-machine/4242/99"  # a replica on another host: only its heartbeat tells


def make(store: Store, **kw):
    d, _ = store.create_deployment(ticket_id="T-1", service="web", version="v2",
                                   environment="production", requested_by="alice", **kw)
    return d


def owned_elsewhere(store: Store, replica: str = ELSEWHERE) -> int:
    d = make(store)
    store.db.execute("UPDATE deployments SET status = 'deploying', owner_replica = ?, "
                     "owner_pid = 4242, owner_start = '99' WHERE id = ?", [replica, d.id])
    return d.id


def never_alive(pid, marker):  # the local process table knows nothing of other machines
    return False


def test_a_replica_on_another_machine_is_alive_while_its_heartbeat_is_fresh():
    clock = ManualClock()
    store = Store(":memory:", clock=clock.now)
    dep = owned_elsewhere(store)
    store.replica_beat(ELSEWHERE)
    clock.advance(seconds=14)
    assert store.claim_recovery(dep, never_alive) is None  # 14 s: still alive
    clock.advance(seconds=2)
    claimed = store.claim_recovery(dep, never_alive)  # 16 s without a heartbeat: dead
    assert claimed is not None
    event = [e for e in store.events(dep) if e["kind"] == "recovery.claimed"][-1]
    assert f"replica {ELSEWHERE} ended" in event["detail"]


def test_a_replica_that_never_beat_is_dead_and_a_beating_one_keeps_its_deployment():
    clock = ManualClock()
    store = Store(":memory:", clock=clock.now)
    dead = owned_elsewhere(store, "third-machine/7/7")
    assert store.claim_recovery(dead, never_alive) is not None
    store.release_recovery(dead)
    alive = owned_elsewhere(store)
    for _ in range(10):  # beats every 5 s for 50 s
        store.replica_beat(ELSEWHERE)
        clock.advance(seconds=5)
        assert store.claim_recovery(alive, never_alive) is None
    assert [d.id for d in store.unresolved("web", "production", never_alive)] == [dead]


def test_on_this_machine_the_process_table_decides_at_once():
    store = Store(":memory:")
    d = make(store)  # owned by this process, this host
    assert store.claim_recovery(d.id, lambda pid, marker: True) is None
    store.db.execute("UPDATE deployments SET owner_pid = 999999999 WHERE id = ?", [d.id])
    assert store.claim_recovery(d.id, lambda pid, marker: False) is not None


def test_a_clean_stop_removes_the_row_and_old_rows_are_forgotten():
    clock = ManualClock()
    store = Store(":memory:", clock=clock.now)
    store.replica_beat("a/1/1")
    store.replica_beat("b/2/2")
    assert [r["id"] for r in store.replicas()] == ["a/1/1", "b/2/2"]
    store.replica_gone("a/1/1")
    clock.advance(seconds=20)
    assert [(r["id"], r["alive"]) for r in store.replicas()] == [("b/2/2", False)]
    clock.advance(hours=2)
    assert store.forget_stale_replicas() == 1
    assert store.replicas() == []


def test_a_thread_is_claimed_once_and_a_resume_once(tmp_path):
    path = tmp_path / "s.db"
    one, two = Store(path), Store(path)  # two processes' connections on one file
    d = make(one)
    assert one.claim(d.id, "thread_claimed") and not two.claim(d.id, "thread_claimed")
    assert not one.claim_resume(d.id)  # not awaiting approval
    one.db.execute("UPDATE deployments SET status = 'awaiting_approval' WHERE id = ?", [d.id])
    assert two.claim_resume(d.id) is True
    assert one.claim_resume(d.id) is False
    row = one.db["deployments"].get(d.id)
    assert row["owner_replica"] == liveness.my_replica() and row["resume_claimed"] == 1


def test_an_approved_deployment_whose_resumer_died_is_recovered_as_untouched():
    store = Store(":memory:")
    d = make(store)
    store.db.execute("UPDATE deployments SET status = 'awaiting_approval' WHERE id = ?", [d.id])
    assert store.recovery_candidates() == []  # waiting for a person: never an orphan
    assert store.claim_resume(d.id)
    assert [c.id for c in store.recovery_candidates()] == [d.id]


def test_a_request_key_is_taken_once_across_stores_and_forgotten_after_an_hour(tmp_path):
    clock = ManualClock()
    one = Store(tmp_path / "s.db", clock=clock.now)
    two = Store(tmp_path / "s.db", clock=clock.now)
    assert one.first_request("cmd:T1") is True
    assert two.first_request("cmd:T1") is False
    clock.advance(hours=2)
    assert two.first_request("cmd:T2") is True  # and T1 was swept
    assert two.first_request("cmd:T1") is True


def test_adopt_with_an_expected_status_is_a_compare_and_set():
    store = Store(":memory:")
    d = make(store)
    assert store.adopt(d.id, expect=DeploymentStatus.REQUESTED)
    store.transition(d.id, DeploymentStatus.CHECKING)
    assert not store.adopt(d.id, expect=DeploymentStatus.REQUESTED)


class Flipping:
    def __init__(self, answers):
        self.answers = list(answers)
        self.resigned = 0

    def try_lead(self):
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def resign(self):
        self.resigned += 1


def test_the_elector_says_each_gain_once_and_an_error_is_not_leadership():
    gains = []
    elector = Elector(Flipping([False, True, True, RuntimeError("db gone"), True]),
                      on_gain=lambda: gains.append(1))
    assert [elector.check() for _ in range(5)] == [False, True, True, False, True]
    assert gains == [1, 1]
    elector.stop()
    assert elector.leadership.resigned == 1 and not elector.is_leader


def test_only_the_leader_ticks_and_posts_summaries(monkeypatch):
    from bot.scheduler import DeployScheduler

    class P:  # just enough pipeline for the scheduler's constructor
        store = Store(":memory:")
        config = type("C", (), {"schedule_grace_minutes": 10, "health_summary": None})()
        clock = ManualClock()
    scheduler = DeployScheduler(P(), summary=lambda text: posted.append(text))
    posted: list[str] = []
    ran: list[str] = []
    monkeypatch.setattr(scheduler, "recover", lambda: ran.append("recover") or [])
    monkeypatch.setattr(scheduler, "health_summary", lambda: "summary")
    scheduler.is_leader = lambda: False
    assert scheduler.tick() == [] and scheduler.post_health_summary() == ""
    assert ran == [] and posted == []
    scheduler.execute(1)  # a non-leader's alarm clock starts nothing (no such deployment either)
    scheduler.is_leader = lambda: True
    scheduler.post_health_summary()
    assert posted == ["summary"]


def test_heartbeat_registers_beats_and_says_goodbye():
    store = Store(":memory:")
    beat = ReplicaHeartbeat(store, every=3600).start()
    assert [r["id"] for r in store.replicas()] == [liveness.my_replica()]
    beat.stop()
    assert store.replicas() == []


def test_role_on_sqlite_leads_alone_without_heartbeats_and_healthz_says_so():
    store = Store(":memory:")
    role = ReplicaRole(store, environ={}).start()
    try:
        assert role.is_leader and role.heartbeat is None
        assert isinstance(role.elector.leadership, SoleLeader)
        app = ops_http.ops_app(ops_http.readiness_of(store, type("S", (), {"running": True})()),
                               about=role.about)
        body = {}

        def start_response(status, headers):
            body["status"] = status
        data = json.loads(b"".join(app({"PATH_INFO": "/healthz", "REQUEST_METHOD": "GET"},
                                        start_response)))
        assert data == {"alive": True, "replica": liveness.my_replica(), "leader": True}
        assert data["replica"].split("/")[1] == str(os.getpid())
    finally:
        role.stop()
    assert store.events() == []  # a lone SQLite process does not fill the audit trail


def test_role_settings_from_the_environment_are_checked():
    store = Store(":memory:")
    role = ReplicaRole(store, environ={"DEPLOYBOT_REPLICA_STALE_SECONDS": "30",
                                       "DEPLOYBOT_LEADER_POLL_SECONDS": "0.5"})
    assert store.replica_stale_seconds == 30 and role.elector.poll == 0.5
    with pytest.raises(ConfigError, match="DEPLOYBOT_LEADER_POLL_SECONDS"):
        ReplicaRole(store, environ={"DEPLOYBOT_LEADER_POLL_SECONDS": "nan"})


def test_leader_metric():
    from prometheus_client import generate_latest

    from bot.metrics import registry_for

    store = Store(":memory:")
    leading = [False]
    text = lambda: generate_latest(registry_for(store, is_leader=lambda: leading[0])).decode()  # noqa: E731
    assert "deploybot_leader 0.0" in text()
    leading[0] = True
    assert "deploybot_leader 1.0" in text()


def test_the_host_of_a_replica_may_be_named(monkeypatch):
    monkeypatch.setenv("DEPLOYBOT_REPLICA_HOST", "pod-a")
    assert liveness.my_replica().startswith(f"pod-a/{os.getpid()}/")
    assert liveness.on_this_host("pod-a/1/2") and not liveness.on_this_host("pod-b/1/2")


def test_housekeeping_forgets_dead_replicas_once_an_hour():
    from bot.scheduler import DeployScheduler

    clock = ManualClock()
    store = Store(":memory:", clock=clock.now)

    class P:
        config = type("C", (), {"schedule_grace_minutes": 10, "health_summary": None})()
    P.store, P.clock = store, clock
    scheduler = DeployScheduler(P())
    store.replica_beat("gone/1/1")
    clock.advance(hours=2)
    scheduler.housekeeping()
    assert store.replicas() == []
    store.replica_beat("gone/2/2")
    store.db.execute("UPDATE replicas SET heartbeat_at = '2000-01-01T00:00:00+00:00'")
    clock.advance(minutes=59)  # an hour-old row, but the last housekeeping was 59 min ago
    scheduler.housekeeping()
    assert [r["id"] for r in store.replicas()] == ["gone/2/2"]
    clock.advance(minutes=1)
    scheduler.housekeeping()
    assert store.replicas() == []
