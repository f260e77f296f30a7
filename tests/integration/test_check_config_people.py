"""`deploybot check-config --live` says who every person, approver and author is, on the tracker
and in Slack, and fails on unknown accounts."""

from __future__ import annotations

import yaml

from bot import config as configuration
from bot.identity import check_people
from fakes.slack_api import FakeSlack
from handlers import cli
from fakes.tracker import MemoryTracker


def config_data(**extra) -> dict:
    return {
        "tracker": {"kind": "local", "rules": {"cq_approval": {"authors": ["bob", "dana"]},
                                               "qa_pass": {"authors": ["carol"]}}},
        "environments": {"staging": {}, "production": {
            "approvers": ["bob", "erin", "S0SRE", "U0LEGACY"], "deployers": ["alice", "zoe"]}},
        "services": {"web": {"image": "demo-web"}},
        "people": {"alice": {"slack": "U0ALICE", "tracker": "alice"},
                   "bob": {"slack": "U0BOB", "tracker": "12"},
                   "carol": {"tracker": "carol"},
                   "dana": {"slack": "U0DANA", "tracker": "dana-old-login"},
                   "frank": {}},
        **extra,
    }


def test_every_person_approver_and_author_is_resolved_and_unknown_ones_fail():
    tracker = MemoryTracker()
    for login, uid, name in (("alice", "11", "Alice"), ("bob", "12", "Bob Lead"),
                             ("carol", "13", "Carol QA")):
        tracker.user(login, uid, name)
    lines = check_people(configuration.parse(config_data()), tracker)
    text = "\n".join(f"[{level}] {line}" for level, line in lines)
    assert "[ok] deploybot acts as Redmine account deploybot (id 900)" in text
    assert "[ok] people.bob: Redmine bob (id 12, shown as 'Bob Lead')" in text
    assert "[FAILED] people.dana.tracker: Redmine has no user 'dana-old-login'" in text
    assert "[warning] people.frank: no Redmine account" in text
    assert "[ok] tracker.rules.cq_approval.authors: bob = Redmine id 12" in text
    assert "[FAILED] tracker.rules.cq_approval.authors: dana:" in text
    assert "[FAILED] environments.production.approvers: 'erin' is not in people:" in text
    assert "[ok] environments.production.approvers: S0SRE is a Slack user group" in text
    assert "[warning] environments.production.approvers: U0LEGACY is a Slack user id" in text
    assert "[FAILED] environments.production.deployers: 'zoe' is not in people:" in text


def test_wrong_tracker_credentials_fail_first():
    tracker = MemoryTracker(credentials_ok=False)
    (line,) = check_people(configuration.parse(config_data()), tracker)
    assert line[0] == "FAILED" and "401" in line[1]


def test_the_command_checks_slack_ids_too_and_exits_1(tmp_path, monkeypatch, capsys):
    path = tmp_path / "deploybot.yaml"
    data = config_data()
    data["people"]["dana"]["tracker"] = "dana"  # the local tracker knows any login
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("DEPLOYBOT_DB", str(tmp_path / "deploybot.db"))
    users = {"U0ALICE": {"real_name": "Alice Developer"},
             "U0DANA": {"real_name": "Dana Lead", "deleted": True}}  # U0BOB is not in Slack
    with FakeSlack(users=users) as slack:
        monkeypatch.setenv("SLACK_BOT_TOKEN", slack.bot_token)
        monkeypatch.setenv("SLACK_API_URL", slack.api_url)
        code = cli.main(["--config", str(path), "check-config", "--live"])
    out = capsys.readouterr().out
    assert code == cli.EXIT_FAILED
    assert "[ok] people.alice: Slack U0ALICE (Alice Developer)" in out
    assert "[FAILED] people.bob.slack: Slack does not know U0BOB (user_not_found)" in out
    assert "[FAILED] people.dana.slack: U0DANA is a deactivated Slack account" in out
    assert "[ok] people.carol: local carol (id carol)" in out
    assert "problem(s) above" in out
