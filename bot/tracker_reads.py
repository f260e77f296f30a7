"""What a deployment read from the tracker, kept so the next phase in the same process does not
read it again: the request's read for the checklist that follows seconds later, the checklist's
comments for the re-check (which then asks only what changed since), the re-check's ticket for
the record, and deploybot's own account (it does not change while a process runs).

Never a way around a fresh read where one is needed: the request's read is handed out once, only
while it is young (a scheduled or queued deployment reads again), and the re-check before the
rollout always reads the tracker itself."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from bot.clock import Clock
from bot.models import Account, Comment, Ticket
from bot.ports import Tracker

# The checklist runs right after the request; older than this, the ticket may have moved on.
FRESH_SECONDS = 30.0
# Deployments requested here but run by another process never take their read: keep a few.
KEPT = 64


@dataclass(frozen=True)
class Read:
    ticket: Ticket
    comments: list[Comment]
    at: float  # clock.monotonic() when read


class TrackerReads:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._requested: OrderedDict[int, Read] = OrderedDict()
        self._tickets: OrderedDict[int, Ticket] = OrderedDict()
        self._checked: OrderedDict[int, list[Comment]] = OrderedDict()
        self._me: Account | None = None

    @staticmethod
    def _keep(table: OrderedDict, key: int, value: object) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > KEPT:
            table.popitem(last=False)

    def requested(self, deployment_id: int, ticket: Ticket, comments: list[Comment]) -> None:
        """The request's read of the ticket, for this deployment's checklist."""
        with self._lock:
            self._keep(self._requested, deployment_id,
                       Read(ticket, list(comments), self.clock.monotonic()))

    def for_checklist(self, deployment_id: int) -> tuple[Ticket, list[Comment]] | None:
        """The request's read when it is still young; handed out once."""
        with self._lock:
            read = self._requested.pop(deployment_id, None)
        if read is None or self.clock.monotonic() - read.at > FRESH_SECONDS:
            return None
        return read.ticket, list(read.comments)

    def checked(self, deployment_id: int, comments: list[Comment]) -> None:
        """The comments the checklist read: the re-check reads only what changed since."""
        with self._lock:
            self._keep(self._checked, deployment_id, list(comments))

    def checked_comments(self, deployment_id: int) -> list[Comment] | None:
        with self._lock:
            return self._checked.pop(deployment_id, None)

    def seen(self, deployment_id: int, ticket: Ticket) -> None:
        """The ticket the latest phase read (the record shows its title and link)."""
        with self._lock:
            self._keep(self._tickets, deployment_id, ticket)

    def last_ticket(self, deployment_id: int) -> Ticket | None:
        with self._lock:
            return self._tickets.pop(deployment_id, None)

    def me(self, tracker: Tracker, *, fresh: bool = False) -> Account:
        """deploybot's own account, asked once per process (successes only); fresh: asked now,
        which proves the credentials still work where the tracker answers anonymous reads."""
        with self._lock:
            if self._me is not None and not fresh:
                return self._me
        me = tracker.current_account()
        with self._lock:
            self._me = me
        return me
