"""The Redmine adapter against a real Redmine (Debian's redmine + redmine-sqlite) on 127.0.0.1.

The fixture starts a private instance with scripts/redmine_local.py (cached, migrated and seeded
template; ~5 s warm, ~20 s from nothing) and stops it by its PID. It fails, never skips, when
Redmine cannot be started.
"""

from __future__ import annotations

import importlib.util
import re
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


def _instance(**options):
    helper = _helper()
    problem = None
    try:
        instance = helper.up(**options)
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


@pytest.fixture(scope="module")
def redmine():
    """Seeded with the common_mark text formatting."""
    yield from _instance()


@pytest.fixture(scope="module")
def redmine_textile():
    """The same seed, with Redmine's default text formatting: textile."""
    yield from _instance(text_formatting="textile")


def _tracker(redmine, user: str = "deploybot", **settings):
    conf = {"kind": "redmine", "url": redmine.url, "token_env": "REDMINE_KEY", "project": "webshop",
            "timeout": 10, "retries": 2, "backoff": 0.1, "markup": "common_mark", **settings}
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


# -- identities and order -----------------------------------------------------------------------


def test_current_account_is_deploybot(redmine) -> None:
    me = _tracker(redmine).current_account()
    assert me.id == str(redmine.keys["user_ids"]["deploybot"])
    assert (me.login, me.name) == ("deploybot", "Deploy Bot")


def test_a_renamed_user_keeps_her_id_and_never_resolves_as_her_new_name(redmine) -> None:
    """dora renames herself "bob" with her own key: her note stays hers (id), only the shown
    name changes, and `bob` in people: still means the user whose login is bob."""
    ids = redmine.keys["user_ids"]
    number = _new_issue(redmine, "Checkout: a renamed reviewer")
    with _api(redmine, "dora") as dora:
        assert dora.put(f"/issues/{number}.json", json={"issue": {"notes": "CQ approved"}}).status_code == 204
        try:
            resp = dora.put("/my/account.json", json={"user": {"firstname": "bob"}})
            assert resp.status_code == 204, resp.text
            assert dora.get("/users/current.json").json()["user"]["firstname"] == "bob"
            with _api(redmine, "admin") as admin:  # the filter is a substring match over names too
                found = admin.get("/users.json", params={"name": "bob"}).json()["users"]
                assert {u["login"] for u in found} == {"bob", "dora"}
            for user in ("deploybot", "admin"):  # member sweep, then users.json?name=
                tracker = _tracker(redmine, user=user)
                note = tracker.comments(number)[-1]
                assert (note.author, note.author_name) == (str(ids["dora"]), "bob Renamer")
                assert note.body == "CQ approved"
                assert tracker.resolve_account("bob").id == str(ids["bob"]) != note.author
                assert tracker.resolve_account("dora").id == note.author  # her login did not change
                with pytest.raises(TrackerError):
                    tracker.resolve_account("bob Renamer")
            # A first name that is nobody's login resolves to nobody, with or without admin rights.
            assert dora.put("/my/account.json", json={"user": {"firstname": "zed"}}).status_code == 204
            for user in ("deploybot", "admin"):
                with pytest.raises(TrackerError) as err:
                    _tracker(redmine, user=user).resolve_account("zed")
                assert "'zed'" in str(err.value) and "/users/ID" in str(err.value)
        finally:
            dora.put("/my/account.json", json={"user": {"firstname": "Dora"}})


def test_journals_in_one_second_come_in_id_order(redmine) -> None:
    number = str(redmine.keys["tie_issue"])
    journals = redmine.keys["tie_journals"]
    raw = httpx.get(f"{redmine.url}/issues/{number}.json", params={"include": "journals"}, timeout=10,
                    headers={"X-Redmine-API-Key": redmine.keys["deploybot"]}).json()["issue"]["journals"]
    stamps = {j["id"]: j["created_on"] for j in raw}
    assert stamps[journals[0]] == stamps[journals[1]] > stamps[journals[2]]  # a tie, and a skew
    assert [j["id"] for j in raw] != journals  # Redmine itself orders by created_on first
    comments = _tracker(redmine).comments(number)
    assert [c.id for c in comments] == [str(j) for j in journals]
    assert [c.body.split(":")[0] for c in comments] == ["CQ approved", "CQ withdrawn", "QA PASS"]
    assert comments[0].created_at == comments[1].created_at


