"""`/deploy DEMO-1 at 22:00` through the signed-request harness against the fake Slack API."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bot import freeze as freezing
from bot.models import DeploymentStatus
from fakes.slack_harness import ALICE, ready_ticket, running_bot, slack_config


@pytest.fixture
def bot(tmp_path, free_port, docker_client):
    config = slack_config(image="demo-web-never-deployed", prefix="dbt-slack-sched",
                          ports={"staging": free_port(), "production": free_port()})
    with running_bot(config, tmp_path / "deploybot.db") as running:
        yield running


def test_deploy_at_22_schedules_it_checks_it_now_and_shows_it_waiting(bot):
    ticket = ready_ticket(bot.store)
    expected = freezing.parse_when("22:00", now=datetime.now(timezone.utc), tz="UTC")
    answer = bot.send.command(f"{ticket} web@v2 at 22:00", user=ALICE)
    assert answer.status_code == 200
    said = bot.slack.wait_for(
        lambda: [t for t in bot.slack.ephemerals(ALICE) if "Scheduled deployment" in t], 30,
        "the scheduling answer")[0]
    when = freezing.local(expected, "UTC")
    assert "Scheduled deployment #1" in said and when in said and "/deploy cancel #1" in said

    d = bot.store.deployment(1)
    assert d.status is DeploymentStatus.REQUESTED and d.scheduled_for == expected
    assert "deploy-1" in bot.front.scheduler.jobs()
    bot.wait_for_message(1, f"Scheduled for {when}")
    bot.wait_for_message(1, "Checklist now (dry run #2)")
    dry = bot.store.deployment(2)
    assert dry.dry_run and dry.status.terminal  # its own thread, its own checklist

    bot.send.command("status", user=ALICE)
    status = bot.slack.wait_for(
        lambda: [str(c.params) for c in bot.slack.calls_to("chat.postEphemeral")
                 if "Waiting" in str(c.params)], 15, "the status")[0]
    assert f"scheduled for {when}" in status

    bot.send.command("cancel #1 not tonight", user=ALICE)
    bot.wait_for_status(1, "cancelled", timeout=15)


def test_queued_deploy_waits_with_its_position_in_the_thread_and_in_status(bot):
    bot.send.command("lock staging database migration", user=ALICE)
    bot.slack.wait_for(lambda: bot.store.lock("env:staging"), 15, "the lock")
    ticket = ready_ticket(bot.store)
    bot.send.command(f"{ticket} web@v2 --queue", user=ALICE)
    bot.wait_for_deployments(1)
    bot.wait_for_message(1, "queued for env:staging, position 1")
    assert bot.store.deployment(1).status is DeploymentStatus.REQUESTED

    bot.send.command("status", user=ALICE)
    status = bot.slack.wait_for(
        lambda: [str(c.params) for c in bot.slack.calls_to("chat.postEphemeral")
                 if "Waiting" in str(c.params)], 15, "the status")[0]
    assert "queued for env:staging, position 1" in status
    bot.send.command("cancel #1", user=ALICE)
    bot.wait_for_status(1, "cancelled", timeout=15)


def test_health_summary_is_posted_to_the_channel(bot):
    text = bot.front.scheduler.post_health_summary()
    assert text.startswith("Health summary") and "staging:\n  web:" in text
    posted = bot.slack.wait_for(
        lambda: [c for c in bot.slack.calls_to("chat.postMessage")
                 if "Health summary" in str(c.params)], 10, "the summary")
    assert posted
