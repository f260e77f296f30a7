"""Identities particular to one HTTP tracker: how a `people:` entry becomes an account."""

from __future__ import annotations

import pytest

from bot.errors import TrackerError
from bot.models import Account
from tracker_cases import case
from tracker_fakes import TOKEN

# -- Redmine ------------------------------------------------------------------------------------


def test_redmine_admin_key_takes_only_the_exact_login_from_the_substring_filter() -> None:
    with case("redmine") as c:
        c.app.admin = True
        c.app.rename("alice", "bob Developer")  # first name "bob": users.json?name=bob finds her too
        bob = c.tracker.resolve_account("bob")
        assert bob == Account(c.app.account_id("bob"), "bob", "Bob Builder")
        assert c.server.count("GET", r"^/users\.json$") == 1
        assert c.server.count("GET", "memberships") == 0


def test_redmine_first_name_bob_never_resolves_as_login_bob() -> None:
    for admin in (True, False):
        with case("redmine") as c:
            c.app.admin = admin
            del c.app.people["bob"]  # no login bob at all
            c.app.rename("alice", "bob Developer")
            with pytest.raises(TrackerError) as err:
                c.tracker.resolve_account("bob")
            assert "'bob'" in str(err.value) and "/users/ID" in str(err.value)


def test_redmine_non_admin_key_searches_the_project_members() -> None:
    with case("redmine") as c:
        for n in range(130):  # memberships come 100 a page: the wanted member is on page two
            c.app.add_person(f"member{n:03d}", f"Member {n}")
        c.app.add_person("zoe", "Zoe Approver")
        zoe = c.tracker.resolve_account("Zoe")  # Redmine logins are unique case-insensitively
        assert zoe.login == "zoe" and zoe.id == c.app.account_id("zoe") and zoe.name == "Zoe Approver"
        assert c.server.count("GET", r"^/users\.json$") == 1  # answered 403: not an admin
        assert c.server.count("GET", "memberships") == 2
        sent = len(c.server.log)
        assert c.tracker.resolve_account("member007").id == c.app.account_id("member007")
        assert c.tracker.resolve_account("zoe") == zoe
        assert len(c.server.log) == sent  # every member read in the sweep is remembered


def test_redmine_memberships_skip_groups_and_unknown_logins_fail_closed() -> None:
    with case("redmine") as c:
        with pytest.raises(TrackerError, match="no user with login 'Reviewers'"):
            c.tracker.resolve_account("Reviewers")  # the group's name, not a user


def test_redmine_non_admin_without_project_says_to_use_the_id() -> None:
    with case("redmine", project="") as c:
        with pytest.raises(TrackerError) as err:
            c.tracker.resolve_account("carol")
        assert "not an administrator" in str(err.value) and "numeric Redmine user id" in str(err.value)
        assert c.tracker.resolve_account(c.app.account_id("carol")).login == "carol"


def test_redmine_wrong_key_reads_public_issues_but_is_not_an_account() -> None:
    with case("redmine") as c:
        bad = c.build_with_token("0" * 40)
        try:
            assert bad.get_ticket("#7").status == "Ready for Production"  # anonymous read
            for call in (bad.current_account, bad.check_credentials):
                with pytest.raises(TrackerError) as err:
                    call()
                text = str(err.value)
                assert "401" in text and "TRACKER_TOKEN" in text and "0" * 40 not in text
        finally:
            bad.close()


def test_redmine_current_account() -> None:
    with case("redmine") as c:
        assert c.tracker.current_account() == Account(c.app.account_id("deploybot"), "deploybot", "Deploy Bot")


# -- Jira ---------------------------------------------------------------------------------------


def test_jira_cloud_people_are_account_ids() -> None:
    with case("jira-cloud") as c:
        carol = c.tracker.resolve_account("5b10ac8d82e05b22cc7d4ef5")
        assert carol == Account("5b10ac8d82e05b22cc7d4ef5", "5b10ac8d82e05b22cc7d4ef5", "Carol Reviewer")
        with pytest.raises(TrackerError, match="accountId"):
            c.tracker.resolve_account("carol@example.test")
        assert c.tracker.current_account().id == "5c10a2844c20165700ede999"


def test_jira_dc_username_and_key_name_the_same_account() -> None:
    with case("jira-dc") as c:
        by_name = c.tracker.resolve_account("Carol")  # usernames are case-insensitive
        by_key = c.tracker.resolve_account("JIRAUSER10000")
        assert by_name == by_key == Account("JIRAUSER10000", "carol", "Carol Reviewer")
        assert c.tracker.current_account() == Account("JIRAUSER10003", "deploybot", "Deploy Bot")


def test_jira_dc_falls_back_to_the_name_when_an_old_jira_sends_no_key() -> None:
    with case("jira-dc") as c:
        assert c.tracker._stable_id({"name": "carol", "displayName": "Carol"}) == "carol"
        assert c.tracker._stable_id({"key": "JIRAUSER1", "name": "carol"}) == "JIRAUSER1"


# -- GitHub / GitLab ----------------------------------------------------------------------------


def test_github_logins_ids_and_at_signs() -> None:
    with case("github") as c:
        carol = c.tracker.resolve_account("@Carol")
        assert carol == Account("100", "carol", "carol")
        assert c.tracker.resolve_account("100") == carol
        assert c.server.count("GET", r"^/user/100$") == 1 and c.server.count("GET", r"^/users/Carol$") == 1
        assert c.tracker.current_account() == Account("103", "deploybot", "deploybot")


def test_gitlab_usernames_and_ids() -> None:
    with case("gitlab") as c:
        carol = c.tracker.resolve_account("carol")
        assert carol == Account("10", "carol", "Carol Reviewer")
        assert c.tracker.resolve_account("10") == carol
        c.app.rename("carol", "Quinn Tester")
        assert c.tracker.comments("#7")[0].author == "10"


# -- Linear -------------------------------------------------------------------------------------


def test_linear_handles_and_ids() -> None:
    with case("linear") as c:
        carol_id = c.app.account_id("carol")
        carol = c.tracker.resolve_account("@carol")
        assert carol == Account(carol_id, "carol", "carol")
        assert c.tracker.resolve_account(carol_id) == carol
        with pytest.raises(TrackerError):
            c.tracker.resolve_account("Carol Reviewer")  # the full name: never matched


def test_linear_wrong_key_names_the_variable() -> None:
    with case("linear") as c:
        bad = c.build_with_token("lin_api_wrong")
        try:
            with pytest.raises(TrackerError) as err:
                bad.check_credentials()
            assert "TRACKER_TOKEN" in str(err.value) and TOKEN not in str(err.value)
        finally:
            bad.close()
