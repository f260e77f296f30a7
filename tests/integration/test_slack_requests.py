"""Requests that must change nothing (forged, stale, wrong channel, bad words) and the small
commands (status, lock, unlock, cancel, history, App Home), against the fake Slack Web API."""

from __future__ import annotations

import json
import time

import pytest

from fakes.slack_api import signature
from fakes.slack_harness import ALICE, BOB, SECRET, ready_ticket, running_bot, slack_config


@pytest.fixture
def bot(tmp_path, free_port, docker_client):
    config = slack_config(image="demo-web-never-deployed", prefix="dbt-slack-unused",
                          ports={"staging": free_port(), "production": free_port()})
    with running_bot(config, tmp_path / "deploybot.db") as running:
        yield running


def calls_after_start(bot):
    return [c.method for c in bot.slack.calls if c.method != "auth.test"]


@pytest.mark.parametrize("forge", ["unsigned", "bad signature", "stale", "tampered"])
def test_forged_or_stale_requests_get_401_and_reach_nothing(bot, forge):
    ticket = ready_ticket(bot.store)
    body = bot.send.command_body(f"{ticket} web@v2", user=ALICE)
    headers = bot.send.signed_headers(body)
    if forge == "unsigned":
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
    elif forge == "bad signature":
        headers["X-Slack-Signature"] = signature("not-the-secret", headers[
            "X-Slack-Request-Timestamp"], body)
    elif forge == "stale":
        old = str(int(time.time()) - 301)
        headers.update({"X-Slack-Request-Timestamp": old,
                        "X-Slack-Signature": signature(SECRET, old, body)})
    else:
        body = body.replace(b"web%40v2", b"web%40v9")
    answer = bot.send.post(body, headers)
    assert answer.status_code == 401
    bot.settle()  # whatever the request set off has run
    assert calls_after_start(bot) == [], "no Web API call"
    assert bot.store.deployments() == []


def test_command_outside_the_configured_channels_gets_an_ephemeral_hint(bot):
    ticket = ready_ticket(bot.store)
    answer = bot.send.command(f"{ticket} web@v2", user=ALICE, channel="C0RANDOM",
                              channel_name="random")
    assert answer.status_code == 200
    assert "#standup" in answer.json()["text"]
    assert answer.json().get("response_type", "ephemeral") == "ephemeral"
    bot.settle()  # whatever the request set off has run
    assert bot.store.deployments() == [] and calls_after_start(bot) == []


@pytest.mark.parametrize("text, says", [
    ("", "say which ticket"),
    ("DEMO-1 web@v2@x", "not a valid version"),
    ("DEMO-1 web@v2 to mars", "unknown environment"),
    ("DEMO-1 please", "do not understand"),
    ("status now", "takes nothing"),
])
def test_bad_input_gets_the_usage_and_changes_nothing(bot, text, says):
    answer = bot.send.command(text, user=ALICE)
    assert answer.status_code == 200
    reply = answer.json()["text"]
    assert says in reply and "/deploy TICKET-123" in reply
    bot.settle()  # whatever the request set off has run
    assert bot.store.deployments() == [] and calls_after_start(bot) == []


def test_unknown_service_is_told_in_an_ephemeral_message(bot):
    ticket = ready_ticket(bot.store)
    bot.send.command(f"{ticket} api@v2", user=ALICE)
    text = bot.slack.wait_for(lambda: bot.slack.ephemerals(ALICE), 10, "the refusal")[0]
    assert "unknown service 'api'" in text
    assert bot.store.deployments() == []


def test_help_status_lock_unlock_and_history(bot):
    assert "/rollback" in bot.send.command("help", user=ALICE).json()["text"]

    bot.send.command("lock production release freeze", user=ALICE)
    bot.slack.wait_for(lambda: any("locked *env:production*" in m.text
                                   for m in bot.slack.top_level()), 10, "the lock announcement")
    assert [lk.scope for lk in bot.store.locks()] == ["env:production"]

    bot.send.command("status", user=BOB)
    status = bot.slack.wait_for(
        lambda: [c for c in bot.slack.calls_to("chat.postEphemeral")
                 if c.params.get("user") == BOB], 10, "the status answer")[0]
    assert "env:production" in json.dumps(status.params["blocks"])

    bot.send.command("unlock production", user=ALICE)
    bot.slack.wait_for(lambda: any("needs a reason" in t for t in bot.slack.ephemerals(ALICE)),
                       10, "the refusal to unlock without a reason")
    bot.send.command("unlock production freeze is over", user=ALICE)
    bot.slack.wait_for(lambda: not bot.store.locks(), 10, "the lock to go")

    bot.send.command("history web", user=BOB)
    bot.slack.wait_for(lambda: any("no deployments yet" in json.dumps(c.params.get("blocks"))
                                   for c in bot.slack.calls_to("chat.postEphemeral")), 10,
                       "the history answer")


def test_cancel_by_ticket_stops_a_deployment_waiting_for_approval(bot):
    ticket = ready_ticket(bot.store)
    bot.send.command(f"{ticket} web@v2 to production", user=ALICE)
    (d,) = bot.wait_for_deployments(1)
    bot.wait_for_status(d.id, "awaiting_approval")
    bot.send.command(f"cancel {ticket} wrong day", user=ALICE)
    bot.wait_for_status(d.id, "cancelled")
    assert "wrong day" in bot.store.deployment(d.id).failure
    assert not bot.store.locks(), "the lock is released"


def test_app_home_shows_locks_and_is_refreshed_when_they_change(bot):
    body = json.dumps({
        "token": "legacy", "team_id": "T0FAKE", "api_app_id": "A0DEPLOYBOT",
        "type": "event_callback", "event_id": "Ev0HOME", "event_time": int(time.time()),
        "event": {"type": "app_home_opened", "user": BOB, "channel": "D0BOB", "tab": "home",
                  "event_ts": f"{time.time():.6f}"}}).encode()
    answer = bot.send.post(body, bot.send.signed_headers(body, content_type="application/json"))
    assert answer.status_code == 200
    first = bot.slack.wait_for(lambda: bot.slack.calls_to("views.publish"), 10, "the Home tab")
    assert first[0].params["user_id"] == BOB and "none" in json.dumps(first[0].params["view"])

    bot.send.command("lock staging maintenance window", user=ALICE)
    bot.slack.wait_for(lambda: any("env:staging" in json.dumps(c.params["view"])
                                   for c in bot.slack.calls_to("views.publish")), 10,
                       "the Home tab to show the new lock")
