"""The store contract, the same on both engines: every test runs on SQLite and on PostgreSQL
(tests/integration/store_engines.py). Concurrency tests give each thread its own Store on the
same database, as replicas have."""

from __future__ import annotations

import os
import threading
from datetime import timedelta

import pytest

from bot import liveness
from bot.errors import StateError
from bot.models import (
    CheckResult,
    CheckStatus,
    DeploymentKind,
    DeploymentStatus as S,
    GateKind,
    GateStatus,
)
from bot.outbox_store import DELIVERED, FAILED, PENDING, OutboxTable
from bot.store import SCHEMA_VERSION
from fakes.schedule import START
from tests.integration.store_engines import engine_store, store_template  # noqa: F401 fixtures

pytestmark = pytest.mark.integration

def dead(pid, start) -> bool:
    return False


def alive(pid, start) -> bool:
    return True


@pytest.fixture
def store(engine_store):
    return engine_store.open()


def create(store, ticket="T-1", service="web", version="v1", environment="staging", **kw):
    return store.create_deployment(ticket_id=ticket, service=service, version=version,
                                   environment=environment, requested_by="ann", **kw)[0]


def walk(store, dep_id, *statuses, **values):
    for status in statuses:
        d = store.transition(dep_id, status, **values)
    return d


# -- schema and plumbing --------------------------------------------------------------------------

def test_schema_version_and_ping(engine_store, store):
    assert store.schema_version == SCHEMA_VERSION
    assert store.ping(2.0) == SCHEMA_VERSION
    again = engine_store.open()  # a second Store on a migrated database changes nothing
    assert again.schema_version == SCHEMA_VERSION
    assert store.db.dialect == engine_store.engine


def test_a_newer_schema_is_refused(engine_store, store):
    store.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                     [str(SCHEMA_VERSION + 1)])
    with pytest.raises(StateError, match="newer than this deploybot"):
        engine_store.open()


# -- deployments ----------------------------------------------------------------------------------

def test_create_and_read_a_deployment(engine_store, store):
    d, created = store.create_deployment(
        ticket_id="T-1", service="web", version="v1", environment="prod", requested_by="ann",
        kind=DeploymentKind.DEPLOY, dry_run=True, lock_scope="env:prod", method="docker",
        request_key="k1", scheduled_for=START + timedelta(hours=1), queued=True,
        break_glass="outage", via="slack")
    assert created and d.id >= 1
    got = store.deployment(d.id)
    assert (got.ticket_id, got.service, got.version, got.environment, got.requested_by) == \
        ("T-1", "web", "v1", "prod", "ann")
    assert got.status is S.REQUESTED and got.kind is DeploymentKind.DEPLOY
    assert got.dry_run is True and got.queued is True and got.record_posted is False
    assert got.scheduled_for == START + timedelta(hours=1)
    assert got.created_at == START and got.finished_at is None
    assert (got.lock_scope, got.method, got.break_glass, got.failure) == \
        ("env:prod", "docker", "outage", "")
    [event] = store.events(d.id)
    assert (event["kind"], event["actor"], event["via"]) == ("requested", "ann", "slack")
    assert event["detail"] == ("deploy web@v1 to prod for T-1 (dry run) at "
                               "2026-11-26T13:00:00+00:00 (queued) (break-glass: outage)")
    for missing in (999, 2**70):  # beyond a 64-bit id too
        with pytest.raises(StateError, match=f"no deployment #{missing}"):
            store.deployment(missing)


def test_a_repeated_request_key_returns_the_first_deployment(store):
    first, created = store.create_deployment(ticket_id="T-1", service="web", version="v1",
                                             environment="prod", requested_by="ann",
                                             request_key="slack:123")
    again, created_again = store.create_deployment(ticket_id="T-2", service="api", version="v2",
                                                   environment="prod", requested_by="bob",
                                                   request_key="slack:123")
    assert created and not created_again
    assert again.id == first.id and again.ticket_id == "T-1"
    assert len(store.deployments()) == 1


def test_one_at_a_time_refuses_while_one_is_open(store):
    first = create(store, one_at_a_time=True)
    with pytest.raises(StateError, match=rf"T-1 is already being deployed: web to staging is "
                                         rf"deployment #{first.id} \(requested\)"):
        create(store, one_at_a_time=True)
    create(store, environment="prod", one_at_a_time=True)  # another environment is another one
    create(store, ticket="T-9", dry_run=True)
    create(store, ticket="T-9", one_at_a_time=True)  # an open dry run does not count
    store.transition(first.id, S.CANCELLED)
    create(store, one_at_a_time=True)


