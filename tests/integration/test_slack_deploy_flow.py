"""The Slack front end end to end: signed requests over HTTP to the Bolt app, a fake Slack Web
API on 127.0.0.1 recording what people would see, the real Docker engine behind it."""

from __future__ import annotations

import json
import re
import threading
import uuid

import pytest

from fakes.slack_harness import ALICE, BOB, CAROL, DANA, ready_ticket, running_bot, slack_config
from fakes.waiting import wait_until


@pytest.fixture
def web_config(demo_image, free_port, container_cleanup):
    """The demo service with containers, ports and names of this test's own."""
    demo_image("v1")
    demo_image("v2")
    prefix = f"dbt-slack-{uuid.uuid4().hex[:8]}"
    for env in ("staging", "production"):
        container_cleanup(f"{prefix}-{env}")
        container_cleanup(f"{prefix}-{env}--previous")

    def make(**kwargs):
        return slack_config(image=demo_image.repository, prefix=prefix,
                            ports={"staging": free_port(), "production": free_port()}, **kwargs)
    return make


def gate_message(bot, deployment_id):
    return bot.wait_for_message(deployment_id, '"gate_approve"')


def test_deploy_waits_for_approval_then_posts_record_in_thread(web_config, tmp_path, http_get):
    config = web_config()
    with running_bot(config, tmp_path / "deploybot.db") as bot:
        ticket = ready_ticket(bot.store)
        answer = bot.send.command(f"{ticket} web@v2 to production", user=ALICE)
        assert answer.status_code == 200

        (d,) = bot.wait_for_deployments(1)
        bot.wait_for_status(d.id, "awaiting_approval")
        root = bot.root_of(d.id)
        assert root.thread_ts is None and root.channel == "C0STANDUP"
        assert f"deploy of web v2 to production for {ticket} requested by <@{ALICE}>" in \
            root.everything
        bot.slack.wait_for(lambda: "waiting for approval" in bot.root_of(d.id).everything, 10,
                           "the root message to show the deployment waits")

        checklist = bot.wait_for_message(d.id, "Pre-deployment checklist")
        assert checklist.updates >= 5, "the checklist is one message, updated as items run"
        assert ":white_check_mark: *CQ approval* — passed" in checklist.everything
        assert ":white_check_mark: *QA PASS* — passed" in checklist.everything
        # progress shows while items run; which in-between states appear depends on how fast
        # the machine is (the sender coalesces updates), so any one between none and all counts
        done = [re.search(r"(\d+)/(\d+) done", h) for h in checklist.history]
        assert any(m and 0 < int(m[1]) < int(m[2]) for m in done), checklist.history

        gate = gate_message(bot, d.id)
        assert f"<@{BOB}>" in gate.everything, "the gate says who may approve"
        assert bot.send.click(gate, "gate_approve", user=BOB).status_code == 200

        d = bot.wait_for_status(d.id, "succeeded", timeout=90) and bot.store.deployment(d.id)
        record = bot.wait_for_message(d.id, "Deployment Record")
        assert f"#{ticket}" in record.everything and "v2" in record.everything
        assert ":white_check_mark: Health checks passing" in record.everything
        bot.slack.wait_for(lambda: "deployed and verified" in bot.root_of(d.id).everything,
                           10, "the root message to show the final status")
        # updates go out within Slack's limits, latest state last: the gate catches up
        gate = bot.slack.wait_for(lambda: (lambda g: g if f"approved by <@{BOB}>" in
                                           g.everything else None)(bot.slack.messages[gate.ts]),
                                  10, "the gate message to say who approved")
        assert not gate.buttons()
        steps = [m.text for m in bot.thread_of(d.id) if m.text.startswith("→")]
        assert steps, "the backend's steps are posted in the thread"
        assert http_get(f"{config.service('web', 'production').health.url}").status_code == 200
        assert any("Deployment Record" in c.body for c in bot.front.pipeline.tracker.comments(
            ticket)), "the record is on the ticket too"


def test_redelivered_command_and_double_click_start_one_deployment(web_config, tmp_path):
    config = web_config()
    with running_bot(config, tmp_path / "deploybot.db") as bot:
        ticket = ready_ticket(bot.store)
        body = bot.send.command_body(f"{ticket} web@v2 to production", user=ALICE)
        assert bot.send.post(body, bot.send.signed_headers(body)).status_code == 200
        again = bot.send.post(body, bot.send.signed_headers(body, retry_num=1))
        assert again.status_code == 200
        mention_id = f"Ev{uuid.uuid4().hex[:10]}"
        bot.send.mention(f"deploy {ticket} web@v2 to staging --dry-run", user=ALICE,
                         event_id=mention_id)
        bot.send.mention(f"deploy {ticket} web@v2 to staging --dry-run", user=ALICE,
                         event_id=mention_id, retry_num=1)

        rows = bot.wait_for_deployments(2)
        prod = next(d for d in rows if d.environment == "production")
        bot.wait_for_status(prod.id, "awaiting_approval")
        gate = gate_message(bot, prod.id)

        answers = []
        clicks = [threading.Thread(target=lambda: answers.append(
            bot.send.click(gate, "gate_approve", user=BOB).status_code)) for _ in range(2)]
        for c in clicks:
            c.start()
        for c in clicks:
            c.join()
        assert answers == [200, 200]
        bot.wait_for_status(prod.id, "succeeded", timeout=90)
        bot.wait_for_message(prod.id, "Deployment Record")

        assert len(bot.store.deployments(limit=100)) == 2, "one deployment per request"
        kinds = [e["kind"] for e in bot.store.events(prod.id)]
        assert kinds.count("deploying") == 1 and kinds.count("gate.approved") == 1
        bot.slack.wait_for(lambda: any("already approved" in t for t in
                                       bot.slack.ephemerals(BOB)),
                           10, "the second click to be told the gate was already approved")
        assert any(f"by <@{BOB}>" in t for t in bot.slack.ephemerals(BOB))
        roots = [m for m in bot.slack.top_level() if "requested by" in m.text]
        assert len(roots) == 2, "one thread per deployment"


