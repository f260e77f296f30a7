"""A tracker and a Slack-like reporter that can be down, for the outbox tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.errors import DeliveryError, TrackerError
from bot.models import CheckResult, Deployment

from backends.trackers.base import stays
from fakes.core import RecordingReporter
from fakes.tracker import MemoryTracker


@dataclass
class FlakyTracker(MemoryTracker):
    """Every write is counted, never deduplicated here: a second delivery shows as a second
    comment. `down`: every call fails like an unreachable tracker; `on_post`: runs inside a post
    (to act while a delivery is in flight)."""

    down: str = ""
    permanent: str = ""  # a refusal retrying cannot fix
    posts: list[tuple[str, str]] = field(default_factory=list)  # (ticket, key)
    moves: list[tuple[str, str]] = field(default_factory=list)
    on_post: object = None

    def _reach(self, ticket_id: str) -> None:
        if self.down:
            raise TrackerError(f"Redmine did not answer: {self.down}")
        if self.permanent:
            raise DeliveryError(self.permanent, permanent=True)

    def get_ticket(self, ticket_id: str):
        self._reach(ticket_id)
        return super().get_ticket(ticket_id)

    def add_comment(self, ticket_id: str, markdown: str, *, key: str) -> None:
        self._reach(ticket_id)
        if self.on_post is not None:
            self.on_post()
        self.posts.append((ticket_id, key))
        self.say(ticket_id, "deploybot", markdown)

    def transition(self, ticket_id: str, status: str, *, only_from: str = "") -> str:
        self._reach(ticket_id)
        before = super().transition(ticket_id, status, only_from=only_from)
        if not stays(before, status, only_from):  # the moves made, not the calls
            self.moves.append((ticket_id, status))
        return before


@dataclass
class FlakyPoster(RecordingReporter):
    """A durable reporter (Slack): alert/blocked/finished raise DeliveryError while `down`."""

    down: str = ""
    retry_after: float | None = None
    permanent: bool = False

    def _reach(self) -> None:
        if self.down:
            raise DeliveryError(f"Slack: {self.down}", retry_after=self.retry_after,
                                permanent=self.permanent)

    def blocked(self, d: Deployment, blockers: list[CheckResult]) -> None:
        self._reach()
        super().blocked(d, blockers)

    def alert(self, d: Deployment, message: str) -> None:
        self._reach()
        super().alert(d, message)

    def finished(self, d: Deployment, record: str) -> None:
        self._reach()
        super().finished(d, record)
