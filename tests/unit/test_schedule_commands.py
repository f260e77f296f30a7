"""The `/deploy` words for scheduling, queueing and break-glass, and their terminal flags."""

from __future__ import annotations

import pytest

from bot import config as configuration
from bot.models import Deployment, DeploymentStatus, Gate, GateKind, GateStatus
from handlers import blocks
from handlers.cli import build_parser
from handlers.commands import DeployRequest, UsageError, parse_deploy

ENVS = ["staging", "production"]


@pytest.mark.parametrize("text, expected", [
    ("DEMO-1 at 22:00", DeployRequest("DEMO-1", at="22:00")),
    ("DEMO-1 web@v2 to production --at 2026-11-27T22:00",
     DeployRequest("DEMO-1", "web@v2", "production", at="2026-11-27T22:00")),
    ("DEMO-1 at 2026-11-27 22:00", DeployRequest("DEMO-1", at="2026-11-27T22:00")),
    ("DEMO-1 —queue", DeployRequest("DEMO-1", queue=True)),
    ("DEMO-1 to production --break-glass payments are down, hotfix",
     DeployRequest("DEMO-1", environment="production", break_glass="payments are down, hotfix")),
    ('DEMO-1 break-glass "quoted reason"', DeployRequest("DEMO-1", break_glass="quoted reason")),
])
def test_schedule_queue_and_break_glass_words(text, expected):
    assert parse_deploy(text, environments=ENVS) == expected


@pytest.mark.parametrize("text, says", [
    ("DEMO-1 at", "needs a time"),
    ("DEMO-1 at 22:00 at 23:00", "give the time once"),
    ("DEMO-1 --break-glass", "needs a reason"),
    ("DEMO-1 at 22:00 --dry-run", "a dry run runs now"),
])
def test_bad_schedule_words_get_the_usage(text, says):
    with pytest.raises(UsageError, match=says):
        parse_deploy(text, environments=ENVS)


def test_terminal_flags_exist():
    args = build_parser().parse_args(["deploy", "DEMO-1", "--at", "22:00", "--queue",
                                      "--break-glass", "hotfix"])
    assert (args.at, args.queue, args.break_glass) == ("22:00", True, "hotfix")
    assert build_parser().parse_args(["scheduler", "--tick", "2"]).tick == 2


def test_a_break_glass_gate_reads_as_such_in_slack():
    config = configuration.parse({
        "environments": {"production": {"approvers": ["bob", "dana"]}},
        "services": {"web": {"image": "demo-web"}}})
    d = Deployment(1, "DEMO-1", "web", "v2", "production", "alice",
                   DeploymentStatus.AWAITING_APPROVAL)
    gate = Gate(1, 1, GateKind.BREAK_GLASS, "Break glass (1 of 2)")
    msg = blocks.gate_message(config, d, gate)
    assert msg.text == "Break-glass approval needed for " + blocks.what(d)
    gate.status, gate.decided_by = GateStatus.APPROVED, "bob"
    assert blocks.gate_message(config, d, gate).text == "Break-glass approval approved by bob"