def test_transitions_follow_the_state_machine(store):
    d = create(store)
    with pytest.raises(StateError, match=f"deployment #{d.id} is requested; it cannot become "
                                         "succeeded"):
        store.transition(d.id, S.SUCCEEDED)
    d = walk(store, d.id, S.CHECKING, S.DEPLOYING)
    assert d.status is S.DEPLOYING and d.finished_at is None
    d = store.transition(d.id, S.VERIFYING, actor="bob", detail="probe", via="cli",
                         previous_version="v0", image_ref="sha256:abc")
    assert (d.previous_version, d.image_ref) == ("v0", "sha256:abc")
    d = store.transition(d.id, S.SUCCEEDED)
    assert d.finished_at == START
    with pytest.raises(StateError, match="is succeeded; it cannot become rolling_back"):
        store.transition(d.id, S.ROLLING_BACK)
    kinds = [e["kind"] for e in store.events(d.id)]
    assert kinds == ["requested", "checking", "deploying", "verifying", "succeeded"]
    verifying = store.events(d.id)[3]
    assert (verifying["actor"], verifying["detail"], verifying["via"]) == ("bob", "probe", "cli")


def test_a_terminal_transition_releases_the_deployments_locks(store):
    d = walk(store, create(store).id, S.CHECKING, S.DEPLOYING)
    assert store.acquire_lock("env:staging", holder="ann", reason="r", deployment_id=d.id)[0]
    assert store.acquire_lock("svc:web", holder="ann", reason="r", deployment_id=d.id)[0]
    store.acquire_lock("env:prod", holder="bob", reason="manual")
    store.transition(d.id, S.FAILED, failure="boom")
    assert [lock.scope for lock in store.locks()] == ["env:prod"]
    released = [e["detail"] for e in store.events(d.id) if e["kind"] == "lock.released"]
    assert sorted(released) == ["env:staging", "svc:web"]


def test_update_deployment_and_claim_once(engine_store, store):
    d = create(store)
    clock = engine_store.clock
    clock.advance(minutes=3)
    d = store.update_deployment(d.id, failure="x", thread_ref="C1/123")
    assert (d.failure, d.thread_ref, d.updated_at) == ("x", "C1/123", START + timedelta(minutes=3))
    other = engine_store.open()
    assert store.claim(d.id, "record_posted") is True
    assert other.claim(d.id, "record_posted") is False
    assert other.claim(d.id, "record_commented") is True
    assert store.deployment(d.id).record_posted and store.deployment(d.id).record_commented


def test_deployments_filters_order_and_limit(store):
    a = create(store, service="web", environment="staging")
    b = create(store, service="api", environment="staging")
    c = create(store, service="web", environment="prod")
    store.transition(b.id, S.CANCELLED)
    assert [d.id for d in store.deployments()] == [c.id, b.id, a.id]
    assert [d.id for d in store.deployments(service="web")] == [c.id, a.id]
    assert [d.id for d in store.deployments(environment="staging")] == [b.id, a.id]
    assert [d.id for d in store.deployments(statuses={S.CANCELLED, S.SUCCEEDED})] == [b.id]
    assert [d.id for d in store.deployments(limit=2)] == [c.id, b.id]


def finish(store, status=S.SUCCEEDED, *, version="v1", previous="v0", image_ref="",
           previous_image_ref="", dry_run=False, service="web", environment="prod"):
    d = create(store, service=service, environment=environment, version=version,
               dry_run=dry_run)
    d = walk(store, d.id, S.CHECKING, S.DEPLOYING, S.VERIFYING)
    store.update_deployment(d.id, previous_version=previous, image_ref=image_ref,
                            previous_image_ref=previous_image_ref)
    if status in (S.ROLLED_BACK, S.ROLLBACK_FAILED):
        store.transition(d.id, S.ROLLING_BACK)
    return store.transition(d.id, status)


def test_known_image_and_last_succeeded(store):
    assert store.known_image("web", "prod", "v1") == ""
    assert store.last_succeeded("web", "prod") is None
    first = finish(store, version="v1", previous="v0", image_ref="sha256:v1a",
                   previous_image_ref="sha256:v0")
    assert store.known_image("web", "prod", "v1") == "sha256:v1a"
    assert store.known_image("web", "prod", "v0") == "sha256:v0"
    assert store.known_image("web", "staging", "v1") == ""
    second = finish(store, S.ROLLED_BACK, version="v2", previous="v1", image_ref="sha256:v2",
                    previous_image_ref="sha256:v1b")
    assert store.known_image("web", "prod", "v1") == "sha256:v1b"  # the latest word on v1
    finish(store, version="v3", dry_run=True)
    assert store.last_succeeded("web", "prod").id == first.id
    third = finish(store, version="v3")
    assert store.last_succeeded("web", "prod").id == third.id
    assert store.last_succeeded("web", "prod", before_id=third.id).id == first.id
    assert store.last_succeeded("web", "prod", before_id=first.id) is None
    assert second.status is S.ROLLED_BACK


