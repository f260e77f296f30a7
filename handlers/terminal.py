"""Terminal reporter and approver: the checklist as it runs, gates as prompts."""

from __future__ import annotations

import sys
from typing import Callable, TextIO

from bot.models import CheckResult, CheckStatus, Deployment, Gate, GateKind
from bot.ports import GateDecision

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
    """Decides gates at the terminal: --approve-as NAME for scripts, a prompt for people.

    With neither (no TTY), the gate stays pending in the store for `deploybot approve`.
    """

    def __init__(self, approve_as: str | None = None, *, interactive: bool | None = None,
                 ask: Callable[[str], str] = input, out: TextIO | None = None) -> None:
        self.approve_as = approve_as
        self.interactive = sys.stdin.isatty() if interactive is None else interactive
        self.ask = ask
        self.out = out or sys.stdout

    def request(self, deployment: Deployment, gate: Gate) -> GateDecision | None:
        if self.approve_as:
            return GateDecision(approved=True, decided_by=self.approve_as)
        if not self.interactive:
            return None
        if gate.kind is GateKind.NOTES_ACK:
            answer = self.ask("Have you read the deployment notes above? [yes/no] ").strip().lower()
            if answer in ("y", "yes"):
                return GateDecision(True, deployment.requested_by)
            reason = self.ask("Reason for stopping: ").strip() or "notes not acknowledged"
            return GateDecision(False, deployment.requested_by, reason)
        name = self.ask("Approver's name (another person; empty to leave it pending): ").strip()
        if not name:
            return None
        answer = self.ask(f"{name}, approve? [yes/no] ").strip().lower()
        if answer in ("y", "yes"):
            return GateDecision(True, name)
        reason = self.ask("Reason for rejecting: ").strip() or "rejected at the terminal"
        return GateDecision(False, name, reason)
