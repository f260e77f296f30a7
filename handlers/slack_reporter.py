"""The Slack Reporter and Approver: one thread per deployment, re-rendered from the store.

The thread's messages are remembered in Deployment.thread_ref as
`CHANNEL:ROOT_TS checklist=TS gate.7=TS final=TS …`, so a restarted bot updates the same
messages instead of posting new ones. Every message is rendered whole from stored state
(handlers/blocks), so a repeated update is harmless.

Within Slack's limits (handlers/slack_sender): progress (root, checklist, gates, steps) is shown
through coalescing slots, latest render wins, never blocking the deployment. The durable posts
(alert, blocked, finished) are sent now and raise DeliveryError when they did not get through,
for the outbox to try again; each carries a metadata marker (deployment, key), and `KEY=?` in
thread_ref says a post's answer never came, so the next try looks for the marker before posting.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.config import Config
from bot.errors import DeliveryError
from bot.models import CheckResult, Deployment, Gate
from bot.ports import GateDecision
from bot.store import Store
from handlers import blocks
from handlers.blocks import Message
from handlers.slack_sender import PERMANENT_ERRORS, SlackSender

log = logging.getLogger("deploybot.slack")


@dataclass
class ThreadRef:
    channel: str
    ts: str
    parts: dict[str, str] = field(default_factory=dict)  # "checklist" / "gate.7" -> message ts

    @classmethod
    def parse(cls, text: str) -> "ThreadRef | None":
        if not text or ":" not in text.split(" ", 1)[0]:
            return None
        head, *rest = text.split(" ")
        channel, ts = head.split(":", 1)
        parts = dict(p.split("=", 1) for p in rest if "=" in p)
        return cls(channel, ts, parts)

    def format(self) -> str:
        return " ".join([f"{self.channel}:{self.ts}"] + [f"{k}={v}" for k, v in self.parts.items()])



MARKER = "deploybot_message"  # metadata event_type of the durable posts
UNANSWERED = "?"  # thread_ref value of a durable post whose answer never came
ROOT_WAIT = 30.0  # seconds a thread's first message may wait for the channel's budget
DURABLE_WAIT = 20.0  # seconds a durable post may wait before the outbox takes over
SETTLE_WAIT = 15.0  # seconds a new checklist may wait for its message before it runs


class SlackReporter:
    """Reporter (thread, blockers, alerts) and Approver (buttons; the click decides later)."""

    def __init__(self, client: WebClient, store: Store, config: Config, *,
                 default_channel: str | None = None,
                 on_change: Callable[[], None] | None = None,
                 sender: SlackSender | None = None) -> None:
        self.client = client
        self.store = store
        self.config = config
        self.default_channel = default_channel or (config.slack.channels or [config.channel])[0]
        self.on_change = on_change or (lambda: None)
        self.sender = sender or SlackSender(client)
        self._guard = threading.Lock()
        self._locks: dict[int, threading.RLock] = {}

    # -- Approver ---------------------------------------------------------------------------------

    def request(self, deployment: Deployment, gate: Gate) -> GateDecision | None:
        """The gate's buttons were posted by gate_requested; a click decides it later."""
        return None

    # -- plumbing ---------------------------------------------------------------------------------

    def _lock(self, deployment_id: int) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(deployment_id, threading.RLock())

    def call(self, method: str, **kwargs) -> dict | None:
        """One Web API call within the limits; a failure is logged (never with the token) and
        returns None."""
        try:
            return self.sender.call(method, max_wait=10.0, **kwargs)
        except SlackApiError as exc:
            log.warning("Slack %s failed: %s", method, exc.response.get("error", "?"))
        except DeliveryError as exc:
            log.warning("Slack %s failed: %s", method, exc)
        except Exception as exc:  # timeouts, connection errors: the deployment must go on
            log.warning("Slack %s failed: %s", method, type(exc).__name__)
        return None

    def _ref(self, deployment_id: int) -> ThreadRef | None:
        return ThreadRef.parse(self.store.deployment(deployment_id).thread_ref)

    def _save(self, deployment_id: int, ref: ThreadRef) -> None:
        self.store.update_deployment(deployment_id, thread_ref=ref.format())

    def _remember(self, deployment_id: int, key: str, ts: str | None) -> None:
        """Record (or, with None, forget) a message of the thread, re-reading what is stored."""
        with self.store.transaction():
            ref = self._ref(deployment_id)
            if ref is None:
                return
            if ts is None:
                ref.parts.pop(key, None)
            else:
                ref.parts[key] = ts
            self._save(deployment_id, ref)

    def _show_part(self, d: Deployment, key: str, message: Message) -> None:
        """The thread message `key` as `message`: posted once, then updated (coalesced)."""
        ref = self.thread(d)
        if ref is None:
            return
        ts = ref.parts.get(key)
        self.sender.show((d.id, key), message, lane=d.id, channel=ref.channel, thread_ts=ref.ts,
                         ts=ts if ts and ts != UNANSWERED else None,
                         on_posted=lambda _, posted: self._remember(d.id, key, posted))

    def thread_url(self, ref: ThreadRef | None) -> str | None:
        if ref is None:
            return None
        answer = self.call("chat_getPermalink", channel=ref.channel, message_ts=ref.ts)
        return answer.get("permalink") if answer else None

    # -- durable posts: now, once -----------------------------------------------------------------

    def _durable(self, d: Deployment, key: str, channel: str, thread_ts: str | None,
                 message: Message) -> str:
        """Post once per (deployment, key); the ts. DeliveryError when it did not get through."""
        ref = self._ref(d.id)
        known = ref.parts.get(key) if ref else None
        if known and known != UNANSWERED:
            return known
        if known == UNANSWERED:
            found = self._find_marker(d.id, key, channel, thread_ts)
            if found:
                self._remember(d.id, key, found)
                return found
        metadata = {"event_type": MARKER, "event_payload": {"deployment": d.id, "key": key}}
        self._remember(d.id, key, UNANSWERED)
        try:
            sent = self.sender.deliver((d.id, key), message, lane=d.id, channel=channel,
                                       thread_ts=thread_ts, extra={"metadata": metadata},
                                       timeout=DURABLE_WAIT)
        except DeliveryError:
            self._remember(d.id, key, None)  # not sent: nothing to look for
            raise
        except SlackApiError as exc:
            error = exc.response.get("error", "?")
            status = getattr(exc.response, "status_code", 200)
            if status < 500:
                self._remember(d.id, key, None)
            raise DeliveryError(f"Slack refused the {key} message in {channel} ({error})",
                                hint=fix_for(error, channel),
                                permanent=error in PERMANENT_ERRORS) from None
        except Exception as exc:  # the answer is unknown: the next try looks before posting
            raise DeliveryError(f"no answer from Slack for the {key} message in {channel} "
                                f"({type(exc).__name__})",
                                hint="it is looked for before posting again") from None
        self._remember(d.id, key, sent["ts"])
        return sent["ts"]

    def _find_marker(self, deployment_id: int, key: str, channel: str,
                     thread_ts: str | None) -> str | None:
        """The ts of a message carrying our marker, from the thread or the channel's history."""
        try:
            if thread_ts:
                answer = self.sender.call("conversations_replies", max_wait=DURABLE_WAIT,
                                          channel=channel, ts=thread_ts,
                                          include_all_metadata=True, limit=200)
            else:
                answer = self.sender.call("conversations_history", max_wait=DURABLE_WAIT,
                                          channel=channel, include_all_metadata=True, limit=200)
        except SlackApiError as exc:
            error = exc.response.get("error", "?")
            raise DeliveryError(f"cannot look for the {key} message in {channel} ({error})",
                                hint="the app needs the channels:history and groups:history "
                                     "scopes (deploy/slack-manifest.yaml)"
                                if error == "missing_scope" else fix_for(error, channel),
                                permanent=error in PERMANENT_ERRORS) from None
        except DeliveryError:
            raise
        except Exception as exc:
            raise DeliveryError(f"cannot look for the {key} message in {channel} "
                                f"({type(exc).__name__})") from None
        for m in answer.get("messages", []):
            meta = m.get("metadata") or {}
            payload = meta.get("event_payload") or {}
            if meta.get("event_type") == MARKER and payload.get("deployment") == deployment_id \
                    and payload.get("key") == key:
                return m.get("ts")
        return None

    # -- the thread -------------------------------------------------------------------------------

    def start_thread(self, d: Deployment, channel: str) -> ThreadRef:
        """Post the root message in `channel` once; DeliveryError (permanent=True when the bot
        cannot post there) when it did not get through."""
        with self._lock(d.id):
            ref = self._ref(d.id)
            if ref is not None:
                return ref
            d = self.store.deployment(d.id)
            message = blocks.root_message(self.config, d)
            try:
                sent = self.sender.deliver((d.id, "root"), message, lane=d.id, channel=channel,
                                           timeout=ROOT_WAIT)
            except SlackApiError as exc:
                error = exc.response.get("error", "?")
                raise DeliveryError(f"deploybot cannot post in {channel} ({error})",
                                    hint=fix_for(error, channel),
                                    permanent=error in PERMANENT_ERRORS) from None
            except DeliveryError:
                self._open_later(d, channel)  # in line behind others: it goes out later
                raise
            except Exception as exc:
                raise DeliveryError(f"no answer from Slack posting in {channel} "
                                    f"({type(exc).__name__})") from None
            ref = ThreadRef(sent["channel"], sent["ts"])
            self._save(d.id, ref)
            return ref

    def open_thread(self, d: Deployment, channel: str) -> ThreadRef | None:
        """Post the root message in `channel` once; later calls return the same thread."""
        try:
            return self.start_thread(d, channel)
        except DeliveryError as exc:
            log.warning("deployment #%s: %s", d.id, exc)
            return None

    def thread(self, d: Deployment) -> ThreadRef | None:
        """The deployment's thread. When its first post did not get through, the root goes to
        the default channel as the budget allows (never blocking the deployment meanwhile);
        until then the thread's other messages wait for their next refresh."""
        ref = self._ref(d.id)
        if ref is None:
            self._open_later(d, self.default_channel)
        return ref

    def _open_later(self, d: Deployment, channel: str) -> None:
        """The root as the budget allows (in the channel asked first, when it is waiting)."""
        self.sender.show((d.id, "root"),
                         blocks.root_message(self.config, self.store.deployment(d.id)),
                         lane=d.id, channel=channel,
                         on_posted=lambda posted_in, ts: self._opened(d.id, posted_in, ts))

    def _opened(self, deployment_id: int, channel: str, ts: str) -> None:
        with self.store.transaction():
            if self._ref(deployment_id) is None:
                self._save(deployment_id, ThreadRef(channel, ts))

    def _thread_now(self, d: Deployment) -> ThreadRef | None:
        """The thread, waiting (a while) for its root when it is still on its way."""
        ref = self.thread(d)
        if ref is None:
            self.sender.settle(d.id, ROOT_WAIT)
            ref = self._ref(d.id)
        return ref

    # Each refresh renders and hands over under the deployment's lock, so the latest render
    # handed over is also the newest state read: an older view never replaces a newer one.

    def refresh_root(self, d: Deployment) -> None:
        with self._lock(d.id):
            ref = self.thread(d)
            if ref:
                self.sender.show((d.id, "root"),
                                 blocks.root_message(self.config, self.store.deployment(d.id)),
                                 lane=d.id, channel=ref.channel, ts=ref.ts)

    def refresh_checklist(self, d: Deployment) -> None:
        with self._lock(d.id):
            d = self.store.deployment(d.id)
            self._show_part(d, "checklist",
                            blocks.checklist_message(self.config, d, self.store.checks(d.id)))

    def refresh_gate(self, d: Deployment, gate: Gate) -> None:
        with self._lock(d.id):
            d = self.store.deployment(d.id)
            self._show_part(d, f"gate.{gate.id}",
                            blocks.gate_message(self.config, d, self.store.gate(gate.id)))

    def rerender(self, d: Deployment) -> None:
        """Bring every message of the thread in line with the store (after a restart)."""
        self.refresh_root(d)
        self.refresh_checklist(d)
        for gate in self.store.gates(d.id):
            self.refresh_gate(d, gate)

    # -- Reporter ---------------------------------------------------------------------------------

    def deployment_started(self, deployment: Deployment) -> None:
        self.thread(deployment)
        self.refresh_root(deployment)
        self.refresh_checklist(deployment)
        self.on_change()
        # Nothing is touched yet: when the channel's budget is behind, the checklist waits for
        # its message, so people watch it run instead of reading it long after it ran.
        self.sender.settle(deployment.id, SETTLE_WAIT)

    def checklist_updated(self, deployment: Deployment, checks: list[CheckResult]) -> None:
        self.refresh_checklist(deployment)

    def gate_requested(self, deployment: Deployment, gate: Gate) -> None:
        self.refresh_root(deployment)
        self.refresh_gate(deployment, gate)

    def gate_decided(self, deployment: Deployment, gate: Gate) -> None:
        self.refresh_gate(deployment, gate)

    def step(self, deployment: Deployment, message: str) -> None:
        self.refresh_root(deployment)
        ref = self.thread(deployment)
        if ref:
            self.sender.add_step(deployment.id, message, blocks.steps_message,
                                 channel=ref.channel, thread_ts=ref.ts)

    def blocked(self, deployment: Deployment, blockers: list[CheckResult]) -> None:
        d = self.store.deployment(deployment.id)
        ref = self._thread_now(d)
        channel = ref.channel if ref else self.default_channel
        self._durable(d, "blocked", channel, None,
                      blocks.blocker_message(self.config, d, blockers, self.thread_url(ref)))

    def alert(self, deployment: Deployment, message: str) -> None:
        d = self.store.deployment(deployment.id)
        ref = self._thread_now(d)
        channel = ref.channel if ref else self.default_channel
        self.refresh_root(d)
        key = "alert." + hashlib.sha256(message.encode()).hexdigest()[:10]
        self._durable(d, key, channel, None,
                      blocks.alert_message(self.config, d, message, self.thread_url(ref)))

    def finished(self, deployment: Deployment, record: str) -> None:
        d = self.store.deployment(deployment.id)
        for gate in self.store.gates(d.id):  # buttons of gates nobody needs any more go away
            self.refresh_gate(d, gate)
        self.refresh_checklist(d)
        self.refresh_root(d)
        self.on_change()
        ref = self._thread_now(d)
        if ref is None:
            raise DeliveryError(f"deployment #{d.id} has no Slack thread for its final message",
                                hint="the thread could not be opened; see the log")
        final = blocks.final_message(self.config, d, record)
        posted = ref.parts.get("final")
        if posted and posted != UNANSWERED:
            self.sender.show((d.id, "final"), final, lane=d.id, channel=ref.channel,
                             thread_ts=ref.ts, ts=posted)
            return
        self._durable(d, "final", ref.channel, ref.ts, final)  # after the lane's earlier posts

    def summary(self, text: str) -> None:
        """Not about one deployment (the periodic health summary): a message in the channel."""
        self.call("chat_postMessage", channel=self.default_channel, unfurl_links=False,
                  text=f"```{blocks.escape(text)}```")


def fix_for(error: str, channel: str) -> str:
    """What a person does about Slack refusing a post."""
    where = f"<#{channel}>" if channel[:1] in "CG" and channel.isupper() else channel
    if error in ("not_in_channel", "channel_not_found"):
        return f"invite the bot: /invite @deploybot in {where}"
    if error == "is_archived":
        return f"{where} is archived: unarchive it or configure another channel"
    if error in ("invalid_auth", "token_revoked", "account_inactive", "not_authed"):
        return "the bot token is no longer valid: reinstall the app and set SLACK_BOT_TOKEN"
    return "see deploybot's log"
