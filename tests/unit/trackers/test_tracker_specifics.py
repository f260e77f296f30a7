"""Behaviour particular to one tracker or to the shared HTTP layer."""

from __future__ import annotations

import pytest

from backends.trackers import KINDS
from backends.trackers.http import parse_wait
from bot.errors import ConfigError, InputError, TrackerError
from tracker_cases import case
from tracker_fakes import NOW


def test_parse_wait_forms() -> None:
    now = 1_700_000_000.0
    assert parse_wait("3", now) == 3
    assert parse_wait(str(now + 5), now) == 5  # epoch seconds (GitHub, GitLab)
    assert parse_wait(str(int((now + 2) * 1000)), now) == 2  # epoch ms (Linear)
    assert parse_wait("Tue, 14 Nov 2023 22:13:25 GMT", now) == pytest.approx(5, abs=1)
    assert parse_wait("", now) is None and parse_wait("soon", now) is None


def test_github_403_without_quota_waits_for_reset() -> None:
    with case("github") as c:
        c.server.fault(403, headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 2)},
                       body={"message": "API rate limit exceeded"})
        assert c.tracker.get_ticket("#7").status == "Ready for Production"
        assert c.sleeps == [pytest.approx(2, abs=1)] and len(c.server.log) == 2  # until the reset


def test_github_403_with_quota_is_a_permission_error() -> None:
    with case("github") as c:
        c.server.fault(403, headers={"x-ratelimit-remaining": "4000"}, body={"message": "Resource not accessible"})
        with pytest.raises(TrackerError, match="refused access.*Resource not accessible"):
            c.tracker.get_ticket("#7")


def test_github_references() -> None:
    with case("github") as c:
        t = c.build(web_host="github.com")
        assert t.parse_ref("https://github.com/acme/shop/issues/7") == "acme/shop#7"
        assert t.parse_ref("other/repo#3") == "other/repo#3"
        with pytest.raises(InputError):
            t.parse_ref("https://gitlab.com/acme/shop/issues/7")


def test_github_status_labels_replace_each_other() -> None:
    with case("github") as c:
        c.tracker.transition("#7", "Deployed")
        assert "status:Ready for Production" not in c.app.labels and "status:Deployed" in c.app.labels
        c.tracker.add_labels("#7", ["deployed-prod"])
        assert "deployed-prod" in c.tracker.get_ticket("#7").labels


def test_gitlab_system_notes_are_not_comments() -> None:
    with case("gitlab") as c:
        assert len(c.app.notes) == 3 and c.app.notes[-1].system
        comments = c.tracker.comments("#7")
        assert [x.author for x in comments] == [c.app.account_id("carol"), c.app.account_id("quinn")]
        c.tracker.transition("#7", "Deployed")  # writes another system note
        assert len(c.tracker.comments("#7")) == 2


def test_gitlab_references() -> None:
    with case("gitlab") as c:
        url = f"{c.server.url}/acme/web/shop/-/issues/7"
        assert c.tracker.parse_ref(url) == "acme/web/shop#7"
        assert c.tracker.get_ticket(url).url == url


def test_jira_cloud_adf_body_to_text_and_ids() -> None:
    with case("jira-cloud") as c:
        first = c.tracker.comments("PROJ-7")[0]
        assert first.body == "CQ approved: looks good, thanks @Alice Developer 👍"
        assert first.author == "5b10ac8d82e05b22cc7d4ef5"  # accountId, the stable id
        assert c.tracker.get_ticket("7").description == "Totals are rounded twice."


def test_jira_references() -> None:
    with case("jira-cloud") as c:
        t = c.tracker
        assert t.parse_ref(f"{c.server.url}/browse/PROJ-7") == "PROJ-7"
        assert t.parse_ref(f"{c.server.url}/jira/software/projects/PROJ/boards/1?selectedIssue=PROJ-9") == "PROJ-9"
        assert t.parse_ref("#12") == "PROJ-12"


def test_jira_dc_uses_user_keys_and_wiki() -> None:
    with case("jira-dc") as c:
        first = c.tracker.comments("PROJ-7")[0]
        assert first.author == "JIRAUSER10000" and first.author_name == "Carol Reviewer"  # the key
        assert c.tracker.get_ticket("PROJ-7").description == "Totals are rounded twice."


def test_jira_cloud_needs_the_email_too() -> None:
    with case("jira-cloud") as c:
        with pytest.raises(ConfigError, match="TRACKER_EMAIL"):
            KINDS["jira-cloud"](c.settings, {"TRACKER_TOKEN": "x"})


def test_jira_labels() -> None:
    with case("jira-cloud") as c:
        c.tracker.add_labels("PROJ-7", ["deployed"])
        assert c.tracker.get_ticket("PROJ-7").labels == ["backend", "deployed"]
        with pytest.raises(InputError):
            c.tracker.add_labels("PROJ-7", ["has space"])


