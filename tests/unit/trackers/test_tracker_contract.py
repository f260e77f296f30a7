"""The Tracker contract, run against every adapter behind its fake tracker; what does not
depend on HTTP (`any_kind`) against the embedded LocalTracker too."""

from __future__ import annotations

from datetime import timedelta, timezone

import pytest

from bot.errors import ConfigError, InputError, TrackerError
from bot.models import Account
from bot.ports import Tracker
from tracker_cases import SPECS, any_case, case
from tracker_fakes import BASE_TIME, TOKEN, linear_rate_limited

KINDS = list(SPECS)
# Where the author's shown name is the login, id and name alike or not
LOGIN_NAMES = ("github", "linear", "local")
RECORD = """## Deployment Record
**Ticket:** #7
**Deployed by:** alice

### Pre-Deployment Checks
- [x] CQ review confirmed
- [ ] Dependencies in place: migrations not staged

### Rollback Plan
1. `docker run shop:1.4.1`
2. Verify `/health`
"""


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=[*KINDS, "local"])
def any_kind(request: pytest.FixtureRequest) -> str:
    return request.param


def test_is_a_tracker(any_kind: str) -> None:
    with any_case(any_kind) as c:
        assert isinstance(c.tracker, Tracker)
        assert c.tracker.name


def test_parse_ref(any_kind: str) -> None:
    with any_case(any_kind) as c:
        assert c.tracker.parse_ref(c.ref) == c.canonical
        assert c.tracker.parse_ref(f"  {c.ref} ") == c.canonical
        for bad in ("", "not a ticket", "https://elsewhere.example/x/1", "DROP TABLE;"):
            with pytest.raises(InputError):
                c.tracker.parse_ref(bad)
        # digits of other scripts (full-width, Arabic-Indic): `\d` takes them, so PROJ-\uff17 was
        # another ticket to deploybot's one-deployment-per-ticket guard than to the tracker
        for digit in ("\uff17", "\u0667"):
            with pytest.raises(InputError):
                c.tracker.parse_ref(c.ref.replace("7", digit))


def test_get_ticket(any_kind: str) -> None:
    with any_case(any_kind) as c:
        ticket = c.tracker.get_ticket(c.ref)
        assert ticket.id == c.canonical
        assert ticket.title == "Checkout: fix rounding of totals"
        assert ticket.status == "Ready for Production"
        assert ticket.url.startswith(("http://", "https://") if any_kind != "local" else "local:")


def test_comments_authors_times_plain_text(any_kind: str) -> None:
    with any_case(any_kind) as c:
        comments = c.tracker.comments(c.ref)
        # GitHub comments carry only the login; Linear shows the handle (displayName); the
        # local tracker knows only logins
        names = ["carol", "quinn"] if any_kind in LOGIN_NAMES else ["Carol Reviewer", "Quinn Tester"]
        assert [x.author_name for x in comments] == names
        assert comments[0].body.startswith("CQ approved")
        assert comments[1].body == "QA PASS on staging"
        assert all(x.created_at.tzinfo is not None for x in comments)
        assert comments[0].created_at < comments[1].created_at
        assert comments[0].author and comments[0].author != comments[1].author
        assert "{" not in comments[0].body  # ADF/JSON never leaks into the text


def test_every_page_is_read_oldest_first(any_kind: str) -> None:
    with any_case(any_kind, n_comments=260) as c:  # three pages of 100 (Linear: two of 250)
        comments = c.tracker.comments(c.ref)
        assert len(comments) == 260
        assert [x.created_at for x in comments] == sorted(x.created_at for x in comments)
        assert len({x.id for x in comments}) == 260


def test_add_comment_posts_once_per_key(any_kind: str) -> None:
    with any_case(any_kind) as c:
        c.tracker.add_comment(c.ref, RECORD, key="deploy-41")
        c.tracker.add_comment(c.ref, RECORD, key="deploy-41")  # a retried call
        comments = c.tracker.comments(c.ref)
        assert len(comments) == 3
        body = comments[-1].body
        assert "Deployment Record" in body and "CQ review confirmed" in body
        assert "deploybot:" not in body  # the marker is not part of the text people read
        c.tracker.add_comment(c.ref, RECORD, key="deploy-42")  # another key posts again
        assert len(c.tracker.comments(c.ref)) == 4


