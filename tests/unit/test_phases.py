"""The pipeline's phase modules: typed reporter events (bot/reporting.py), one tracker read per
phase (bot/checklist_run.py gate_inputs, bot/tracker_reads.py), the re-check's evidence rules
(bot/gating.py), what a manual rollback records as its request (bot/rollout.py)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from bot import checks as checklist
from bot.gating import evidence_change, evidence_holds
from bot.models import CheckResult, CheckStatus, Comment, DeploymentStatus
from bot.outbox import Outbox
from bot.reporting import SafeReporter
from fakes.core import RecordingReporter
from tests.unit.test_gate_trust import World as RedmineWorld
from tests.unit.test_pipeline import World


class BrokenReporter(RecordingReporter):
    """Records, then fails: a chat that is down."""

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if name in ("deployment_started", "checklist_updated", "step", "finished", "alert",
                    "blocked", "gate_requested", "gate_decided"):
            def failing(*args):
                attr(*args)
                raise RuntimeError(f"{name} is down")
            return failing
        return attr


def test_a_failing_reporter_is_logged_and_the_deployment_goes_on(tmp_path, caplog):
    world = World(tmp_path)
    broken = BrokenReporter()
    world.pipeline.report.reporter = broken
    with caplog.at_level(logging.ERROR, logger="deploybot.pipeline"):
        d = world.deploy(world.ticket())
    assert d.status is DeploymentStatus.SUCCEEDED
    assert broken.kinds()[0] == "started" and broken.kinds()[-1] == "finished"
    failed = {r.getMessage() for r in caplog.records}
    assert {"reporter failed on step", "reporter failed on finished",
            "reporter failed on deployment_started"} <= failed


def test_a_durable_reporter_gets_alerts_through_the_outbox_once_per_text(tmp_path):
    world = World(tmp_path)
    told = RecordingReporter()
    outbox = Outbox(world.store, world.tracker, world.config.outbox, poster=told)
    report = SafeReporter(told, outbox)
    d = world.pipeline.request_deploy(world.ticket(), requested_by="alice", target="web@v2",
                                      environment="staging")
    report.alert(d, "rollback!")
    report.alert(d, "rollback!")
    report.step(d, "pulling")
    assert told.events == [("alert", "rollback!"), ("step", "pulling")]
    assert [i.kind for i in outbox.undelivered(d.id)] == []  # delivered, and only once


def test_a_direct_reporter_is_told_at_once_and_gets_no_outbox_items(tmp_path):
    world = World(tmp_path)
    report = world.pipeline.report
    assert not report.durable
    d = world.pipeline.request_deploy(world.ticket(), requested_by="alice", target="web@v2",
                                      environment="staging")
    assert report.alert_post(d, "x") is None and report.finished_post(d, "") is None
    report.finished_direct(d, "")
    assert world.reporter.events == [("finished", "requested")]


class CountingTracker:
    def __init__(self, tracker):
        self.tracker, self.calls = tracker, []

    def __getattr__(self, name):
        attr = getattr(self.tracker, name)
        if name in ("current_account", "gate_data", "changes_since", "get_ticket", "comments"):
            def counted(*args, **kwargs):
                self.calls.append(name)
                return attr(*args, **kwargs)
            return counted
        return attr


def test_the_checklist_reuses_the_requests_read_and_the_recheck_reads_again(tmp_path):
    world = World(tmp_path)
    tid = world.ticket()
    d = world.pipeline.request_deploy(tid, requested_by="alice", target="web@v2",
                                      environment="staging")
    counting = CountingTracker(world.tracker)
    world.pipeline.context.tracker = counting
    d = world.pipeline.run(d.id)
    assert d.status is DeploymentStatus.SUCCEEDED
    # checklist: the account (asked each time: LocalTracker does not say a wrong key cannot
    # read), the request's read of seconds ago; re-check: the account again and what changed
    # since the checklist's read; the record: the re-check's ticket
    assert counting.calls == ["current_account", "current_account", "changes_since"]
    assert "Ship it" in world.store.deployment(d.id).record


def test_an_old_requests_read_is_read_again_by_the_checklist(tmp_path):
    world = World(tmp_path)
    tid = world.ticket()
    d = world.pipeline.request_deploy(tid, requested_by="alice", target="web@v2",
                                      environment="staging")
    world.pipeline.clock.sleep(31)  # a scheduled or queued start: the ticket may have moved on
    counting = CountingTracker(world.tracker)
    world.pipeline.context.tracker = counting
    world.pipeline.run(d.id)
    assert counting.calls == ["current_account", "gate_data", "current_account", "changes_since"]


def test_a_recheck_in_another_process_reads_everything(tmp_path):
    """The gate decided where the checklist did not run: no checklist read to compare with."""
    world = World(tmp_path)
    d = world.deploy(world.ticket(), env="production")
    assert d.status is DeploymentStatus.AWAITING_APPROVAL
    other = World(tmp_path)
    counting = CountingTracker(other.tracker)
    other.pipeline.context.tracker = counting
    gate = other.pipeline.pending_gates(d.id)[0]
    d = other.pipeline.decide_gate(gate.id, decided_by="bob", approved=True).deployment
    assert d.status is DeploymentStatus.SUCCEEDED
    assert counting.calls == ["current_account", "gate_data"]


def test_a_change_after_the_request_blocks_when_the_checklist_reads_again(tmp_path):
    """Another process ran the request: this one's checklist has no read to reuse."""
    world = World(tmp_path)
    tid = world.ticket()
    d = world.pipeline.request_deploy(tid, requested_by="alice", target="web@v2",
                                      environment="staging")
    other = World(tmp_path)
    world.tracker.transition(tid, "Open")
    d = other.pipeline.run(d.id)
    assert d.status is DeploymentStatus.BLOCKED
    assert "Open" in world.check(d, "ticket_status").reason


