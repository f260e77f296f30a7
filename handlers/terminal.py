"""Terminal reporter and approver: the checklist as it runs, gates as prompts."""

from __future__ import annotations

import os
import pwd
import sys
from typing import Callable, TextIO

from bot.config import Config
from bot.errors import InputError, NotAllowed
from bot.identity import Actor
from bot.models import CheckResult, CheckStatus, Deployment, Gate, GateKind
from bot.ports import GateDecision


def os_login() -> str:
    """The OS account this process runs as: from the uid, never from $USER or $LOGNAME,
    which anyone can set."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry (some containers)
        return f"uid{os.getuid()}"


def terminal_actor(config: Config, claimed: str | None = None, *, flag: str = "--as",
                   login: str | None = None) -> Actor:
    """Who is at the terminal: the OS login mapped through people: (people.X.os, default the
    person's key). `claimed` (--as, DEPLOYBOT_USER, --approve-as) may name someone else only
    where `terminal.trust_as` is set; the audit trail then keeps both names."""
    login = login or os_login()
    me = config.person_by_os(login)
    if not claimed or claimed == login or (me and config.person_named(claimed) == me):
        return Actor(me, login, "terminal", os_login=login)
    if not config.terminal.trust_as:
        raise NotAllowed(
            f"{flag} {claimed} was refused: at this terminal you are "
            f"{me + ' (OS login ' + login + ')' if me else 'OS login ' + login}, and deploybot "
            "acts only as the person who runs it.",
            hint=f"run deploybot as {claimed}'s own OS login; on a shared operations box set "
                 "terminal: {trust_as: true} in deploybot.yaml (the audit trail keeps both names)")
    person = config.person_named(claimed)
    if person is None and config.people:
        # A mistyped name would act as nobody: "requested by alcie", cancellable by admins only.
        raise InputError(f"{flag} {claimed}: nobody of that name in people:",
                         hint=f"one of: {', '.join(config.people)}")
    return Actor(person, claimed.strip().lstrip("@"), "terminal", os_login=login)

MARK = {
    CheckStatus.PENDING: "[  ]",
    CheckStatus.RUNNING: "[..]",
    CheckStatus.PASSED: "[ok]",
    CheckStatus.FAILED: "[!!]",
    CheckStatus.SKIPPED: "[--]",
}


class TerminalReporter:
    def __init__(self, out: TextIO | None = None, *, show_record: bool = True) -> None:
        self.out = out or sys.stdout
        self.show_record = show_record
        self._shown: dict[tuple[int, str], tuple[CheckStatus, str]] = {}

    def _print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def deployment_started(self, d: Deployment) -> None:
        what = "rollback" if d.kind.value == "rollback" else "deploy"
        self._print(f"{what} #{d.id}: {d.service} {d.version} to {d.environment} for "
                    f"{d.ticket_id} (requested by {d.requested_by})"
                    + (" — dry run" if d.dry_run else ""))

    def checklist_updated(self, d: Deployment, checks: list[CheckResult]) -> None:
        for c in checks:
            key = (d.id, c.name)
            if c.status in (CheckStatus.PENDING, CheckStatus.RUNNING) and not c.reason:
                continue  # only finished items (or ones waiting with a reason) are worth a line
            if self._shown.get(key) == (c.status, c.reason):
                continue
            self._shown[key] = (c.status, c.reason)
            self._print(f"  {MARK[c.status]} {c.title}" + (f" — {c.reason}" if c.reason else ""))

    def gate_requested(self, d: Deployment, gate: Gate) -> None:
        self._print(f"  gate #{gate.id} ({gate.kind.value.replace('_', ' ')}): {gate.prompt}")

    def gate_decided(self, d: Deployment, gate: Gate) -> None:
        self._print(f"  gate #{gate.id} {gate.status.value} by {gate.decided_by}"
                    + (f": {gate.reason}" if gate.reason else ""))

    def step(self, d: Deployment, message: str) -> None:
        self._print(f"  -> {message}")

    def blocked(self, d: Deployment, blockers: list[CheckResult]) -> None:
        self._print(f"BLOCKED: deployment #{d.id} stopped; nothing was deployed.")
        for c in blockers:
            self._print(f"  - {c.title}: {c.reason}")

    def alert(self, d: Deployment, message: str) -> None:
        self._print(f"!! {message}")

    def finished(self, d: Deployment, record: str) -> None:
        # a blocked deployment's reasons were just listed item by item
        why = d.failure if d.failure and d.status.value != "blocked" else ""
        status = d.status.value
        if d.dry_run and status == "succeeded":
            status = "dry run passed, nothing changed"
        self._print(f"deployment #{d.id}: {status}" + (f" — {why}" if why else ""))
        if record and self.show_record:
            self._print()
            self._print(record.rstrip())

    def summary(self, text: str) -> None:
        """Not about one deployment (the periodic health summary)."""
        self._print(text)


class TerminalApprover:
    """Decides gates at the terminal.

    `approve_as` (scripts, --approve-as) decides every gate as that person; it was checked by
    terminal_actor(). Otherwise, at a TTY: the notes are acknowledged by the person at the
    terminal; an approval is asked from another person at the same terminal only where
    `trust_as` allows naming someone else. Anything else stays pending in the store for
    `deploybot approve`, run by the approver under their own login.
    """

    def __init__(self, approve_as: Actor | None = None, *, interactive: bool | None = None,
                 ask: Callable[[str], str] = input, out: TextIO | None = None,
                 me: Actor | None = None, config: Config | None = None) -> None:
        self.approve_as = approve_as
        self.interactive = sys.stdin.isatty() if interactive is None else interactive
        self.ask = ask
        self.out = out or sys.stdout
        self.me = me
        self.config = config

    def request(self, deployment: Deployment, gate: Gate) -> GateDecision | None:
        if self.approve_as is not None:
            return GateDecision(approved=True, decided_by=self.approve_as)
        if not self.interactive:
            return None
        me = self.me or deployment.requested_by
        if gate.kind is GateKind.NOTES_ACK:
            answer = self.ask("Have you read the deployment notes above? [yes/no] ").strip().lower()
            if answer in ("y", "yes"):
                return GateDecision(True, me)
            reason = self.ask("Reason for stopping: ").strip() or "notes not acknowledged"
            return GateDecision(False, me, reason)
        if self.config is None or not self.config.terminal.trust_as:
            print(f"  gate #{gate.id} waits for an approver: they run `deploybot approve "
                  f"{deployment.id}` under their own login", file=self.out, flush=True)
            return None
        name = self.ask("Approver's name (another person; empty to leave it pending): ").strip()
        if not name:
            return None
        approver = terminal_actor(self.config, name, flag="approver")
        answer = self.ask(f"{name}, approve? [yes/no] ").strip().lower()
        if answer in ("y", "yes"):
            return GateDecision(True, approver)
        reason = self.ask("Reason for rejecting: ").strip() or "rejected at the terminal"
        return GateDecision(False, approver, reason)
