"""Domain objects of a deployment: plain dataclasses and enums, no I/O."""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime


class DeploymentStatus(str, enum.Enum):
    REQUESTED = "requested"
    CHECKING = "checking"
    BLOCKED = "blocked"
    AWAITING_APPROVAL = "awaiting_approval"
    REJECTED = "rejected"
    DEPLOYING = "deploying"
    VERIFYING = "verifying"
    SUCCEEDED = "succeeded"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        DeploymentStatus.BLOCKED,
        DeploymentStatus.REJECTED,
        DeploymentStatus.SUCCEEDED,
        DeploymentStatus.ROLLED_BACK,
        DeploymentStatus.ROLLBACK_FAILED,
        DeploymentStatus.FAILED,
        DeploymentStatus.CANCELLED,
        DeploymentStatus.INTERRUPTED,
    }
)

# The only moves the state machine allows; anything else is a bug and is refused by the store.
TRANSITIONS: dict[DeploymentStatus, frozenset[DeploymentStatus]] = {
    DeploymentStatus.REQUESTED: frozenset(
        {DeploymentStatus.CHECKING, DeploymentStatus.CANCELLED, DeploymentStatus.INTERRUPTED,
         DeploymentStatus.FAILED}
    ),
    DeploymentStatus.CHECKING: frozenset(
        {
            DeploymentStatus.BLOCKED,
            DeploymentStatus.AWAITING_APPROVAL,
            DeploymentStatus.DEPLOYING,
            DeploymentStatus.SUCCEEDED,  # a dry run ends here: every check passed, nothing deployed
            DeploymentStatus.FAILED,
            DeploymentStatus.CANCELLED,
            DeploymentStatus.INTERRUPTED,
        }
    ),
    DeploymentStatus.AWAITING_APPROVAL: frozenset(
        {
            DeploymentStatus.REJECTED,
            DeploymentStatus.DEPLOYING,
            DeploymentStatus.BLOCKED,  # a check re-run at resume time failed
            DeploymentStatus.FAILED,
            DeploymentStatus.CANCELLED,
            DeploymentStatus.INTERRUPTED,
        }
    ),
    DeploymentStatus.DEPLOYING: frozenset(
        {DeploymentStatus.VERIFYING, DeploymentStatus.FAILED, DeploymentStatus.ROLLING_BACK,
         DeploymentStatus.INTERRUPTED}
    ),
    DeploymentStatus.VERIFYING: frozenset(
        {DeploymentStatus.SUCCEEDED, DeploymentStatus.ROLLING_BACK, DeploymentStatus.FAILED,
         DeploymentStatus.INTERRUPTED}
    ),
    DeploymentStatus.ROLLING_BACK: frozenset(
        {DeploymentStatus.ROLLED_BACK, DeploymentStatus.ROLLBACK_FAILED, DeploymentStatus.INTERRUPTED}
    ),
    # Recovery (bot/recovery.py) retries an unresolved one (`needs_recovery`): the engine was
    # down, or an older deploybot marked it interrupted without rolling back.
    DeploymentStatus.ROLLBACK_FAILED: frozenset({DeploymentStatus.ROLLING_BACK}),
    DeploymentStatus.INTERRUPTED: frozenset({DeploymentStatus.ROLLING_BACK}),
}

# What can still move on its own; a finished one only moves again through recovery.
OPEN_STATUSES = frozenset(s for s in TRANSITIONS if not s.terminal)


# A deployment can be cancelled until its rollout starts; after that it is rolled back.
CANCELLABLE = frozenset({DeploymentStatus.REQUESTED, DeploymentStatus.CHECKING,
                         DeploymentStatus.AWAITING_APPROVAL})


class CheckStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


class GateKind(str, enum.Enum):
    NOTES_ACK = "notes_ack"  # a person confirms they read the deployment notes
    APPROVAL = "approval"  # a person authorised for the environment approves
    # Deploying inside a freeze window: two distinct authorised people approve, with a reason.
    BREAK_GLASS = "break_glass"