def test_record_is_converted_to_the_trackers_format(kind: str) -> None:
    with case(kind) as c:
        c.tracker.add_comment(c.ref, RECORD, key="k1")
        note = c.app.notes[-1]
        stored = note.raw if note.raw is not None else note.text
        if kind == "jira-cloud":
            assert stored["type"] == "doc"
            types = [n["type"] for n in stored["content"]]
            assert "heading" in types and "taskList" in types and "orderedList" in types
            states = [i["attrs"]["state"] for n in stored["content"] if n["type"] == "taskList"
                      for i in n["content"]]
            assert states == ["DONE", "TODO"]
            assert note.props == [{"key": "deploybot", "value": {"key": "k1"}}]
        elif kind == "jira-dc":
            assert stored.startswith("h2. Deployment Record")
            assert "* (/) CQ review confirmed" in stored and "# {{docker run shop:1.4.1}}" in stored
        elif kind == "linear":
            assert stored.startswith("## Deployment Record")  # markdown; the key is the comment id
        elif kind == "redmine":  # tracker.markup unset: textile, Redmine's default
            assert stored.startswith("h2. Deployment Record") and "* [x] CQ review confirmed" in stored
            assert "<!-- deploybot:k1 -->" in stored
        else:
            assert stored.startswith("## Deployment Record") and "- [x] CQ review confirmed" in stored
            assert "<!-- deploybot:k1 -->" in stored


def test_ambiguous_post_is_not_duplicated(kind: str) -> None:
    """The comment lands but the answer is a 502: the retry must find it, not post again."""
    with case(kind) as c:
        method = "PUT" if kind == "redmine" else "POST"
        path = {"redmine": r"/issues/7\.json", "linear": "/graphql"}.get(kind, "comment|notes")
        c.server.fault(502, method=method, path=path, after=True, body={"message": "Bad gateway"},
                       request_contains="mutation Comment" if kind == "linear" else "")
        c.tracker.add_comment(c.ref, RECORD, key="deploy-77")
        assert len(c.app.notes) == 3 + (kind == "gitlab")  # GitLab's fake also has a system note
        assert c.server.faults[-1].times == 0  # the fault did fire


def test_transition_moves_and_rereads(any_kind: str) -> None:
    with any_case(any_kind) as c:
        c.tracker.transition(c.ref, "Deployed")
        assert c.tracker.get_ticket(c.ref).status == "Deployed"
        c.tracker.transition(c.ref, "deployed")  # already there: nothing to do, no error


def test_transition_says_the_status_before_and_leaves_a_ticket_moved_meanwhile(any_kind: str) -> None:
    with any_case(any_kind) as c:
        assert c.tracker.transition(c.ref, "Deployed", only_from="Open") == "Ready for Production"
        assert c.tracker.get_ticket(c.ref).status == "Ready for Production"  # not where it was seen
        assert c.tracker.transition(c.ref, "Deployed",
                                    only_from="ready for production") == "Ready for Production"
        assert c.tracker.get_ticket(c.ref).status == "Deployed"
        assert c.tracker.transition(c.ref, "Deployed", only_from="Open") == "Deployed"


def test_transition_the_workflow_forbids_fails_clearly(kind: str) -> None:
    with case(kind) as c:
        with pytest.raises(TrackerError) as err:
            c.tracker.transition(c.ref, "Closed")
        assert "Closed" in str(err.value) and c.canonical.split("#")[-1] in str(err.value)
        assert c.tracker.get_ticket(c.ref).status == "Ready for Production"


def test_check_credentials(kind: str) -> None:
    with case(kind) as c:
        c.tracker.check_credentials()
        bad = c.build_with_token("wrong-token")
        try:
            with pytest.raises(TrackerError) as err:
                bad.check_credentials()
            text = str(err.value)
            assert "TRACKER_TOKEN" in text and "wrong-token" not in text and TOKEN not in text
        finally:
            bad.close()


def test_missing_secret_is_a_config_error(kind: str) -> None:
    with case(kind) as c:
        with pytest.raises(ConfigError) as err:
            c.build_with_token("")
        assert "TRACKER_TOKEN" in str(err.value)


def test_unknown_ticket_says_which(any_kind: str) -> None:
    with any_case(any_kind) as c:
        missing = c.tracker.parse_ref(c.ref.replace("7", "9999"))
        with pytest.raises(TrackerError) as err:
            c.tracker.get_ticket(missing)
        assert "9999" in str(err.value) and c.tracker.name in str(err.value)
        assert TOKEN not in str(err.value)