def test_wrong_key_on_the_public_project_reads_anonymously_but_is_no_account(redmine) -> None:
    bad = KINDS["redmine"]({"url": redmine.url, "token_env": "REDMINE_KEY", "project": "webshop"},
                           {"REDMINE_KEY": "f" * 40})
    ticket = bad.get_ticket(str(redmine.keys["issue"]))  # the public project answers anonymously
    assert ticket.status == "Ready for Production"
    for call in (bad.current_account, bad.check_credentials):
        with pytest.raises(TrackerError) as err:
            call()
        text = str(err.value)
        assert "401" in text and "REDMINE_KEY" in text and "f" * 40 not in text


def test_resolve_by_login_and_id_with_and_without_admin_rights(redmine) -> None:
    ids = redmine.keys["user_ids"]
    with _api(redmine, "deploybot") as client:  # deploybot is no administrator
        assert client.get("/users.json", params={"name": "carol"}).status_code == 403
    plain, admin = _tracker(redmine), _tracker(redmine, user="admin")
    for tracker in (plain, admin):
        for login in ("carol", "quinn", "Carol"):
            account = tracker.resolve_account(login)
            assert account.id == str(ids[login.lower()]) and account.login == login.lower()
        by_id = tracker.resolve_account(str(ids["carol"]))
        assert (by_id.id, by_id.login, by_id.name) == (str(ids["carol"]), "carol", "Carol Reviewer")
        assert tracker.comments(str(redmine.keys["issue"]))[0].author == by_id.id
        for unknown in ("nobody", "987654", "Carol Reviewer"):
            with pytest.raises(TrackerError):
                tracker.resolve_account(unknown)
    before = plain.http.requests
    plain.resolve_account("quinn")
    assert plain.http.requests == before  # resolved once per process


# -- the gates on a real Redmine, through the pipeline ------------------------------------------

def _gates(redmine, tmp_path, *, key: str | None = None, cq: tuple = ("bob",),
           qa: tuple = ("quinn",), environments: dict | None = None):
    """A pipeline reading this Redmine (deploybot's key, or `key`), in-memory deploys."""
    from bot import config as configuration
    from bot.pipeline import Pipeline
    from bot.store import Store
    from fakes.core import FakeBackend, FakeProbe, InstantClock, RecordingReporter, \
        ScriptedApprover

    cfg = configuration.parse({
        "tracker": {"kind": "redmine", "url": redmine.url, "token_env": "REDMINE_KEY",
                    "project": "webshop", "markup": "common_mark",  # the seeded instance's
                    "rules": {"cq_approval": {"authors": list(cq)},
                                                    "qa_pass": {"authors": list(qa)}}},
        "environments": environments or {"staging": {}},
        "services": {"web": {"image": "demo-web", "health": {"url": "http://127.0.0.1:9/h"}}},
        "people": {n: {"tracker": n} for n in ("alice", "bob", "carol", "quinn", "dora")},
    })
    tracker = KINDS["redmine"]({"url": redmine.url, "token_env": "REDMINE_KEY",
                                "project": "webshop", "timeout": 10, "markup": "common_mark"},
                               {"REDMINE_KEY": key or redmine.keys["deploybot"]})
    backend = FakeBackend(running="v1")
    pipeline = Pipeline(config=cfg, store=Store(tmp_path / "deploybot.db"), tracker=tracker,
                        backend_for=lambda s, e: backend, reporter=RecordingReporter(),
                        approver=ScriptedApprover(), probe=FakeProbe(backend),
                        clock=InstantClock())
    pipeline.backend = backend
    return pipeline


def _reason(pipeline, d, item: str) -> str:
    return next(c.reason for c in pipeline.store.checks(d.id) if c.name == item)


