"""What the pipeline tells people, as typed calls: `SafeReporter` wraps the front end's
Reporter so a failing reporter never breaks a deployment (it is logged), and routes a durable
reporter's alert/blocked/finished through the outbox (bot/outbox.py)."""

from __future__ import annotations

import hashlib
import logging
from typing import Callable

from bot import outbox as outboxing
from bot.models import CheckResult, Deployment, Gate
from bot.outbox import Outbox
from bot.ports import Reporter

log = logging.getLogger("deploybot.pipeline")  # the name services' log settings already use


def _what(d: Deployment) -> str:
    return f"{d.kind.value} {d.service}@{d.version} to {d.environment}"


class SafeReporter:
    """Implements Reporter. Each event is logged at INFO (with the deployment's id and ticket
    from the log context; a terminal shows it through its reporter already)."""

    def __init__(self, reporter: Reporter, outbox: Outbox) -> None:
        self.reporter = reporter
        self.outbox = outbox

    @property
    def durable(self) -> bool:
        """alert/blocked/finished go through the outbox (Slack), not straight to the reporter."""
        return self.outbox.poster is not None

    def _call(self, event: str, tell: Callable[[], None]) -> None:
        try:
            tell()
        except Exception:
            log.exception("reporter failed on %s", event)

    def _store(self, d: Deployment, event: str, message: outboxing.Message | None) -> bool:
        if message is None:
            return False
        try:
            self.deliver(d, self.outbox.enqueue([message]))
        except Exception:
            log.exception("storing the %s post failed", event)
        return True

    # -- the events (bot/ports.py Reporter) --------------------------------------------------------

    def deployment_started(self, d: Deployment) -> None:
        log.info("%s", f"{_what(d)}: started" + (" (dry run)" if d.dry_run else ""))
        self._call("deployment_started", lambda: self.reporter.deployment_started(d))

    def checklist_updated(self, d: Deployment, checks: list[CheckResult]) -> None:
        self._call("checklist_updated", lambda: self.reporter.checklist_updated(d, checks))

    def gate_requested(self, d: Deployment, gate: Gate) -> None:
        log.info("%s", f"{_what(d)}: waiting for gate #{gate.id} ({gate.kind.value})")
        self._call("gate_requested", lambda: self.reporter.gate_requested(d, gate))

    def gate_decided(self, d: Deployment, gate: Gate) -> None:
        self._call("gate_decided", lambda: self.reporter.gate_decided(d, gate))

    def step(self, d: Deployment, message: str) -> None:
        log.info("%s", f"{_what(d)}: {message}")
        self._call("step", lambda: self.reporter.step(d, message))

    def blocked(self, d: Deployment, blockers: list[CheckResult]) -> None:
        log.info("%s", f"{_what(d)}: blocked by " + ", ".join(c.title for c in blockers))
        if not self._store(d, "blocked", self.blocked_post(d, blockers)):
            self._call("blocked", lambda: self.reporter.blocked(d, blockers))

    def alert(self, d: Deployment, message: str) -> None:
        log.info("%s", f"{_what(d)}: {message}")
        if not self._store(d, "alert", self.alert_post(d, message)):
            self._call("alert", lambda: self.reporter.alert(d, message))

    def finished(self, d: Deployment, record: str) -> None:
        log.info("%s", f"{_what(d)}: {d.status.value}" + (f" ({d.failure})" if d.failure else ""))
        if not self._store(d, "finished", self.finished_post(d, record)):
            self._call("finished", lambda: self.reporter.finished(d, record))

    # -- the outbox items of a durable reporter (None: it is told directly) ------------------------

    def alert_post(self, d: Deployment, message: str) -> outboxing.Message | None:
        """One item per deployment and distinct text."""
        if not self.durable:
            return None
        digest = hashlib.sha256(message.encode()).hexdigest()[:12]
        return outboxing.post(d, "alert", f"deploybot-alert-{d.id}-{digest}", message=message)

    def blocked_post(self, d: Deployment, blockers: list[CheckResult]) -> outboxing.Message | None:
        if not self.durable:
            return None
        return outboxing.post(d, "blocked", f"deploybot-post-blocked-{d.id}", blockers=[
            {"name": c.name, "title": c.title, "reason": c.reason} for c in blockers])

    def finished_post(self, d: Deployment, record: str) -> outboxing.Message | None:
        if not self.durable:
            return None
        return outboxing.post(d, "finished", f"deploybot-post-finished-{d.id}", record=record)

    # A durable reporter got its item stored with the state change; a direct one is told now.
    def blocked_direct(self, d: Deployment, blockers: list[CheckResult]) -> None:
        if not self.durable:
            self.blocked(d, blockers)

    def finished_direct(self, d: Deployment, record: str) -> None:
        if not self.durable:
            self.finished(d, record)

    def deliver(self, d: Deployment, targets: list[str]) -> None:
        """Deliver what was just stored, now; what fails stays in the outbox and is said."""
        if not targets:
            return
        done = self.outbox.deliver(targets=targets)
        for item, error in done.retrying:
            if item.kind != outboxing.POST and item.deployment_id == d.id:
                self.step(d, f"{outboxing.describe(item)} not delivered yet: {error}; "
                             "kept in the outbox and retried (deploybot status)")
        for text in done.said:
            self.step(d, text)