def test_unauthorised_approver_and_self_approval_are_refused(web_config, tmp_path):
    config = web_config()
    config.environments["production"].approvers.append("alice")  # an approver, but the requester
    with running_bot(config, tmp_path / "deploybot.db") as bot:
        ticket = ready_ticket(bot.store)
        bot.send.command(f"{ticket} web@v2 to production", user=ALICE)
        (d,) = bot.wait_for_deployments(1)
        bot.wait_for_status(d.id, "awaiting_approval")
        gate = gate_message(bot, d.id)

        bot.send.click(gate, "gate_approve", user=CAROL)
        bot.send.click(gate, "gate_approve", user=ALICE)
        refusals = bot.slack.wait_for(
            lambda: (bot.slack.ephemerals(CAROL), bot.slack.ephemerals(ALICE))
            if bot.slack.ephemerals(CAROL) and bot.slack.ephemerals(ALICE) else None,
            15, "both refusals")
        assert ":no_entry: carol may not approve deployment" in refusals[0][0]
        assert "Only the approvers of production (bob, alice) may" in refusals[0][0]
        assert "alice requested this deployment and cannot approve it" in refusals[1][0]
        assert all(r[0].endswith("Nothing changed.") for r in refusals)
        assert bot.store.deployment(d.id).status.value == "awaiting_approval"
        assert all(g.status.value == "pending" for g in bot.store.gates(d.id))
        assert bot.slack.messages[gate.ts].buttons(), "the buttons are still there"

        bot.send.click(bot.root_of(d.id), "deployment_cancel", user=ALICE)
        bot.wait_for_status(d.id, "cancelled")
        bot.slack.wait_for(lambda: not bot.slack.messages[gate.ts].buttons(), 10,
                           "the gate's buttons to go when the deployment is cancelled")


def test_approver_group_member_may_approve_and_others_may_not(web_config, tmp_path):
    config = web_config(approver_groups=["S0RELEASE"])
    config.environments["production"].approvers.clear()  # only the group decides here
    with running_bot(config, tmp_path / "deploybot.db",
                     usergroups={"S0RELEASE": [DANA]}) as bot:
        ticket = ready_ticket(bot.store)
        bot.send.command(f"{ticket} web@v2 to production --dry-run", user=ALICE)
        (d,) = bot.wait_for_deployments(1)
        bot.wait_for_status(d.id, "succeeded")  # a dry run asks nobody

        bot.send.command(f"{ticket} web@v1 to production", user=ALICE)
        d = next(x for x in bot.wait_for_deployments(2) if not x.dry_run)
        bot.wait_for_status(d.id, "awaiting_approval")
        gate = gate_message(bot, d.id)
        bot.send.click(gate, "gate_approve", user=CAROL)
        bot.slack.wait_for(lambda: bot.slack.ephemerals(CAROL), 10, "carol's refusal")
        assert ":no_entry: carol may not approve" in bot.slack.ephemerals(CAROL)[0]
        assert "members of Slack group S0RELEASE" in bot.slack.ephemerals(CAROL)[0]
        assert bot.store.gates(d.id)[0].status.value == "pending"

        bot.send.click(gate, "gate_approve", user=DANA)
        bot.wait_for_status(d.id, "succeeded", timeout=90)
        assert bot.store.gates(d.id)[0].decided_by == "dana"  # the person, not the Slack id


def test_reject_asks_for_a_reason_in_a_modal_and_stops_the_deployment(web_config, tmp_path):
    with running_bot(web_config(), tmp_path / "deploybot.db") as bot:
        ticket = ready_ticket(bot.store)
        bot.send.command(f"{ticket} web@v2 to production", user=ALICE)
        (d,) = bot.wait_for_deployments(1)
        bot.wait_for_status(d.id, "awaiting_approval")
        gate = gate_message(bot, d.id)

        bot.send.click(gate, "gate_reject", user=BOB)
        opened = bot.slack.wait_for(lambda: bot.slack.calls_to("views.open"), 10, "the modal")
        view = opened[0].params["view"]
        view = json.loads(view) if isinstance(view, str) else view
        empty = bot.send.view_submission(view, user=BOB, values={"reason": {"reason_input": {
            "type": "plain_text_input", "value": "  "}}})
        assert empty.json()["response_action"] == "errors"
        assert bot.store.deployment(d.id).status.value == "awaiting_approval"

        bot.send.view_submission(view, user=BOB, values={"reason": {"reason_input": {
            "type": "plain_text_input", "value": "release freeze until Monday"}}})
        bot.wait_for_status(d.id, "rejected")
        bot.slack.wait_for(lambda: "rejected by <@U0BOB>" in bot.slack.messages[gate.ts].everything
                           and "release freeze until Monday" in bot.slack.messages[gate.ts].text
                           + bot.slack.messages[gate.ts].everything, 10, "the gate to say why")
        bot.slack.wait_for(lambda: "rejected" in bot.root_of(d.id).everything, 10,
                           "the root to show it")


