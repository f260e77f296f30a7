"""Slack within its real limits, end to end: signed requests over HTTP to the Bolt app, a fake
Slack Web API on 127.0.0.1 that answers 429 + Retry-After over chat.update's Tier 3 and
chat.postMessage's one per second per channel, in-memory backends (fast deployments)."""

from __future__ import annotations


import pytest

from fakes.slack_api import FakeLimits, FakeSlack
from fakes.slack_harness import ALICE, deploy_all, fleet, ready_ticket, running_bot, \
    stale_messages


@pytest.fixture
def world(tmp_path):
    config, backends, edges = fleet(10)
    return config, backends, edges, tmp_path / "deploybot.db"


def wait_converged(bot, ids, timeout):
    bot.slack.wait_for(lambda: all(bot.store.deployment(i).status.terminal for i in ids), 120,
                       "every deployment to finish")
    bot.slack.wait_for(lambda: not stale_messages(bot, ids), timeout,
                       "every message to show its final state")


@pytest.mark.realtime
@pytest.mark.parametrize("storm", [False, True], ids=["limits", "limits+429-storm"])
def test_ten_concurrent_deployments_end_with_every_message_in_its_final_state(world, storm):
    config, backends, edges, db = world
    slack = FakeSlack(limits=FakeLimits())
    with running_bot(config, db, slack=slack, workers=10, **edges) as bot:
        ids = deploy_all(bot, list(backends), unready=frozenset({"svc9"}))
        if storm:
            bot.slack.storm(4)  # Slack answers 429 to everything for a while
        wait_converged(bot, ids, 20)  # goal 10 s (benchmarks/slack_limits.py), margin for load
        outcome = {bot.store.deployment(i).service: bot.store.deployment(i).status.value
                   for i in ids}
        assert outcome == {**{f"svc{n}": "succeeded" for n in range(9)}, "svc9": "blocked"}
        for i in ids:
            d = bot.store.deployment(i)
            if d.service == "svc9":
                blockers = [m for m in bot.slack.top_level() if m.metadata and
                            m.metadata["event_payload"] == {"deployment": i, "key": "blocked"}]
                assert len(blockers) == 1 and "QA PASS" in blockers[0].everything
                continue
            records = [m for m in bot.thread_of(i) if "Deployment Record" in m.everything]
            assert len(records) == 1, f"#{i}: the record is posted once"
            assert records[0].metadata["event_payload"] == {"deployment": i, "key": "final"}
        assert [b.running for b in backends.values()] == ["v2"] * 9 + ["v1"]
        updates = [c.at for c in bot.slack.calls_to("chat.update") if c.status == 200]
        assert len(updates) <= 10 * 12, "updates are coalesced, not one per render"
        if storm:
            assert bot.slack.ratelimited > 0


@pytest.mark.realtime
def test_a_command_is_acknowledged_while_every_web_api_call_waits(world):
    """The channel arrives as an id only (a private channel): checking it needs
    conversations.info, and that happens after the ack, not before."""
    config, _, edges, db = world
    with running_bot(config, db, **edges) as bot:
        ticket = ready_ticket(bot.store)
        at_start = len(bot.slack.calls)  # Bolt's auth.test, when the app was made
        release = bot.slack.hold()
        try:
            answer = bot.send.command(f"{ticket} svc0@v2", user=ALICE, channel="C0SECRET",
                                      channel_name="privategroup")
            # held calls are answered (and recorded) only after the release: none answered
            # yet means the ack came back without waiting on Slack
            answered_before_ack = [c.method for c in bot.slack.calls[at_start:]]
        finally:
            release.set()
        assert answer.status_code == 200
        assert answered_before_ack == [], "the ack waited on Slack"
        reply = bot.slack.wait_for(lambda: bot.slack.responses, 10, "the response_url reply")
        assert "takes requests in" in reply[0]["body"]["text"]
        assert reply[0]["body"]["response_type"] == "ephemeral"
        assert [c.method for c in bot.slack.calls[at_start:]] == ["conversations.info"]
        assert bot.store.deployments() == []


@pytest.mark.parametrize("error", ["not_in_channel", "channel_not_found"])
def test_a_channel_the_bot_cannot_post_in_stops_the_deployment_and_tells_the_fix(world, error):
    config, backends, edges, db = world
    slack = FakeSlack(not_in={"C0STANDUP"} if error == "not_in_channel" else None,
                      channels={"C0OTHER": "other"} if error == "channel_not_found" else None)
    with running_bot(config, db, slack=slack, **edges) as bot:
        ticket = ready_ticket(bot.store)
        assert bot.send.command(f"{ticket} svc0@v2", user=ALICE).status_code == 200
        (d,) = bot.wait_for_deployments(1)
        bot.wait_for_status(d.id, "failed", timeout=20)
        reply = bot.slack.wait_for(lambda: bot.slack.responses, 10, "the response_url reply")
        text = reply[0]["body"]["text"]
        assert f"#{d.id}" in text and error in text and "did not start" in text
        assert "/invite @deploybot in <#C0STANDUP>" in text
        d = bot.store.deployment(d.id)
        assert error in d.failure and "nothing was deployed" in d.failure
        assert backends["svc0"].calls == [], "nothing touched"
        assert bot.store.checks(d.id) == [], "not even the checklist ran"
        from backends.trackers.local import LocalTracker
        assert len(LocalTracker(bot.store).comments(ticket)) == 2, "no comment on the ticket"