def test_5xx_then_success_is_retried(kind: str) -> None:
    with case(kind) as c:
        c.server.fault(503, times=2, body={"message": "unavailable"})
        assert c.tracker.get_ticket(c.ref).status == "Ready for Production"
        assert len(c.server.log) == 3


def test_5xx_forever_fails_with_the_tracker_named(kind: str) -> None:
    with case(kind, retries=2) as c:
        c.server.fault(500, times=10, body={"message": "boom"})
        with pytest.raises(TrackerError) as err:
            c.tracker.get_ticket(c.ref)
        assert c.tracker.name in str(err.value) and "500" in str(err.value)
        assert len(c.server.log) == 3


def test_429_honours_retry_after(kind: str) -> None:
    with case(kind) as c:
        if kind == "linear":
            c.server.fault(**linear_rate_limited(1.0))
        else:
            c.server.fault(429, headers={"Retry-After": "1"}, body={"message": "slow down"})
        assert c.tracker.get_ticket(c.ref).title
        assert c.sleeps == [pytest.approx(1.0, abs=0.01)]  # the wait the tracker asked for
        assert len(c.server.log) == 2


def test_rate_limit_longer_than_max_wait_fails_at_once(kind: str) -> None:
    with case(kind, max_wait=5) as c:
        if kind == "linear":
            c.server.fault(**linear_rate_limited(3600))
        else:
            c.server.fault(429, headers={"Retry-After": "3600"})
        with pytest.raises(TrackerError) as err:
            c.tracker.get_ticket(c.ref)
        assert "rate limit" in str(err.value) and "retry in 3600 s" in err.value.hint
        assert c.sleeps == [] and len(c.server.log) == 1  # refused without waiting or retrying


def test_timeout_is_retried_then_reported(kind: str) -> None:
    with case(kind, timeout=0.3, retries=1) as c:
        c.server.fault(0, delay=1.0, times=1)  # slow once: retried
        assert c.tracker.get_ticket(c.ref).title
        assert len(c.server.log) == 2
        c.server.fault(0, delay=1.0, times=5)  # slow always: a clear error after the retries
        with pytest.raises(TrackerError) as err:
            c.tracker.get_ticket(c.ref)
        assert "did not answer in time" in str(err.value)
        assert len(c.server.log) == 4 and c.server.faults[-1].times == 3  # 1 + retries=1, no more


def test_gate_data_fetches_concurrently(kind: str) -> None:
    with case(kind, n_comments=500) as c:
        ticket, comments = c.tracker.gate_data(c.ref)
        assert ticket.status == "Ready for Production" and len(comments) == 500
        assert len(c.server.log) <= 7


def test_times_are_utc_aware(any_kind: str) -> None:
    with any_case(any_kind) as c:
        created = c.tracker.comments(c.ref)[0].created_at
        assert created.utcoffset() == timezone.utc.utcoffset(None)


# -- identities ---------------------------------------------------------------------------------

# A stable id of the right form that no account has, per tracker.
UNKNOWN_IDS = {"jira-cloud": "5b10ffffffffffffffffffff", "jira-dc": "JIRAUSER99999", "github": "999999",
               "gitlab": "999999", "linear": "2f0b6a1e-0000-4000-8000-00000000dead", "redmine": "999"}


def test_authors_are_stable_ids(any_kind: str) -> None:
    with any_case(any_kind) as c:
        comments = c.tracker.comments(c.ref)
        assert [x.author for x in comments] == [c.app.account_id("carol"), c.app.account_id("quinn")]
        if any_kind != "local":  # a login is the local tracker's id and name at once
            assert all(x.author != x.author_name for x in comments)


def test_a_renamed_user_keeps_her_id_and_her_new_name_resolves_to_nobody_else(kind: str) -> None:
    """alice renames herself to bob's display name: her comment stays hers, only the shown name
    changes, and nothing a person can rename is ever taken as a `people:` entry."""
    with case(kind) as c:
        c.app.add_note("alice", "CQ approved", BASE_TIME + timedelta(minutes=30))
        alice = c.app.account_id("alice")
        before = c.tracker.comments(c.ref)[-1]
        c.app.rename("alice", "Bob Builder")  # bob's own display name
        after = c.tracker.comments(c.ref)[-1]
        assert before.author == after.author == alice
        if kind in ("github", "linear"):  # they show the login / handle, which did not change
            assert after.author_name == before.author_name == "alice"
        else:
            assert (before.author_name, after.author_name) == ("Alice Developer", "Bob Builder")
        bob = c.tracker.resolve_account(c.app.login_ref("bob"))
        assert bob.id == c.app.account_id("bob") != alice
        shown = () if kind in ("github", "linear") else (after.author_name,)  # there: her login
        for display in ("Bob Builder", "bob builder", *shown):
            with pytest.raises(TrackerError):
                c.tracker.resolve_account(display)
        c.app.rename("alice", "bob")  # a one-word name that is also a login
        try:
            assert c.tracker.resolve_account("bob").id != alice
        except TrackerError:
            assert kind == "jira-cloud"  # "bob" is no accountId: refused, which is fine too


