"""`/deploy status` in Slack lists what the tracker has not been told yet, with its error."""

from __future__ import annotations

import json

from bot import outbox as outboxing
from fakes.slack_harness import BOB, running_bot, slack_config
from fakes.core import FakeBackend, FakeProbe
from fakes.outbox import FlakyTracker


def test_slack_status_lists_undelivered_items(tmp_path, free_port) -> None:
    config = slack_config(image="demo-web-never-deployed", prefix="dbt-outbox-unused",
                          ports={"staging": free_port(), "production": free_port()})
    tracker = FlakyTracker(down="connection refused")
    backend = FakeBackend(running="v1")
    with running_bot(config, tmp_path / "deploybot.db", tracker=tracker,
                     backend_for=lambda s, e: backend, probe=FakeProbe(backend)) as bot:
        d, _ = bot.store.create_deployment(ticket_id="7", service="web", version="v2",
                                           environment="staging", requested_by="alice")
        outbox = bot.front.pipeline.outbox
        outbox.enqueue([outboxing.comment(d, "deploybot-record-1", "## Deployment Record",
                                          "record")])
        assert len(outbox.deliver().retrying) == 1
        bot.send.command("status", user=BOB)
        status = bot.slack.wait_for(
            lambda: [c for c in bot.slack.calls_to("chat.postEphemeral")
                     if c.params.get("user") == BOB], 10, "the status answer")[0]
        shown = json.dumps(status.params["blocks"])
        assert "*Undelivered (1)*" in shown
        assert f"#{d.id} record comment on 7: waiting for 0 min, 1 attempt(s)" in shown
        assert "Redmine did not answer: connection refused" in shown