def test_a_reviewer_renamed_to_bobs_exact_name_does_not_pass_bobs_gate(redmine, tmp_path) -> None:
    number = _new_issue(redmine, "Checkout: bob's gate")  # carol CQ (not allowed), quinn QA
    _tracker(redmine).transition(number, "Ready for Production")
    with _api(redmine, "dora") as dora:
        try:  # dora takes the real bob's display name, "Bob Builder"
            assert dora.put("/my/account.json", json={"user": {
                "firstname": "Bob", "lastname": "Builder"}}).status_code == 204
            assert dora.put(f"/issues/{number}.json",
                            json={"issue": {"notes": "CQ approved"}}).status_code == 204
            pipeline = _gates(redmine, tmp_path)
            shown = [c.author_name for c in pipeline.tracker.comments(number)]
            assert shown.count("Bob Builder") == 1  # only dora's note carries it so far
            d = pipeline.run(pipeline.request_deploy(number, requested_by="alice",
                                                     target="web@v2").id)
            assert d.status.value == "blocked"
            assert "dora, who may not give it (allowed: bob)" in _reason(pipeline, d, "cq_approval")
            assert pipeline.backend.calls == []
        finally:
            dora.put("/my/account.json", json={"user": {"firstname": "Dora",
                                                        "lastname": "Renamer"}})
    with _api(redmine, "bob") as bob:  # the real bob
        assert bob.put(f"/issues/{number}.json",
                       json={"issue": {"notes": "CQ approved"}}).status_code == 204
    d = pipeline.run(pipeline.request_deploy(number, requested_by="alice", target="web@v2").id)
    assert d.status.value == "succeeded", d.failure
    assert _reason(pipeline, d, "cq_approval").startswith("by bob on")


def test_a_withdrawal_in_the_same_second_is_read_in_journal_order(redmine, tmp_path) -> None:
    """The seeded issue: carol's "CQ approved" and "CQ withdrawn" share one second; quinn's QA
    PASS has the newest id but a timestamp a minute earlier."""
    pipeline = _gates(redmine, tmp_path, cq=("carol",))
    number = str(redmine.keys["tie_issue"])
    d = pipeline.run(pipeline.request_deploy(number, requested_by="alice", target="web@v2").id)
    assert d.status.value == "blocked"
    reason = _reason(pipeline, d, "cq_approval")
    assert "the newest CQ approval comment, by carol, does not give it" in reason
    assert "withdrawn" in reason
    assert _reason(pipeline, d, "qa_pass").startswith("by quinn")


def test_a_wrong_key_on_the_public_project_blocks_before_the_checklist(redmine, tmp_path) -> None:
    number = _new_issue(redmine, "Checkout: wrong key")
    _tracker(redmine).transition(number, "Ready for Production")
    pipeline = _gates(redmine, tmp_path, key="e" * 40)
    d = pipeline.request_deploy(number, requested_by="alice", target="web@v2")  # reads anonymously
    d = pipeline.run(d.id)
    assert d.status.value == "blocked"
    reason = _reason(pipeline, d, "cq_approval")
    assert "401" in reason and "REDMINE_KEY" in reason and "e" * 40 not in reason
    assert pipeline.backend.calls == []


