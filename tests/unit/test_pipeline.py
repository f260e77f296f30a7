"""The deployment process end to end, with in-memory backends: fast and exact."""

from __future__ import annotations

import pytest

from backends.trackers.local import LocalTracker
from bot import config as configuration
from bot.errors import InputError, NotAllowed, StateError
from bot.identity import slack_actor
from bot.models import CheckStatus, DeploymentStatus, GateKind, GateStatus
from bot.pipeline import Pipeline
from bot.ports import GateDecision
from bot.store import Store
from fakes.core import FakeBackend, FakeProbe, InstantClock, RecordingReporter, ScriptedApprover

CONFIG = {
    "tracker": {"kind": "local", "rules": {
        "cq_approval": {"pattern": r"(?im)^\s*CQ\s*approved\b", "authors": ["bob", "dana"]},
        "qa_pass": {"pattern": r"(?im)^\s*QA\s*PASS\b", "authors": ["carol"]},
    }},
    "environments": {
        "staging": {},
        "production": {"production": True, "approvals_required": 1, "approvers": ["bob", "dana"]},
    },
    "services": {"web": {"image": "demo-web",
                         "health": {"url": "http://127.0.0.1:9/health"},
                         "smoke": [{"url": "http://127.0.0.1:9/api/ping", "contains": "pong"}]}},
    "people": {"alice": {"slack": "U0ALICE", "tracker": "alice"},
               **{n: {"tracker": n} for n in ("bob", "carol", "dana", "erin")}},
}


class World:
    def __init__(self, tmp_path, decisions=None, overrides=None, backend=None, probe=None,
                 **pipeline_args):
        data = {**CONFIG, **(overrides or {})}
        self.config = configuration.parse(data)
        self.store = Store(tmp_path / "deploybot.db")
        self.tracker = LocalTracker(self.store)
        self.backend = backend or FakeBackend()
        self.probe = probe or FakeProbe(self.backend)
        self.reporter = RecordingReporter()
        self.approver = ScriptedApprover(list(decisions or []))
        self.pipeline = Pipeline(config=self.config, store=self.store, tracker=self.tracker,
                                 backend_for=lambda s, e: self.backend, reporter=self.reporter,
                                 approver=self.approver, probe=self.probe, clock=InstantClock(),
                                 **pipeline_args)

    def ticket(self, *, status="Ready for Production", cq="bob", qa="carol", extra=()):
        tid = self.tracker.create_ticket("Ship it", status=status)
        if cq:
            self.tracker.add_comment(tid, "CQ approved", author=cq)
        if qa:
            self.tracker.add_comment(tid, "QA PASS", author=qa)
        for author, body in extra:
            self.tracker.add_comment(tid, body, author=author)
        return tid

    def deploy(self, tid, target="web@v2", env="staging", user="alice", **kw):
        d = self.pipeline.request_deploy(tid, requested_by=user, target=target,
                                         environment=env, **kw)
        return self.pipeline.run(d.id)

    def check(self, d, name):
        return next(c for c in self.store.checks(d.id) if c.name == name)

    def comments(self, tid):
        return [c.body for c in self.tracker.comments(tid)]


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


def test_deploy_that_passes_every_check_succeeds_and_records_previous_version(world):
    world.backend.running = "v1"
    tid = world.ticket()
    d = world.deploy(tid)
    assert d.status is DeploymentStatus.SUCCEEDED
    assert d.previous_version == "v1"
    assert world.backend.running == "v2"
    assert world.backend.calls == ["prepare v2", "deploy v2", "finalize"]
    assert "**Previous Version:** v1" in d.record
    assert "- [x] CQ review confirmed" in d.record
    assert "- [x] Smoke tests passing" in d.record
    # posted once through the reporter and once on the ticket
    assert world.reporter.records == [d.record]
    assert world.comments(tid).count(d.record) == 1
    assert world.store.locks() == []


def test_deploy_is_blocked_without_qa_pass(world):
    world.backend.running = "v1"
    tid = world.ticket(qa=None)
    d = world.deploy(tid)
    assert d.status is DeploymentStatus.BLOCKED
    assert world.check(d, "qa_pass").status is CheckStatus.FAILED
    assert "no QA PASS comment" in world.check(d, "qa_pass").reason
    assert world.backend.calls == []
    assert any("Deployment blocked" in body for body in world.comments(tid))
    assert ("blocked", ["qa_pass"]) in world.reporter.events
    assert world.store.locks() == []