def test_scheduled_and_queue_order(store):
    late = create(store, scheduled_for=START + timedelta(hours=2))
    early = create(store, scheduled_for=START + timedelta(hours=1))
    same_time = create(store, scheduled_for=START + timedelta(hours=1))
    create(store)  # neither scheduled nor queued
    q1 = create(store, queued=True, lock_scope="env:prod")
    q2 = create(store, queued=True, lock_scope="env:staging")
    q3 = create(store, queued=True, lock_scope="env:prod")
    assert [d.id for d in store.scheduled()] == [early.id, same_time.id, late.id]
    assert [d.id for d in store.queue()] == [q1.id, q2.id, q3.id]
    assert [d.id for d in store.queue("env:prod")] == [q1.id, q3.id]
    store.transition(q1.id, S.CANCELLED)
    assert [d.id for d in store.queue("env:prod")] == [q3.id]


# -- recovery -------------------------------------------------------------------------------------

def orphan(store, dep_id) -> None:
    """Owned by another process (pid 1 here), so that is_alive decides."""
    store.db.execute("UPDATE deployments SET owner_pid = 1, owner_start = 'x' WHERE id = ?",
                     [dep_id])


def test_recovery_candidates_claim_and_release(engine_store, store):
    running = walk(store, create(store, service="web").id, S.CHECKING, S.DEPLOYING)
    create(store, service="web", scheduled_for=START)  # waits for its time: not an orphan
    create(store, service="web", queued=True)  # waits for a lock: not an orphan
    fresh = create(store, service="api")  # requested, neither: its process drives it
    approval = walk(store, create(store, ticket="T-2").id, S.CHECKING, S.AWAITING_APPROVAL)
    assert [d.id for d in store.recovery_candidates()] == [running.id, fresh.id]
    assert [d.id for d in store.recovery_candidates("web", "staging")] == [running.id]
    assert approval.id not in [d.id for d in store.recovery_candidates()]

    assert store.claim_recovery(running.id, is_alive=dead) is None  # this process owns it
    orphan(store, running.id)
    assert store.claim_recovery(running.id, is_alive=alive) is None  # its owner lives
    other = engine_store.open()
    claimed = other.claim_recovery(running.id, is_alive=dead)
    assert claimed is not None and claimed.id == running.id
    raw = store.db.query("SELECT recovery_pid, recovery_claimed_at FROM deployments "
                         "WHERE id = ?", [running.id])[0]
    assert raw["recovery_pid"] and raw["recovery_claimed_at"] == START.isoformat()
    # a live claim holds: nobody else claims it
    assert store.claim_recovery(running.id, is_alive=lambda pid, s: pid == raw["recovery_pid"]) \
        is None
    other.release_recovery(running.id, needs_recovery=True)
    row = store.db.query("SELECT recovery_pid, needs_recovery FROM deployments WHERE id = ?",
                         [running.id])[0]
    assert (row["recovery_pid"], row["needs_recovery"]) == (None, 1)
    assert [e["kind"] for e in store.events(running.id)][-1] == "recovery.claimed"
    store.transition(running.id, S.INTERRUPTED)
    # finished but still marked needs_recovery: claimable whoever owned it
    assert store.claim_recovery(running.id, is_alive=alive) is not None
    store.release_recovery(running.id, needs_recovery=False)
    assert store.claim_recovery(running.id, is_alive=dead) is None


def test_unrecorded_and_unresolved(store):
    done = finish(store, environment="prod")
    finish(store, environment="prod", dry_run=True)
    assert store.unrecorded(is_alive=dead) == []  # its owner is this process
    orphan(store, done.id)
    assert [d.id for d in store.unrecorded(is_alive=dead)] == [done.id]
    assert store.unrecorded(is_alive=alive) == []
    store.update_deployment(done.id, record="# record")
    assert store.unrecorded(is_alive=dead) == []

    rolling = walk(store, create(store, environment="prod").id, S.CHECKING, S.DEPLOYING)
    assert [d.id for d in store.unresolved("web", "prod", is_alive=dead)] == [rolling.id]
    assert store.unresolved("web", "prod", is_alive=alive) == []
    store.transition(rolling.id, S.INTERRUPTED)
    store.release_recovery(rolling.id, needs_recovery=True)
    assert [d.id for d in store.unresolved("web", "prod", is_alive=alive)] == [rolling.id]


