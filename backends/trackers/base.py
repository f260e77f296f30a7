"""What every HTTP tracker adapter does the same way: post-once comments, gate-data fetches,
identities (whose token, which account a `people:` entry names) and the comment order."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from bot.errors import TrackerError
from bot.models import Account, Comment, Ticket

from backends.trackers import markup
from backends.trackers.http import UNSURE, AmbiguousWrite, Http, error_detail


@dataclass
class RawComment:
    """A comment as the adapter read it, plus the deploybot keys it carries (never shown)."""

    comment: Comment
    keys: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class LastRead:
    """What the last whole read of a ticket's comments saw: enough to prove that a later read
    of only the newest comments covers everything posted since."""

    count: int
    newest_id: int
    keys: frozenset[str]


class HttpTracker:
    """Base of the adapters. Subclasses implement parse_ref, get_ticket, _read_comments,
    _post_comment, transition, current_account, _resolve and _check_access."""

    name = "tracker"
    # Whether a wrong token may still read (a public Redmine project): then only asking whose
    # the token is proves it works. Elsewhere every authenticated read answers 401 for it.
    anonymous_reads = False
    # What a person must fix when the tracker refuses to say whose the credentials are (403).
    forbidden_whoami = "the account may be locked or deactivated, or the token lacks the scope to read its own profile"

    def __init__(self, http: Http) -> None:
        self.http = http
        self._accounts: dict[str, Account] = {}  # ref -> account: each ref is resolved once
        self._accounts_lock = threading.Lock()
        self._last_read: dict[str, LastRead] = {}  # ticket -> its last whole comment read
        self._last_read_lock = threading.Lock()

    # -- Tracker protocol --------------------------------------------------------------------

    def comments(self, ticket_id: str) -> list[Comment]:
        return [raw.comment for raw in self._read_all(self.parse_ref(ticket_id))]

    def _read_all(self, ticket_id: str) -> list[RawComment]:
        return self._saw_all(ticket_id, self._read_comments(ticket_id))

    def _saw_all(self, ticket_id: str, raws: list[RawComment]) -> list[RawComment]:
        """Remember what a whole read of the comments saw (the post-once check reads less after)."""
        try:
            newest = max((int(raw.comment.id) for raw in raws), default=-1)
        except ValueError:  # ids not in creation order (Linear): nothing to prove coverage with
            return raws
        keys = frozenset(k for raw in raws for k in raw.keys)
        with self._last_read_lock:
            self._last_read[ticket_id] = LastRead(len(raws), newest, keys)
        return raws

    def add_comment(self, ticket_id: str, markdown: str, *, key: str) -> None:
        """Post once per key: look for the key first. After an ambiguous answer (timeout, dropped
        connection, 5xx) look again, a few times with growing waits, and never post again in this
        call: a server that answered late may still be writing, and a second post would be the
        duplicate. Not found: a TrackerError saying the comment may or may not have been applied;
        the next call (the outbox's retry, any process) looks first, then posts."""
        tid = self.parse_ref(ticket_id)
        wanted = self._key_token(tid, key)
        if self._has_key(tid, wanted):
            return
        try:
            self._post_comment(tid, markdown, wanted)
            return
        except AmbiguousWrite as exc:
            unsure = exc
        for attempt in range(max(1, self.http.retries)):
            self.http._sleep(self.http.backoff * (2 ** attempt))
            try:
                if self._has_key(tid, wanted):
                    return
            except TrackerError as read:
                raise self._unsettled(tid, "the comment", unsure, read) from None
        raise self._unsettled(tid, "the comment", unsure, note="it was not on the ticket when checked")

    def _has_key(self, ticket_id: str, token: str) -> bool:
        """Whether a comment carrying `token` is on the ticket (adapters whose marker is not in
        the comment list override this).

        After a whole read of the ticket's comments (the checklist's) only the newest page is
        read: when it reaches back to that read's newest comment it holds everything posted
        since, and the older comments were seen without the key. Anything less certain (no
        earlier read, the key among the older comments, comments deleted so the page no longer
        reaches back) reads every comment again."""
        with self._last_read_lock:
            last = self._last_read.get(ticket_id)
        if last is not None:
            tail = self._comments_after(ticket_id, max(0, last.count - 1))
            if tail is not None:
                if any(token in raw.keys for raw in tail):
                    return True
                oldest = min((int(raw.comment.id) for raw in tail), default=None)
                if token not in last.keys and oldest is not None and oldest <= last.newest_id:
                    return False
        return any(token in raw.keys for raw in self._read_all(ticket_id))

    def _comments_after(self, ticket_id: str, offset: int) -> list[RawComment] | None:
        """The comments from position `offset` (oldest first) to the newest, in as few requests
        as the API allows; None: this adapter cannot read only those."""
        return None

    def _settle_status(self, ticket_id: str, status: str, before: str, send: Callable[[], Any]) -> None:
        """Send a status change safely retried: after an ambiguous answer re-read the status;
        already there: done; still where it was: send again (bounded); else a clear error."""
        attempt = 0
        while True:
            try:
                send()
                return
            except AmbiguousWrite as exc:
                try:
                    now = self.get_ticket(ticket_id).status
                except TrackerError as read:
                    raise self._unsettled(ticket_id, f"the move to {status!r}", exc, read) from None
                if now.casefold() == status.casefold():
                    return
                if now.casefold() != before.casefold() or attempt >= self.http.retries:
                    raise self._unsettled(ticket_id, f"the move to {status!r}", exc) from None
                self.http._sleep(self.http.backoff * (2 ** attempt))
                attempt += 1

    def _unsettled(self, ticket_id: str, what: str, exc: TrackerError,
                   read: TrackerError | None = None, note: str = "") -> TrackerError:
        why = f"; checking failed too: {read.message}" if read else (f"; {note}" if note else "")
        return TrackerError(
            f"{self.name}: {what} on ticket {ticket_id}: {UNSURE} "
            f"({exc.message.removesuffix('; ' + UNSURE)}){why}",
            hint="deploybot checks the ticket before trying again, so retrying is safe",
        )

    def gate_data(self, ticket_id: str) -> tuple[Ticket, list[Comment]]:
        """Ticket and every comment, fetched concurrently (what the pre-deployment checks read)."""
        tid = self.parse_ref(ticket_id)
        ticket, comments = self.http.parallel(lambda: self.get_ticket(tid), lambda: self.comments(tid))
        return ticket, comments

    def changes_since(self, ticket_id: str, seen: list[Comment]) -> tuple[Ticket, list[Comment]]:
        """A whole read; adapters whose API can list only the changed comments override it."""
        return self.gate_data(ticket_id)

    def close(self) -> None:
        self.http.close()

    def check_credentials(self) -> None:
        """Whose the credentials are (TrackerError when they are wrong), then the project access."""
        self.current_account()
        self._check_access()

    def current_account(self) -> Account:  # pragma: no cover - abstract
        raise NotImplementedError

    def resolve_account(self, ref: str) -> Account:
        """The account a `people:` entry names; cached per adapter instance (successes only, so a
        passing network failure is retried on the next call). TrackerError when unknown."""
        key = (ref or "").strip()
        if not key:
            raise TrackerError(f"{self.name}: an empty name in people: names no account",
                               hint="write the person's tracker login or user id")
        with self._accounts_lock:
            known = self._accounts.get(key)
        if known is not None:
            return known
        account = self._resolve(key)
        if not account.id:  # never hand out an account that cannot be matched
            raise self.unknown_account(key)
        self._remember(key, account)
        return account

    def _remember(self, ref: str, account: Account) -> None:
        with self._accounts_lock:
            self._accounts[ref] = account

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

    def _resolve(self, ref: str) -> Account:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_access(self) -> None:
        """Read the configured project/repository (nothing configured: nothing to check)."""

    def unknown_account(self, ref: str, fix: str = "") -> TrackerError:
        return TrackerError(f"{self.name} knows no account {ref!r} (from people:)",
                            hint=fix or "check the spelling in people:, and that deploybot's token may see that user")

    def _whoami(self, method: str, path: str, **kwargs: Any) -> Any:
        """GET the token's own profile; 401/403 become errors saying which variable to fix."""
        resp = self.http.request(method, path, what="identify deploybot's own account",
                                 accept=(401, 403), **kwargs)
        if resp.status_code in (401, 403):
            raise self.credentials_error(resp.status_code, self.http.scrub(error_detail(resp)))
        try:
            return resp.json()
        except ValueError:
            raise TrackerError(
                f"{self.name} answered {path} with something that is not JSON",
                hint=f"check tracker.url ({self.http.url}) points at the {self.name} API",
            ) from None

    def credentials_error(self, status: int | None, detail: str = "") -> TrackerError:
        env = self.http.token_env or "(tracker.token_env)"
        if status == 403:
            return TrackerError(
                f"{self.name} refused to say whose credentials deploybot uses (HTTP 403)"
                + (f": {detail}" if detail else ""),
                hint=f"{self.forbidden_whoami}; fix the account or the token in environment variable {env}",
            )
        code = f" (HTTP {status})" if status else ""
        return TrackerError(
            f"{self.name} rejected deploybot's credentials{code}: the token does not belong to any account",
            hint=f"the token in environment variable {env} is wrong, expired or revoked: "
                 f"put a valid one in {env} and restart deploybot",
        )

    def _moved_or_fail(self, ticket_id: str, status: str, before: str, hint: str) -> None:
        """Re-read after a transition: trackers may accept a move and not make it (Redmine)."""
        after = self.get_ticket(ticket_id).status
        if after.casefold() != status.casefold():
            raise TrackerError(
                f"{self.name} did not move ticket {ticket_id} from {before!r} to {status!r} "
                f"(it is {after!r})",
                hint=hint,
            )


def sort_oldest_first(raws: list[RawComment], *, numeric_ids: bool = True) -> list[RawComment]:
    """Oldest first in the tracker's own order.

    numeric_ids (Redmine journals, Jira comments, GitHub comments, GitLab notes): the ids are
    assigned in creation order, so the id alone is the order; timestamps can tie (Redmine keeps
    whole seconds) or skew. Otherwise (Linear's UUIDs): by creation time, and among equal times
    the order the API returned them in (the sort is stable)."""
    if not numeric_ids:
        return sorted(raws, key=lambda r: r.comment.created_at)

    def key(raw: RawComment) -> int:
        try:
            return int(raw.comment.id)
        except ValueError:
            raise TrackerError(f"comment id {raw.comment.id!r} is not numeric: cannot order the comments",
                               hint="the tracker answered something unexpected; report it") from None

    return sorted(raws, key=key)


def only_status(labels: list[str], prefix: str, status: str) -> bool:
    """Whether `status` is the one status label (PREFIX + status) among `labels`."""
    ours = [n[len(prefix):].strip() for n in labels if n.casefold().startswith(prefix.casefold())]
    return [n.casefold() for n in ours] == [status.casefold()]


def json_or_none(resp: Any) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def stays(before: str, status: str, only_from: str) -> bool:
    """Whether a move to `status` is left out: already there, or no longer where it was seen."""
    return before.casefold() == status.casefold() or bool(
        only_from and before.casefold() != only_from.casefold())


def refused_transition(tracker: str, ticket_id: str, current: str, status: str,
                       allowed: list[str], fix: str) -> TrackerError:
    options = ", ".join(repr(a) for a in allowed) or "none"
    return TrackerError(
        f"{tracker} does not allow moving ticket {ticket_id} from {current!r} to {status!r}; "
        f"allowed from here: {options}",
        hint=fix,
    )
