"""Cheap post-once checks. Jira (the key in a comment property) after a whole read: the newest
page down to that read, then the properties of deploybot's own comments only. Linear (the key
is the comment's id): that one comment asked for. The status move the answer proves."""

from __future__ import annotations

import pytest

from tracker_cases import case

KEY = "deploybot-record-5"
JIRA = ["jira-cloud", "jira-dc"]


def _keyed(c) -> int:
    return sum(1 for n in c.app.notes if n.login == "deploybot" and KEY in str(n.props))


def _pages(c) -> int:
    return c.server.count("GET", r"/issue/PROJ-7/comment$")


def _posted_by_another_process(c) -> None:
    other = c.build()
    try:
        other.add_comment(c.ref, "record", key=KEY)
    finally:
        other.close()


def _more_notes_then_post_again(c) -> None:
    for n in range(150):  # more than a page after what was read
        c.app.add_note("alice", f"note {n}")
    c.tracker.add_comment(c.ref, "record", key=KEY)
    assert _keyed(c) == 1


def _read_whole(c) -> None:
    c.tracker.current_account()  # the checklist asks it first: whose comments may hold a key
    c.tracker.comments(c.ref)


@pytest.mark.parametrize("kind", JIRA)
def test_after_a_whole_read_the_check_reads_the_newest_page_only(kind: str) -> None:
    with case(kind, n_comments=500) as c:
        _read_whole(c)
        before = len(c.server.log)
        c.tracker.add_comment(c.ref, "record", key=KEY)
        # one page newest first, no property reads (deploybot had no comment), the post
        assert len(c.server.log) - before == 2 and _keyed(c) == 1
        before = _pages(c)
        c.tracker.add_comment(c.ref, "record", key=KEY)  # the outbox retries
        assert _pages(c) - before == 1 and _keyed(c) == 1


@pytest.mark.parametrize("kind", JIRA)
def test_a_key_posted_before_the_read_is_found_through_its_property(kind: str) -> None:
    with case(kind, n_comments=50) as c:
        c.tracker.add_comment(c.ref, "record", key=KEY)
        _read_whole(c)
        _more_notes_then_post_again(c)


@pytest.mark.parametrize("kind", JIRA)
def test_a_key_another_process_posted_after_the_read_is_found(kind: str) -> None:
    with case(kind, n_comments=250) as c:
        _read_whole(c)
        _posted_by_another_process(c)
        _more_notes_then_post_again(c)


@pytest.mark.parametrize("kind", JIRA)
def test_deleted_comments_make_it_read_everything_again(kind: str) -> None:
    with case(kind, n_comments=250) as c:
        _read_whole(c)
        del c.app.notes[:250]  # nothing the read saw is left to reach back to
        _posted_by_another_process(c)
        c.tracker.add_comment(c.ref, "record", key=KEY)
        assert _keyed(c) == 1


def test_linear_asks_for_the_keyed_comment_only() -> None:
    with case("linear", n_comments=500) as c:
        c.tracker.get_ticket(c.ref)  # the phases read the issue: its id is known
        before = len(c.server.log)
        c.tracker.add_comment(c.ref, "record", key=KEY)
        assert len(c.server.log) - before == 2  # the comment asked for, then posted
        before = len(c.server.log)
        c.tracker.add_comment(c.ref, "record", key=KEY)  # the outbox retries: found
        assert len(c.server.log) - before == 1
        assert sum(1 for n in c.app.notes if n.login == "deploybot") == 1


def test_linear_move_the_answer_proves_is_not_read_back() -> None:
    with case("linear") as c:
        before = len(c.server.log)
        assert c.tracker.transition(c.ref, "Deployed") == "Ready for Production"
        assert len(c.server.log) - before == 2 and c.app.status == "Deployed"