def owner(store, dep_id) -> tuple:
    row = store.db.query("SELECT owner_pid, owner_start, owner_replica FROM deployments "
                         "WHERE id = ?", [dep_id])[0]
    return row["owner_pid"], row["owner_start"], row["owner_replica"]


def test_adopt_makes_this_process_the_owner(store):
    d = create(store)
    store.db.execute("UPDATE deployments SET owner_pid = 1, owner_start = 'x', "
                     "owner_replica = 'elsewhere/1/x' WHERE id = ?", [d.id])
    assert store.adopt(d.id, expect=S.CHECKING) is False  # it is requested: left alone
    assert owner(store, d.id) == (1, "x", "elsewhere/1/x")
    assert store.adopt(d.id, expect=S.REQUESTED) is True
    assert owner(store, d.id) == (os.getpid(), liveness.my_marker(), liveness.my_replica())
    assert store.adopt(d.id) is True


def test_claim_resume_once_and_only_while_awaiting_approval(engine_store, store):
    d = walk(store, create(store).id, S.CHECKING, S.AWAITING_APPROVAL)
    orphan(store, d.id)
    assert d.id not in [c.id for c in store.recovery_candidates()]  # waits for a person
    assert engine_store.open().claim_resume(d.id) is True
    assert store.claim_resume(d.id) is False
    assert owner(store, d.id)[0] == os.getpid()
    # once claimed, its driver may die: recovery looks at it
    assert d.id in [c.id for c in store.recovery_candidates()]
    requested = create(store, ticket="T-2")
    assert store.claim_resume(requested.id) is False
    assert store.claim(d.id, "thread_claimed") is True
    assert store.claim(d.id, "thread_claimed") is False


def test_first_request_once_per_key_and_forgotten_after_keep(engine_store, store):
    assert store.first_request("slack:trigger-1") is True
    assert engine_store.open().first_request("slack:trigger-1") is False
    assert store.first_request("slack:trigger-2") is True
    engine_store.clock.advance(hours=2)
    assert store.first_request("slack:trigger-3") is True  # and the old keys go
    assert store.first_request("slack:trigger-1") is True
    keys = [r["key"] for r in store.db.query("SELECT key FROM requests_seen ORDER BY key")]
    assert keys == ["slack:trigger-1", "slack:trigger-3"]


def test_replicas_beat_go_stale_leave_and_are_forgotten(engine_store, store):
    clock = engine_store.clock
    store.replica_beat("host-a/100/m1", version="1.2")
    clock.advance(seconds=5)
    store.replica_beat("host-b/200/m2")
    clock.advance(seconds=5)
    store.replica_beat("host-a/100/m1")  # an update, not a second row
    rows = store.replicas()
    assert [(r["id"], r["host"], r["pid"], r["start_marker"], r["version"]) for r in rows] == [
        ("host-a/100/m1", "host-a", 100, "m1", "1.2"), ("host-b/200/m2", "host-b", 200, "m2", "")]
    assert rows[0]["heartbeat_at"] == (START + timedelta(seconds=10)).isoformat()
    clock.advance(seconds=11)  # host-b: 16 s without a heartbeat
    assert [(r["id"], r["alive"]) for r in store.replicas()] == \
        [("host-a/100/m1", True), ("host-b/200/m2", False)]
    store.replica_gone("host-a/100/m1")
    assert [r["id"] for r in store.replicas()] == ["host-b/200/m2"]
    assert store.forget_stale_replicas(timedelta(hours=1)) == 0
    clock.advance(hours=1)
    assert store.forget_stale_replicas(timedelta(hours=1)) == 1
    assert store.replicas() == []


def test_a_deployment_of_another_machine_lives_while_its_replica_beats(engine_store, store):
    clock = engine_store.clock
    d = walk(store, create(store, environment="prod").id, S.CHECKING, S.DEPLOYING)
    store.db.execute("UPDATE deployments SET owner_pid = 7, owner_start = 'm', "
                     "owner_replica = 'far-away/7/m' WHERE id = ?", [d.id])
    store.replica_beat("far-away/7/m")
    # the process table of this machine says nothing about another's: only the heartbeat
    assert store.claim_recovery(d.id, is_alive=dead) is None
    assert store.unresolved("web", "prod", is_alive=dead) == []
    clock.advance(seconds=16)
    assert [u.id for u in store.unresolved("web", "prod", is_alive=alive)] == [d.id]
    claimed = engine_store.open().claim_recovery(d.id, is_alive=alive)
    assert claimed is not None
    assert store.events(d.id)[-1]["detail"] == \
        f"replica {liveness.my_replica()} recovers it (replica far-away/7/m ended)"


