"""Jira's changes_since: the issue and the newest comment page when the issue's `updated` proves
nothing was added or edited since the read (its total proves nothing was deleted); a whole read
for anything else. Either way it answers what a whole read would."""

from __future__ import annotations

from datetime import timedelta

import pytest

from backends.trackers import markup
from bot import config as configuration
from bot.models import DeploymentStatus
from bot.pipeline import Pipeline
from bot.store import Store
from fakes.core import FakeBackend, FakeProbe, InstantClock, RecordingReporter, ScriptedApprover
from tracker_cases import case
from tracker_fakes import BASE_TIME

JIRA = ["jira-cloud", "jira-dc"]
MANY = 450  # five pages: a whole read is 1 + 5 requests


def _cq(app):
    return next(n for n in app.notes if n.text.startswith("CQ"))


def _recheck(c, seen):
    """changes_since, checked against a whole read made right after it; its request count."""
    before = len(c.server.log)
    ticket, comments = c.tracker.changes_since(c.ref, seen)
    used = len(c.server.log) - before
    other = c.build()  # a whole read that leaves this adapter's memory alone
    try:
        whole_ticket, whole = other.gate_data(c.ref)
    finally:
        other.close()
    assert ticket.status == whole_ticket.status
    assert [(x.id, x.body, x.author) for x in comments] == [(x.id, x.body, x.author) for x in whole]
    return ticket, comments, used


def _whole_read_requests(c) -> int:
    before = len(c.server.log)
    c.build().gate_data(c.ref)
    return len(c.server.log) - before


@pytest.mark.parametrize("kind", JIRA)
def test_an_untouched_ticket_costs_the_issue_and_one_page(kind: str) -> None:
    with case(kind, n_comments=MANY) as c:
        _, seen = c.tracker.gate_data(c.ref)
        before = len(c.server.log)
        _, comments, used = _recheck(c, seen)
        assert sorted(p.rsplit("/", 1)[-1] for _, p in c.server.log[before:before + used]) == ["PROJ-7", "comment"]
        assert used == 2 < _whole_read_requests(c) == 6
        _, _, again = _recheck(c, comments)  # the re-check's answer proves the next one too
        assert again == 2


@pytest.mark.parametrize("where", ["old", "on the newest page"])
@pytest.mark.parametrize("kind", JIRA)
def test_an_edited_evidence_comment_is_seen(kind: str, where: str) -> None:
    with case(kind, n_comments=MANY) as c:
        _, seen = c.tracker.gate_data(c.ref)
        note = _cq(c.app) if where == "old" else c.app.by_created()[-1]
        c.app.edit(note, "CQ withdrawn: after all, no")
        _, comments, used = _recheck(c, seen)
        assert "CQ withdrawn: after all, no" in [x.body for x in comments]
        assert used == 6  # the issue moved: the newest page it had, then the older pages


@pytest.mark.parametrize("kind", JIRA)
def test_a_deleted_evidence_comment_is_seen_though_the_issue_did_not_move(kind: str) -> None:
    with case(kind, n_comments=MANY) as c:
        _, seen = c.tracker.gate_data(c.ref)
        before = c.app.updated()
        c.app.notes.remove(_cq(c.app))
        assert c.app.updated() == before  # the fake, like Jira may, leaves `updated` alone
        _, comments, used = _recheck(c, seen)
        assert not any(x.body.startswith("CQ approved") for x in comments)
        assert len(comments) == MANY - 1 and used > 2


@pytest.mark.parametrize("kind", JIRA)
def test_a_revocation_and_a_status_moved_back_are_seen(kind: str) -> None:
    with case(kind, n_comments=MANY) as c:
        _, seen = c.tracker.gate_data(c.ref)
        c.app.add_note("carol", "CQ revoked: found a bug")
        c.tracker.transition(c.ref, "In Progress")
        ticket, comments, _ = _recheck(c, seen)
        assert comments[-1].body == "CQ revoked: found a bug" and ticket.status == "In Progress"


