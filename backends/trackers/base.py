"""What every HTTP tracker adapter does the same way: post-once comments and gate-data fetches."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.errors import TrackerError
from bot.models import Comment, Ticket

from backends.trackers import markup
from backends.trackers.http import AmbiguousWrite, Http


@dataclass
class RawComment:
    """A comment as the adapter read it, plus the deploybot keys it carries (never shown)."""

    comment: Comment
    keys: set[str] = field(default_factory=set)


class HttpTracker:
    """Base of the adapters. Subclasses implement parse_ref, get_ticket, _read_comments,
    _post_comment, transition and check_credentials."""

    name = "tracker"

    def __init__(self, http: Http) -> None:
        self.http = http

    # -- Tracker protocol --------------------------------------------------------------------

    def comments(self, ticket_id: str) -> list[Comment]:
        return [raw.comment for raw in self._read_comments(self.parse_ref(ticket_id))]

    def add_comment(self, ticket_id: str, markdown: str, *, key: str) -> None:
        """Post once per key: look for the key first; after an ambiguous failure, look again."""
        tid = self.parse_ref(ticket_id)
        wanted = self._key_token(tid, key)
        attempt = 0
        while True:
            if any(wanted in raw.keys for raw in self._read_comments(tid)):
                return
            try:
                self._post_comment(tid, markdown, wanted)
                return
            except AmbiguousWrite:
                if attempt >= self.http.retries:
                    raise
                self.http._sleep(self.http.backoff * (2 ** attempt))
                attempt += 1

    def gate_data(self, ticket_id: str) -> tuple[Ticket, list[Comment]]:
        """Ticket and every comment, fetched concurrently (what the pre-deployment checks read)."""
        tid = self.parse_ref(ticket_id)
        ticket, comments = self.http.parallel(lambda: self.get_ticket(tid), lambda: self.comments(tid))
        return ticket, comments

    def close(self) -> None:
        self.http.close()

    # -- for subclasses ----------------------------------------------------------------------

    def _key_token(self, ticket_id: str, key: str) -> str:
        """What a posted comment carries for `key` (a marker text; Linear: a comment id)."""
        return markup.safe_key(key)

    def parse_ref(self, text: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_ticket(self, ticket_id: str) -> Ticket:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read_comments(self, ticket_id: str) -> list[RawComment]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _post_comment(self, ticket_id: str, markdown: str, key: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def _moved_or_fail(self, ticket_id: str, status: str, before: str, hint: str) -> None:
        """Re-read after a transition: trackers may accept a move and not make it (Redmine)."""
        after = self.get_ticket(ticket_id).status
        if after.casefold() != status.casefold():
            raise TrackerError(
                f"{self.name} did not move ticket {ticket_id} from {before!r} to {status!r} "
                f"(it is {after!r})",
                hint=hint,
            )


def sort_oldest_first(raws: list[RawComment]) -> list[RawComment]:
    return sorted(raws, key=lambda r: r.comment.created_at)


def refused_transition(tracker: str, ticket_id: str, current: str, status: str,
                       allowed: list[str], fix: str) -> TrackerError:
    options = ", ".join(repr(a) for a in allowed) or "none"
    return TrackerError(
        f"{tracker} does not allow moving ticket {ticket_id} from {current!r} to {status!r}; "
        f"allowed from here: {options}",
        hint=fix,
    )