# -- checks and gates -----------------------------------------------------------------------------

def test_checks_are_saved_once_per_name_in_position_order(store):
    d = create(store)
    store.save_check(CheckResult(deployment_id=d.id, name="ci", title="CI green", position=2,
                                 status=CheckStatus.RUNNING))
    store.save_check(CheckResult(deployment_id=d.id, name="ticket", title="Ticket ready",
                                 position=1, status=CheckStatus.PASSED, reason="ok",
                                 evidence="state=ready"))
    store.save_check(CheckResult(deployment_id=d.id, name="ci", title="CI green", position=2,
                                 status=CheckStatus.FAILED, reason="red"))
    checks = store.checks(d.id)
    assert [(c.name, c.status, c.reason, c.evidence) for c in checks] == [
        ("ticket", CheckStatus.PASSED, "ok", "state=ready"), ("ci", CheckStatus.FAILED, "red", "")]
    assert checks[0].updated_at == START
    assert [e["kind"] for e in store.events(d.id)][1:] == ["check.passed", "check.failed"]


def test_gates_are_decided_once(engine_store, store):
    d = walk(store, create(store).id, S.CHECKING, S.AWAITING_APPROVAL)
    gate = store.create_gate(d.id, GateKind.APPROVAL, "approve web v1?")
    notes = store.create_gate(d.id, GateKind.NOTES_ACK, "read the notes")
    assert (gate.status, gate.prompt, gate.created_at) == \
        (GateStatus.PENDING, "approve web v1?", START)
    decided, now = store.decide_gate(gate.id, approved=True, decided_by="bob", reason="lgtm",
                                     via="slack")
    assert now and decided.status is GateStatus.APPROVED and decided.decided_by == "bob"
    again, now_again = engine_store.open().decide_gate(gate.id, approved=False,
                                                       decided_by="eve")
    assert not now_again and again.status is GateStatus.APPROVED and again.decided_by == "bob"
    assert [g.id for g in store.gates(d.id)] == [gate.id, notes.id]
    assert [g.id for g in store.gates(d.id, kind=GateKind.NOTES_ACK)] == [notes.id]
    assert store.gate(gate.id).reason == "lgtm"
    with pytest.raises(StateError, match="no gate #999"):
        store.gate(999)
    approved = [e for e in store.events(d.id) if e["kind"] == "gate.approved"]
    assert [(e["actor"], e["detail"], e["via"]) for e in approved] == \
        [("bob", "approval: lgtm", "slack")]


# -- locks ----------------------------------------------------------------------------------------

def test_locks_acquire_ours_theirs_and_release_with_expect(engine_store, store):
    d = create(store)
    ok, lock = store.acquire_lock("env:staging", holder="ann", reason="deploying",
                                  deployment_id=d.id, ttl=600, via="cli")
    assert ok and lock.deployment_id == d.id and lock.acquired_at == START
    assert lock.expires_at == START + timedelta(seconds=600)
    assert store.acquire_lock("env:staging", holder="ann", reason="again",
                              deployment_id=d.id)[0] is True  # already ours
    other = engine_store.open()
    ok, held = other.acquire_lock("env:staging", holder="bob", reason="mine")
    assert not ok and held.holder == "ann"
    assert store.lock("nope") is None

    store.acquire_lock("env:prod", holder="bob", reason="manual")
    stale = store.lock("env:prod")
    store.release_lock("env:prod", actor="bob", reason="done")
    store.acquire_lock("env:prod", holder="cy", reason="manual")
    assert store.release_lock("env:prod", actor="bob", reason="late", expect=stale) is None
    assert store.lock("env:prod").holder == "cy"
    released = store.release_lock("env:prod", actor="cy", reason="done",
                                  expect=store.lock("env:prod"))
    assert released.holder == "cy" and store.release_lock("env:prod", actor="x", reason="") is None
    assert [lock.scope for lock in store.locks()] == ["env:staging"]


