"""Durable write-back: ticket comments, ticket moves and Slack posts, delivered exactly once.

What deploybot tells the tracker (comments, the move to the deployed status) and Slack (the
alert, blocked and finished posts) is stored as an outbox item in the same transaction as the
state change it reports, then delivered by whichever deploybot process runs next: at once by the
pipeline that stored it, by the tick of `deploybot run` and `deploybot scheduler`, and by every
CLI command before it starts (within `outbox.command_budget_seconds`).

- In order per target (`ticket:ID`, `thread:DEPLOYMENT`): a failing item holds back the later
  items of its target, never those of another target.
- Exactly once: an item is leased to one deliverer at a time (bot/outbox_store.py) and never
  sent again once delivered. A write whose answer was lost (timeout, crash before the delivery
  was stored) is sent again under the same key, and the tracker adapter looks for the key's
  marker before posting; a move re-reads the status first and is skipped when the ticket is
  there already (or was moved elsewhere meanwhile by a person).
- Failures are retried with exponential backoff (retry_first_seconds, doubled, up to
  retry_max_seconds); a Retry-After (DeliveryError.retry_after) is honoured; a permanent
  DeliveryError gives up at once. An item undelivered for `stuck_minutes` raises one alert.

The terminal is the person at it, not a destination that can be down: the TerminalReporter is
told directly and nothing of it is stored. Only a durable reporter (Slack, `poster`) gets posts
through the outbox; a process without one (the CLI) delivers the tracker's items and leaves the
posts to `deploybot run`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from bot.config import OutboxSettings
from bot.errors import DeliveryError, DeploybotError
from bot.models import CheckResult, CheckStatus, Deployment
from bot.outbox_store import FAILED, PENDING, OutboxItem, OutboxTable
from bot.ports import Reporter, Tracker
from bot.store import Store

log = logging.getLogger("deploybot.outbox")

COMMENT, TRANSITION, POST = "comment", "transition", "post"
TRACKER_KINDS = (COMMENT, TRANSITION)
OWN_ALERT = "deploybot-outbox-"  # key prefix of the outbox's own alerts: they never alert again
LEASE_SECONDS = 300.0  # longer than any one delivery (each tracker/Slack call has its timeout)


@dataclass(frozen=True)
class Message:
    """One thing to tell, before it is stored."""

    deployment_id: int | None
    kind: str
    target: str
    key: str
    payload: dict[str, Any]


def comment(d: Deployment, key: str, markdown: str, what: str, *,
            flag: str = "") -> Message:
    """A comment on the deployment's ticket; `flag`: the deployment's 0/1 column set when done."""
    return Message(d.id, COMMENT, f"ticket:{d.ticket_id}", key,
                   {"ticket_id": d.ticket_id, "markdown": markdown, "what": what, "flag": flag})


def transition(d: Deployment, status: str, expected_from: str = "") -> Message:
    """Move the ticket to `status`; skipped when a person moved it away from `expected_from`."""
    return Message(d.id, TRANSITION, f"ticket:{d.ticket_id}", f"deploybot-move-{d.id}",
                   {"ticket_id": d.ticket_id, "status": status, "from": expected_from})


def post(d: Deployment, event: str, key: str, *, target: str | None = None,
         **payload: Any) -> Message:
    """alert / blocked / finished for the durable reporter, in the deployment's thread order."""
    return Message(d.id, POST, target or f"thread:{d.id}", key, {"event": event, **payload})


def blockers_key(ticket_id: str, blockers: list[CheckResult]) -> str:
    """The same blockers on the same ticket give the same key: one comment, however many runs.
    Numbers (timings, ids, counts) do not make a blocker new."""
    text = "\n".join(f"{c.name}:{re.sub(r'[0-9]+', '#', ' '.join(c.reason.split()))}"
                     for c in sorted(blockers, key=lambda c: c.name))
    digest = hashlib.sha256(f"{ticket_id}\n{text}".encode()).hexdigest()[:16]
    return f"deploybot-blocked-{digest}"


def describe(item: OutboxItem) -> str:
    p = item.payload
    if item.kind == COMMENT:
        return f"{p.get('what') or 'a'} comment on {p['ticket_id']}"
    if item.kind == TRANSITION:
        return f"the move of {p['ticket_id']} to {p['status']!r}"
    return f"the {p['event']} message of deployment #{item.deployment_id}"


