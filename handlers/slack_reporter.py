"""The Slack Reporter and Approver: one thread per deployment, re-rendered from the store.

The thread's messages are remembered in Deployment.thread_ref as
`CHANNEL:ROOT_TS checklist=TS gate.7=TS …`, so a restarted bot updates the same messages
instead of posting new ones. Every message is rendered whole from stored state (handlers/blocks),
so a repeated update is harmless; an update identical to the last one is not even sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.config import Config
from bot.models import CheckResult, Deployment, Gate
from bot.ports import GateDecision
from bot.store import Store
from handlers import blocks
from handlers.blocks import Message

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


class SlackReporter:
    """Reporter (thread, blockers, alerts) and Approver (buttons; the click decides later)."""

    def __init__(self, client: WebClient, store: Store, config: Config, *,
                 default_channel: str | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.client = client
        self.store = store
        self.config = config
        self.default_channel = default_channel or (config.slack.channels or [config.channel])[0]
        self.on_change = on_change or (lambda: None)
        self._guard = threading.Lock()
        self._locks: dict[int, threading.RLock] = {}
        self._sent: dict[tuple[str, str], str] = {}  # (channel, ts) -> digest of the last render

    # -- Approver ---------------------------------------------------------------------------------

    def request(self, deployment: Deployment, gate: Gate) -> GateDecision | None:
        """The gate's buttons were posted by gate_requested; a click decides it later."""
        return None

    # -- plumbing ---------------------------------------------------------------------------------

    def _lock(self, deployment_id: int) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(deployment_id, threading.RLock())

    def call(self, method: str, **kwargs) -> dict | None:
        """One Web API call; a failure is logged (never with the token) and returns None."""
        try:
            return getattr(self.client, method)(**kwargs).data
        except SlackApiError as exc:
            log.warning("Slack %s failed: %s", method, exc.response.get("error", "?"))
        except Exception as exc:  # timeouts, connection errors: the deployment must go on
            log.warning("Slack %s failed: %s", method, type(exc).__name__)
        return None

    def _ref(self, deployment_id: int) -> ThreadRef | None:
        return ThreadRef.parse(self.store.deployment(deployment_id).thread_ref)

    def _save(self, deployment_id: int, ref: ThreadRef) -> None:
        self.store.update_deployment(deployment_id, thread_ref=ref.format())

    def _update(self, channel: str, ts: str, message: Message) -> None:
        digest = hashlib.sha256(json.dumps(message.kwargs(), sort_keys=True).encode()).hexdigest()
        if self._sent.get((channel, ts)) == digest:
            return
        if self.call("chat_update", channel=channel, ts=ts, **message.kwargs()) is not None:
            self._sent[(channel, ts)] = digest

    def _post_in_thread(self, d: Deployment, key: str | None, message: Message) -> None:
        """Post `message` in the thread, or update the one posted under `key` before."""
        with self._lock(d.id):
            ref = self.thread(d)
            if ref is None:
                return
            if key and key in ref.parts:
                self._update(ref.channel, ref.parts[key], message)
                return
            sent = self.call("chat_postMessage", channel=ref.channel, thread_ts=ref.ts,
                              unfurl_links=False, **message.kwargs())
            if sent and key:
                ref = self._ref(d.id) or ref
                ref.parts[key] = sent["ts"]
                self._save(d.id, ref)

    def thread_url(self, ref: ThreadRef | None) -> str | None:
        if ref is None:
            return None
        answer = self.call("chat_getPermalink", channel=ref.channel, message_ts=ref.ts)
        return answer.get("permalink") if answer else None

    # -- the thread -------------------------------------------------------------------------------

    def open_thread(self, d: Deployment, channel: str) -> ThreadRef | None:
        """Post the root message in `channel` once; later calls return the same thread."""
        with self._lock(d.id):
            ref = self._ref(d.id)
            if ref is not None:
                return ref
            d = self.store.deployment(d.id)
            sent = self.call("chat_postMessage", channel=channel, unfurl_links=False,
                              **blocks.root_message(self.config, d).kwargs())
            if not sent:
                return None
            ref = ThreadRef(sent["channel"], sent["ts"])
            self._save(d.id, ref)
            return ref

    def thread(self, d: Deployment) -> ThreadRef | None:
        """The deployment's thread, opened in the default channel when nobody opened one."""
        return self._ref(d.id) or self.open_thread(d, self.default_channel)

    # Each refresh renders and sends under the deployment's lock, so the last render sent is
    # also the newest state read: two threads cannot put an older view over a newer one.

    def refresh_root(self, d: Deployment) -> None:
        with self._lock(d.id):
            ref = self.thread(d)
            if ref:
                self._update(ref.channel, ref.ts,
                             blocks.root_message(self.config, self.store.deployment(d.id)))

    def refresh_checklist(self, d: Deployment) -> None:
        with self._lock(d.id):
            d = self.store.deployment(d.id)
            self._post_in_thread(d, "checklist",
                                 blocks.checklist_message(self.config, d, self.store.checks(d.id)))

    def refresh_gate(self, d: Deployment, gate: Gate) -> None:
        with self._lock(d.id):
            d = self.store.deployment(d.id)
            self._post_in_thread(d, f"gate.{gate.id}",
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

    def checklist_updated(self, deployment: Deployment, checks: list[CheckResult]) -> None:
        self.refresh_checklist(deployment)

    def gate_requested(self, deployment: Deployment, gate: Gate) -> None:
        self.refresh_root(deployment)
        self.refresh_gate(deployment, gate)

    def gate_decided(self, deployment: Deployment, gate: Gate) -> None:
        self.refresh_gate(deployment, gate)

    def step(self, deployment: Deployment, message: str) -> None:
        self.refresh_root(deployment)
        self._post_in_thread(deployment, None, blocks.step_message(deployment, message))

    def blocked(self, deployment: Deployment, blockers: list[CheckResult]) -> None:
        d = self.store.deployment(deployment.id)
        ref = self.thread(d)
        channel = ref.channel if ref else self.default_channel
        self.call("chat_postMessage", channel=channel, unfurl_links=False,
                   **blocks.blocker_message(self.config, d, blockers,
                                            self.thread_url(ref)).kwargs())

    def alert(self, deployment: Deployment, message: str) -> None:
        d = self.store.deployment(deployment.id)
        ref = self.thread(d)
        channel = ref.channel if ref else self.default_channel
        self.call("chat_postMessage", channel=channel, unfurl_links=False,
                   **blocks.alert_message(self.config, d, message, self.thread_url(ref)).kwargs())
        self.refresh_root(d)

    def finished(self, deployment: Deployment, record: str) -> None:
        d = self.store.deployment(deployment.id)
        for gate in self.store.gates(d.id):  # buttons of gates nobody needs any more go away
            self.refresh_gate(d, gate)
        self.refresh_checklist(d)
        self._post_in_thread(d, "final", blocks.final_message(self.config, d, record))
        self.refresh_root(d)
        self.on_change()

    def summary(self, text: str) -> None:
        """Not about one deployment (the periodic health summary): a message in the channel."""
        self.call("chat_postMessage", channel=self.default_channel, unfurl_links=False,
                  text=f"```{blocks.escape(text)}```")
