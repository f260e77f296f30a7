"""The DORA figures in Slack's App Home (views.publish on app_home_opened), against the fake
Slack Web API, with in-memory backends (no Docker engine needed)."""

from __future__ import annotations

import json
import time

from fakes.slack_harness import ALICE, BOB, fleet, ready_ticket, running_bot


def open_home(bot, user: str) -> None:
    body = json.dumps({
        "token": "legacy", "team_id": "T0FAKE", "api_app_id": "A0DEPLOYBOT",
        "type": "event_callback", "event_id": f"Ev0HOME{time.monotonic_ns()}",
        "event_time": int(time.time()),
        "event": {"type": "app_home_opened", "user": user, "channel": "D0HOME", "tab": "home",
                  "event_ts": f"{time.time():.6f}"}}).encode()
    answer = bot.send.post(body, bot.send.signed_headers(body, content_type="application/json"))
    assert answer.status_code == 200


def published(bot, text: str):
    return [c for c in bot.slack.calls_to("views.publish") if text in json.dumps(c.params["view"])]


def test_home_shows_production_figures_and_refreshes_after_a_deployment(tmp_path):
    config, backends, edges = fleet(1)
    config.environments["production"].approvals_required = 0
    with running_bot(config, tmp_path / "deploybot.db", **edges) as bot:
        open_home(bot, BOB)
        [first] = bot.slack.wait_for(lambda: published(bot, "DORA figures for production"), 10,
                                     "the Home tab with the figures")
        assert first.params["user_id"] == BOB
        view = json.dumps(first.params["view"])
        assert "0 successful deploy(s)" in view and "Change failure rate: n/a" in view

        ticket = ready_ticket(bot.store)
        assert bot.send.command(f"{ticket} svc0@v2 to production", user=ALICE).status_code == 200
        [d] = bot.wait_for_deployments(1)
        bot.wait_for_status(d.id, "succeeded")
        # the tab is published again for whoever opened it, with the deployment counted
        bot.slack.wait_for(lambda: published(bot, "1 successful deploy(s)"), 10,
                           "the Home tab to count the deployment")
        latest = published(bot, "1 successful deploy(s)")[-1]
        assert "0% (0 of 1 deploy(s) that reached the backend)" in json.dumps(
            latest.params["view"])
        assert backends["svc0"].running == "v2"
