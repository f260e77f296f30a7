"""Slack details of the trust issue: malformed signatures, simultaneous /deploys, people's names.

The Bolt app is served over HTTP on 127.0.0.1 against the fake Web API; backends are in-memory
(the deployment's effects are not what these tests are about).
"""

from __future__ import annotations

import copy
import json
import threading
import time

import pytest

from fakes.slack_harness import ALICE, BOB, DANA, SECRET, ready_ticket, running_bot, slack_config
from fakes.slack_api import signature
from fakes.core import FakeBackend, FakeProbe, InstantClock


@pytest.fixture
def bot(tmp_path):
    backend = FakeBackend(running="v1")
    config = slack_config(image="demo-web", prefix="unused", ports={"staging": 9, "production": 9},
                          verify_timeout=1)
    with running_bot(config, tmp_path / "deploybot.db", backend_for=lambda s, e: backend,
                     probe=FakeProbe(backend), clock=InstantClock()) as running:
        running.backend = backend
        yield running


@pytest.mark.parametrize("stamp", ["soon", "", "12:00", "1e9", "-5", "123abc", "17"])
def test_a_malformed_timestamp_is_unauthorised_not_a_server_error(bot, stamp):
    body = bot.send.command_body("DEMO-1 web@v2", user=ALICE)
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Slack-Request-Timestamp": stamp,
               "X-Slack-Signature": signature(SECRET, stamp, body)}
    assert bot.send.post(body, headers).status_code == 401
    assert bot.store.deployments() == []


def test_two_simultaneous_deploys_of_one_ticket_make_one_deployment_and_no_false_blocker(bot):
    ticket = ready_ticket(bot.store)
    barrier = threading.Barrier(2)

    def send(user):
        barrier.wait()
        bot.send.command(f"{ticket} web@v2 to staging", user=user)

    threads = [threading.Thread(target=send, args=(u,)) for u in (ALICE, DANA)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (d,) = bot.wait_for_deployments(1)
    bot.slack.wait_for(lambda: bot.store.deployment(d.id).record_commented, 30, "the record")
    loser = DANA if d.requested_by == "alice" else ALICE
    text = bot.slack.wait_for(lambda: next(
        (t for t in bot.slack.ephemerals(loser) if "already being deployed" in t), None), 10,
        "the second requester to be told")
    assert f"#{d.id}" in text
    from backends.trackers.local import LocalTracker
    bodies = [c.body for c in LocalTracker(bot.store).comments(ticket)]
    assert not any("blocked" in b.lower() for b in bodies), bodies
    assert sum("## Deployment Record" in b for b in bodies) == 1
    assert len(bot.store.deployments(limit=10)) == 1


def test_the_thread_and_the_record_name_people_not_slack_ids(bot):
    ticket = ready_ticket(bot.store)
    bot.send.command(f"{ticket} web@v2 to production", user=ALICE)
    (d,) = bot.wait_for_deployments(1)
    assert d.requested_by == "alice"
    bot.wait_for_status(d.id, "awaiting_approval")
    gate = bot.wait_for_message(d.id, '"gate_approve"')
    bot.send.click(gate, "gate_approve", user=BOB)
    d = bot.slack.wait_for(lambda: (lambda x: x if x.record else None)(
        bot.store.deployment(d.id)), 30, "the record")
    assert "**Deployed by:** alice; approved by bob at" in d.record
    assert "U0ALICE" not in d.record and "U0BOB" not in d.record


def _with_rollback_button(bot, deployment_id: int):
    """The root message once its final render (with the Roll back button) has reached Slack."""
    return bot.slack.wait_for(lambda: (lambda m: m if "deployment_rollback" in m.buttons()
                                       else None)(bot.root_of(deployment_id)), 10,
                              f"deployment #{deployment_id}'s Roll back button")


def test_an_old_roll_back_button_does_not_undo_a_later_deployment(bot):
    first = ready_ticket(bot.store, "Ship v2")
    bot.send.command(f"{first} web@v2 to staging", user=ALICE)
    (d1,) = bot.wait_for_deployments(1)
    bot.wait_for_status(d1.id, "succeeded")
    second = ready_ticket(bot.store, "Ship v3")
    bot.send.command(f"{second} web@v3 to staging", user=ALICE)
    d2 = bot.wait_for_deployments(2)[0]
    bot.wait_for_status(d2.id, "succeeded")
    old_root = _with_rollback_button(bot, d1.id)  # the old message still shows it

    bot.send.click(old_root, "deployment_rollback", user=DANA)
    text = bot.slack.wait_for(lambda: next(
        (t for t in bot.slack.ephemerals(DANA) if "out of date" in t), None), 10, "the refusal")
    assert f"#{d2.id}" in text and "/rollback web to v1 in staging" in text
    bot.settle()
    assert bot.backend.current_version() == "v3"
    assert len(bot.store.deployments(limit=10)) == 2, "no rollback was created"

    bot.send.click(_with_rollback_button(bot, d2.id), "deployment_rollback", user=DANA)  # may
    bot.settle()
    rollback = bot.wait_for_deployments(3)[0]
    bot.wait_for_status(rollback.id, "succeeded")
    assert bot.backend.current_version() == "v2"


def _mention_event(bot, event: dict) -> int:
    body = json.dumps({"token": "legacy", "team_id": "T0FAKE", "api_app_id": "A0DEPLOYBOT",
                       "type": "event_callback", "event_id": f"Ev{time.time_ns()}",
                       "event_time": int(time.time()),
                       "event": {"type": "app_mention", "ts": "1700000000.000100",
                                 "event_ts": "1700000000.000100", "channel": "C0STANDUP",
                                 **event}}).encode()
    return bot.send.post(body, bot.send.signed_headers(body, content_type="application/json")
                         ).status_code


@pytest.mark.parametrize("author", [
    {"subtype": "bot_message", "bot_id": "B0HOOK", "username": "bob"},  # an incoming webhook
    {"bot_id": "B0CI", "user": "U0CIBOT"},  # another app's bot user
])
def test_a_mention_posted_by_a_bot_or_a_webhook_requests_nothing(bot, author):
    ticket = ready_ticket(bot.store)
    text = f"<@U0BOT> deploy {ticket} web@v2 to staging"
    assert _mention_event(bot, {**author, "text": text}) == 200
    bot.settle()
    assert bot.store.deployments() == []
    assert [c.method for c in bot.slack.calls if c.method != "auth.test"] == []

    assert _mention_event(bot, {"user": ALICE, "text": text}) == 200  # a person's words do
    (d,) = bot.wait_for_deployments(1)
    assert d.requested_by == "alice"


def test_reject_on_an_old_gate_message_of_a_cancelled_deployment_opens_no_modal(bot):
    ticket = ready_ticket(bot.store)
    bot.send.command(f"{ticket} web@v2 to production", user=DANA)
    (d,) = bot.wait_for_deployments(1)
    bot.wait_for_status(d.id, "awaiting_approval")
    # as a client that has not seen the update yet still shows it
    stale = copy.deepcopy(bot.wait_for_message(d.id, '"gate_reject"'))
    bot.send.command(f"cancel {ticket}", user=DANA)
    bot.wait_for_status(d.id, "cancelled")

    bot.send.click(stale, "gate_reject", user=BOB)
    text = bot.slack.wait_for(lambda: next(
        (t for t in bot.slack.ephemerals(BOB) if "nothing to decide" in t), None), 10,
        "the answer to the click")
    assert f"deployment #{d.id} is cancelled" in text
    bot.settle()
    assert bot.slack.calls_to("views.open") == [], "no modal asks a reason for nothing"