def test_the_requesters_own_approval_on_redmine_never_counts_with_open_authors(
        redmine, tmp_path) -> None:
    """people map logins (resolved to ids with deploybot's non-admin key); authors are open."""
    number = _new_issue(redmine, "Checkout: my own approval")
    _tracker(redmine).transition(number, "Ready for Production")
    with _api(redmine, "alice") as alice:
        for note in ("CQ approved", "QA PASS"):
            assert alice.put(f"/issues/{number}.json",
                             json={"issue": {"notes": note}}).status_code == 204
    pipeline = _gates(redmine, tmp_path, cq=(), qa=())
    # carol's and quinn's notes are older: alice's own are the newest and must not count
    d = pipeline.run(pipeline.request_deploy(number, requested_by="alice", target="web@v2").id)
    assert d.status.value == "succeeded", d.failure  # carol (CQ) and quinn (QA) still count
    assert _reason(pipeline, d, "cq_approval").startswith("by carol")
    # without carol's and quinn's notes, alice's own approvals are all there is: blocked
    lone = _new_issue(redmine, "Checkout: only mine")
    with _api(redmine, "admin") as admin:  # remove the others' notes from the history
        journals = admin.get(f"/issues/{lone}.json", params={"include": "journals"}).json()
        for j in journals["issue"]["journals"]:
            admin.put(f"/journals/{j['id']}.json", json={"journal": {"notes": ""}})
    _tracker(redmine).transition(lone, "Ready for Production")
    with _api(redmine, "alice") as alice:
        for note in ("CQ approved", "QA PASS"):
            alice.put(f"/issues/{lone}.json", json={"issue": {"notes": note}})
    d = pipeline.run(pipeline.request_deploy(lone, requested_by="alice", target="web@v2").id)
    assert d.status.value == "blocked"
    assert "the only CQ approval comment is by the requester (alice)" in \
        _reason(pipeline, d, "cq_approval")
    # someone not in people: asking: alice's account is alice's, a different person: it counts
    d = pipeline.run(pipeline.request_deploy(lone, requested_by="zoe", target="web@v2").id)
    assert _reason(pipeline, d, "cq_approval").startswith("by alice")


def test_redmine_gone_while_the_gate_waits_blocks_the_approved_rollout(tmp_path) -> None:
    """A Redmine of its own, stopped for real (by its PID) between the checklist and the click."""
    instance = _helper().up()
    try:
        number = _new_issue(instance, "Checkout: tracker goes away")
        _tracker(instance).transition(number, "Ready for Production")
        with _api(instance, "bob") as bob:
            assert bob.put(f"/issues/{number}.json",
                           json={"issue": {"notes": "CQ approved"}}).status_code == 204
        pipeline = _gates(instance, tmp_path, environments={
            "production": {"approvals_required": 1, "approvers": ["carol"]}})
        d = pipeline.request_deploy(number, requested_by="alice", target="web@v2",
                                    environment="production")
        d = pipeline.run(d.id)
        assert d.status.value == "awaiting_approval", d.failure
    finally:
        instance.stop()
    gate = pipeline.pending_gates(d.id)[0]
    d = pipeline.decide_gate(gate.id, decided_by="carol", approved=True).deployment
    assert d.status.value == "blocked"
    recheck = _reason(pipeline, d, "rollout_recheck")
    assert recheck.startswith("changed since the checklist") and "cannot read" in recheck
    assert pipeline.backend.calls == []


# -- textile: Redmine's default text formatting ------------------------------------------------

TEXTILE_RECORD = """## Deployment Record
**Ticket:** #{n}
**Deployed by:** alice; approved by carol at 2026-11-26 12:00 UTC
**Previous Version:** none (first deployment)

### Changes Deployed
Manual rollback of web from 1.4.1-rc to 1.4.0 (ticket: fix -the- totals +now+ some_var_name)

### Pre-Deployment Checks
- [x] CQ review confirmed
- [ ] Dependencies in place: migrations not staged

### Rollback Plan
1. `docker run shop:1.4.1`
2. See [runbook](https://wiki.example/runbook)

```bash
docker compose up -d --no-deps web
```
"""


def _rendered_notes(redmine, number: str) -> str:
    """The issue page's journal notes as Redmine rendered them (the project is public)."""
    page = httpx.get(f"{redmine.url}/issues/{number}", timeout=10).text
    parts = page.split('class="wiki"')
    return "".join(part.split("</div>", 1)[0] for part in parts[1:])


