"""One sender per workspace: every Web API call within Slack's limits, progress coalesced.

Three ways to send:
- `show()` / `add_step()`: a message as it should look *now*. A slot per message keeps only the
  latest render; a background loop posts or updates it when the budget allows, so after any 429
  storm every message ends at its latest render, and an update waiting in line is replaced, not
  queued twice.
- `deliver()`: post one message and wait (at most `timeout` s) for its ts: the thread's root and
  the durable posts. DeliveryError (with retry_after) when the limits do not let it through in
  time; Slack's refusal and unknown outcomes (timeouts) as they came.
- `call()`: any other method, now, in the caller's thread, within the budget.
Order: messages are grouped in lanes (a deployment's messages). Posts of a lane go out in the
order they were asked; a lane somebody waits on goes first, older lanes before newer ones, so ten
deployments at once see their threads completed one after the other, not all half-done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.errors import DeliveryError
from handlers.blocks import Message
from handlers.slack_budget import Budget, Limits

log = logging.getLogger("deploybot.slack.sender")

MAX_FAILURES = 5  # a message that fails this often (not rate limits) is given up, and logged
KEEP_CLEAN = 2000  # sent slots remembered, so an identical render is not sent again
STEP_LINES = 10  # steps coalesced into one thread message at most


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited for {retry_after:g} s")
        self.retry_after = retry_after


def retry_after(exc: SlackApiError) -> float | None:
    """Retry-After of a 429 (None when the error was not a rate limit)."""
    response = exc.response
    if getattr(response, "status_code", None) != 429 and response.get("error") != "ratelimited":
        return None
    headers = getattr(response, "headers", None) or {}
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    value = value[0] if isinstance(value, list) else value
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return 1.0  # a 429 without the header: wait a little rather than hammer


def digest(message: Message) -> str:
    return hashlib.sha256(json.dumps(message.kwargs(), sort_keys=True).encode()).hexdigest()


@dataclass
class Slot:
    """One message as deploybot wants people to see it; sent when the budget allows."""

    key: Hashable
    lane: Hashable
    channel: str
    thread_ts: str | None
    ts: str | None  # None: not posted yet
    message: Message
    seq: int
    on_posted: Callable[[str, str], None] | None = None  # (channel id, ts) once posted
    sent: str | None = None  # digest of what Slack shows
    lines: list[str] = field(default_factory=list)  # a step slot's lines
    extra: dict = field(default_factory=dict)  # more chat.postMessage arguments (metadata)
    failures: int = 0
    not_before: float = 0.0
    busy: bool = False
    awaited: bool = False  # deliver() waits for it: failures go to the waiter, not retried
    error: BaseException | None = None
    wanted: str = ""  # digest of `message`

    def __post_init__(self) -> None:
        self.wanted = digest(self.message)

    def set(self, message: Message) -> None:
        self.message, self.wanted = message, digest(message)

    @property
    def dirty(self) -> bool:
        return self.sent != self.wanted and self.failures < MAX_FAILURES

    @property
    def method(self) -> str:
        return "chat_update" if self.ts else "chat_postMessage"


class SlackSender:
    def __init__(self, client: WebClient, *, limits: Limits | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[threading.Condition, float], Any] | None = None,
                 background: bool = True) -> None:
        self.client = client
        self.clock = clock
        self.budget = Budget(limits or Limits(), clock)
        self._cond = threading.Condition()
        self._wait = wait or (lambda cond, seconds: cond.wait(seconds))
        self._slots: OrderedDict[Hashable, Slot] = OrderedDict()
        self._sync_waiting: Counter[Hashable] = Counter()
        self._urgent: Counter[Hashable] = Counter()  # lanes somebody waits on
        self._lanes: dict[Hashable, int] = {}  # lane -> when it was first seen
        self._seq = 0
        self._background = background
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.calls = 0
        self.ratelimited = 0

    # -- one call, now --------------------------------------------------------------------------

    def call(self, method: str, *, max_wait: float = 20.0, **kwargs: Any) -> dict:
        """One Web API call within the budget. SlackApiError for Slack's refusals, DeliveryError
        (with retry_after) when the limits do not let it through within `max_wait` seconds;
        network errors and timeouts as they come (the answer is unknown)."""
        key = Budget.key(method, kwargs.get("channel"))
        deadline = self.clock() + max_wait
        while True:
            self._reserve(key, method, deadline)
            try:
                return self._send(method, key, kwargs)
            except RateLimited as exc:
                if self.clock() + exc.retry_after > deadline:
                    raise DeliveryError(f"Slack rate-limited {method.replace('_', '.')}",
                                        hint=f"retry after {exc.retry_after:g} s",
                                        retry_after=exc.retry_after) from None

    def _reserve(self, key: Hashable, method: str, deadline: float) -> None:
        with self._cond:
            self._sync_waiting[key] += 1
            try:
                while not self.budget.take(key):
                    wait = self.budget.wait(key)
                    if self.clock() + wait > deadline:
                        raise DeliveryError(f"Slack's limit for {method.replace('_', '.')} is "
                                            f"used up", hint=f"retry after {wait:.1f} s",
                                            retry_after=wait)
                    self._wait(self._cond, wait)
            finally:
                self._sync_waiting[key] -= 1
                self._cond.notify_all()

    def _send(self, method: str, key: Hashable, kwargs: dict) -> dict:
        self.calls += 1
        try:
            return getattr(self.client, method)(**kwargs).data
        except SlackApiError as exc:
            seconds = retry_after(exc)
            if seconds is None:
                raise
            self.ratelimited += 1
            self.budget.pause(key, seconds)
            log.info("Slack rate-limited %s: pausing it %.1f s", method, seconds)
            raise RateLimited(seconds) from None

    # -- messages as they should look -----------------------------------------------------------

    def _new_slot(self, key: Hashable, lane: Hashable, channel: str, thread_ts: str | None,
                  ts: str | None, message: Message, **more: Any) -> Slot:
        self._seq += 1
        self._lanes.setdefault(lane, self._seq)
        slot = self._slots[key] = Slot(key, lane, channel, thread_ts, ts, message, self._seq,
                                       **more)
        return slot

    def show(self, key: Hashable, message: Message, *, lane: Hashable, channel: str,
             thread_ts: str | None = None, ts: str | None = None,
             on_posted: Callable[[str, str], None] | None = None) -> None:
        """Make the message `key` look like `message` (post it first when `ts` is None)."""
        with self._cond:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._new_slot(key, lane, channel, thread_ts, ts, message,
                                      on_posted=on_posted)
            else:
                slot.set(message)
                slot.ts = slot.ts or ts
                slot.failures = 0
                self._slots.move_to_end(key)
            self._kick()

    def add_step(self, lane: Hashable, line: str, render: Callable[[list[str]], Message], *,
                 channel: str, thread_ts: str) -> None:
        """A progress line in the thread; lines waiting to be posted go out as one message."""
        with self._cond:
            last = next((s for s in reversed(self._slots.values())
                         if s.lane == lane and s.lines), None)
            if last and last.ts is None and not last.busy and len(last.lines) < STEP_LINES:
                last.lines.append(line)
                last.set(render(last.lines))
                self._kick()
                return
            self._new_slot((lane, "step", self._seq + 1), lane, channel, thread_ts, None,
                           render([line]), lines=[line])
            self._kick()

    def deliver(self, key: Hashable, message: Message, *, lane: Hashable, channel: str,
                thread_ts: str | None = None, extra: dict | None = None,
                timeout: float = 20.0) -> dict:
        """Post `message` now (in its lane's order) and wait for it: {"channel", "ts"}."""
        deadline = self.clock() + timeout
        with self._cond:
            slot = self._new_slot(key, lane, channel, thread_ts, None, message,
                                  extra=dict(extra or {}), awaited=True)
            self._urgent[lane] += 1
            self._kick()
            try:
                while not (slot.ts and slot.sent):
                    if slot.error is not None:
                        del self._slots[key]
                        raise slot.error
                    left = deadline - self.clock()
                    if left <= 0 and not slot.busy:
                        del self._slots[key]  # not sent: nothing may post it later
                        wait = self.budget.wait(Budget.key(slot.method, slot.channel))
                        raise DeliveryError(f"Slack's limit for chat.postMessage in {channel} "
                                            f"did not let the message through in time",
                                            hint=f"retry after {max(wait, 1.0):.1f} s",
                                            retry_after=max(wait, 1.0))
                    self._pause(max(left, 0.05))
                slot.awaited = False
                return {"channel": slot.channel, "ts": slot.ts}
            finally:
                self._urgent[lane] -= 1
                if self._urgent[lane] <= 0:
                    del self._urgent[lane]

    def _pause(self, most: float) -> None:
        """With the condition held: let the loop work for a while (or, without a background
        loop, do its work here)."""
        if self._background:
            self._wait(self._cond, min(most, 0.5))
            return
        self._cond.release()
        try:
            pause = self.pump()
        finally:
            self._cond.acquire()
        if pause:
            self._wait(self._cond, min(pause, most))

    def settle(self, lane: Hashable, timeout: float) -> bool:
        """Wait (at most `timeout` s) until the lane's posts are out: a durable message posted
        next lands after them in the thread. Their turn comes first meanwhile."""
        deadline = self.clock() + timeout
        with self._cond:
            self._urgent[lane] += 1
            self._kick()
            try:
                while any(s.lane == lane and s.ts is None and s.dirty
                          for s in self._slots.values()):
                    left = deadline - self.clock()
                    if left <= 0:
                        return False
                    self._pause(left)
                return True
            finally:
                self._urgent[lane] -= 1
                if self._urgent[lane] <= 0:
                    del self._urgent[lane]

    def pending(self) -> int:
        with self._cond:
            return sum(1 for s in self._slots.values() if s.dirty)

    # -- the loop -------------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._background and self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._run, name="deploybot-slack-sender",
                                            daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
            try:
                pause = self.pump()
            except Exception:  # a bug here must not stop every later message
                log.exception("the Slack sender failed; it goes on")
                pause = 1.0
            with self._cond:
                if self._stopped:
                    return
                if pause != 0:
                    self._wait(self._cond, pause if pause is not None else 1.0)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop; messages not sent within `timeout` stay as they are."""
        deadline = self.clock() + timeout
        with self._cond:
            while self._thread is not None and any(s.dirty for s in self._slots.values()) \
                    and self.clock() < deadline:
                self._wait(self._cond, 0.1)
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _next(self) -> tuple[Slot | None, float | None]:
        """The slot to send now (budget taken), else how long until one may go."""
        now = self.clock()
        soonest: float | None = None
        unposted: set[Hashable] = set()
        ordered = sorted((s for s in self._slots.values() if s.dirty and s.error is None),
                         key=lambda s: (s.lane not in self._urgent,
                                        self._lanes.get(s.lane, s.seq), s.seq))
        for slot in ordered:
            blocked_by_earlier = slot.ts is None and slot.lane in unposted
            if slot.ts is None:
                unposted.add(slot.lane)
            if slot.busy or blocked_by_earlier:
                continue
            if slot.not_before > now:
                wait = slot.not_before - now
                soonest = wait if soonest is None else min(soonest, wait)
                continue
            key = Budget.key(slot.method, slot.channel)
            if self._sync_waiting[key] and slot.lane not in self._urgent:
                continue
            if self.budget.take(key):
                slot.busy = True
                return slot, 0.0
            wait = self.budget.wait(key)
            soonest = wait if soonest is None else min(soonest, wait)
        return None, soonest

    def pump(self) -> float | None:
        """Send one message that is due. 0: sent one (call again); else seconds until the next
        may go; None: nothing waits."""
        with self._cond:
            slot, pause = self._next()
            if slot is None:
                return pause if pause is None else max(pause, 0.01)
            message, shown = slot.message, slot.wanted
            ts = slot.ts
        kwargs = dict(channel=slot.channel, **message.kwargs())
        key = Budget.key(slot.method, slot.channel)
        answer = None
        try:
            if ts:
                answer = self._send("chat_update", key, dict(kwargs, ts=ts))
            else:
                answer = self._send("chat_postMessage", key, dict(
                    kwargs, unfurl_links=False, **slot.extra,
                    **({"thread_ts": slot.thread_ts} if slot.thread_ts else {})))
        except RateLimited:
            pass  # the key is paused; the slot stays dirty and goes again after
        except Exception as exc:
            if slot.awaited:  # the waiter decides (DeliveryError, a marker look-up)
                with self._cond:
                    slot.error = exc
            elif isinstance(exc, SlackApiError):
                error = exc.response.get("error", "?")
                self._failed(slot, error, permanent=error in PERMANENT_ERRORS)
            else:  # timeouts, connection errors: try again a little later
                self._failed(slot, type(exc).__name__, permanent=False)
        if answer is not None:
            self._done(slot, shown, answer)
        with self._cond:
            slot.busy = False
            self._cond.notify_all()
            self._evict()
        return 0.0

    def _failed(self, slot: Slot, error: str, *, permanent: bool) -> None:
        with self._cond:
            slot.failures = MAX_FAILURES if permanent else slot.failures + 1
            slot.not_before = self.clock() + min(30.0, 2.0 ** slot.failures)
        level = logging.WARNING if slot.failures >= MAX_FAILURES else logging.INFO
        log.log(level, "Slack %s of %s failed (%s)%s", slot.method, slot.key, error,
                "; given up" if slot.failures >= MAX_FAILURES else "; will try again")

    def _done(self, slot: Slot, shown: str, answer: dict) -> None:
        posted = slot.ts is None
        ts, channel = answer.get("ts"), answer.get("channel") or slot.channel
        if posted and slot.on_posted and ts:
            try:  # before the slot counts as sent: who waits for it finds it remembered
                slot.on_posted(channel, ts)
            except Exception:
                log.exception("remembering the message %s failed", slot.key)
        with self._cond:
            slot.sent = shown
            slot.failures = 0
            if posted:
                slot.ts, slot.channel = ts, channel

    def _evict(self) -> None:
        clean = [k for k, s in self._slots.items()
                 if not s.dirty and not s.busy and not s.awaited]
        for key in clean[:max(0, len(clean) - KEEP_CLEAN)]:
            del self._slots[key]
        if len(self._lanes) > 2 * KEEP_CLEAN:
            live = {s.lane for s in self._slots.values()} | set(self._urgent)
            self._lanes = {k: v for k, v in self._lanes.items() if k in live}


# Retrying cannot help: the bot is not in the channel, the channel is gone, the token is wrong.
PERMANENT_ERRORS = frozenset({"channel_not_found", "not_in_channel", "is_archived",
                              "invalid_auth", "account_inactive", "token_revoked",
                              "message_not_found", "cant_update_message", "msg_too_long",
                              "invalid_blocks", "missing_scope", "not_authed"})