class GateStatus(str, enum.Enum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class DeploymentKind(str, enum.Enum):
    DEPLOY = "deploy"
    ROLLBACK = "rollback"  # a manual rollback requested by a person


@dataclass
class Ticket:
    id: str
    title: str
    status: str
    url: str = ""
    labels: list[str] = field(default_factory=list)
    description: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    # For lead time (bot/dora.py), when the tracker says: None when it does not.
    created_at: datetime | None = None
    ready_at: datetime | None = None  # when it entered its current status (the ready one)


@dataclass(frozen=True)
class Account:
    """A person's account on the tracker.

    `id` is what comments are matched on: the tracker's stable identity, which its owner cannot
    edit (Redmine user id, Jira Cloud accountId, Jira DC user key, GitHub/GitLab numeric user
    id, Linear user id, the local tracker's login). `name` is the display name: shown, never
    matched, because anyone can rename themselves.
    """

    id: str
    login: str = ""  # what people type (Redmine/GitHub/GitLab login, Jira DC name, Linear handle)
    name: str = ""  # display name, for people to read only


@dataclass
class Comment:
    id: str
    author: str  # the author's Account.id: stable, never a display name
    body: str  # plain text (trackers with rich formats convert before handing it over)
    created_at: datetime
    author_name: str = ""  # display name, for people to read only; never decides anything


@dataclass
class CheckResult:
    deployment_id: int
    name: str  # stable key: cq_approval, qa_pass, ticket_status, ...
    title: str  # what a person reads: "CQ approval"
    position: int
    status: CheckStatus = CheckStatus.PENDING
    reason: str = ""
    updated_at: datetime | None = None
    evidence: str = ""  # what a passed item relied on (comment id + digest, status): re-checked


@dataclass
class Gate:
    id: int
    deployment_id: int
    kind: GateKind
    prompt: str  # what the person is asked, including the notes to read
    status: GateStatus = GateStatus.PENDING
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str = ""
    created_at: datetime | None = None


@dataclass
class Lock:
    scope: str  # "env:production" or "service:production:billing"
    deployment_id: int | None
    holder: str
    reason: str
    acquired_at: datetime
    expires_at: datetime | None = None  # None: held until released (manual locks)
    heartbeat_at: datetime | None = None  # the holding deployment's last sign of life


@dataclass
class Deployment:
    id: int
    ticket_id: str
    service: str
    version: str
    environment: str
    requested_by: str
    status: DeploymentStatus
    kind: DeploymentKind = DeploymentKind.DEPLOY
    dry_run: bool = False
    previous_version: str | None = None
    method: str = ""  # "Direct Container", "Docker Compose", "Kubernetes"
    lock_scope: str = ""
    failure: str = ""  # the reason a person reads when it did not succeed
    verification: str = ""  # summary of what verification measured
    record: str = ""  # the rendered deployment record, once
    record_posted: bool = False
    record_commented: bool = False
    image_digest: str = ""  # what was built and pushed, when the service is built from source
    image_ref: str = ""  # the exact bytes running after this deployment (digest or image id)
    previous_image_ref: str = ""  # the exact bytes that ran before it: what a rollback restores
    thread_ref: str = ""  # the front end's handle on its thread (Slack channel:ts), opaque here
    # A service on several hosts (bot/host_rollout.py): each host's previous version and
    # bytes and its outcome, as HostOutcome JSON (hosts_from_text); "" for one engine.
    hosts: str = ""
    # Scheduling (bot/scheduler.py): a deployment stays `requested` until these let it start.
    scheduled_for: datetime | None = None  # not before this time (UTC)
    queued: bool = False  # waits for its lock instead of being blocked by it
    break_glass: str = ""  # the reason given for deploying inside a freeze window
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass
class BackendStatus:
    running: bool
    version: str | None
    detail: str = ""  # what a person reads: container state, health, replicas
    # The engine says the version is up and failing (exited, crash-looping, its own health
    # check unhealthy), as opposed to not up yet; "" when it says no such thing.
    failing: str = ""
    final: bool = False  # the engine has given up itself (a progress deadline): no probe helps


@dataclass
class VerificationResult:
    """Outcome of post-deployment verification; each item maps to a record box."""

    health: CheckStatus = CheckStatus.SKIPPED
    health_reason: str = ""
    # "rollout" when the health URL answered 2xx but the engine failed the new version
    health_label: str = "health"
    smoke: CheckStatus = CheckStatus.SKIPPED
    smoke_reason: str = ""
    error_rate: CheckStatus = CheckStatus.SKIPPED
    error_rate_reason: str = "not measured (no baseline in this version)"
    latency: CheckStatus = CheckStatus.SKIPPED
    latency_reason: str = "not measured (no baseline in this version)"
    monitoring: CheckStatus = CheckStatus.SKIPPED
    monitoring_reason: str = "no monitoring source configured"
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return CheckStatus.FAILED in (
            self.health, self.smoke, self.error_rate, self.latency, self.monitoring
        )

    @property
    def failure_reasons(self) -> list[str]:
        pairs = [
            (self.health_label, self.health, self.health_reason),
            ("smoke", self.smoke, self.smoke_reason),
            ("error rate", self.error_rate, self.error_rate_reason),
            ("latency", self.latency, self.latency_reason),
            ("monitoring", self.monitoring, self.monitoring_reason),
        ]
        return [f"{name}: {reason}" for name, status, reason in pairs if status is CheckStatus.FAILED]


@dataclass
class HostOutcome:
    """One host of a deployment on several hosts: what a rollback restores there, and what
    happened to it (what the record lists)."""

    host: str  # the engine, as configured
    address: str | None = None  # where its checks went, when not the URLs as written
    previous: str | None = None
    previous_image: str = ""  # the bytes that ran before: what its rollback restores
    outcome: str = "not reached"  # "deployed and verified", "failed: ...", "...; rolled back to v1"


def hosts_to_text(outcomes: list[HostOutcome]) -> str:
    return json.dumps([asdict(o) for o in outcomes])


def hosts_from_text(text: str) -> list[HostOutcome]:
    return [HostOutcome(**item) for item in json.loads(text)] if text else []
