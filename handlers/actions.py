"""Button clicks and the Reject modal: approve, reject, acknowledge notes, cancel, roll back.

Each listener acknowledges at once and decides on a worker, through the request service
(bot/service.py), as the slash commands do. Deciding ends in Pipeline.decide_gate, whose store
update is atomic: a second click (or a second person) finds the gate decided, changes nothing
and is told by whom it was decided.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.errors import DeploybotError, NotAllowed
from bot.models import DeploymentStatus, Gate, GateStatus
from bot.requests import CancelRequest, DecideRequest, RollbackRequest
from bot.service import Refused
from handlers import blocks

if TYPE_CHECKING:
    from handlers.slack_app import SlackFrontEnd

log = logging.getLogger("deploybot.slack.actions")


@dataclass(frozen=True)
class Click:
    """Who clicked what, where (from a block_actions or view_submission payload)."""

    user: str
    value: str
    channel: str | None
    thread_ts: str | None
    message_ts: str | None
    trigger_id: str | None
    key: str  # identifies this delivery: a redelivered payload has the same key

    @classmethod
    def from_body(cls, body: dict) -> "Click":
        action = (body.get("actions") or [{}])[0]
        message = body.get("message") or {}
        container = body.get("container") or {}
        message_ts = container.get("message_ts") or message.get("ts")
        user = (body.get("user") or {}).get("id", "")
        return cls(user=user, value=str(action.get("value", "")),
                   channel=(body.get("channel") or {}).get("id") or container.get("channel_id"),
                   thread_ts=message.get("thread_ts") or message_ts, message_ts=message_ts,
                   trigger_id=body.get("trigger_id"),
                   key=f"action:{user}:{action.get('action_ts') or body.get('trigger_id')}")


def refusal(exc: NotAllowed) -> str:
    """A refusal in complete sentences: what was refused, who may act instead."""
    text = blocks.escape(exc.message.rstrip("."))
    hint = blocks.escape(exc.hint.rstrip(".")) if exc.hint else ""
    return f":no_entry: {text}." + (f" {hint}." if hint else "") + " Nothing changed."


def _already(front: "SlackFrontEnd", gate: Gate) -> str:
    when = f" at {gate.decided_at:%Y-%m-%d %H:%M UTC}" if gate.decided_at else ""
    return (f"Gate #{gate.id} was already {gate.status.value} by "
            f"{blocks.person(front.config, gate.decided_by)}{when}; nothing changed.")


def decide(front: "SlackFrontEnd", click: Click, *, approved: bool, reason: str = "",
           gate_id: int | None = None) -> None:
    """A person decided a gate; an approval resumes (and on this worker, drives) the deployment."""
    def tell(text: str) -> None:
        front.ephemeral(click.channel, click.user, text, thread_ts=click.thread_ts)

    try:
        gate = front.store.gate(gate_id if gate_id is not None else int(click.value))
        outcome = front.service.handle(
            DecideRequest(gate.deployment_id, approved, gate_id=gate.id, reason=reason),
            lambda env: front.actor(click.user, env))
    except (DeploybotError, ValueError) as exc:
        tell(f":warning: {blocks.escape(getattr(exc, 'message', str(exc)))}")
        return
    if isinstance(outcome, Refused):
        tell(refusal(outcome.error))
    elif outcome.nothing_pending:
        tell(_already(front, next(g for g in outcome.gates if g.id == gate.id)))
    for other in getattr(outcome, "already", ()):
        tell(_already(front, other))
        front.reporter.refresh_gate(outcome.deployment, other)


def open_reject(front: "SlackFrontEnd", click: Click) -> None:
    """Reject asks for a reason first; a person who may not decide is told before typing it."""
    try:
        gate = front.store.gate(int(click.value))
        d = front.store.deployment(gate.deployment_id)
        if gate.status is not GateStatus.PENDING:
            front.ephemeral(click.channel, click.user, _already(front, gate),
                            thread_ts=click.thread_ts)
            return
        if d.status is not DeploymentStatus.AWAITING_APPROVAL:  # no reason to ask for
            front.ephemeral(click.channel, click.user,
                            f":warning: deployment #{d.id} is {d.status.value}; there is "
                            f"nothing to decide.",
                            thread_ts=click.thread_ts)
            return
        refused = front.service.may_decide(gate, lambda env: front.actor(click.user, env),
                                           approved=False)
    except (DeploybotError, ValueError) as exc:
        front.ephemeral(click.channel, click.user, f":warning: {exc}", thread_ts=click.thread_ts)
        return
    if refused is not None:
        front.ephemeral(click.channel, click.user, refusal(refused.error),
                        thread_ts=click.thread_ts)
        return
    front.reporter.call("views_open", trigger_id=click.trigger_id,
                        view=blocks.reject_modal(gate, d, channel=click.channel or "",
                                                 thread_ts=click.thread_ts or ""))


def _failed(front: "SlackFrontEnd", click: Click, exc: Exception, *, hint: bool = False) -> None:
    text = f":warning: {blocks.escape(getattr(exc, 'message', str(exc)))}"
    if hint and getattr(exc, "hint", ""):
        text += f" ({blocks.escape(exc.hint)})"
    front.ephemeral(click.channel, click.user, text, thread_ts=click.thread_ts)


def cancel(front: "SlackFrontEnd", click: Click) -> None:
    try:
        outcome = front.service.handle(
            CancelRequest(deployment_id=int(click.value),
                          reason="with the Cancel button in Slack"),
            lambda env: front.actor(click.user, env))
    except (DeploybotError, ValueError) as exc:
        _failed(front, click, exc, hint=True)
        return
    if isinstance(outcome, Refused):
        front.ephemeral(click.channel, click.user, refusal(outcome.error),
                        thread_ts=click.thread_ts)


def roll_back(front: "SlackFrontEnd", click: Click) -> None:
    """Roll back what a success or alert message shows; one rollback per message clicked."""
    try:
        d = front.store.deployment(int(click.value))
        if not blocks.can_roll_back(d):
            raise NotAllowed(f"deployment #{d.id} ({d.status.value}) has nothing to roll back to",
                             hint="use /rollback SERVICE to VERSION")
        # A button on an old message must not undo what was deployed after it.
        newer = front.store.last_succeeded(d.service, d.environment)
        if newer is not None and newer.id > d.id:
            raise NotAllowed(
                f"this button is out of date: {d.service} in {d.environment} has run "
                f"{newer.version} since (deployment #{newer.id}), not what deployment #{d.id} "
                f"left", hint=f"to put {blocks.rollback_target(d)} back anyway, use /rollback "
                              f"{d.service} to {blocks.rollback_target(d)} in {d.environment}")
        outcome = front.service.handle(
            RollbackRequest(service=d.service, environment=d.environment,
                            to_version=blocks.rollback_target(d)),
            lambda env: front.actor(click.user, env),
            request_key=f"slack:rollback:{d.id}:{click.message_ts}")
    except NotAllowed as exc:
        front.ephemeral(click.channel, click.user, refusal(exc), thread_ts=click.thread_ts)
        return
    except (DeploybotError, ValueError) as exc:
        _failed(front, click, exc)
        return
    if isinstance(outcome, Refused):
        front.ephemeral(click.channel, click.user, refusal(outcome.error),
                        thread_ts=click.thread_ts)
        return
    front.launch(outcome.deployment, click.channel or front.reporter.default_channel, click.user)


def register(app: Any, front: "SlackFrontEnd") -> None:
    def on(action_id: str, work, **kwargs):
        @app.action(action_id)
        def listener(ack, body):
            ack()
            click = Click.from_body(body)
            if front.deliveries.first_here(click.key):  # other replicas: on the worker
                front.submit(lambda: front.deliveries.first_everywhere(click.key)
                             and work(front, click, **kwargs))

    on(blocks.APPROVE, decide, approved=True)
    on(blocks.ACK_NOTES, decide, approved=True)
    on(blocks.REJECT, open_reject)
    on(blocks.CANCEL, cancel)
    on(blocks.ROLLBACK, roll_back)

    @app.action(blocks.OPEN_THREAD)
    def open_thread(ack):
        ack()  # a link button: Slack opens the URL, there is nothing to do

    @app.view(blocks.REJECT_VIEW)
    def reject_submitted(ack, body, view):
        values = (view.get("state") or {}).get("values") or {}
        reason = ((values.get(blocks.REASON_BLOCK) or {}).get(blocks.REASON_INPUT) or {}).get(
            "value") or ""
        if not reason.strip():
            ack(response_action="errors",
                errors={blocks.REASON_BLOCK: "Say why, for the thread and the ticket."})
            return
        ack()
        meta = json.loads(view.get("private_metadata") or "{}")
        click = Click(user=(body.get("user") or {}).get("id", ""), value=str(meta.get("gate_id")),
                      channel=meta.get("channel") or None, thread_ts=meta.get("thread_ts") or None,
                      message_ts=meta.get("thread_ts") or None, trigger_id=body.get("trigger_id"),
                      key=f"view:{view.get('id')}:{view.get('hash')}")
        if front.deliveries.first_here(click.key):
            front.submit(lambda: front.deliveries.first_everywhere(click.key)
                         and decide(front, click, approved=False, reason=reason.strip()))
