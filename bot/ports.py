"""The interfaces the core talks to; front ends and backends implement them, wiring picks them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Protocol, runtime_checkable

from bot.config import ImageBuild
from bot.models import Account, BackendStatus, CheckResult, Comment, Deployment, Gate, Ticket

# Backends report progress as plain sentences ("pulling demo-web:v2", "container started").
StepCallback = Callable[[str], None]


@runtime_checkable
class DeployBackend(Protocol):
    """Runs one service in one environment. Every call has its own timeouts.

    Contract: `prepare` never touches what is running (a missing image or failed pull raises
    BackendError and leaves the service as it was); `deploy` either leaves the new version running
    or restores the previous one before raising BackendError.
    """

    method: str  # how the record names it: "Direct Container", "Docker Compose", "Kubernetes"

    def current_version(self) -> str | None: ...

    def running_image(self) -> str | None:
        """The exact bytes running now, as an immutable reference: `repository@sha256:…` when
        the registry digest is known, else the engine's image id `sha256:…`; None when nothing
        runs. Recorded before and after every deployment, so rollbacks restore those bytes."""
        ...

    def prepare(self, version: str, on_step: StepCallback, *, image: str | None = None) -> None:
        """Make `version` present without touching what runs. `image`: an immutable reference
        (from running_image) to make present instead of the mutable tag."""
        ...

    def deploy(self, version: str, *, ticket_id: str, on_step: StepCallback,
               image: str | None = None) -> None:
        """Run `version`; with `image`, run exactly those bytes (still called `version`)."""
        ...

    def rollback(self, to_version: str | None, on_step: StepCallback, *,
                 image: str | None = None) -> None:
        """Go back to `to_version` (None: nothing ran before, take the new version down);
        `image` pins the bytes that ran then, when they are known."""
        ...

    def finalize(self, on_step: StepCallback) -> None:
        """Verification passed: drop what was kept only for a fast rollback."""
        ...

    def status(self) -> BackendStatus: ...

    def logs(self, since: datetime) -> str: ...

    def plan(self, version: str) -> list[str]:
        """What deploy(version) would do, step by step, for a dry run. No side effects."""
        ...

    def rollback_steps(self, to_version: str | None) -> list[str]:
        """The exact commands an operator would run by hand to go back to `to_version`."""
        ...


@runtime_checkable
class StagedDeploy(Protocol):
    """An optional DeployBackend capability: blue/green behind a proxy (`proxy:` of the Docker and
    Compose backends). When `staged()` is True the rollout is:

        prepare -> stage (new beside old, no traffic) -> checks against its own address
        -> switch (new requests to it; the old one drains but keeps running, warm)
        -> checks and watch window through the proxy -> finalize (old stopped, kept)
        or rollback (the proxy switches back to the warm old one: no start).

    Contract: stage, discard and a failed switch never change what serves. `rollback(previous)`
    switches back when the previous version still runs, else starts it (the kept stopped
    container, or its image), checks its health directly, then switches; with the previous
    version already serving (an interrupted deploy) it removes the staged one. `current_version`,
    `status` and `logs` describe what the proxy serves.
    """

    def staged(self) -> bool:
        """True when this service is deployed behind a proxy (configured `proxy:`)."""
        ...

    def stage(self, version: str, *, ticket_id: str, on_step: StepCallback,
              image: str | None = None) -> str:
        """Start `version` beside what serves, receiving no traffic (a kept stopped container
        of the same version and bytes is started rather than created). Returns HOST:PORT where
        it answers directly. BackendError: the half-started one is removed, nothing changed."""
        ...

    def candidate_status(self) -> BackendStatus:
        """status() of the staged version (for the checks against its own address)."""
        ...

    def discard(self, on_step: StepCallback) -> None:
        """The staged version failed its checks: remove it; what serves is untouched."""
        ...

    def switch(self, on_step: StepCallback) -> None:
        """Send new requests to the staged version, in one step at the proxy; the version that
        served drains (in-flight requests finish) and keeps running until finalize/rollback."""
        ...


@runtime_checkable
class SeveralHosts(Protocol):
    """An optional DeployBackend capability: one service on several engines (Docker `hosts:`),
    rolled out batch by batch by bot/host_rollout.py, each host verified before the next batch;
    a failing host rolls back its batch and every host done before. The DeployBackend calls of
    the backend itself act on every host (status and versions per host, "mixed: ..." when the
    hosts disagree)."""

    def hosts(self) -> list[str]:
        """The hosts in rollout order, by a name unique within the service (the engine)."""
        ...

    def batches(self) -> list[list[str]]:
        """hosts() cut into the batches deployed together (`batch:` hosts each)."""
        ...

    def backend_for_host(self, host: str) -> DeployBackend:
        """The service on that host alone; its BackendErrors name the host."""
        ...

    def address_of(self, host: str) -> str | None:
        """Where that host's published ports are reached: the host part of the service's URLs
        for its checks; None: the URLs as written."""
        ...


@runtime_checkable
class ImageBuilder(Protocol):
    """Builds a service's image from source, tags it VERSION and latest, pushes both."""

    def build(self, image: str, version: str, settings: ImageBuild,
              on_step: StepCallback) -> str:
        """Returns the pushed digest (sha256:…), or the local image id when not pushed."""
        ...


