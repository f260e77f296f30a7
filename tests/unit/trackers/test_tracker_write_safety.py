"""Write-back safety per adapter: a comment is posted once per key and a transition made once,
even when the tracker commits the write and answers after deploybot's timeout, in the same call,
in a later call, and from another process (a fresh adapter)."""

from __future__ import annotations

import pytest

from bot.errors import TrackerError
from tracker_cases import SPECS, case
from tracker_fakes import JiraApp

KINDS = list(SPECS)
RECORD = "## Deployment Record\n**Ticket:** #7\n\n- [x] CQ review confirmed\n"
UNSURE = "may or may not have been applied"
LATE = 0.8  # the fake's answer comes this long after the commit (virtually); the client waits TIMEOUT
TIMEOUT = 0.3

# Where each adapter posts a comment: (method, path regex, text the request body contains)
POST = {"redmine": ("PUT", r"/issues/7\.json", "notes"), "linear": ("POST", "/graphql", "mutation Comment")}
# Where it reads the comments it looks for its key in.
READ = {"redmine": ("GET", r"/issues/7\.json", ""), "linear": ("POST", "/graphql", "query CommentById"),
        "github": ("GET", "/comments", ""), "gitlab": ("GET", "/notes", "")}
# Where it moves the ticket.
MOVE = {"jira-cloud": ("POST", "/transitions", ""), "jira-dc": ("POST", "/transitions", ""),
        "github": ("POST", "/labels$", ""), "gitlab": ("PUT", r"issues/7$", "add_labels"),
        "redmine": ("PUT", r"/issues/7\.json", "status_id"), "linear": ("POST", "/graphql", "mutation Update")}


def _post(kind: str) -> tuple[str, str, str]:
    return POST.get(kind, ("POST", "comment$|notes$|comments$", ""))


def _read(kind: str) -> tuple[str, str, str]:
    return READ.get(kind, ("GET", "/comment$", ""))


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def _mine(c) -> list[str]:
    """The bodies of the comments deploybot posted (every fake stores them in `notes`)."""
    return [n for n in c.app.notes if n.login == "deploybot" and not n.system]


def test_a_comment_committed_but_answered_late_is_posted_once(kind: str) -> None:
    with case(kind, timeout=TIMEOUT, retries=2) as c:
        method, path, body = _post(kind)
        c.server.fault(0, method=method, path=path, request_contains=body, after=True, delay=LATE)
        c.tracker.add_comment(c.ref, RECORD, key="deploy-5")  # timed out, found, done
        assert c.server.faults[-1].times == 0  # the late answer did happen
        assert len(_mine(c)) == 1
        c.tracker.add_comment(c.ref, RECORD, key="deploy-5")  # the outbox retries the call
        other = c.build()  # another process, the same key
        try:
            other.add_comment(c.ref, RECORD, key="deploy-5")
        finally:
            other.close()
        assert len(_mine(c)) == 1
        if kind != "linear":  # (Linear reads on the same path) the post was sent once
            assert c.server.count(method, path) == 1
        assert sum("Deployment Record" in x.body for x in c.tracker.comments(c.ref)) == 1


def test_an_unverifiable_post_says_it_may_or_may_not_be_there_and_the_next_call_finds_it(kind: str) -> None:
    with case(kind, timeout=TIMEOUT, retries=1) as c:
        method, path, body = _post(kind)
        c.server.fault(0, method=method, path=path, request_contains=body, after=True, delay=LATE)
        rmethod, rpath, rbody = _read(kind)
        # The first look (before posting) gets through; every look after the post fails.
        c.server.fault(503, method=rmethod, path=rpath, request_contains=rbody, skip=1, times=50,
                       body={"message": "unavailable"})
        with pytest.raises(TrackerError) as err:
            c.tracker.add_comment(c.ref, RECORD, key="deploy-6")
        assert UNSURE in str(err.value) and "retrying is safe" in str(err.value)
        assert len(_mine(c)) == 1
        c.server.faults.clear()  # the tracker is back
        other = c.build()
        try:
            other.add_comment(c.ref, RECORD, key="deploy-6")
        finally:
            other.close()
        assert len(_mine(c)) == 1


def test_a_post_that_never_lands_is_reported_and_posted_by_the_next_call(kind: str) -> None:
    """A 502 before the tracker handled it: the post is not sent again in that call (a slow server
    may still be writing); the error says it may or may not be there; the next call posts it."""
    with case(kind, retries=2) as c:
        method, path, body = _post(kind)
        c.server.fault(502, method=method, path=path, request_contains=body, times=10,
                       body={"message": "Bad gateway"})
        with pytest.raises(TrackerError) as err:
            c.tracker.add_comment(c.ref, RECORD, key="deploy-7")
        assert UNSURE in str(err.value) and "not on the ticket when checked" in str(err.value)
        assert len(_mine(c)) == 0
        assert c.server.faults[-1].times == 9  # posted once, then only looked
        c.server.faults.clear()
        c.tracker.add_comment(c.ref, RECORD, key="deploy-7")
        assert len(_mine(c)) == 1


