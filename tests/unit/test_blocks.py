"""Block Kit rendering: every message is a function of stored state, escaped, within limits."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from bot import config as configuration
from bot.models import (
    CheckResult,
    CheckStatus,
    Deployment,
    DeploymentKind,
    DeploymentStatus,
    Gate,
    GateKind,
    GateStatus,
)
from handlers import blocks

CONFIG = configuration.parse({
    "environments": {"staging": {}, "production": {"production": True, "approvals_required": 1,
                                                   "approvers": ["bob"],
                                                   "approver_groups": ["S0REL"]}},
    "services": {"web": {"image": "demo-web"}},
    "people": {"alice": {"slack": "U0ALICE"}, "bob": {"slack": "U0BOB"}},
    "slack": {"alert_mention": "<!here>"},
}, "test.yaml")
NOW = datetime(2025, 1, 2, 3, 4, tzinfo=timezone.utc)


def deployment(status=DeploymentStatus.AWAITING_APPROVAL, **kw) -> Deployment:
    values = dict(id=7, ticket_id="DEMO-1", service="web", version="v2", environment="production",
                  requested_by="U0ALICE", status=status, previous_version="v1")
    values.update(kw)
    return Deployment(**values)


def buttons(message) -> dict:
    return {e["action_id"]: e for b in message.blocks if b["type"] == "actions"
            for e in b["elements"]}


def test_root_names_what_who_and_the_status():
    msg = blocks.root_message(CONFIG, deployment())
    text = json.dumps(msg.blocks, ensure_ascii=False)
    assert "deploy of web v2 to production for DEMO-1 requested by <@U0ALICE>" in text
    assert "waiting for approval" in text
    assert set(buttons(msg)) == {blocks.CANCEL}


def test_a_succeeded_deploy_offers_to_roll_back_to_the_previous_version():
    msg = blocks.root_message(CONFIG, deployment(DeploymentStatus.SUCCEEDED))
    assert buttons(msg)[blocks.ROLLBACK]["text"]["text"] == "Roll back to v1"
    first = blocks.root_message(CONFIG, deployment(DeploymentStatus.SUCCEEDED,
                                                   previous_version=None))
    assert not buttons(first), "a first deployment has nothing to go back to"


def test_checklist_shows_every_item_with_status_and_reason():
    checks = [CheckResult(7, "cq", "CQ approval", 1, CheckStatus.PASSED, "by bob"),
              CheckResult(7, "qa", "QA PASS", 2, CheckStatus.FAILED, "no QA PASS comment"),
              CheckResult(7, "rfp", "Ready", 3, CheckStatus.RUNNING),
              CheckResult(7, "deps", "Dependencies", 4, CheckStatus.SKIPPED, "none configured"),
              CheckResult(7, "lock", "Lock", 5)]
    msg = blocks.checklist_message(CONFIG, deployment(DeploymentStatus.CHECKING), checks)
    text = json.dumps(msg.blocks, ensure_ascii=False)
    for expected in (":white_check_mark: *CQ approval* — passed: by bob",
                     ":x: *QA PASS* — failed: no QA PASS comment",
                     ":hourglass_flowing_sand: *Ready* — running",
                     ":heavy_minus_sign: *Dependencies* — skipped: none configured",
                     ":white_large_square: *Lock* — pending"):
        assert expected in text
    assert msg.text == "Pre-deployment checklist: 2/5 done, 1 failed"


def test_rendering_twice_gives_the_same_message():
    checks = [CheckResult(7, "cq", "CQ approval", 1, CheckStatus.PASSED, "by bob")]
    d = deployment()
    assert blocks.checklist_message(CONFIG, d, checks) == blocks.checklist_message(CONFIG, d, checks)


def test_open_approval_gate_has_approve_reject_cancel_and_says_who_may_approve():
    gate = Gate(3, 7, GateKind.APPROVAL, "Approve deploying web v2")
    msg = blocks.gate_message(CONFIG, deployment(), gate)
    assert set(buttons(msg)) == {blocks.APPROVE, blocks.REJECT, blocks.CANCEL}
    assert buttons(msg)[blocks.APPROVE]["value"] == "3"
    text = json.dumps(msg.blocks, ensure_ascii=False)
    assert "<@U0BOB>" in text and "<!subteam^S0REL>" in text and "not <@U0ALICE>" in text


def test_notes_gate_asks_to_confirm_reading():
    gate = Gate(4, 7, GateKind.NOTES_ACK, "Deployment notes on DEMO-1: flush the cache")
    msg = blocks.gate_message(CONFIG, deployment(), gate)
    assert buttons(msg)[blocks.ACK_NOTES]["text"]["text"] == "I have read the deployment notes"


def test_decided_gate_says_by_whom_and_has_no_buttons():
    gate = Gate(3, 7, GateKind.APPROVAL, "Approve", GateStatus.REJECTED, "U0BOB", NOW, "freeze")
    msg = blocks.gate_message(CONFIG, deployment(DeploymentStatus.REJECTED), gate)
    assert not buttons(msg)
    assert "rejected by <@U0BOB> at 2025-01-02 03:04 UTC: freeze" in json.dumps(msg.blocks, ensure_ascii=False)


def test_text_from_tickets_cannot_ping_the_channel_or_fake_links():
    gate = Gate(3, 7, GateKind.NOTES_ACK, "notes: <!channel> see <http://evil|docs> & more")
    text = json.dumps(blocks.gate_message(CONFIG, deployment(), gate).blocks, ensure_ascii=False)
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text and "&amp; more" in text


def test_record_markdown_becomes_mrkdwn_in_sections_under_the_limit():
    record = ("## Deployment Record\n**Ticket:** #DEMO-1\n\n### Pre-Deployment Checks\n"
              "- [x] CQ review confirmed\n- [ ] QA pass confirmed — FAILED\n- plain item\n"
              + "\n".join(f"line {i} " + "x" * 100 for i in range(80)))
    msg = blocks.final_message(CONFIG, deployment(DeploymentStatus.SUCCEEDED), record)
    sections = [b["text"]["text"] for b in msg.blocks if b["type"] == "section"]
    assert len(sections) > 1 and all(len(s) <= 3000 for s in sections)
    assert sections[0].startswith("*Deployment Record*\n*Ticket:* #DEMO-1")
    assert ":white_check_mark: CQ review confirmed" in sections[0]
    assert ":white_large_square: QA pass confirmed" in sections[0] and "• plain item" in sections[0]


def test_alert_carries_the_mention_a_thread_link_and_a_retry_for_a_failed_rollback():
    d = deployment(DeploymentStatus.ROLLBACK_FAILED)
    msg = blocks.alert_message(CONFIG, d, "ROLLBACK FAILED for web", "https://x/thread")
    assert msg.text.startswith("<!here> ")
    assert buttons(msg)[blocks.OPEN_THREAD]["url"] == "https://x/thread"
    assert buttons(msg)[blocks.ROLLBACK]["text"]["text"] == "Roll back to v1"
    rolling = blocks.alert_message(CONFIG, deployment(DeploymentStatus.ROLLING_BACK), "auto", None)
    assert not buttons(rolling), "an automatic rollback in progress needs no second one"


def test_a_failed_manual_rollback_retries_the_same_target():
    d = deployment(DeploymentStatus.FAILED, kind=DeploymentKind.ROLLBACK, version="v1",
                   previous_version="v2")
    assert blocks.rollback_target(d) == "v1" and blocks.can_roll_back(d)


def test_home_lists_locks_in_progress_and_recent_per_environment():
    view = blocks.home_view(CONFIG, [], [deployment()], {"staging": [], "production": [
        deployment(DeploymentStatus.SUCCEEDED, created_at=NOW)]})
    text = json.dumps(view, ensure_ascii=False)
    assert view["type"] == "home" and "*Locks*\\nnone" in text
    assert "Last deployments to production" in text and "2025-01-02 03:04" in text


def test_reject_modal_carries_the_gate_and_asks_for_a_reason():
    gate = Gate(3, 7, GateKind.APPROVAL, "Approve")
    view = blocks.reject_modal(gate, deployment(), channel="C1", thread_ts="1.2")
    assert view["callback_id"] == blocks.REJECT_VIEW
    assert json.loads(view["private_metadata"]) == {"gate_id": 3, "channel": "C1",
                                                    "thread_ts": "1.2"}
    assert view["blocks"][-1]["block_id"] == blocks.REASON_BLOCK


def test_home_shows_the_dora_figures_as_given():
    lines = ["DORA figures for production, 2025-01-01 to 2025-01-31 UTC",
             "Deployment frequency: 3 successful deploy(s)", "Change failure rate: <!here> 0%"]
    view = blocks.home_view(CONFIG, [], [], {"production": []}, figures=lines)
    [section] = [b for b in view["blocks"] if "DORA" in json.dumps(b)]
    assert section["text"]["text"] == ("*DORA figures for production, 2025-01-01 to 2025-01-31 "
                                       "UTC*\n• Deployment frequency: 3 successful deploy(s)\n"
                                       "• Change failure rate: &lt;!here&gt; 0%")
    assert not any("DORA" in json.dumps(b) for b in blocks.home_view(
        CONFIG, [], [], {"production": []})["blocks"])


def test_a_dry_run_that_passed_never_reads_deployed():
    d = deployment(DeploymentStatus.SUCCEEDED, dry_run=True, record="## Deployment Record")
    for msg in (blocks.root_message(CONFIG, d), blocks.final_message(CONFIG, d, d.record),
                blocks.checklist_message(CONFIG, d, [])):
        shown = json.dumps([msg.text, msg.blocks])
        assert "deployed and verified" not in shown
    assert "dry run passed: nothing was deployed" in blocks.root_message(CONFIG, d).text
    real = deployment(DeploymentStatus.SUCCEEDED)
    assert "deployed and verified" in blocks.root_message(CONFIG, real).text