@runtime_checkable
class Tracker(Protocol):
    """A ticket tracker: the source of the CQ/QA/status gates and the place the record goes."""

    name: str  # "local", "Jira Cloud", "Redmine", ...

    def parse_ref(self, text: str) -> str:
        """Canonical ticket id from what a person typed (id or URL); InputError if malformed."""
        ...

    def get_ticket(self, ticket_id: str) -> Ticket: ...

    def comments(self, ticket_id: str) -> list[Comment]:
        """Every comment (all pages), bodies as plain text, oldest first in the tracker's own
        order (journal/comment ids, sequence): never by timestamps alone, which can tie (Redmine
        keeps whole seconds). The core relies on this order for staleness."""
        ...

    def gate_data(self, ticket_id: str) -> tuple[Ticket, list[Comment]]:
        """The ticket and every comment (as comments() orders them), in as few requests as the
        tracker allows: what the checklist and the re-check before the rollout read."""
        ...

    def changes_since(self, ticket_id: str, seen: list[Comment]) -> tuple[Ticket, list[Comment]]:
        """What gate_data would answer now, `seen` being every comment of an earlier read: the
        ticket, then only the comments created or edited since, plus proof that none of `seen`
        was deleted (else, or where the tracker cannot say, a whole read). The re-check."""
        ...

    def add_comment(self, ticket_id: str, markdown: str, *, key: str) -> None:
        """Post once per `key`: a retried call with the same key must not post a second comment."""
        ...

    def transition(self, ticket_id: str, status: str, *, only_from: str = "") -> str:
        """Move the ticket to `status`; returns the status it was in before. A ticket already in
        `status` is left as it is; with `only_from`, so is one no longer in `only_from` (a person
        moved it meanwhile). The check uses the read the move needs anyway: no extra request."""
        ...

    def add_labels(self, ticket_id: str, labels: list[str]) -> None:
        """Add labels (trackers without labels raise TrackerError saying so)."""
        ...

    def check_credentials(self) -> None:
        """current_account() plus access to the configured project/repository."""
        ...

    def current_account(self) -> Account:
        """Whose credentials deploybot uses. TrackerError explaining the 401/403 when they are
        wrong, even where the tracker would answer anonymous reads (a public Redmine project)."""
        ...

    def resolve_account(self, ref: str) -> Account:
        """The account `ref` names, as written in `people:` (a login, a numeric id, an
        accountId, a handle). TrackerError when the tracker knows no such account or cannot
        say: callers fail closed."""
        ...


@dataclass
class GateDecision:
    approved: bool
    decided_by: object  # an identity.Actor established by the front end (or a trusted name)
    reason: str = ""


@runtime_checkable
class Approver(Protocol):
    """Asks people to decide a gate.

    Returns a decision at once when it can ask synchronously (a terminal prompt, --approve-as),
    or None when the decision will arrive later through Pipeline.decide_gate (a Slack button).
    """

    def request(self, deployment: Deployment, gate: Gate) -> GateDecision | None: ...


@runtime_checkable
class Reporter(Protocol):
    """Tells people what happens. Called after the state is stored, so it can re-render from it."""

    def deployment_started(self, deployment: Deployment) -> None: ...

    def checklist_updated(self, deployment: Deployment, checks: list[CheckResult]) -> None: ...

    def gate_requested(self, deployment: Deployment, gate: Gate) -> None: ...

    def gate_decided(self, deployment: Deployment, gate: Gate) -> None: ...

    def step(self, deployment: Deployment, message: str) -> None: ...

    def blocked(self, deployment: Deployment, blockers: list[CheckResult]) -> None: ...

    def alert(self, deployment: Deployment, message: str) -> None:
        """Something needs people now: an automatic rollback, a failed rollback."""
        ...

    # alert, blocked and finished are delivered through the outbox (bot/outbox.py): they raise
    # bot.errors.DeliveryError when the message did not get through, and the outbox retries.
    # They must be safe to call again after a failure (post once: look for what was posted).

    def finished(self, deployment: Deployment, record: str) -> None:
        """Terminal status reached; `record` is the deployment record (empty when there is none)."""
        ...


@dataclass
class ProbeResult:
    url: str
    status_code: int | None  # None when no HTTP answer came (refused, timeout)
    body: str
    elapsed_ms: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@runtime_checkable
class HttpProbe(Protocol):
    """One HTTP GET with a timeout; never raises, the failure is in the result."""

    def get(self, url: str, timeout: float) -> ProbeResult: ...


@runtime_checkable
class MetricsSource(Protocol):
    """A time-series database answering instant queries (Prometheus's HTTP API)."""

    def query(self, expression: str) -> float | None:
        """The single value of an instant query; None when the result is empty.

        Raises bot.errors.MetricsUnavailable when the source cannot be asked.
        """
        ...


@dataclass
class Usage:
    cpu_percent: float  # of one core
    memory_bytes: float


@runtime_checkable
class ResourceUsage(Protocol):
    """An optional backend capability: what the running version uses now (e.g. `docker stats`)."""

    def usage(self) -> Usage | None: ...