def test_locks_expire_unless_heartbeating_or_awaiting_approval(engine_store, store):
    clock = engine_store.clock
    running = walk(store, create(store).id, S.CHECKING, S.DEPLOYING)
    waiting = walk(store, create(store, ticket="T-2").id, S.CHECKING, S.AWAITING_APPROVAL)
    store.acquire_lock("a", holder="ann", reason="r", deployment_id=running.id, ttl=60)
    store.acquire_lock("b", holder="ann", reason="r", deployment_id=waiting.id, ttl=60)
    store.acquire_lock("manual", holder="bob", reason="r")
    clock.advance(seconds=50)
    assert store.heartbeat(running.id, 60) == 1
    assert store.lock("a").heartbeat_at == START + timedelta(seconds=50)
    clock.advance(seconds=50)
    assert store.expire_locks() == []
    clock.advance(seconds=11)
    said = store.expire_locks()
    assert [(lock.scope, text) for lock, text in said] == [(
        "a", f"lock of #{running.id} on a expired at 2026-11-26 12:01:50 UTC (no heartbeat "
             "since 2026-11-26 12:00:50 UTC), released")]
    assert sorted(lock.scope for lock in store.locks()) == ["b", "manual"]
    # an expired lock counts as free when someone asks for it
    clock.advance(days=1)
    store.db.execute("UPDATE locks SET expires_at = ? WHERE scope = 'manual'",
                     [START.isoformat()])
    ok, lock = store.acquire_lock("manual", holder="cy", reason="new")
    assert ok and lock.holder == "cy"


# -- audit trail ----------------------------------------------------------------------------------

def test_events_and_audit_trail_order_and_filters(engine_store, store):
    clock = engine_store.clock
    a = create(store)
    clock.advance(hours=1)
    b = create(store, ticket="T-2")
    store.record_event(None, "bob", "config.reloaded", "ok", via="cli")
    store.record_event(a.id, "deploybot", "note", "later")
    everything = store.audit_trail()
    assert [e["id"] for e in everything] == sorted(e["id"] for e in everything)
    assert [(e["deployment_id"], e["kind"]) for e in everything] == [
        (a.id, "requested"), (b.id, "requested"), (None, "config.reloaded"), (a.id, "note")]
    assert [e["kind"] for e in store.audit_trail(deployment_id=a.id)] == ["requested", "note"]
    since = store.audit_trail(since=START + timedelta(hours=1))
    assert [e["deployment_id"] for e in since] == [b.id, None, a.id]
    newest_first = store.events(limit=2)
    assert [e["kind"] for e in newest_first] == ["note", "config.reloaded"]
    assert [e["kind"] for e in store.events(a.id)] == ["requested", "note"]
    assert set(everything[0]) >= {"id", "at", "deployment_id", "actor", "kind", "detail", "via"}


def test_stored_texts_pass_through_the_redaction(store):
    store.redact = lambda text: text.replace("hunter2", "[redacted]")
    d = create(store, break_glass="pw hunter2")
    store.transition(d.id, S.CHECKING, failure="login hunter2 refused", detail="hunter2!")
    gate = store.create_gate(d.id, GateKind.APPROVAL, "hunter2?")
    store.decide_gate(gate.id, approved=False, decided_by="bob", reason="no hunter2")
    store.save_check(CheckResult(deployment_id=d.id, name="c", title="t", position=1,
                                 status=CheckStatus.FAILED, reason="hunter2 seen"))
    store.acquire_lock("s", holder="bob", reason="hunter2 lock")
    store.record_event(d.id, "bob", "note", "said hunter2")
    dump = repr([store.db.query(f"SELECT * FROM {t}") for t in
                 ("deployments", "events", "gates", "checks", "locks")])
    assert "hunter2" not in dump and dump.count("[redacted]") >= 8


# -- DORA rows ------------------------------------------------------------------------------------

def test_note_ticket_ready_keeps_the_first_times_and_dora_rows(engine_store, store):
    clock = engine_store.clock
    created, ready = START - timedelta(days=3), START - timedelta(days=1)
    store.note_ticket_ready("T-1", created_at=created, ready_at=ready)
    clock.advance(hours=1)
    store.note_ticket_ready("T-1", created_at=START, ready_at=START)  # sent back, ready again
    store.note_ticket_ready("T-2", created_at=None, ready_at=None)
    deployed = finish(store, environment="prod")
    blocked = create(store, ticket="T-2")
    walk(store, blocked.id, S.CHECKING, S.BLOCKED)
    finish(store, dry_run=True)
    rows = store.dora_rows()
    assert [r["id"] for r in rows] == [deployed.id, blocked.id]
    first, second = rows
    assert first["reached_backend"] is True and second["reached_backend"] is False
    assert (first["ticket_created_at"], first["ticket_ready_at"]) == (created, ready)
    assert first["ticket_first_seen_ready_at"] == START
    assert second["ticket_created_at"] is None
    assert second["ticket_first_seen_ready_at"] == START + timedelta(hours=1)
    assert first["finished_at"] == START + timedelta(hours=1)
    assert (first["status"], second["status"]) == ("succeeded", "blocked")