def test_deploy_is_blocked_when_ticket_is_not_ready(world):
    tid = world.ticket(status="In Review")
    d = world.deploy(tid)
    assert d.status is DeploymentStatus.BLOCKED
    assert "not 'Ready for Production'" in world.check(d, "ticket_status").reason


def test_requesters_own_cq_comment_does_not_count_even_under_another_name(world):
    # alice is U0ALICE in Slack; her own CQ comment never approves her deployment
    world.config.tracker.rules.cq_approval.authors.append("alice")
    tid = world.ticket(cq="alice")
    d = world.deploy(tid, user="U0ALICE")
    assert d.status is DeploymentStatus.BLOCKED
    assert "by the requester" in world.check(d, "cq_approval").reason


def test_cq_by_someone_not_allowed_blocks(world):
    tid = world.ticket(cq="mallory")
    d = world.deploy(tid)
    assert "may not give it" in world.check(d, "cq_approval").reason


def test_approval_before_a_new_build_is_stale(world):
    tid = world.ticket(extra=[("dave", "New build: v2 rebuilt with the fix")])
    d = world.deploy(tid)
    assert d.status is DeploymentStatus.BLOCKED
    assert "stale" in world.check(d, "cq_approval").reason


def test_missing_image_fails_and_leaves_running_version(world):
    world.backend.running = "v1"
    world.backend.missing.add("v9")
    d = world.deploy(world.ticket(), target="web@v9")
    assert d.status is DeploymentStatus.FAILED
    assert world.backend.running == "v1"
    assert "v1 is still running, nothing changed" in d.failure
    assert "FAILED" in d.record


def test_bad_version_is_rolled_back_and_record_says_why(world):
    world.backend.running = "v2"
    world.probe.bad.add("v3")
    tid = world.ticket()
    d = world.deploy(tid, target="web@v3")
    assert d.status is DeploymentStatus.ROLLED_BACK
    assert world.backend.running == "v2"
    assert "rolled back to v2" in d.failure
    assert "- [ ] Health checks passing — FAILED" in d.record
    assert "ROLLED BACK" in d.record
    assert any(k == "alert" for k in world.reporter.kinds())
    assert world.comments(tid).count(d.record) == 1


def test_second_deployment_is_blocked_by_the_lock_until_unlocked(world):
    world.backend.running = "v1"
    world.pipeline.lock("staging", user="ops", reason="database maintenance")
    d = world.deploy(world.ticket())
    assert d.status is DeploymentStatus.BLOCKED
    assert "held by ops" in world.check(d, "lock").reason
    assert "database maintenance" in world.check(d, "lock").reason
    with pytest.raises(InputError):
        world.pipeline.unlock("staging", user="ops", reason="")
    world.pipeline.unlock("staging", user="ops", reason="maintenance done")
    assert world.deploy(world.ticket()).status is DeploymentStatus.SUCCEEDED


def test_production_needs_an_approver_who_is_not_the_requester(world):
    world.backend.running = "v1"
    d = world.deploy(world.ticket(), env="production", user="dana")
    assert d.status is DeploymentStatus.AWAITING_APPROVAL
    gate = world.pipeline.pending_gates(d.id)[0]
    with pytest.raises(NotAllowed, match="requested this deployment"):
        world.pipeline.decide_gate(gate.id, decided_by="dana", approved=True)
    with pytest.raises(NotAllowed, match="may not approve"):
        world.pipeline.decide_gate(gate.id, decided_by="mallory", approved=True)
    assert world.backend.calls == []
    outcome = world.pipeline.decide_gate(gate.id, decided_by="bob", approved=True)
    assert outcome.decided_now
    assert outcome.deployment.status is DeploymentStatus.SUCCEEDED
    again = world.pipeline.decide_gate(gate.id, decided_by="dana", approved=True)
    assert not again.decided_now and again.gate.decided_by == "bob"
    assert world.backend.calls.count("deploy v2") == 1


def test_rejection_needs_a_reason_and_stops_the_deployment(world):
    d = world.deploy(world.ticket(), env="production")
    gate = world.pipeline.pending_gates(d.id)[0]
    with pytest.raises(InputError):
        world.pipeline.decide_gate(gate.id, decided_by="dana", approved=False)
    out = world.pipeline.decide_gate(gate.id, decided_by="dana", approved=False,
                                     reason="not during the sale")
    assert out.deployment.status is DeploymentStatus.REJECTED
    assert world.store.locks() == []