def test_resolve_by_login_and_by_id_gives_the_id_comments_carry(any_kind: str) -> None:
    with any_case(any_kind) as c:
        comments = c.tracker.comments(c.ref)
        for login, comment in zip(("carol", "quinn"), comments):
            by_login = c.tracker.resolve_account(c.app.login_ref(login))
            by_id = c.tracker.resolve_account(c.app.id_ref(login))
            assert isinstance(by_login, Account)
            assert by_login.id == by_id.id == comment.author
            assert by_login.name == comment.author_name


def test_resolutions_are_cached(kind: str) -> None:
    with case(kind) as c:
        first = c.tracker.resolve_account(c.app.login_ref("carol"))
        sent = len(c.server.log)
        assert c.tracker.resolve_account(c.app.login_ref("carol")) == first
        assert c.tracker.resolve_account(f"  {c.app.login_ref('carol')} ") == first
        assert len(c.server.log) == sent


def test_unknown_ref_is_a_tracker_error_naming_it(kind: str) -> None:
    with case(kind) as c:
        for ref in ("nobody", UNKNOWN_IDS[kind], "Carol Reviewer", "carol; DROP TABLE"):
            with pytest.raises(TrackerError) as err:
                c.tracker.resolve_account(ref)
            assert repr(ref) in str(err.value) and err.value.hint, (ref, str(err.value))
        with pytest.raises(TrackerError):
            c.tracker.resolve_account("  ")


def test_current_account_is_the_author_of_deploybots_comments(any_kind: str) -> None:
    with any_case(any_kind) as c:
        me = c.tracker.current_account()
        assert me.id == c.app.account_id("deploybot") and me.name
        c.tracker.add_comment(c.ref, RECORD, key="who")
        assert c.tracker.comments(c.ref)[-1].author == me.id


def test_current_account_with_a_wrong_token_says_which_variable(kind: str) -> None:
    with case(kind) as c:
        bad = c.build_with_token("wrong-token")
        try:
            with pytest.raises(TrackerError) as err:
                bad.current_account()
            text = str(err.value)
            assert "TRACKER_TOKEN" in text and "wrong-token" not in text and TOKEN not in text
            assert "credentials" in text
        finally:
            bad.close()


# -- order --------------------------------------------------------------------------------------


def test_equal_timestamps_keep_the_trackers_order(any_kind: str) -> None:
    with any_case(any_kind) as c:
        c.app.tie_break = -1  # where the API leaves it open (Jira, GitLab), the fake answers newest first
        when = BASE_TIME + timedelta(hours=1)
        first = c.app.add_note("carol", "approved for CQ", when)
        second = c.app.add_note("carol", "approval withdrawn: wrong build", when)
        if any_kind == "linear":  # UUIDs: their lexical order means nothing, Linear's order does
            c.app.comment_ids[first.id] = "ffffffff-ffff-4fff-bfff-ffffffffffff"
            c.app.comment_ids[second.id] = "00000000-0000-4000-8000-000000000001"
        comments = c.tracker.comments(c.ref)
        assert [x.body for x in comments[-2:]] == ["approved for CQ", "approval withdrawn: wrong build"]
        assert comments[-1].created_at == comments[-2].created_at


@pytest.mark.parametrize("numeric", [k for k in KINDS if k != "linear"] + ["local"])
def test_skewed_timestamps_do_not_reorder_numeric_ids(numeric: str) -> None:
    """A later comment (higher id) stamped earlier, e.g. a skewed clock: the id decides."""
    with any_case(numeric) as c:
        c.app.add_note("quinn", "QA FAIL", BASE_TIME + timedelta(hours=2))
        c.app.add_note("quinn", "QA PASS after the fix", BASE_TIME + timedelta(hours=1))
        comments = c.tracker.comments(c.ref)
        assert [x.body for x in comments[-2:]] == ["QA FAIL", "QA PASS after the fix"]
        assert [int(x.id) for x in comments] == sorted(int(x.id) for x in comments)