@pytest.mark.parametrize("kind", JIRA)
def test_a_status_moved_back_alone_is_seen(kind: str) -> None:
    with case(kind, n_comments=3) as c:
        _, seen = c.tracker.gate_data(c.ref)
        c.tracker.transition(c.ref, "In Progress")
        ticket, _, _ = _recheck(c, seen)
        assert ticket.status == "In Progress"


@pytest.mark.parametrize("kind", JIRA)
def test_a_change_just_before_the_issue_was_read_is_seen(kind: str) -> None:
    """The newest page and the issue are read at once: a comment changed between the two is in
    the issue's `updated` but not in the page. The next read takes that page again."""
    with case(kind, n_comments=MANY) as c:
        _, seen = c.tracker.gate_data(c.ref)
        c.app.by_created()[-1].text = "QA FAIL: changed in between"  # `updated` stays as read
        _, comments, used = _recheck(c, seen)
        assert comments[-1].body == "QA FAIL: changed in between" and used == 2


@pytest.mark.parametrize("kind", JIRA)
def test_a_comment_added_in_between_is_seen(kind: str) -> None:
    with case(kind, n_comments=MANY) as c:
        _, seen = c.tracker.gate_data(c.ref)
        # Jira's clock: before the issue was read, so `updated` does not move either; and the
        # comment it pushes off the newest page was changed in between too
        c.app.add_note("carol", "CQ revoked: in between", BASE_TIME + timedelta(minutes=MANY - 1))
        pushed_off = c.app.by_created(reverse=True)[c.app.page_cap]
        pushed_off.text = "QA FAIL: changed in between"
        _, comments, used = _recheck(c, seen)
        assert comments[-1].body == "CQ revoked: in between" and used > 2
        assert "QA FAIL: changed in between" in [x.body for x in comments]


@pytest.mark.parametrize("kind", JIRA)
def test_comments_from_another_read_get_a_whole_read(kind: str) -> None:
    """`seen` must be what this adapter's last read of the ticket answered: an older read
    (another deployment of the same ticket read it since) proves nothing."""
    with case(kind, n_comments=MANY) as c:
        _, older = c.tracker.gate_data(c.ref)
        c.app.edit(_cq(c.app), "CQ withdrawn")
        c.tracker.gate_data(c.ref)  # the issue's `updated` read now includes the edit
        _, comments, used = _recheck(c, older)
        assert "CQ withdrawn" in [x.body for x in comments] and used == 6


@pytest.mark.parametrize("kind", JIRA)
def test_a_jira_that_ignores_the_order_gets_whole_reads(kind: str) -> None:
    """Oldest first whatever orderBy says: the "newest" page never holds the newest comments."""
    with case(kind, n_comments=MANY) as c:
        c.app.honours_order = False
        _, seen = c.tracker.gate_data(c.ref)
        c.app.by_created()[-1].text = "QA FAIL: changed in between"  # `updated` stays as read
        _, comments, used = _recheck(c, seen)
        assert comments[-1].body == "QA FAIL: changed in between" and used == 6


@pytest.mark.parametrize("kind", JIRA)
def test_a_new_process_reads_everything(kind: str) -> None:
    with case(kind, n_comments=MANY) as c:
        _, seen = c.tracker.gate_data(c.ref)
        fresh = c.build()
        try:
            before = len(c.server.log)
            _, comments = fresh.changes_since(c.ref, seen)
            assert len(c.server.log) - before == 6 and len(comments) == MANY
        finally:
            fresh.close()


@pytest.mark.parametrize("kind", JIRA)
def test_a_comment_deleted_while_the_pages_are_read_is_seen(kind: str) -> None:
    """Deleted between two pages of a read: the offsets shift, that read proves nothing."""
    with case(kind, n_comments=MANY) as c:
        real = c.app.handle
        state = {"deleted": False}

        def handle(req, base):
            answer = real(req, base)
            if req.path.endswith("/comment") and not state["deleted"]:
                state["deleted"] = True
                c.app.notes.remove(c.app.by_created()[0])
            return answer

        c.app.handle = handle
        _, seen = c.tracker.gate_data(c.ref)
        c.app.handle = real
        _, _, used = _recheck(c, seen)
        assert used == 6


KEY = "deploybot-record-5"