def test_deployment_notes_must_be_acknowledged(world):
    tid = world.ticket(extra=[("carol", "Deployment notes: clear the CDN cache after")])
    d = world.deploy(tid)
    assert d.status is DeploymentStatus.AWAITING_APPROVAL
    gate = world.pipeline.pending_gates(d.id)[0]
    assert gate.kind is GateKind.NOTES_ACK and "clear the CDN cache" in gate.prompt
    out = world.pipeline.decide_gate(gate.id, decided_by="alice", approved=True)
    assert out.deployment.status is DeploymentStatus.SUCCEEDED
    assert "acknowledged by alice" in world.check(d, "deployment_notes").reason


def test_gate_decided_from_a_new_process_resumes_from_the_store(tmp_path):
    first = World(tmp_path)
    first.backend.running = "v1"
    d = first.deploy(first.ticket(), env="production")
    gate_id = first.pipeline.pending_gates(d.id)[0].id
    first.store.close()
    second = World(tmp_path)  # a new process: same database file, fresh objects
    second.backend.running = "v1"
    out = second.pipeline.decide_gate(gate_id, decided_by="dana", approved=True)
    assert out.deployment.status is DeploymentStatus.SUCCEEDED
    assert second.backend.running == "v2"


def test_dry_run_checks_everything_and_changes_nothing(world):
    world.backend.running = "v1"
    tid = world.ticket()
    before = world.comments(tid)
    d = world.deploy(tid, dry_run=True)
    assert d.status is DeploymentStatus.SUCCEEDED and d.dry_run
    assert world.backend.calls == []
    assert world.store.locks() == []
    assert "Planned steps" in d.verification
    assert world.comments(tid) == before


def test_version_comes_from_the_ticket_and_ambiguity_is_refused(world):
    tid = world.ticket(extra=[("alice", "deploy: web@v5")])
    d = world.pipeline.request_deploy(tid, requested_by="alice", environment="staging")
    assert (d.service, d.version) == ("web", "v5")
    tid2 = world.ticket(extra=[("alice", "deploy: web@v5"), ("alice", "deploy: web@v6")])
    with pytest.raises(InputError, match="more than one"):
        world.pipeline.request_deploy(tid2, requested_by="alice", environment="staging")
    tid3 = world.ticket()
    with pytest.raises(InputError, match="does not say what to deploy"):
        world.pipeline.request_deploy(tid3, requested_by="alice", environment="staging")


@pytest.mark.parametrize("ticket,target,env,message", [
    ("not a ticket", "web@v2", "staging", "not a ticket id"),
    ("DEMO-1", "web@v2;rm -rf /", "staging", "not a valid version"),
    ("DEMO-1", "nosuch@v2", "staging", "unknown service"),
    ("DEMO-1", "web@v2", "moon", "unknown environment"),
    ("DEMO-1", "web", "staging", "not service@version"),
])
def test_bad_input_changes_nothing(world, ticket, target, env, message):
    world.ticket()
    with pytest.raises(InputError, match=message):
        world.pipeline.request_deploy(ticket, requested_by="alice", target=target, environment=env)
    assert world.store.deployments() == []


def test_manual_rollback_returns_to_the_previous_version(world):
    world.backend.running = "v1"
    world.deploy(world.ticket())
    d = world.pipeline.request_rollback(requested_by="alice", service="web", environment="staging")
    assert (d.version, d.previous_version) == ("v1", "v2")
    d = world.pipeline.run(d.id)
    assert d.status is DeploymentStatus.SUCCEEDED
    assert world.backend.running == "v1"
    assert "Manual rollback of web from v2 to v1" in d.record


def test_a_redelivered_request_is_one_deployment(world):
    tid = world.ticket()
    a = world.pipeline.request_deploy(tid, requested_by="alice", target="web@v2",
                                      environment="staging", request_key="slack:T1:abc")
    b = world.pipeline.request_deploy(tid, requested_by="alice", target="web@v2",
                                      environment="staging", request_key="slack:T1:abc")
    assert a.id == b.id
    assert len(world.store.deployments()) == 1


def test_cancel_before_deploying_frees_the_lock_and_refuses_later(world):
    d = world.deploy(world.ticket(), env="production")
    d = world.pipeline.cancel(d.id, user="alice", reason="wrong ticket")
    assert d.status is DeploymentStatus.CANCELLED
    assert world.store.locks() == []
    with pytest.raises(StateError):
        world.pipeline.cancel(d.id, user="alice")


def test_infrastructure_red_blocks(world):
    world.backend.running = "v1"
    world.probe.down.add("http://127.0.0.1:9/health")
    d = world.deploy(world.ticket())
    assert d.status is DeploymentStatus.BLOCKED
    assert "connection refused" in world.check(d, "infrastructure").reason


