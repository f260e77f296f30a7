"""Fewer tracker requests without less certainty: after a whole read of the comments the
post-once check reads only the newest page when that page provably covers everything since;
a status move the write's answer proves is not read back."""

from __future__ import annotations

import pytest

from bot.errors import TrackerError
from tracker_cases import case

KEY = "deploybot-record-5"
COMMENTS = {"github": r"/issues/7/comments$", "gitlab": r"/issues/7/notes$"}
PAGED = list(COMMENTS)


def _mine(c, key: str = KEY) -> int:
    return sum(1 for n in c.app.notes if n.login == "deploybot" and key in str(n.raw or n.text))


def _reads(c, kind: str) -> int:
    return c.server.count("GET", COMMENTS[kind])


@pytest.mark.parametrize("kind", PAGED)
def test_after_a_whole_read_the_post_once_check_reads_one_page(kind: str) -> None:
    with case(kind, n_comments=250) as c:
        assert len(c.tracker.comments(c.ref)) == 250
        before = _reads(c, kind)
        c.tracker.add_comment(c.ref, "record", key=KEY)
        assert _reads(c, kind) - before == 1 and _mine(c) == 1
        before = _reads(c, kind)
        c.tracker.add_comment(c.ref, "record", key=KEY)  # the outbox retries: found on that page
        assert _reads(c, kind) - before == 1 and _mine(c) == 1


@pytest.mark.parametrize("kind", PAGED)
def test_a_key_another_process_posted_after_the_read_is_found(kind: str) -> None:
    with case(kind, n_comments=250) as c:
        c.tracker.comments(c.ref)
        other = c.build()
        try:
            other.add_comment(c.ref, "record", key=KEY)
        finally:
            other.close()
        for n in range(150):  # more than a page after it
            c.app.add_note("alice", f"note {n}")
        c.tracker.add_comment(c.ref, "record", key=KEY)
        assert _mine(c) == 1


@pytest.mark.parametrize("kind", PAGED)
def test_deleted_comments_make_it_read_everything_again(kind: str) -> None:
    with case(kind, n_comments=250) as c:
        c.tracker.comments(c.ref)
        del c.app.notes[:250]  # nothing the read saw is left: no page reaches back to it
        before = _reads(c, kind)
        c.tracker.add_comment(c.ref, "record", key=KEY)
        assert _mine(c) == 1
        assert _reads(c, kind) - before >= 2  # a page that proves nothing, then every page
        other = c.build()
        try:
            other.add_comment(c.ref, "record", key=KEY)
        finally:
            other.close()
        assert _mine(c) == 1


@pytest.mark.parametrize("kind", PAGED)
def test_a_key_among_the_older_comments_is_never_posted_again(kind: str) -> None:
    with case(kind, n_comments=50) as c:
        c.tracker.add_comment(c.ref, "record", key=KEY)
        c.tracker.comments(c.ref)  # the whole read sees the key
        for n in range(150):
            c.app.add_note("alice", f"note {n}")
        c.tracker.add_comment(c.ref, "record", key=KEY)
        assert _mine(c) == 1


ISSUE = {"github": r"/issues/7$", "gitlab": r"/issues/7$"}
LABEL = {"github": ("POST", r"/labels$", "status:"), "gitlab": ("PUT", r"/issues/7$", "status::")}


@pytest.mark.parametrize("kind", PAGED)
def test_a_move_the_answer_proves_is_not_read_back(kind: str) -> None:
    with case(kind) as c:
        c.tracker.transition(c.ref, "Deployed")
        assert c.tracker.get_ticket(c.ref).status == "Deployed"
        assert c.server.count("GET", ISSUE[kind]) == 2  # before the move, and the check above


@pytest.mark.parametrize("kind", PAGED)
def test_an_answer_showing_another_status_too_is_read_back(kind: str) -> None:
    method, path, prefix = LABEL[kind]
    labels = [f"{prefix}Deployed", f"{prefix}In Progress"]  # someone else moved it meanwhile
    body = [{"name": n} for n in labels] if kind == "github" else {"labels": labels}
    with case(kind) as c:
        c.server.fault(200, method=method, path=path, body=body)  # answered, not applied
        with pytest.raises(TrackerError, match="did not move"):
            c.tracker.transition(c.ref, "Deployed")
