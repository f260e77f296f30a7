"""The Redmine adapter against a real Redmine (Debian's redmine + redmine-sqlite) on 127.0.0.1.

The fixture starts a private instance with scripts/redmine_local.py (cached, migrated and seeded
template; ~5 s warm, ~20 s from nothing) and stops it by its PID. It fails, never skips, when
Redmine cannot be started.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import httpx
import pytest

from backends.trackers import KINDS
from bot.errors import TrackerError

HELPER = Path(__file__).resolve().parents[2] / "scripts" / "redmine_local.py"
RECORD = """## Deployment Record
**Ticket:** #{n}
**Deployed by:** alice

### Pre-Deployment Checks
- [x] CQ review confirmed
- [ ] Dependencies in place: migrations not staged

### Rollback Plan
1. `docker run shop:1.4.1`
2. Verify `/health`
"""


def _helper():
    spec = importlib.util.spec_from_file_location("redmine_local", HELPER)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("redmine_local", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def redmine():
    helper = _helper()
    problem = None
    try:
        instance = helper.up()
    except Exception as exc:  # install missing, migration failed, server did not answer in time
        problem = exc
    if problem is not None:
        pytest.fail(
            f"Could not start a local Redmine: {problem}\n"
            "Install it with: DEBIAN_FRONTEND=noninteractive apt-get install -y "
            "--no-install-recommends redmine redmine-sqlite",
            pytrace=False,
        )
    print(f"Redmine up at {instance.url} in {instance.seconds} s (pid {instance.pid})")
    try:
        yield instance
    finally:
        instance.stop()


def _tracker(redmine, user: str = "deploybot", **settings):
    conf = {"kind": "redmine", "url": redmine.url, "token_env": "REDMINE_KEY", "project": "webshop",
            "timeout": 10, "retries": 2, "backoff": 0.1, **settings}
    return KINDS["redmine"](conf, {"REDMINE_KEY": redmine.keys[user]})


def _api(redmine, user: str) -> httpx.Client:
    return httpx.Client(base_url=redmine.url, timeout=10,
                        headers={"X-Redmine-API-Key": redmine.keys[user]})


def _new_issue(redmine, subject: str) -> str:
    """An issue opened by alice, reviewed by carol, passed by quinn: what /deploy meets."""
    with _api(redmine, "alice") as alice:
        resp = alice.post("/issues.json", json={"issue": {"project_id": "webshop", "subject": subject}})
        assert resp.status_code == 201, resp.text
        number = str(resp.json()["issue"]["id"])
    for user, note in (("carol", "CQ approved"), ("quinn", "QA PASS")):
        with _api(redmine, user) as client:
            assert client.put(f"/issues/{number}.json", json={"issue": {"notes": note}}).status_code == 204
    return number


def test_comments_are_the_real_journals_with_authors(redmine) -> None:
    tracker = _tracker(redmine)
    ticket = tracker.get_ticket(f"#{redmine.keys['issue']}")
    assert ticket.status == "Ready for Production"
    assert ticket.url == f"{redmine.url}/issues/{redmine.keys['issue']}"
    comments = tracker.comments(ticket.url)
    ids = redmine.keys["user_ids"]
    assert [(c.author, c.author_name) for c in comments[:2]] == [
        (str(ids["carol"]), "Carol Reviewer"), (str(ids["quinn"]), "Quinn Tester")]
    assert comments[0].body == "CQ approved: code looks good"
    assert all(c.created_at.tzinfo is not None for c in comments)


def test_record_posted_once_as_markdown_and_status_deployed(redmine) -> None:
    tracker = _tracker(redmine)
    number = _new_issue(redmine, "Checkout: record and deploy")
    tracker.transition(number, "Ready for Production")

    record = RECORD.format(n=number)
    tracker.add_comment(number, record, key=f"deploy-{number}")
    tracker.add_comment(number, record, key=f"deploy-{number}")  # a retry: no second note
    comments = tracker.comments(number)
    assert [c.body for c in comments][:2] == ["CQ approved", "QA PASS"]
    assert len(comments) == 3 and comments[2].author == str(redmine.keys["user_ids"]["deploybot"])
    assert comments[2].body.startswith("## Deployment Record")

    page = httpx.get(f"{redmine.url}/issues/{number}", timeout=10).text  # rendered by common_mark
    assert "Deployment Record</h2>" in page.replace('<a href="#Deployment-Record" class="wiki-anchor">&para;</a>', "")
    assert 'class="task-list-item-checkbox" checked' in page
    assert "<ol>" in page and "deploybot:deploy-" not in page  # the marker stays hidden

    tracker.transition(number, "Deployed")
    assert tracker.get_ticket(number).status == "Deployed"


def test_forbidden_transition_fails_clearly(redmine) -> None:
    tracker = _tracker(redmine)
    number = _new_issue(redmine, "Checkout: forbidden move")
    tracker.transition(number, "Ready for Production")
    with pytest.raises(TrackerError) as err:
        tracker.transition(number, "Closed")  # the Deployer role may not close
    text = str(err.value)
    assert "Closed" in text and number in text and "Workflow" in text
    assert tracker.get_ticket(number).status == "Ready for Production"


def test_unknown_status_and_unknown_issue(redmine) -> None:
    tracker = _tracker(redmine)
    with pytest.raises(TrackerError, match="no issue status 'Shipped'"):
        tracker.transition(str(redmine.keys["issue"]), "Shipped")
    with pytest.raises(TrackerError, match="no ticket #987654"):
        tracker.get_ticket("987654")


def test_bad_api_key_is_reported_by_check_credentials(redmine) -> None:
    _tracker(redmine).check_credentials()
    bad = KINDS["redmine"]({"url": redmine.url, "token_env": "REDMINE_KEY"}, {"REDMINE_KEY": "0" * 40})
    with pytest.raises(TrackerError) as err:
        bad.check_credentials()
    assert "REDMINE_KEY" in str(err.value) and "401" in str(err.value)
    assert "0" * 40 not in str(err.value)


def test_gate_data_is_one_request(redmine) -> None:
    tracker = _tracker(redmine)
    before = tracker.http.requests
    ticket, comments = tracker.gate_data(str(redmine.keys["issue"]))
    assert tracker.http.requests - before == 1
    assert ticket.status and len(comments) >= 2