def _mine(c) -> int:
    return sum(1 for n in c.app.notes if n.login == "deploybot" and (
        KEY in str(n.raw or n.text) or any((p.get("value") or {}).get("key") == KEY for p in n.props)))


@pytest.mark.parametrize("kind", JIRA)
def test_after_a_cheap_recheck_the_post_once_check_reads_one_page(kind: str) -> None:
    with case(kind, n_comments=MANY) as c:
        _, seen = c.tracker.gate_data(c.ref)  # the request's read: deploybot's account not known yet
        c.tracker.current_account()
        c.tracker.changes_since(c.ref, seen)
        before = c.server.count("GET", r"/issue/PROJ-7/comment$")
        c.tracker.add_comment(c.ref, "record", key=KEY)
        assert c.server.count("GET", r"/issue/PROJ-7/comment$") - before == 1 and _mine(c) == 1


@pytest.mark.parametrize("kind", JIRA)
def test_a_key_in_an_old_comments_text_survives_a_cheap_recheck(kind: str) -> None:
    with case(kind, n_comments=MANY) as c:
        old = c.app.by_created()[5]  # deploybot's, long ago, its key in the text (no property)
        old.login, old.text = "deploybot", markup.with_marker("record", markup.safe_key(KEY))
        _, seen = c.tracker.gate_data(c.ref)
        c.tracker.current_account()
        _, comments, used = _recheck(c, seen)
        assert used == 2
        c.tracker.add_comment(c.ref, "record", key=KEY)
        assert _mine(c) == 1  # found: not posted again


# -- through the pipeline: the re-check when the approval gate is decided ------------------------


def _pipeline(c, db):
    people = {login: {"tracker": c.app.login_ref(login)} for login in ("carol", "quinn", "alice", "bob")}
    cfg = configuration.parse({
        "tracker": {"kind": "local", "rules": {"cq_approval": {"authors": ["carol"]},
                                               "qa_pass": {"authors": ["quinn"]}}},
        "environments": {"production": {"production": True, "approvals_required": 1, "approvers": ["bob"]}},
        "services": {"web": {"image": "web", "health": {"url": "http://127.0.0.1:9/h"}}},
        "people": people,
    })
    backend = FakeBackend(running="v1")
    return Pipeline(config=cfg, store=Store(db), tracker=c.tracker, backend_for=lambda s, e: backend,
                    reporter=RecordingReporter(), approver=ScriptedApprover(), probe=FakeProbe(backend),
                    clock=InstantClock())


WHILE_THE_GATE_WAITED = {
    "nothing": None,
    "evidence edited": lambda c: c.app.edit(_cq(c.app), "CQ withdrawn: after all, no"),
    "evidence deleted": lambda c: c.app.notes.remove(_cq(c.app)),
    "CQ revoked": lambda c: c.app.add_note("carol", "CQ revoked: found a bug"),
    "status moved back": lambda c: c.app.move("In Progress"),
}


@pytest.mark.parametrize("change", list(WHILE_THE_GATE_WAITED))
@pytest.mark.parametrize("kind", JIRA)
def test_what_changed_while_the_gate_waited_blocks_the_rollout(kind: str, change: str, tmp_path) -> None:
    with case(kind, n_comments=MANY) as c:
        pipeline = _pipeline(c, tmp_path / "deploybot.db")
        d = pipeline.request_deploy(c.ref, requested_by="alice", target="web@v2", environment="production")
        d = pipeline.run(d.id)
        assert d.status is DeploymentStatus.AWAITING_APPROVAL
        if WHILE_THE_GATE_WAITED[change]:
            WHILE_THE_GATE_WAITED[change](c)
        pages = c.server.count("GET", r"/issue/PROJ-7/comment$")
        gate = pipeline.pending_gates(d.id)[0]
        d = pipeline.decide_gate(gate.id, decided_by="bob", approved=True).deployment
        pages = c.server.count("GET", r"/issue/PROJ-7/comment$") - pages
        if change == "nothing":
            # the re-check's newest page, and the record comment's post-once check: one page
            assert d.status is DeploymentStatus.SUCCEEDED and pages == 2
        else:
            assert d.status is DeploymentStatus.BLOCKED and pages >= 5
