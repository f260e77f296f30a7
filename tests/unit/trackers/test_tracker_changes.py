"""Tracker.changes_since, the re-check's read: per adapter it answers what a whole read would
(edited, deleted and new comments, the status moved back), and GitHub/GitLab read less for it
(Jira: test_jira_changes.py)."""

from __future__ import annotations

import pytest

from tracker_cases import SPECS, any_case, case

KINDS = list(SPECS)


def _cq(app):
    return next(n for n in app.notes if n.text.startswith("CQ"))


def _same(c, seen):
    ticket, comments = c.tracker.changes_since(c.ref, seen)
    whole_ticket, whole = c.tracker.gate_data(c.ref)
    assert ticket.status == whole_ticket.status and ticket.title == whole_ticket.title
    assert [(x.id, x.body, x.author) for x in comments] == [(x.id, x.body, x.author) for x in whole]
    return ticket, comments


CHANGES = {
    "nothing": lambda c: None,
    "evidence edited": lambda c: c.app.edit(_cq(c.app), "CQ withdrawn: after all, no"),
    "evidence deleted": lambda c: c.app.notes.remove(_cq(c.app)),
    "CQ revoked": lambda c: c.app.add_note("carol", "CQ revoked: found a bug"),
    "deleted and one added": lambda c: (c.app.notes.remove(_cq(c.app)),
                                        c.app.add_note("alice", "another note")),
    "status moved back": lambda c: c.tracker.transition(c.ref, "In Progress"),
}


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("kind", KINDS)
def test_changes_since_answers_what_a_whole_read_would(kind: str, change: str) -> None:
    with case(kind, n_comments=150) as c:
        _, seen = c.tracker.gate_data(c.ref)
        CHANGES[change](c)
        ticket, comments = _same(c, seen)
        bodies = [x.body for x in comments]
        if change == "evidence edited":
            assert any("after all, no" in b for b in bodies)
        if change.startswith("evidence deleted") or change.startswith("deleted"):
            assert not any(b.startswith("CQ approved") for b in bodies)
        if change == "CQ revoked":
            assert bodies[-1] == "CQ revoked: found a bug"
        if change == "status moved back":
            assert ticket.status == "In Progress"


def test_changes_since_on_the_local_tracker_is_a_whole_read() -> None:
    with any_case("local") as c:
        _, seen = c.tracker.gate_data(c.ref)
        c.app.add_note("carol", "CQ revoked")
        _same(c, seen)


@pytest.mark.parametrize("kind", ["github", "gitlab"])
def test_changes_since_reads_the_issue_and_one_page(kind: str) -> None:
    with case(kind, n_comments=500) as c:
        _, seen = c.tracker.gate_data(c.ref)
        c.app.edit(_cq(c.app), "CQ withdrawn: edited")
        before = len(c.server.log)
        _, comments = c.tracker.changes_since(c.ref, seen)
        assert len(c.server.log) - before == 2  # the issue (with its comment count), one page
        assert "CQ withdrawn: edited" in [x.body for x in comments]


@pytest.mark.parametrize("kind", ["github", "gitlab"])
def test_a_deleted_comment_makes_changes_since_read_everything(kind: str) -> None:
    with case(kind, n_comments=500) as c:
        _, seen = c.tracker.gate_data(c.ref)
        c.app.notes.remove(_cq(c.app))
        before = len(c.server.log)
        _, comments = c.tracker.changes_since(c.ref, seen)
        assert len(c.server.log) - before > 2 and len(comments) == len(seen) - 1
