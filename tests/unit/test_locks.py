"""bot/locks.py: what a held lock says, and the command in it that lifts it."""

from __future__ import annotations

from datetime import datetime, timezone

from bot import locks
from bot.models import Lock

AT = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def test_an_environment_lock_names_its_holder_and_the_unlock_command():
    lock = Lock("env:production", None, "bob", "db migration", AT)
    assert locks.describe(lock) == (
        "env:production is held by bob since 2026-11-26 12:00 UTC (a manual lock: db "
        "migration); to lift it: deploybot unlock production --reason REASON")


def test_a_service_lock_of_a_deployment_unlocks_with_service():
    lock = Lock("service:staging:web", 7, "alice", "deploying web v2", AT)
    text = locks.describe(lock)
    assert "(deployment #7: deploying web v2)" in text
    assert text.endswith("to lift it: deploybot unlock staging --service web --reason REASON")


def test_the_unlock_command_is_one_the_cli_accepts():
    from handlers.cli import build_parser

    command = locks.unlock_command(Lock("service:staging:web", None, "bob", "x", AT))
    args = build_parser().parse_args(command.split()[1:])
    assert (args.env, args.service, args.reason) == ("staging", "web", "REASON")