def test_record_on_a_textile_redmine_is_textile_rendered_well(redmine_textile) -> None:
    tracker = _tracker(redmine_textile, markup=None)  # not configured: textile, Redmine's default
    number = _new_issue(redmine_textile, "Checkout: record on textile")
    record = TEXTILE_RECORD.format(n=number)
    tracker.add_comment(number, record, key=f"deploy-{number}")
    tracker.add_comment(number, record, key=f"deploy-{number}")  # a retry: no second note

    with _api(redmine_textile, "deploybot") as api:
        journals = api.get(f"/issues/{number}.json", params={"include": "journals"}).json()["issue"]["journals"]
    stored = [j["notes"] for j in journals if j["notes"] and "Deployment Record" in j["notes"]]
    assert len(stored) == 1
    assert stored[0].startswith("h2. Deployment Record\n") and "\n* [x] CQ review confirmed\n" in stored[0]
    assert "\n# @docker run shop:1.4.1@\n" in stored[0] and '"runbook":https://wiki.example/runbook' in stored[0]
    assert "**" not in stored[0] and "## " not in stored[0]  # no markdown left for textile to garble

    html = _rendered_notes(redmine_textile, number).replace("\t", "")
    assert "<h2 >Deployment Record" in html and "<h3 >Pre-Deployment Checks" in html
    assert "<strong>Ticket:</strong> " in html and "<strong>Deployed by:</strong> alice; approved" in html
    assert "<li>[x] CQ review confirmed</li>" in html and "<li>[ ] Dependencies in place" in html
    assert "<li><code>docker run shop:1.4.1</code></li>" in html
    assert '<a href="https://wiki.example/runbook" class="external">runbook</a>' in html
    assert "<pre><code" in html and 'data-language="bash"' in html  # a highlighted code block
    assert "docker compose up -d --no-deps web" in re.sub(r"<[^>]+>", "", html)
    # The literal text stays literal: nothing struck through, inserted or turned into glyphs.
    assert "fix -the- totals +now+ some_var_name" in html
    assert not any(tag in html for tag in ("<del>", "<ins>", "<em>", "&lt;notextile", "**", "deploybot:"))

    comments = tracker.comments(number)  # read back as plain text
    assert comments[-1].body.startswith("Deployment Record\n\nTicket: #")
    assert "- [x] CQ review confirmed" in comments[-1].body and "notextile" not in comments[-1].body


def test_common_mark_setting_posts_markdown_on_the_textile_redmine_unchanged(redmine_textile) -> None:
    """What a wrong tracker.markup does: the markdown goes in as typed (what check-config warns of)."""
    tracker = _tracker(redmine_textile, markup="common_mark")
    number = _new_issue(redmine_textile, "Checkout: markdown setting")
    tracker.add_comment(number, TEXTILE_RECORD.format(n=number), key=f"deploy-{number}")
    with _api(redmine_textile, "deploybot") as api:
        journals = api.get(f"/issues/{number}.json", params={"include": "journals"}).json()["issue"]["journals"]
    assert any(j["notes"].startswith("## Deployment Record") for j in journals if j["notes"])


# -- ambiguous writes: Redmine commits, the answer comes after deploybot's timeout --------------


@pytest.mark.realtime  # the proxy answers 2.5 s after Redmine did, past the 1 s timeout
def test_a_note_answered_after_the_timeout_is_posted_once(redmine_textile) -> None:
    from late_proxy import LateProxy

    number = _new_issue(redmine_textile, "Checkout: late answer")
    with LateProxy(redmine_textile.url, delay=2.5) as proxy:
        slow = _tracker(redmine_textile, url=proxy.url, timeout=1.0, retries=2, markup=None)
        proxy.late(times=1)
        slow.add_comment(number, TEXTILE_RECORD.format(n=number), key=f"late-{number}")
        puts = [f for f in proxy.forwarded if f[0] == "PUT"]
        assert len(puts) == 1 and puts[0][2] == 204  # sent once, committed by Redmine
        slow.add_comment(number, TEXTILE_RECORD.format(n=number), key=f"late-{number}")  # the outbox retries
        proxy.late(times=5)
        slow.transition(number, "Ready for Production")  # answered late too: re-read, done
        assert slow.get_ticket(number).status == "Ready for Production"
    other = _tracker(redmine_textile, markup=None)  # another process, straight to Redmine
    other.add_comment(number, TEXTILE_RECORD.format(n=number), key=f"late-{number}")
    with _api(redmine_textile, "deploybot") as api:
        journals = api.get(f"/issues/{number}.json", params={"include": "journals"}).json()["issue"]["journals"]
    assert sum("Deployment Record" in (j["notes"] or "") for j in journals) == 1