def waiting_line(item: OutboxItem, now: datetime) -> str:
    """One undelivered item for people (`status`): what, how long, how often, why."""
    minutes = max(0, int((now - item.created_at).total_seconds() // 60))
    age = f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
    state = "GAVE UP" if item.state == FAILED else ("STUCK" if item.stuck_at else "waiting")
    who = f"#{item.deployment_id} " if item.deployment_id else ""
    nxt = (f", next try {item.next_attempt_at:%H:%M:%S} UTC"
           if item.state == PENDING and item.attempts else "")
    return (f"{who}{describe(item)}: {state} for {age}, {item.attempts} attempt(s){nxt}"
            + (f"\nlast error: {item.last_error}" if item.last_error else ""))


@dataclass
class DeliveryPass:
    """What one pass did; `said`: lines for people (failures, give-ups)."""

    delivered: list[OutboxItem] = field(default_factory=list)
    retrying: list[tuple[OutboxItem, str]] = field(default_factory=list)
    failed: list[tuple[OutboxItem, str]] = field(default_factory=list)
    said: list[str] = field(default_factory=list)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, DeploybotError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Outbox:
    def __init__(self, store: Store, tracker: Tracker, settings: OutboxSettings, *,
                 poster: Reporter | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.table = OutboxTable(store)
        self.tracker = tracker
        self.settings = settings
        self.poster = poster
        self.monotonic = monotonic
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # -- storing -------------------------------------------------------------------------------

    def enqueue(self, messages: Iterable[Message | None]) -> list[str]:
        """Store the messages (in the caller's transaction when there is one); returns their
        targets, for deliver(targets=...). A key stored before is not stored again."""
        targets: list[str] = []
        with self.store.transaction():
            for m in messages:
                if m is None:
                    continue
                if m.kind == POST and self.poster is None:
                    raise ValueError("posts go through the outbox only with a durable reporter")
                self.table.add(deployment_id=m.deployment_id, kind=m.kind, target=m.target,
                               key=m.key, payload=m.payload)
                if m.target not in targets:
                    targets.append(m.target)
        return targets

    # -- delivering ----------------------------------------------------------------------------

    def kinds(self) -> tuple[str, ...]:
        return TRACKER_KINDS + ((POST,) if self.poster is not None else ())

    def deliver(self, *, targets: Iterable[str] | None = None,
                budget: float | None = None) -> DeliveryPass:
        """Deliver what is due (only `targets`' items when given), oldest first, until nothing
        is due or `budget` seconds have passed. Never inside a transaction: it talks to the
        network. Never raises: what fails stays stored with its error."""
        done = DeliveryPass()
        if self.store.in_transaction:
            return done  # the caller's transaction would hold every other process meanwhile
        targets = list(targets) if targets is not None else None
        deadline = None if budget is None else self.monotonic() + budget
        down: set[str] = set()  # a destination that failed in this pass is not tried again
        while deadline is None or self.monotonic() < deadline:
            kinds = [k for k in self.kinds()
                     if ("slack" if k == POST else "tracker") not in down]
            try:
                item = self.table.claim(self.owner, LEASE_SECONDS, kinds, targets=targets)
                if item is None:
                    break
                self._deliver_one(item, done, down)
            except Exception:  # the database failed us: the lease ends, a later pass retries
                log.exception("the outbox delivery pass stopped")
                break
        return done

    def _deliver_one(self, item: OutboxItem, done: DeliveryPass, down: set[str]) -> None:
        what = describe(item)
        try:
            note = self._send(item)
        except DeliveryError as exc:
            if exc.permanent:
                self._give_up(item, _error_text(exc), done)
            else:
                self._later(item, _error_text(exc), exc.retry_after, done)
                down.add("slack" if item.kind == POST else "tracker")
            return
        except Exception as exc:  # a tracker's TrackerError, a timeout, a bug: try again later
            if not isinstance(exc, DeploybotError):
                log.warning("delivering %s failed", what, exc_info=True)
            self._later(item, _error_text(exc), None, done)
            down.add("slack" if item.kind == POST else "tracker")
            return
        flag = item.payload.get("flag")
        then = None
        if flag and item.deployment_id is not None:
            then = lambda: self.store.update_deployment(item.deployment_id, **{flag: 1})  # noqa: E731
        if self.table.delivered(item, self.owner, f"{what}" + (f" ({note})" if note else ""),
                                then):
            done.delivered.append(item)

    def _send(self, item: OutboxItem) -> str:
        """Deliver one item; returns a note for the audit trail ("" when plainly done)."""
        p = item.payload
        if item.kind == COMMENT:
            self.tracker.add_comment(p["ticket_id"], p["markdown"], key=item.key)
            return ""
        if item.kind == TRANSITION:
            # the adapter checks `from` on the read the move needs anyway: no read of its own
            status = self.tracker.transition(p["ticket_id"], p["status"],
                                             only_from=p.get("from") or "")
            if status.casefold() == p["status"].casefold():
                return f"{p['ticket_id']} was {status!r} already"
            if p.get("from") and status.casefold() != p["from"].casefold():
                return (f"not moved: {p['ticket_id']} is {status!r} now, no longer "
                        f"{p['from']!r} (moved by someone meanwhile)")
            return ""
        if self.poster is None:  # claim() only hands posts to a process that has a poster
            raise DeliveryError("no reporter to post with")
        d = self.store.deployment(item.deployment_id)
        event = p["event"]
        if event == "alert":
            self.poster.alert(d, p["message"])
        elif event == "blocked":
            self.poster.blocked(d, [CheckResult(d.id, b["name"], b["title"], n,
                                                CheckStatus.FAILED, b["reason"])
                                    for n, b in enumerate(p["blockers"], 1)])
        elif event == "finished":
            self.poster.finished(d, p.get("record", ""))
        else:
            raise DeliveryError(f"unknown post {event!r}", permanent=True)
        return ""

    def delay(self, attempts: int) -> float:
        """Seconds before attempt number `attempts + 1` (after `attempts` failures)."""
        first, cap = self.settings.retry_first_seconds, self.settings.retry_max_seconds
        return min(cap, first * 2 ** min(attempts - 1, 32))

    def _later(self, item: OutboxItem, error: str, retry_after: float | None,
               done: DeliveryPass) -> None:
        attempts = item.attempts + 1
        wait = retry_after if retry_after is not None and retry_after >= 0 else \
            self.delay(attempts)
        at = self.store.now() + timedelta(seconds=wait)
        # The trail says a failure once, and again only when the reason changes.
        detail = None
        if attempts == 1 or " ".join(error.split()) != item.last_error:
            detail = (f"{describe(item)} not delivered (attempt {attempts}): {error}; "
                      f"next try at {at:%Y-%m-%d %H:%M:%S} UTC")
        if self.table.retry(item, self.owner, error, at, detail):
            done.retrying.append((item, error))

    def _give_up(self, item: OutboxItem, error: str, done: DeliveryPass) -> None:
        text = (f"{describe(item)} could not be delivered and will not be retried: {error}")
        alert = None
        if self.poster is not None and item.deployment_id is not None \
                and not item.key.startswith(OWN_ALERT):
            alert = self._alert_message(item, f"{OWN_ALERT}failed-{item.id}", text)
        if self.table.failed(item, self.owner, error, text,
                             then=(lambda: self.enqueue([alert])) if alert else None):
            done.failed.append((item, error))
            done.said.append(text)
            log.warning("%s", text)
            if alert:
                done.said += self._deliver_alerts([alert.target])

    def _alert_message(self, item: OutboxItem, key: str, text: str) -> Message:
        return Message(item.deployment_id, POST, f"alert:{item.id}", key,
                       {"event": "alert", "message": text})

    def _deliver_alerts(self, targets: list[str]) -> list[str]:
        follow = self.deliver(targets=targets)
        return follow.said

    # -- watching ------------------------------------------------------------------------------

    def check_stuck(self) -> list[str]:
        """Items undelivered for longer than stuck_minutes: one alert each (in Slack when this
        process has a durable reporter, else the returned lines and the log), never repeated."""
        cutoff = self.store.now() - timedelta(minutes=self.settings.stuck_minutes)
        said, targets = [], []
        for item in self.table.stuck(cutoff, OWN_ALERT):
            age = (self.store.now() - item.created_at).total_seconds() / 60
            text = (f"{describe(item)} is still undelivered after {age:.0f} min "
                    f"({item.attempts} attempt(s); last error: {item.last_error or 'none yet'}); "
                    "deploybot keeps trying, `deploybot status` lists what waits")
            alert = None
            if self.poster is not None and item.deployment_id is not None:
                alert = self._alert_message(item, f"{OWN_ALERT}stuck-{item.id}", text)
            with self.store.transaction():
                if not self.table.mark_stuck(item, text):
                    continue
                if alert:
                    targets += self.enqueue([alert])
            said.append(text)
            log.warning("%s", text)
        if targets:
            said += self._deliver_alerts(targets)
        return said

    def undelivered(self, deployment_id: int | None = None) -> list[OutboxItem]:
        return self.table.items(deployment_id=deployment_id)
