"""What every phase of a deployment works with (bot/checklist_run.py, bot/gating.py,
bot/rollout.py, bot/finishing.py): built once by the Pipeline, shared, never rebuilt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from bot.authorization import Authorization
from bot.clock import Clock
from bot.config import Config
from bot.identity import TrackerIdentities
from bot.models import CheckResult, Deployment
from bot.outbox import Outbox
from bot.ports import DeployBackend, HttpProbe, StepCallback, Tracker
from bot.reporting import SafeReporter
from bot.store import Store
from bot.tracker_reads import TrackerReads


@dataclass
class RunContext:
    config: Config
    store: Store
    tracker: Tracker
    backend_for: Callable[[str, str], DeployBackend]
    report: SafeReporter
    outbox: Outbox
    probe: HttpProbe
    clock: Clock
    environ: Mapping[str, str]
    identities: TrackerIdentities
    auth: Authorization
    # what the phases read from the tracker, handed on to the next phase (bot/tracker_reads.py)
    reads: TrackerReads = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.reads is None:
            self.reads = TrackerReads(self.clock)

    def save_check(self, d: Deployment, check: CheckResult) -> None:
        self.store.save_check(check)
        self.report.checklist_updated(d, self.store.checks(d.id))

    def step_for(self, d: Deployment) -> StepCallback:
        """A rollout step: the deployment is alive (its lock heartbeats), recorded, and said."""
        ttl = self.config.environments[d.environment].lock_ttl

        def step(message: str) -> None:
            self.store.heartbeat(d.id, ttl)
            self.store.record_event(d.id, "deploybot", "step", message)
            self.report.step(d, message)
        return step