def test_the_account_is_asked_once_per_process_where_a_wrong_token_cannot_read(tmp_path):
    world = World(tmp_path)
    counting = CountingTracker(world.tracker)
    counting.anonymous_reads = False
    world.pipeline.context.tracker = counting
    for version in ("v2", "v3"):
        d = world.pipeline.request_deploy(world.ticket(), requested_by="alice",
                                          target=f"web@{version}", environment="staging",
                                          dry_run=True)
        assert world.pipeline.run(d.id).status is DeploymentStatus.SUCCEEDED
    assert counting.calls.count("current_account") == 1


AT = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def test_an_edited_approval_no_longer_holds_and_the_change_names_its_comment():
    approval = Comment(id="5", author="bob", body="CQ approved", created_at=AT)
    before = CheckResult(1, "cq_approval", "CQ", 1, CheckStatus.PASSED, "ok",
                         evidence=checklist.comment_digest(approval))
    edited = Comment(id="5", author="bob", body="CQ approved (not really)", created_at=AT)
    now = checklist.Outcome(CheckStatus.PASSED, "approved by bob", "x")

    class Inputs:
        comments = [approval]
    assert evidence_holds("cq_approval", before.evidence, now, Inputs)
    Inputs.comments = [edited]
    assert not evidence_holds("cq_approval", before.evidence, now, Inputs)
    assert evidence_change("cq_approval", before, now) == (
        "the comment it counted (#5) was edited or deleted; now approved by bob")


def test_a_ticket_status_holds_whatever_its_case():
    now = checklist.Outcome(CheckStatus.PASSED, "ok", "ready for production")
    assert evidence_holds("ticket_status", "Ready for Production", now, None)
    before = CheckResult(1, "ticket_status", "Status", 1, evidence="Ready for Production")
    assert evidence_change("ticket_status", before, checklist.Outcome(
        CheckStatus.PASSED, "ok", "Done")) == "status was 'Ready for Production', is 'Done'"


def test_a_manual_rollback_records_its_own_request_not_the_ticket_it_leaves(tmp_path):
    world = World(tmp_path)
    world.backend.running = "v1"
    labels = []
    deploy = world.backend.deploy

    def labelled(version, *, ticket_id, **kw):
        labels.append(ticket_id)  # Kubernetes writes it into the change-cause
        return deploy(version, ticket_id=ticket_id, **kw)
    world.backend.deploy = labelled
    tid = world.ticket()
    world.deploy(tid)
    d = world.pipeline.request_rollback(requested_by="alice", service="web", environment="staging")
    assert world.pipeline.run(d.id).status is DeploymentStatus.SUCCEEDED
    assert labels == [tid, "rollback by alice"]


def test_where_a_wrong_token_cannot_read_the_recheck_does_not_ask_the_account_again(tmp_path):
    """GitHub, GitLab, Jira, Linear answer 401 to every read with a wrong token: the re-check's
    read proves the credentials. (Redmine, and any tracker that does not say: asked again.)"""
    world = World(tmp_path)
    d = world.pipeline.request_deploy(world.ticket(), requested_by="alice", target="web@v2",
                                      environment="staging")
    counting = CountingTracker(world.tracker)
    counting.anonymous_reads = False
    world.pipeline.context.tracker = counting
    assert world.pipeline.run(d.id).status is DeploymentStatus.SUCCEEDED
    assert counting.calls == ["current_account", "changes_since"]


def test_a_key_revoked_after_an_earlier_deployment_still_blocks_where_reads_stay_anonymous(
        tmp_path):
    """A long-running process knows its account already; a public Redmine project still
    answers the revoked key's reads, so the checklist asks whose the key is again."""
    world = RedmineWorld(tmp_path)
    assert world.deploy(world.ready()).status is DeploymentStatus.SUCCEEDED
    tid = world.ready()
    world.tracker.credentials_ok = False
    d = world.pipeline.request_deploy(tid, requested_by="alice", target="web@v3",
                                      environment="staging", dry_run=True)
    d = world.pipeline.run(d.id)
    assert d.status is DeploymentStatus.BLOCKED and "401" in world.check(d, "cq_approval").reason