# -- outbox ---------------------------------------------------------------------------------------

def test_outbox_add_once_claim_lease_and_deliver(engine_store, store):
    clock = engine_store.clock
    box = OutboxTable(store)
    d = create(store)
    assert box.add(deployment_id=d.id, kind="comment", target="ticket:T-1", key="c1",
                   payload={"text": "hi"}) is True
    assert box.add(deployment_id=d.id, kind="comment", target="ticket:T-1", key="c1",
                   payload={"text": "again"}) is False
    box.add(deployment_id=d.id, kind="comment", target="ticket:T-1", key="c2",
            payload={"text": "second"})
    box.add(deployment_id=None, kind="post", target="thread:1", key="p1", payload={"n": 1})
    other = OutboxTable(engine_store.open())
    assert box.claim("me", 30, ["nothing"]) is None
    item = box.claim("me", 30, ["comment"])
    assert (item.key, item.payload, item.state, item.attempts) == ("c1", {"text": "hi"},
                                                                   PENDING, 0)
    # leased: nobody else gets it, and c2 waits behind the head of its target
    assert other.claim("you", 30, ["comment"]) is None
    assert other.claim("you", 30, ["comment", "post"]).key == "p1"
    assert other.delivered(item, "you", "not yours") is False
    assert box.delivered(item, "me", "commented") is True
    assert box.by_key("c1").state == DELIVERED and box.by_key("c1").delivered_at == START
    assert box.by_key("nope") is None
    assert box.claim("me", 30, ["comment"], targets=["ticket:T-1"]).key == "c2"
    assert box.claim("me", 30, ["comment"], targets=[]) is None
    # a lease ends: the item can be claimed again
    clock.advance(seconds=31)
    assert other.claim("you", 30, ["comment"], skip_targets=["ticket:T-1"]) is None
    assert other.claim("you", 30, ["comment"]).key == "c2"
    kinds = [e["kind"] for e in store.events(d.id)]
    assert kinds.count("outbox.delivered") == 1


def test_outbox_retry_failed_stuck_and_items(engine_store, store):
    clock = engine_store.clock
    box = OutboxTable(store)
    store.redact = lambda text: text.replace("tok-123", "[redacted]")
    box.add(deployment_id=None, kind="comment", target="ticket:T-1", key="c1",
            payload={"auth": "tok-123", "list": ["tok-123"]})
    box.add(deployment_id=None, kind="comment", target="ticket:T-2", key="alert:1",
            payload={})
    item = box.claim("me", 30, ["comment"])
    assert item.payload == {"auth": "[redacted]", "list": ["[redacted]"]}
    assert box.retry(item, "me", "HTTP   500\n tok-123 " + "x" * 600,
                     START + timedelta(minutes=5), "retrying") is True
    again = box.by_key("c1")
    assert again.attempts == 1 and again.next_attempt_at == START + timedelta(minutes=5)
    assert again.last_error.startswith("HTTP 500 [redacted] x") and len(again.last_error) == 500
    assert box.claim("me", 30, ["comment"], targets=["ticket:T-1"]) is None  # not due yet
    clock.advance(minutes=6)
    item = box.claim("me", 30, ["comment"], targets=["ticket:T-1"])
    ran = []
    assert box.failed(item, "me", "HTTP 404", "gave up", then=lambda: ran.append(1)) is True
    assert ran == [1] and box.by_key("c1").state == FAILED and box.by_key("c1").attempts == 2
    assert [i.key for i in box.items()] == ["c1", "alert:1"]
    assert [i.key for i in box.items(states=[FAILED])] == ["c1"]
    # stuck: pending, created before the time, and not an alert itself; marked once
    assert box.stuck(START + timedelta(hours=1), "alert:") == []
    box.add(deployment_id=None, kind="comment", target="ticket:T-3", key="c3", payload={})
    stuck = box.stuck(START + timedelta(hours=1), "alert:")
    assert [i.key for i in stuck] == ["c3"]
    assert box.mark_stuck(stuck[0], "c3 stuck") is True
    assert box.mark_stuck(stuck[0], "c3 stuck") is False
    assert box.stuck(START + timedelta(hours=1), "alert:") == []
    kinds = [e["kind"] for e in store.audit_trail()]
    assert kinds == ["outbox.retrying", "outbox.failed", "outbox.stuck"]


