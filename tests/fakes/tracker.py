"""An in-memory Tracker for unit tests of the core: accounts with ids that differ from their
logins and display names that their owners can change, as on a real tracker."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from bot.errors import InputError, TrackerError
from bot.models import Account, Comment, Ticket

from backends.trackers.base import stays

T0 = datetime(2026, 3, 3, 10, tzinfo=timezone.utc)


@dataclass
class MemoryTracker:
    name: str = "Redmine"
    accounts: dict[str, Account] = field(default_factory=dict)  # login -> account
    tickets: dict[str, Ticket] = field(default_factory=dict)
    notes: dict[str, list[Comment]] = field(default_factory=dict)
    bot: Account = Account("900", "deploybot", "Deploy Bot")
    credentials_ok: bool = True
    reads: int = 0
    keys: set[tuple[str, str]] = field(default_factory=set)  # (ticket, key) of posted comments

    def user(self, login: str, uid: str, name: str = "") -> Account:
        self.accounts[login] = Account(uid, login, name or login.title())
        return self.accounts[login]

    def rename(self, login: str, display: str) -> None:
        """A person changes their own display name: id and login stay."""
        acc = self.accounts[login]
        self.accounts[login] = Account(acc.id, acc.login, display)

    def ticket(self, tid: str = "7", status: str = "Ready for Production") -> str:
        self.tickets[tid] = Ticket(tid, "Ship it", status, url=f"http://tracker/{tid}")
        self.notes.setdefault(tid, [])
        return tid

    def say(self, tid: str, login: str, body: str, *, at: datetime | None = None) -> Comment:
        """A comment by `login`; ids grow, times are whole seconds and may tie."""
        acc = self.accounts[login] if login in self.accounts else self.bot
        n = sum(len(v) for v in self.notes.values()) + 1
        c = Comment(str(n), acc.id, body, at or T0 + timedelta(seconds=n), author_name=acc.name)
        self.notes[tid].append(c)
        return c

    # -- Tracker -----------------------------------------------------------------------------

    def parse_ref(self, text: str) -> str:
        ref = text.strip().lstrip("#")
        if not ref.isdigit():
            raise InputError(f"{text!r} is not an issue id")
        return ref

    def get_ticket(self, ticket_id: str) -> Ticket:
        self.reads += 1
        if ticket_id not in self.tickets:
            raise TrackerError(f"no ticket #{ticket_id}")
        return self.tickets[ticket_id]

    def comments(self, ticket_id: str) -> list[Comment]:
        # display names as they are now, like a real tracker answers
        by_id = {a.id: a for a in self.accounts.values()}
        return [Comment(c.id, c.author, c.body, c.created_at,
                        author_name=by_id[c.author].name if c.author in by_id else c.author_name)
                for c in self.notes.get(ticket_id, [])]

    def gate_data(self, ticket_id: str) -> tuple[Ticket, list[Comment]]:
        return self.get_ticket(ticket_id), self.comments(ticket_id)

    def changes_since(self, ticket_id: str, seen: list[Comment]) -> tuple[Ticket, list[Comment]]:
        return self.gate_data(ticket_id)

    def add_comment(self, ticket_id: str, markdown: str, *, key: str) -> None:
        if not self.credentials_ok:
            raise TrackerError("Redmine answered 401 Unauthorized")
        if (ticket_id, key) in self.keys:  # the protocol: post once per key
            return
        self.keys.add((ticket_id, key))
        self.say(ticket_id, "deploybot", markdown)

    def transition(self, ticket_id: str, status: str, *, only_from: str = "") -> str:
        t = self.tickets[ticket_id]
        if not stays(t.status, status, only_from):
            self.tickets[ticket_id] = Ticket(t.id, t.title, status, t.url)
        return t.status

    def add_labels(self, ticket_id: str, labels: list[str]) -> None:
        raise TrackerError("no labels")

    def current_account(self) -> Account:
        if not self.credentials_ok:
            raise TrackerError("Redmine answered 401 Unauthorized to GET /users/current.json",
                               hint="check the key in environment variable REDMINE_KEY")
        return self.bot

    def check_credentials(self) -> None:
        self.current_account()

    def resolve_account(self, ref: str) -> Account:
        if ref in self.accounts:
            return self.accounts[ref]
        for acc in self.accounts.values():
            if acc.id == ref:
                return acc
        raise TrackerError(f"Redmine has no user {ref!r}",
                           hint="give the exact login or the numeric user id")


def read_approval(config, tracker: MemoryTracker, tid: str, *, requester: str,
                  rule: str = "cq_approval", what: str = "CQ approval"):
    """The CQ/QA item's verdict on ticket `tid`, as the checklist reads it."""
    from bot import checks
    from bot.identity import TrackerIdentities
    from bot.models import Deployment, DeploymentStatus

    d = Deployment(id=1, ticket_id=tid, service="web", version="v2", environment="staging",
                   requested_by=requester, status=DeploymentStatus.CHECKING)
    ctx = checks.CheckContext(
        deployment=d, config=config, service=config.service("web", "staging"),
        environment=config.environments["staging"], ticket=tracker.get_ticket(tid),
        comments=tracker.comments(tid), ticket_error="", backend_for=lambda name: None,
        probe=None, identities=TrackerIdentities(config, tracker),
        bot_account=tracker.current_account())
    return checks.ApprovalReader(ctx, getattr(config.tracker.rules, rule), what).read()
