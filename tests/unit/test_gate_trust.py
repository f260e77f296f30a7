"""Gates you can trust: who approved (by account), what they said, and whether it still holds
when the rollout starts. Pipeline with in-memory parts and a tracker whose accounts have ids,
logins and display names their owners can change."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bot import config as configuration
from bot.errors import InputError, NotAllowed, StateError
from bot.identity import slack_actor
from bot.models import CheckStatus, DeploymentStatus
from bot.pipeline import Pipeline
from bot.store import Store
from fakes.core import FakeBackend, FakeProbe, InstantClock, RecordingReporter, ScriptedApprover
from fakes.tracker import T0, MemoryTracker, read_approval

CONFIG = {
    "tracker": {"kind": "redmine", "url": "http://127.0.0.1:9", "rules": {  # default wording
        "cq_approval": {"authors": ["bob", "dana"]}, "qa_pass": {"authors": ["carol"]}}},
    "environments": {
        "staging": {},
        "production": {"production": True, "approvals_required": 1, "approvers": ["bob", "dana"]},
    },
    "services": {"web": {"image": "demo-web", "health": {"url": "http://127.0.0.1:9/health"}}},
    "people": {"alice": {"slack": "U0ALICE", "tracker": "alice"},
               "bob": {"slack": "U0BOB", "tracker": "bob"},
               "carol": {"tracker": "carol"}, "dana": {"tracker": "15"},
               "erin": {"slack": "U0ERIN"}},  # erin has no tracker account
}


class World:
    def __init__(self, tmp_path, **overrides):
        data = {**CONFIG, **overrides}
        self.config = configuration.parse(data)
        self.store = Store(tmp_path / "deploybot.db", clock=lambda: T0)
        self.tracker = MemoryTracker()
        for login, uid, name in (("alice", "11", "Alice Developer"), ("bob", "12", "Bob Lead"),
                                 ("carol", "13", "Carol QA"), ("dana", "15", "Dana Lead"),
                                 ("mallory", "23", "Mallory"), ("frank", "24", "Frank")):
            self.tracker.user(login, uid, name)
        self.backend = FakeBackend(running="v1")
        self.reporter = RecordingReporter()
        self.approver = ScriptedApprover()
        self.pipeline = Pipeline(config=self.config, store=self.store, tracker=self.tracker,
                                 backend_for=lambda s, e: self.backend, reporter=self.reporter,
                                 approver=self.approver, probe=FakeProbe(self.backend),
                                 clock=InstantClock())

    def ready(self, *extra: tuple[str, str]) -> str:
        tid = self.tracker.ticket(str(len(self.tracker.tickets) + 7))
        self.tracker.say(tid, "bob", "CQ approved")
        self.tracker.say(tid, "carol", "QA PASS")
        for login, body in extra:
            self.tracker.say(tid, login, body)
        return tid

    def deploy(self, tid, env="staging", user="alice", target="web@v2"):
        d = self.pipeline.request_deploy(tid, requested_by=user, target=target, environment=env)
        return self.pipeline.run(d.id)

    def check(self, d, name):
        return next(c for c in self.store.checks(d.id) if c.name == name)


@pytest.fixture
def world(tmp_path):
    return World(tmp_path)


# -- 1. identity by account, never by display name --------------------------------------------

def test_a_renamed_display_name_never_approves_as_someone_else(world):
    world.tracker.rename("mallory", "bob")  # Mallory renames herself "bob"
    tid = world.tracker.ticket("7")
    world.tracker.say(tid, "mallory", "CQ approved")
    world.tracker.say(tid, "carol", "QA PASS")
    assert world.tracker.comments(tid)[0].author_name == "bob"
    d = world.deploy(tid)
    assert d.status is DeploymentStatus.BLOCKED
    reason = world.check(d, "cq_approval").reason
    assert "who may not give it" in reason and "id 23" in reason
    assert world.backend.running == "v1"


def test_the_real_account_still_counts_after_its_owner_renames_it(world):
    tid = world.ready()
    world.tracker.rename("bob", "Robert (on leave)")
    d = world.deploy(tid)
    assert d.status is DeploymentStatus.SUCCEEDED
    assert world.check(d, "cq_approval").reason.startswith("by bob on")


def test_people_may_name_a_numeric_account_id(world):
    tid = world.tracker.ticket("7")
    world.tracker.say(tid, "dana", "CQ approved")  # dana is people: {tracker: "15"}
    world.tracker.say(tid, "carol", "QA PASS")
    assert world.deploy(tid).status is DeploymentStatus.SUCCEEDED


def test_an_author_whose_account_cannot_be_resolved_fails_closed(tmp_path):
    w = World(tmp_path, people={**CONFIG["people"], "bob": {"tracker": "bobby"}})  # no such login
    tid = w.tracker.ticket("7")
    w.tracker.say(tid, "mallory", "CQ approved")
    w.tracker.say(tid, "carol", "QA PASS")
    outcome = read_approval(w.config, w.tracker, tid, requester="alice")
    assert outcome.status is CheckStatus.FAILED
    assert "cannot tell whether" in outcome.reason and "bobby" in outcome.reason
    # dana (resolvable) still approves on her own
    w.tracker.say(tid, "dana", "CQ approved")
    assert read_approval(w.config, w.tracker, tid, requester="alice").status is CheckStatus.PASSED


# -- 2. the requester's own comments never count; fail closed ---------------------------------

def test_the_requesters_own_approval_never_counts_with_open_authors(tmp_path):
    w = World(tmp_path, tracker={"kind": "redmine", "url": "http://127.0.0.1:9"})  # open rules
    tid = w.tracker.ticket("7")
    w.tracker.say(tid, "alice", "CQ approved")
    w.tracker.say(tid, "alice", "QA PASS")
    d = w.deploy(tid)
    assert d.status is DeploymentStatus.BLOCKED
    assert "by the requester (alice)" in w.check(d, "cq_approval").reason


def test_a_requester_without_a_tracker_account_fails_closed_and_says_how_to_fix_it(tmp_path):
    w = World(tmp_path, tracker={"kind": "redmine", "url": "http://127.0.0.1:9"})  # open rules
    tid = w.tracker.ticket("7")
    w.tracker.say(tid, "frank", "CQ approved")  # frank is not in people: who is he?
    w.tracker.say(tid, "frank", "QA PASS")
    d = w.deploy(tid, user="erin")  # erin has no Redmine account in people:
    assert d.status is DeploymentStatus.BLOCKED
    reason = w.check(d, "qa_pass").reason
    assert "erin has no Redmine account in people:" in reason
    assert "map erin to their Redmine account" in reason
    assert w.backend.running == "v1"


def test_an_unmapped_requester_is_still_told_apart_from_known_other_people(world):
    tid = world.ready()  # bob and carol are known people, neither is erin
    assert world.deploy(tid, user="erin").status is DeploymentStatus.SUCCEEDED


def test_a_requester_unknown_to_people_fails_closed_with_open_authors(tmp_path):
    w = World(tmp_path, tracker={"kind": "redmine", "url": "http://127.0.0.1:9"})
    tid = w.tracker.ticket("7")
    w.tracker.say(tid, "frank", "CQ approved")
    outcome = read_approval(w.config, w.tracker, tid, requester="U0STRANGER")
    assert outcome.status is CheckStatus.FAILED
    assert "U0STRANGER is not in people:" in outcome.reason


# -- 3. what a comment says ----------------------------------------------------------------------

@pytest.mark.parametrize("body", ["QA PASS criteria not met - 3 checkout tests fail",
                                  "QA pass: NO", "QA PASS?", "> QA PASS", "QA\nPASS"])
def test_a_comment_that_does_not_pass_is_not_a_pass(world, body):
    tid = world.tracker.ticket("7")
    world.tracker.say(tid, "bob", "CQ approved")
    world.tracker.say(tid, "carol", body)
    d = world.deploy(tid)
    assert d.status is DeploymentStatus.BLOCKED
    assert world.backend.running == "v1"


def test_a_later_denial_by_an_allowed_author_takes_the_pass_back(world):
    tid = world.ready(("carol", "QA PASS criteria not met after all: checkout broken"))
    d = world.deploy(tid)
    assert d.status is DeploymentStatus.BLOCKED
    reason = world.check(d, "qa_pass").reason
    assert "the newest QA PASS comment, by carol, does not give it" in reason


# -- 4. staleness that holds ---------------------------------------------------------------------

def test_a_new_build_in_the_same_second_orders_by_the_trackers_ids(world):
    tid = world.tracker.ticket("7")
    world.tracker.say(tid, "bob", "CQ approved", at=T0)
    world.tracker.say(tid, "carol", "QA PASS", at=T0)
    world.tracker.say(tid, "alice", "FYI the new build 1.4.3 is on staging", at=T0)  # same second
    d = world.deploy(tid)
    assert d.status is DeploymentStatus.BLOCKED
    assert "stale" in world.check(d, "qa_pass").reason
    # approvals given again, still in that same second, after the build: fresh
    world.tracker.say(tid, "bob", "CQ approved", at=T0)
    world.tracker.say(tid, "carol", "QA PASS", at=T0)
    assert world.deploy(tid).status is DeploymentStatus.SUCCEEDED


def test_a_build_announced_later_in_the_approving_comment_makes_it_stale(world):
    tid = world.tracker.ticket("7")
    world.tracker.say(tid, "bob", "CQ approved")
    world.tracker.say(tid, "carol", "QA PASS on build 41\nheads-up: new build 42 goes out today")
    assert "stale" in read_approval(world.config, world.tracker, tid, requester="alice",
                                    rule="qa_pass", what="QA PASS").reason
    world.tracker.say(tid, "carol", "New build 42 is on staging.\nQA PASS")
    assert read_approval(world.config, world.tracker, tid, requester="alice", rule="qa_pass",
                         what="QA PASS").status is CheckStatus.PASSED


def test_deploybots_own_comments_neither_approve_nor_announce(world):
    tid = world.ready()
    world.tracker.say(tid, "deploybot", "QA PASS\nnew build announced; Version: v3")
    assert read_approval(world.config, world.tracker, tid, requester="alice", rule="qa_pass",
                         what="QA PASS").reason.startswith("by carol")


# -- 5. re-checked when the rollout starts -------------------------------------------------------

def test_a_new_build_announced_while_the_gate_waits_blocks_the_approved_rollout(world):
    tid = world.ready()
    d = world.deploy(tid, env="production")
    assert d.status is DeploymentStatus.AWAITING_APPROVAL
    world.tracker.say(tid, "alice", "New build 2.0.1 pushed to staging")
    gate = world.pipeline.pending_gates(d.id)[0]
    out = world.pipeline.decide_gate(gate.id, decided_by="bob", approved=True)
    d = out.deployment
    assert d.status is DeploymentStatus.BLOCKED
    assert world.backend.calls == [] and world.backend.running == "v1"
    recheck = world.check(d, "rollout_recheck")
    assert recheck.status is CheckStatus.FAILED
    assert "changed since the checklist" in recheck.reason and "stale" in recheck.reason
    assert any("Deployment blocked" in c.body for c in world.tracker.comments(tid))


def test_the_status_moved_while_waiting_blocks_the_rollout(world):
    tid = world.ready()
    d = world.deploy(tid, env="production")
    world.tracker.transition(tid, "In Review")
    gate = world.pipeline.pending_gates(d.id)[0]
    d = world.pipeline.decide_gate(gate.id, decided_by="bob", approved=True).deployment
    assert d.status is DeploymentStatus.BLOCKED
    assert "'In Review'" in world.check(d, "rollout_recheck").reason


def test_an_approval_edited_away_while_waiting_blocks_even_if_another_pass_exists(world):
    tid = world.ready(("carol", "QA PASS on staging too"))
    d = world.deploy(tid, env="production")
    counted = world.check(d, "qa_pass").evidence.split(":")[0]
    # the pass the checklist counted is deleted; the older "QA PASS" would still pass on its own
    world.tracker.notes[tid] = [c for c in world.tracker.notes[tid] if c.id != counted]
    gate = world.pipeline.pending_gates(d.id)[0]
    d = world.pipeline.decide_gate(gate.id, decided_by="dana", approved=True).deployment
    assert d.status is DeploymentStatus.BLOCKED
    assert (f"QA PASS: what the checklist relied on changed (the comment it counted "
            f"(#{counted}) was edited or deleted") in world.check(d, "rollout_recheck").reason


def test_an_approval_edited_into_a_denial_while_waiting_blocks(world):
    d = world.deploy(world.ready(), env="production")
    counted = world.check(d, "qa_pass").evidence.split(":")[0]
    note = next(c for c in world.tracker.notes[d.ticket_id] if c.id == counted)
    note.body = "QA PASS revoked: checkout totals wrong"  # edited in place on the tracker
    gate = world.pipeline.pending_gates(d.id)[0]
    d = world.pipeline.decide_gate(gate.id, decided_by="dana", approved=True).deployment
    assert d.status is DeploymentStatus.BLOCKED
    assert "does not give it" in world.check(d, "rollout_recheck").reason


def test_nothing_changed_the_recheck_passes_and_says_so(world):
    d = world.deploy(world.ready(), env="production")
    gate = world.pipeline.pending_gates(d.id)[0]
    d = world.pipeline.decide_gate(gate.id, decided_by="bob", approved=True).deployment
    assert d.status is DeploymentStatus.SUCCEEDED
    recheck = world.check(d, "rollout_recheck")
    assert recheck.status is CheckStatus.PASSED and "lock held" in recheck.reason


def test_a_broken_lock_taken_by_someone_else_blocks_the_waiting_deployment(world):
    d = world.deploy(world.ready(), env="production")
    world.pipeline.unlock("production", user="dana", reason="stuck, I think")  # an approver
    world.pipeline.lock("production", user="erin", reason="db migration")
    gate = world.pipeline.pending_gates(d.id)[0]
    d = world.pipeline.decide_gate(gate.id, decided_by="bob", approved=True).deployment
    assert d.status is DeploymentStatus.BLOCKED
    assert "env:production is held by erin" in world.check(d, "rollout_recheck").reason
    assert world.backend.running == "v1"


def test_a_broken_lock_that_is_still_free_is_taken_back(world):
    d = world.deploy(world.ready(), env="production")
    world.pipeline.unlock("production", user="dana", reason="stuck, I think")
    gate = world.pipeline.pending_gates(d.id)[0]
    d = world.pipeline.decide_gate(gate.id, decided_by="bob", approved=True).deployment
    assert d.status is DeploymentStatus.SUCCEEDED


def test_a_tracker_unreachable_at_rollout_blocks(world):
    d = world.deploy(world.ready(), env="production")
    world.tracker.credentials_ok = False
    gate = world.pipeline.pending_gates(d.id)[0]
    d = world.pipeline.decide_gate(gate.id, decided_by="bob", approved=True).deployment
    assert d.status is DeploymentStatus.BLOCKED and world.backend.calls == []


# -- 6. credentials before the checklist ---------------------------------------------------------

def test_a_wrong_tracker_key_blocks_at_the_start_with_the_401_explanation(world):
    tid = world.ready()
    world.tracker.credentials_ok = False  # anonymous reads still work (a public project)
    d = world.deploy(tid)
    assert d.status is DeploymentStatus.BLOCKED
    reason = world.check(d, "cq_approval").reason
    assert "401" in reason and "REDMINE_KEY" in reason
    assert world.backend.calls == []


# -- 9. versions -------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["latest", "LATEST", "main", "1.4-SNAPSHOT", "nightly"])
def test_mutable_tags_are_refused_for_production(world, version):
    tid = world.ready()
    with pytest.raises(InputError, match="mutable tag"):
        world.pipeline.request_deploy(tid, requested_by="alice", target=f"web@{version}",
                                      environment="production")
    assert world.store.deployments() == []


def test_mutable_tags_are_allowed_in_staging_and_where_the_config_allows_them(tmp_path):
    w = World(tmp_path, environments={
        "staging": {}, "production": {"production": True, "versions": {"allow_mutable": True}}})
    w.backend.running = "v1"
    assert w.deploy(w.ready(), target="web@latest").status is DeploymentStatus.SUCCEEDED
    d = w.pipeline.request_deploy(w.ready(), requested_by="alice", target="web@main",
                                  environment="production")
    assert d.version == "main"


def test_a_version_with_anything_glued_to_it_is_refused(world):
    tid = world.ready(("alice", "deploy: web@v2;reboot"))
    with pytest.raises(InputError, match="'v2;reboot' is not a version"):
        world.pipeline.request_deploy(tid, requested_by="alice", environment="staging")
    tid = world.ready(("alice", "deploy: web@v2, thanks"))
    assert world.pipeline.request_deploy(tid, requested_by="alice").version == "v2"


# -- 10. duplicates and records ------------------------------------------------------------------

def test_a_second_request_for_a_ticket_being_deployed_is_refused_not_blocked(world):
    tid = world.ready()
    first = world.pipeline.request_deploy(tid, requested_by="alice", target="web@v2",
                                          environment="production")
    with pytest.raises(StateError, match=f"already being deployed.*#{first.id}"):
        world.pipeline.request_deploy(tid, requested_by="U0BOB", target="web@v2",
                                      environment="production")
    world.pipeline.run(first.id)
    assert not any("blocked" in c.body.lower() for c in world.tracker.comments(tid))
    # once it is finished, the ticket can be deployed again (elsewhere, or after a rollback)
    gate = world.pipeline.pending_gates(first.id)[0]
    world.pipeline.decide_gate(gate.id, decided_by="bob", approved=True)
    assert world.pipeline.request_deploy(tid, requested_by="alice", target="web@v2",
                                         environment="staging")


def test_the_record_names_people_not_slack_ids_and_who_approved_production(world):
    tid = world.ready()
    d = world.pipeline.request_deploy(tid, requested_by=slack_actor(world.config, "U0ALICE"),
                                      target="web@v2", environment="production")
    assert d.requested_by == "alice"
    d = world.pipeline.run(d.id)
    gate = world.pipeline.pending_gates(d.id)[0]
    d = world.pipeline.decide_gate(gate.id, decided_by=slack_actor(world.config, "U0BOB"),
                                   approved=True).deployment
    assert "**Deployed by:** alice; approved by bob at" in d.record
    assert "U0ALICE" not in d.record and "U0BOB" not in d.record
    posted = [c.body for c in world.tracker.comments(tid) if "Deployment Record" in c.body]
    assert posted and "approved by bob" in posted[0]


def test_the_audit_trail_keeps_where_each_decision_came_from(world):
    d = world.deploy(world.ready(), env="production")
    gate = world.pipeline.pending_gates(d.id)[0]
    world.pipeline.decide_gate(gate.id, decided_by=slack_actor(world.config, "U0BOB"),
                               approved=True)
    approved = [e for e in world.store.events(d.id) if e["kind"] == "gate.approved"]
    assert approved and approved[0]["actor"] == "bob" and approved[0]["via"] == "slack U0BOB"


# -- 9. the bytes deployed are recorded; rollbacks restore those bytes ---------------------------

def test_the_bytes_deployed_are_recorded_and_an_automatic_rollback_restores_them(world):
    world.backend.digests = {"v1": "sha256:" + "1" * 64, "v2": "sha256:" + "2" * 64,
                             "v3": "sha256:" + "3" * 64}
    d = world.deploy(world.ready())
    assert (d.previous_image_ref, d.image_ref) == ("sha256:" + "1" * 64, "sha256:" + "2" * 64)
    assert f"Bytes deployed: demo-web:v2 = sha256:{'2' * 64}" in d.record
    # v2's tag is pushed again with other bytes; then a bad v3 fails verification
    world.backend.digests["v2"] = "sha256:" + "9" * 64
    world.pipeline.probe.bad.add("v3")
    d = world.deploy(world.ready(), target="web@v3")
    assert d.status is DeploymentStatus.ROLLED_BACK
    assert world.backend.pins[-1] == "sha256:" + "2" * 64  # the bytes that ran, not the tag's


def test_a_manual_rollback_puts_back_the_bytes_that_version_was(world):
    world.backend.digests = {"v1": "sha256:" + "1" * 64, "v2": "sha256:" + "2" * 64}
    world.deploy(world.ready())
    world.backend.digests["v1"] = "sha256:" + "8" * 64  # someone re-pushed v1
    d = world.pipeline.request_rollback(requested_by="alice", service="web",
                                        environment="staging", to_version="v1")
    d = world.pipeline.run(d.id)
    assert d.status is DeploymentStatus.SUCCEEDED
    assert world.backend.pins[-1] == "sha256:" + "1" * 64
    assert d.image_ref == "sha256:" + "1" * 64


@pytest.mark.parametrize("later,passes", [
    ("QA failed on checkout after all", False),
    ("QA: ❌ totals wrong", False),
    ("QA pass withdrawn", False),
    ("QA notes: don't forget to warm the cache", True),  # no verdict
    ("Deployment notes: QA will watch the dashboards", True),
])
def test_a_later_retraction_by_the_qa_person_takes_the_pass_back(world, later, passes):
    tid = world.ready(("carol", later))
    d = world.deploy(tid)
    assert (d.status is DeploymentStatus.SUCCEEDED) is passes or \
        (passes and d.status is DeploymentStatus.AWAITING_APPROVAL), world.check(d, "qa_pass")
    if not passes:
        assert "does not give it" in world.check(d, "qa_pass").reason
