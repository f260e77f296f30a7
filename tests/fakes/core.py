"""In-memory stand-ins for the core's ports, for fast unit tests of the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from bot.errors import BackendError
from bot.models import BackendStatus, CheckResult, Deployment, Gate
from bot.ports import GateDecision, ProbeResult


@dataclass
class FakeBackend:
    """A service whose versions are just strings; `bad` versions fail health."""

    method: str = "Direct Container"
    running: str | None = None
    kept: str | None = None
    missing: set[str] = field(default_factory=set)  # versions whose image does not exist
    calls: list[str] = field(default_factory=list)

    # the bytes behind each tag: a tag can be pushed again, its digest changes
    digests: dict[str, str] = field(default_factory=dict)
    pins: list[str | None] = field(default_factory=list)  # the image= of each call

    def current_version(self) -> str | None:
        return self.running

    def running_image(self) -> str | None:
        if self.running is None:
            return None
        return self.running_bytes or self.digests.setdefault(
            self.running, f"sha256:{abs(hash(self.running)):064d}"[:71])

    running_bytes: str | None = None

    def prepare(self, version, on_step, *, image=None):
        self.calls.append(f"prepare {version}")
        if version in self.missing:
            raise BackendError(f"image web:{version} not found")

    def deploy(self, version, *, ticket_id, on_step, image=None):
        self.calls.append(f"deploy {version}")
        self.pins.append(image)
        self.kept, self.running = self.running, version
        self.running_bytes = image or self.digests.get(version)  # what the tag named then
        on_step(f"started {version}")

    def rollback(self, to_version, on_step, *, image=None):
        self.calls.append(f"rollback {to_version}")
        self.pins.append(image)
        self.running = to_version
        self.running_bytes = image or self.digests.get(to_version)

    def finalize(self, on_step):
        self.calls.append("finalize")
        self.kept = None

    def status(self) -> BackendStatus:
        return BackendStatus(running=self.running is not None, version=self.running,
                             detail="running" if self.running else "absent")

    def logs(self, since: datetime) -> str:
        return ""

    def plan(self, version):
        return [f"run {version}"]

    def rollback_steps(self, to_version):
        return [f"run {to_version}"] if to_version else ["remove"]


@dataclass
class FakeProbe:
    """Health answers depend on what the backend runs: versions in `bad` answer 500."""

    backend: FakeBackend
    bad: set[str] = field(default_factory=set)
    down: set[str] = field(default_factory=set)  # URLs that refuse connections

    def get(self, url: str, timeout: float) -> ProbeResult:
        if url in self.down:
            return ProbeResult(url, None, "", 1.0, "connection refused")
        version = self.backend.running
        if version is None:
            return ProbeResult(url, None, "", 1.0, "connection refused")
        if url.endswith("/health/detailed"):
            return ProbeResult(url, 200, '{"status": "ok", "components": {"db": "ok"}}', 1.0)
        if version in self.bad:
            return ProbeResult(url, 500, "broken", 1.0)
        return ProbeResult(url, 200, f"ok {version} pong", 1.0)


@dataclass
class RecordingReporter:
    events: list[tuple[str, object]] = field(default_factory=list)
    records: list[str] = field(default_factory=list)

    def deployment_started(self, d: Deployment) -> None:
        self.events.append(("started", d.id))

    def checklist_updated(self, d: Deployment, checks: list[CheckResult]) -> None:
        self.events.append(("checklist", [(c.name, c.status.value) for c in checks]))

    def gate_requested(self, d: Deployment, gate: Gate) -> None:
        self.events.append(("gate_requested", gate.id))

    def gate_decided(self, d: Deployment, gate: Gate) -> None:
        self.events.append(("gate_decided", (gate.id, gate.status.value, gate.decided_by)))

    def step(self, d: Deployment, message: str) -> None:
        self.events.append(("step", message))

    def blocked(self, d: Deployment, blockers: list[CheckResult]) -> None:
        self.events.append(("blocked", [c.name for c in blockers]))

    def alert(self, d: Deployment, message: str) -> None:
        self.events.append(("alert", message))

    def finished(self, d: Deployment, record: str) -> None:
        self.events.append(("finished", d.status.value))
        if record:
            self.records.append(record)

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]


@dataclass
class ScriptedApprover:
    """Answers gates from a list of decisions; None leaves the gate pending."""

    decisions: list[GateDecision | None] = field(default_factory=list)
    asked: list[int] = field(default_factory=list)

    def request(self, deployment: Deployment, gate: Gate) -> GateDecision | None:
        self.asked.append(gate.id)
        return self.decisions.pop(0) if self.decisions else None


class InstantClock:
    """Time passes only when slept: bounded waits finish at once in unit tests."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self):
        from datetime import timezone
        return datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    def monotonic(self) -> float:
        return self.t


@dataclass
class FakeStagedBackend(FakeBackend):
    """FakeBackend behind a proxy (bot.ports.StagedDeploy): `running` is what the proxy serves,
    `candidate` the staged version on `address`, `warm` the old one after a switch."""

    candidate: str | None = None
    warm: str | None = None
    address: str = "127.0.0.1:40001"
    fail_stage: str = ""
    fail_switch: str = ""

    def staged(self) -> bool:
        return True

    def stage(self, version, *, ticket_id, on_step, image=None):
        self.calls.append(f"stage {version}")
        if self.fail_stage:
            raise BackendError(self.fail_stage)
        self.candidate = version
        self.pins.append(image)
        return self.address

    def candidate_status(self) -> BackendStatus:
        return BackendStatus(running=self.candidate is not None, version=self.candidate,
                             detail="running" if self.candidate else "absent")

    def discard(self, on_step):
        self.calls.append(f"discard {self.candidate}")
        self.candidate = None

    def switch(self, on_step):
        self.calls.append(f"switch {self.candidate}")
        if self.fail_switch:
            raise BackendError(self.fail_switch)
        self.warm, self.running, self.candidate = self.running, self.candidate, None

    def rollback(self, to_version, on_step, *, image=None):
        how = ("already serving" if to_version is not None and to_version == self.running
               else "switch back" if to_version is not None and to_version == self.warm
               else "start")
        self.calls.append(f"rollback {to_version} ({how})")
        self.pins.append(image)
        self.candidate = None
        self.warm, self.running = None, to_version

    def finalize(self, on_step):
        self.calls.append("finalize")
        self.warm = None


@dataclass
class StagedProbe(FakeProbe):
    """Answers for the staged version at its own address, for what serves elsewhere."""

    def get(self, url: str, timeout: float) -> ProbeResult:
        backend = self.backend
        if backend.address in url:
            served, backend.running = backend.running, backend.candidate
            try:
                return super().get(url, timeout)
            finally:
                backend.running = served
        return super().get(url, timeout)