def test_store_refuses_moves_the_state_machine_does_not_allow(world):
    d = world.deploy(world.ticket())
    with pytest.raises(StateError):
        world.store.transition(d.id, DeploymentStatus.DEPLOYING)


def test_every_transition_is_in_the_audit_trail(world):
    d = world.deploy(world.ticket(), env="production")
    gate = world.pipeline.pending_gates(d.id)[0]
    world.pipeline.decide_gate(gate.id, decided_by="dana", approved=True)
    kinds = [e["kind"] for e in world.store.events(d.id)]
    for expected in ("requested", "checking", "awaiting_approval", "gate.approved", "deploying",
                     "verifying", "succeeded", "lock.acquired", "lock.released"):
        assert expected in kinds
    assert GateStatus.APPROVED is world.store.gate(gate.id).status


def test_approver_groups_allow_their_members_only(tmp_path):
    w = World(tmp_path, overrides={"environments": {
        "staging": {}, "production": {"approvals_required": 1, "approver_groups": ["S0SRE"]}}})
    d = w.deploy(w.ticket(), env="production")
    gate = w.pipeline.pending_gates(d.id)[0]
    with pytest.raises(NotAllowed):
        w.pipeline.decide_gate(gate.id, decided_by=slack_actor(w.config, "U0MALLORY", ("S0DEV",)),
                               approved=True)
    out = w.pipeline.decide_gate(gate.id, decided_by=slack_actor(w.config, "U0ERIN", ("S0SRE",)),
                                 approved=True)
    assert out.deployment.status is DeploymentStatus.SUCCEEDED


def test_store_survives_readers_and_writers_on_many_threads(tmp_path):
    import threading
    store = Store(tmp_path / "db.sqlite")
    errors = []
    d, _ = store.create_deployment(ticket_id="A-1", service="web", version="v1",
                                   environment="staging", requested_by="x")

    def writer(n):
        try:
            for i in range(30):
                store.record_event(d.id, f"w{n}", "step", str(i))
        except Exception as exc:
            errors.append(exc)

    def reader():
        try:
            for _ in range(60):
                store.deployment(d.id)
                store.lock("env:staging")
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_local_tracker_adds_labels_once(world):
    tid = world.ticket()
    world.tracker.add_labels(tid, ["deployed", "web"])
    world.tracker.add_labels(tid, ["web", "staging"])
    assert world.tracker.get_ticket(tid).labels == ["deployed", "web", "staging"]


def test_a_rollback_to_a_version_that_never_ran_there_is_refused(world):
    # `rollback web --to v9 --env production` would otherwise ship v9 to production without
    # its checklist or an approval.
    world.backend.running = "v1"
    world.deploy(world.ticket())
    with pytest.raises(InputError, match="v9 never ran web in staging: .* ran here \\(v2, v1\\)"
                       ) as caught:
        world.pipeline.request_rollback(requested_by="alice", service="web",
                                        environment="staging", to_version="v9")
    assert "deploybot deploy TICKET web@v9 --env staging" in caught.value.hint
    assert [d.kind.value for d in world.store.deployments()] == ["deploy"]
    d = world.pipeline.request_rollback(requested_by="alice", service="web",
                                        environment="staging", to_version="v1")
    assert world.pipeline.run(d.id).status is DeploymentStatus.SUCCEEDED


def test_rolling_back_a_ticket_whose_version_no_longer_runs_is_refused(world):
    world.backend.running = "v1"
    first = world.ticket()
    world.deploy(first, target="web@v2")
    world.deploy(world.ticket(), target="web@v3")
    with pytest.raises(InputError, match=f"{first} put v2 on web in staging, which no longer "
                                         f"runs there \\(v3 does\\)"):
        world.pipeline.request_rollback(requested_by="alice", ticket_ref=first)
    assert world.backend.running == "v3"
    assert len(world.store.deployments()) == 2


def test_rolling_back_a_ticket_puts_back_what_ran_before_it(world):
    world.backend.running = "v1"
    first = world.ticket()
    world.deploy(first, target="web@v2")
    world.deploy(world.ticket(), target="web@v3")
    back = world.pipeline.request_rollback(requested_by="alice", service="web",
                                           environment="staging")
    assert world.pipeline.run(back.id).status is DeploymentStatus.SUCCEEDED
    assert world.backend.running == "v2"  # the first ticket's version runs again
    d = world.pipeline.request_rollback(requested_by="alice", ticket_ref=first)
    assert (d.version, d.previous_version) == ("v1", "v2"), "not v3, the later ticket's"