def test_notes_are_acknowledged_with_a_button_before_the_deploy(web_config, tmp_path):
    with running_bot(web_config(), tmp_path / "deploybot.db") as bot:
        ticket = ready_ticket(bot.store, notes="clear the CDN cache after deploying")
        bot.send.command(f"{ticket} web@v1", user=ALICE)  # staging: no approval, only notes
        (d,) = bot.wait_for_deployments(1)
        bot.wait_for_status(d.id, "awaiting_approval")
        notes = bot.wait_for_message(d.id, '"gate_ack_notes"')
        assert "clear the CDN cache" in notes.everything
        bot.send.click(notes, "gate_ack_notes", user=ALICE)
        bot.wait_for_status(d.id, "succeeded", timeout=90)
        checklist = bot.wait_for_message(d.id, "Pre-deployment checklist")
        bot.slack.wait_for(lambda: "acknowledged by alice" in
                           bot.slack.messages[checklist.ts].everything, 10, "the notes item")


def test_blocker_is_posted_in_the_channel_and_on_the_ticket(web_config, tmp_path):
    from backends.trackers.local import LocalTracker

    with running_bot(web_config(), tmp_path / "deploybot.db") as bot:
        tracker = LocalTracker(bot.store)
        ticket = tracker.create_ticket("No QA yet", status="Ready for Production")
        tracker.add_comment(ticket, "CQ approved", author="bob")
        bot.send.command(f"{ticket} web@v2", user=ALICE)
        (d,) = bot.wait_for_deployments(1)
        bot.wait_for_status(d.id, "blocked")
        blocker = bot.slack.wait_for(
            lambda: next((m for m in bot.slack.top_level() if m.text.startswith("Blocked")), None),
            10, "a blocker at the top level of the channel")
        assert "QA PASS" in blocker.everything and "open_thread" in blocker.everything
        checklist = bot.wait_for_message(d.id, "Pre-deployment checklist")
        assert ":x: *QA PASS* — failed" in checklist.everything
        # the ticket's comment goes through the outbox: it may land after the Slack messages
        wait_until(lambda: any("QA PASS" in c.body for c in tracker.comments(ticket)
                               if c.author == "deploybot"), 10, "the blocker on the ticket")
        bot.slack.wait_for(lambda: "blocked" in bot.root_of(d.id).everything, 10, "root status")


def test_failed_verification_rolls_back_and_alerts_the_channel(web_config, demo_image, tmp_path):
    demo_image("v3-broken", mode="unhealthy", version="v3")
    config = web_config(verify_timeout=3)
    with running_bot(config, tmp_path / "deploybot.db") as bot:
        ticket = ready_ticket(bot.store)
        bot.send.command(f"{ticket} web@v1", user=ALICE)
        (first,) = bot.wait_for_deployments(1)
        bot.wait_for_status(first.id, "succeeded", timeout=90)
        bot.send.command(f"{ticket} web@v3-broken", user=ALICE)
        second = bot.wait_for_deployments(2)[0]
        bot.wait_for_status(second.id, "rolled_back", "rollback_failed", timeout=120)
        alert = bot.slack.wait_for(
            lambda: next((m for m in bot.slack.top_level() if "<!here>" in m.text), None),
            10, "an alert with the configured mention")
        assert "automatic rollback" in alert.text and "open_thread" in alert.everything
        record = bot.wait_for_message(second.id, "Deployment Record")
        assert "ROLLED BACK" in record.everything or "Rolled back" in record.everything

        # "Roll back" on the first deployment's success message is the manual way back.
        bot.send.command(f"{ticket} web@v2", user=ALICE)
        third = bot.wait_for_deployments(3)[0]
        bot.wait_for_status(third.id, "succeeded", timeout=90)
        root = bot.slack.wait_for(lambda: (lambda m: m if "deployment_rollback" in m.everything
                                           else None)(bot.root_of(third.id)), 10, "Roll back")
        bot.send.click(root, "deployment_rollback", user=BOB)
        bot.send.click(root, "deployment_rollback", user=BOB)
        rows = bot.wait_for_deployments(4)
        back = rows[0]
        assert back.kind.value == "rollback" and back.version == "v1"
        bot.wait_for_status(back.id, "succeeded", timeout=90)
        assert len(bot.store.deployments(limit=100)) == 4, "two clicks, one rollback"