# -- concurrency: each thread its own Store, as replicas ------------------------------------------

def race(engine_store, action, n=8):
    """Run action(store, i) in n threads at once, each with its own Store; returns
    (results, errors)."""
    stores = [engine_store.open() for _ in range(n)]
    barrier = threading.Barrier(n)
    results, errors = [None] * n, [None] * n

    def run(i):
        barrier.wait(timeout=30)
        try:
            results[i] = action(stores[i], i)
        except Exception as exc:  # collected for the assertions
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a racing thread hung"
    return results, errors


def test_concurrent_creates_with_one_request_key_store_one_row(engine_store, store):
    results, errors = race(engine_store, lambda s, i: s.create_deployment(
        ticket_id="T-1", service="web", version="v1", environment="prod",
        requested_by=f"user{i}", request_key="slack:retry"))
    assert errors == [None] * 8
    assert sum(created for _, created in results) == 1
    assert len({d.id for d, _ in results}) == 1
    assert store.db.query("SELECT COUNT(*) AS n FROM deployments")[0]["n"] == 1


def test_concurrent_decisions_of_one_gate_decide_once(engine_store, store):
    d = walk(store, create(store).id, S.CHECKING, S.AWAITING_APPROVAL)
    gate = store.create_gate(d.id, GateKind.APPROVAL, "ok?")
    results, errors = race(engine_store, lambda s, i: s.decide_gate(
        gate.id, approved=i % 2 == 0, decided_by=f"user{i}"))
    assert errors == [None] * 8
    winners = [g for g, now in results if now]
    assert len(winners) == 1
    assert {(g.status, g.decided_by) for g, _ in results} == \
        {(winners[0].status, winners[0].decided_by)}
    decisions = [e for e in store.events(d.id) if e["kind"].startswith("gate.") and
                 e["kind"] != "gate.requested"]
    assert len(decisions) == 1


def test_concurrent_one_at_a_time_creates_store_one(engine_store, store):
    results, errors = race(engine_store, lambda s, i: s.create_deployment(
        ticket_id="T-1", service="web", version="v1", environment="prod",
        requested_by=f"user{i}", one_at_a_time=True))
    assert len([r for r in results if r is not None]) == 1
    refused = [e for e in errors if e is not None]
    assert len(refused) == 7 and all(isinstance(e, StateError) for e in refused)
    assert all("is already being deployed" in str(e) for e in refused)
    assert store.db.query("SELECT COUNT(*) AS n FROM deployments")[0]["n"] == 1


def test_concurrent_lock_requests_give_the_lock_to_one(engine_store, store):
    results, errors = race(engine_store, lambda s, i: s.acquire_lock(
        "env:prod", holder=f"user{i}", reason="mine"))
    assert errors == [None] * 8
    winners = [lock.holder for ok, lock in results if ok]
    assert len(winners) == 1
    assert {lock.holder for _, lock in results} == set(winners)
    assert [e["kind"] for e in store.audit_trail()] == ["lock.acquired"]


def test_concurrent_deliverers_never_hold_the_same_item(engine_store, store):
    box = OutboxTable(store)
    for n in range(4):
        box.add(deployment_id=None, kind="comment", target=f"ticket:{n}", key=f"k{n}",
                payload={})
    results, errors = race(engine_store, lambda s, i: OutboxTable(s).claim(
        f"deliverer{i}", 30, ["comment"]))
    assert errors == [None] * 8
    claimed = [item.key for item in results if item is not None]
    assert sorted(claimed) == ["k0", "k1", "k2", "k3"]
    owners = store.db.query("SELECT key, lease_owner FROM outbox ORDER BY key")
    assert len({row["lease_owner"] for row in owners}) == 4


def test_concurrent_resumes_first_requests_and_beats_one_winner_each(engine_store, store):
    d = walk(store, create(store).id, S.CHECKING, S.AWAITING_APPROVAL)
    resumed, errors = race(engine_store, lambda s, i: s.claim_resume(d.id))
    assert errors == [None] * 8 and resumed.count(True) == 1
    firsts, errors = race(engine_store, lambda s, i: s.first_request("slack:event-9"))
    assert errors == [None] * 8 and firsts.count(True) == 1
    _, errors = race(engine_store, lambda s, i: s.replica_beat("host-c/300/m3"))
    assert errors == [None] * 8
    assert [r["id"] for r in store.replicas()] == ["host-c/300/m3"]