def test_linear_references_labels_and_missing_issue() -> None:
    with case("linear") as c:
        t = c.tracker
        assert t.parse_ref("https://linear.app/acme/issue/ENG-7/checkout-fix") == "ENG-7"
        assert t.parse_ref("7") == "ENG-7"
        t.add_labels("ENG-7", ["deployed"])
        assert "deployed" in t.get_ticket("ENG-7").labels
        with pytest.raises(TrackerError, match="no label"):
            t.add_labels("ENG-7", ["nope"])
        with pytest.raises(TrackerError, match="Linear has no issue ENG-99"):
            t.comments("ENG-99")


def test_linear_comment_id_is_the_key() -> None:
    with case("linear") as c:
        c.tracker.add_comment("ENG-7", "## Deployed", key="k")
        token = c.tracker._key_token("ENG-7", "k")
        assert token in c.app.comment_ids.values()
        assert token != c.tracker._key_token("ENG-8", "k")  # same key, other issue: another id


def test_redmine_has_no_labels() -> None:
    with case("redmine") as c:
        with pytest.raises(TrackerError, match="no labels"):
            c.tracker.add_labels("7", ["x"])


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="tracker.url"):
        KINDS["redmine"]({"url": "ftp://x", "token_env": "T"}, {"T": "x"})
    with pytest.raises(ConfigError, match="token_env"):
        KINDS["github"]({"repo": "a/b"}, {})
    with pytest.raises(ConfigError, match="OWNER/REPO"):
        KINDS["github"]({"repo": "nope", "token_env": "T"}, {"T": "x"})


def test_redmine_markup_setting() -> None:
    """tracker.markup: textile (also when unset: Redmine's default) or common_mark, nothing else."""
    with case("redmine", markup="common_mark") as c:
        c.tracker.add_comment(c.ref, "## Record\n- [x] CQ review confirmed", key="k")
        assert c.app.notes[-1].text.startswith("## Record\n- [x] CQ review confirmed")
        assert c.tracker.markup_configured
    with case("redmine") as c:
        assert c.tracker.markup == "textile" and not c.tracker.markup_configured
        c.tracker.add_comment(c.ref, "## Record\n- [x] CQ review confirmed", key="k")
        assert c.app.notes[-1].text.startswith("h2. Record\n\n* [x] CQ review confirmed")
        assert c.tracker.comments(c.ref)[-1].body == "Record\n\n- [x] CQ review confirmed"
        with pytest.raises(ConfigError) as err:
            c.build(markup="markdown")
        assert "tracker.markup" in str(err.value)


@pytest.mark.parametrize("markup", [None, "textile"])
def test_check_config_live_warns_when_redmine_markup_is_not_set(markup, tmp_path, monkeypatch, capsys) -> None:
    import yaml

    from backends import trackers
    from handlers import cli

    with case("redmine") as c:
        # the CLI builds its tracker from KINDS: the same adapter, on this case's transport
        build = trackers.KINDS["redmine"]
        monkeypatch.setitem(trackers.KINDS, "redmine", lambda s, e: build(s, e, **c.seams))
        tracker = {k: c.settings[k] for k in ("kind", "url", "token_env", "project")}
        if markup:
            tracker["markup"] = markup
        path = tmp_path / "deploybot.yaml"
        path.write_text(yaml.safe_dump({"tracker": tracker, "environments": {"staging": {}},
                                        "services": {"web": {"image": "demo-web"}}}))
        monkeypatch.setenv("DEPLOYBOT_DB", str(tmp_path / "deploybot.db"))
        monkeypatch.setenv("TRACKER_TOKEN", c.environ["TRACKER_TOKEN"])
        monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
        code = cli.main(["--config", str(path), "check-config", "--live"])
    out = capsys.readouterr().out
    assert code == cli.EXIT_OK, out
    warned = "[warning] Redmine: tracker.markup is not set, so the record is written as textile" in out
    assert warned == (markup is None)


def test_redmine_says_when_the_issue_entered_its_status() -> None:
    """Lead time (bot/dora.py): the status journal read with the comments dates readiness."""
    from tracker_fakes import BASE_TIME

    with case("redmine") as c:
        ticket, _ = c.tracker.gate_data(c.ref)
        assert ticket.status == "Ready for Production"
        assert ticket.created_at == BASE_TIME and ticket.ready_at == BASE_TIME
        assert c.tracker.get_ticket(c.ref).ready_at is None  # read without the journals
        c.app.status = "Closed"  # a move no journal records: no time rather than a wrong one
        assert c.tracker.gate_data(c.ref)[0].ready_at is None


@pytest.mark.parametrize("kind", ["github", "gitlab", "jira-cloud", "jira-dc", "redmine"])
def test_tickets_carry_their_creation_time(kind) -> None:
    """Lead time from creation (bot/dora.py) reads it from the issue itself."""
    from tracker_fakes import BASE_TIME

    with case(kind) as c:
        assert c.tracker.get_ticket(c.ref).created_at == BASE_TIME