def test_connection_refused_is_a_tracker_error_and_not_ambiguous(kind: str) -> None:
    with case(kind) as c:
        down = c.build(url="http://127.0.0.1:9", retries=1)  # the fake refuses other origins
        try:
            for call in (lambda: down.add_comment(c.ref, RECORD, key="k"),
                         lambda: down.transition(c.ref, "Deployed")):
                with pytest.raises(TrackerError) as err:
                    call()
                assert "could not be reached" in str(err.value) and UNSURE not in str(err.value)
        finally:
            down.close()


def test_a_transition_committed_but_answered_late_is_done_once(kind: str) -> None:
    with case(kind, timeout=TIMEOUT, retries=2) as c:
        method, path, body = MOVE[kind]
        c.server.fault(0, method=method, path=path, request_contains=body, after=True, delay=LATE)
        c.tracker.transition(c.ref, "Deployed")
        assert c.server.faults[-1].times == 0
        assert c.app.status == "Deployed"
        if kind.startswith("jira"):  # not idempotent: never sent twice
            assert c.server.count("POST", "/transitions") == 1
        sent = len(c.server.log)
        c.tracker.transition(c.ref, "Deployed")  # retried by the outbox: already there
        assert len(c.server.log) == sent + 1  # one read, no write
        assert kind == "linear" or c.server.log[-1][0] == "GET"


def test_a_transition_that_cannot_be_checked_says_it_may_or_may_not_be_done(kind: str) -> None:
    with case(kind, timeout=TIMEOUT, retries=1) as c:
        method, path, body = MOVE[kind]
        c.server.fault(0, method=method, path=path, request_contains=body, after=True, delay=LATE, times=5)
        # Every read after the move fails (Linear reads and writes on one path: match the query).
        read = {"linear": ("POST", "/graphql", "query Issue")}.get(kind, ("GET", "", ""))
        # Reads before the move: Jira the issue with its transitions, Redmine the statuses and
        # the issue, GitHub and GitLab the issue, Linear another query.
        before = {"jira-cloud": 1, "jira-dc": 1, "redmine": 2, "github": 1, "gitlab": 1, "linear": 0}
        c.server.fault(503, method=read[0], path=read[1], request_contains=read[2], times=50,
                       skip=before[kind], body={"message": "unavailable"})
        with pytest.raises(TrackerError) as err:
            c.tracker.transition(c.ref, "Deployed")
        assert UNSURE in str(err.value)
        c.server.faults.clear()
        c.tracker.transition(c.ref, "Deployed")  # the retry finds it done
        assert c.app.status == "Deployed"
        if kind.startswith("jira"):
            assert c.server.count("POST", "/transitions") == 1


# -- Jira: the marker lookup uses documented paths only ------------------------------------------


@pytest.mark.parametrize("kind", ["jira-cloud", "jira-dc"])
def test_jira_comment_pages_never_carry_properties(kind: str) -> None:
    with case(kind) as c:
        c.tracker.add_comment(c.ref, RECORD, key="deploy-8")
        c.tracker.add_comment(c.ref, RECORD, key="deploy-8")
        assert len(_mine(c)) == 1
        resp = c.tracker.http.request("GET", f"{c.tracker.api}/issue/PROJ-7/comment",
                                      params={"expand": "properties"})
        assert all("properties" not in x for x in resp.json()["comments"])
        # How deploybot found the key instead: the documented property reads.
        if kind == "jira-cloud":
            assert c.server.count("POST", "/rest/api/3/comment/list") >= 1
        else:
            assert c.server.count("GET", r"/rest/api/2/comment/\d+/properties/deploybot") >= 1
            assert c.server.count("POST", "/comment/list") == 0


def test_jira_cloud_reads_every_page_of_comments_by_ids() -> None:
    """More of deploybot's comments than one page of "Get comments by IDs": the key on the last
    one is still found, so nothing is posted again."""
    with case("jira-cloud") as c:
        app: JiraApp = c.app
        for n in range(app.list_page + 12):
            app.add_note("deploybot", "", raw={"type": "doc", "version": 1, "content": []},
                         props=[{"key": "deploybot", "value": {"key": f"old-{n}"}}])
        before = len(app.notes)
        c.tracker.add_comment(c.ref, RECORD, key=f"old-{app.list_page + 11}")
        assert len(app.notes) == before
        assert c.server.count("POST", "/rest/api/3/comment/list") == 2


def test_jira_keys_on_other_peoples_comments_are_not_read() -> None:
    """Only deploybot's own comments can carry its key: nobody else's are looked up."""
    with case("jira-dc", n_comments=30) as c:
        c.tracker.add_comment(c.ref, RECORD, key="deploy-9")
        assert c.server.count("GET", r"/properties/") == 0  # no comment of deploybot's yet
        c.tracker.add_comment(c.ref, RECORD, key="deploy-9")
        assert c.server.count("GET", r"/properties/") == 1
        assert len(_mine(c)) == 1


def test_github_label_move_whose_add_failed_is_sent_again() -> None:
    """The old status label is gone, adding the new one got 5xx every time (nothing added): the
    re-read shows the issue between statuses (open), so the add is sent again, not given up."""
    with case("github", retries=2) as c:
        c.server.fault(502, method="POST", path="/labels$", times=3, body={"message": "Bad gateway"})
        c.tracker.transition(c.ref, "Deployed")
        assert c.app.status == "Deployed" and c.server.count("POST", "/labels$") == 4
