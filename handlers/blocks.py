"""Block Kit rendering from stored state: thread messages, gates, alerts, App Home. No I/O.

Every function takes what the store holds and returns the whole message, so sending it again
(a retried `chat.update`, a restart) shows the same thing. Text that comes from people or
tickets is escaped, so a ticket comment cannot ping `<!channel>` or fake a link.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from handlers.safe_output import escape_controls
from bot.config import SLACK_USER_ID, Config
from bot.models import (
    CANCELLABLE,
    CheckResult,
    CheckStatus,
    Deployment,
    DeploymentKind,
    DeploymentStatus,
    Gate,
    GateKind,
    GateStatus,
    Lock,
)

# action_id of every interactive element; handlers/actions.py listens for exactly these.
APPROVE = "gate_approve"
REJECT = "gate_reject"
ACK_NOTES = "gate_ack_notes"
CANCEL = "deployment_cancel"
ROLLBACK = "deployment_rollback"
OPEN_THREAD = "open_thread"
REJECT_VIEW = "gate_reject_reason"  # callback_id of the Reject modal
REASON_BLOCK, REASON_INPUT = "reason", "reason_input"

SECTION_LIMIT = 2900  # Slack refuses section text over 3000 characters
MAX_BLOCKS = 48  # and messages over 50 blocks

CHECK_MARK = {
    CheckStatus.PENDING: ":white_large_square:",
    CheckStatus.RUNNING: ":hourglass_flowing_sand:",
    CheckStatus.PASSED: ":white_check_mark:",
    CheckStatus.FAILED: ":x:",
    CheckStatus.SKIPPED: ":heavy_minus_sign:",
}

STATUS_LINE = {
    DeploymentStatus.REQUESTED: (":hourglass:", "requested"),
    DeploymentStatus.CHECKING: (":mag:", "running the checklist"),
    DeploymentStatus.BLOCKED: (":no_entry:", "blocked: nothing was deployed"),
    DeploymentStatus.AWAITING_APPROVAL: (":raised_hand:", "waiting for approval"),
    DeploymentStatus.REJECTED: (":no_entry_sign:", "rejected"),
    DeploymentStatus.DEPLOYING: (":rocket:", "deploying"),
    DeploymentStatus.VERIFYING: (":stethoscope:", "verifying"),
    DeploymentStatus.SUCCEEDED: (":white_check_mark:", "deployed and verified"),
    DeploymentStatus.ROLLING_BACK: (":rewind:", "rolling back"),
    DeploymentStatus.ROLLED_BACK: (":rewind:", "rolled back"),
    DeploymentStatus.ROLLBACK_FAILED: (":rotating_light:", "ROLLBACK FAILED"),
    DeploymentStatus.FAILED: (":x:", "failed"),
    DeploymentStatus.CANCELLED: (":wastebasket:", "cancelled"),
    DeploymentStatus.INTERRUPTED: (":warning:", "interrupted"),
}



@dataclass
class Message:
    text: str  # the notification / fallback text
    blocks: list[dict] = field(default_factory=list)

    def kwargs(self) -> dict:
        return {"text": self.text, "blocks": self.blocks}


def escape(text: str) -> str:
    # control characters shown, not passed on raw (a CR or ESC in a ticket title or reason)
    text = escape_controls(text or "")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def person(config: Config, who: str | None) -> str:
    """A Slack mention when the person has a Slack id, else their name."""
    if not who:
        return "someone"
    if SLACK_USER_ID.fullmatch(who):
        return f"<@{who}>"
    person = config.people.get(config.person_named(who) or "")
    return f"<@{person.slack}>" if person and person.slack else escape(who)


def _section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text)}}


def _context(text: str) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(text)}]}


def _clip(text: str, limit: int = SECTION_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _button(text: str, action_id: str, value: str, style: str | None = None,
            url: str | None = None) -> dict:
    b = {"type": "button", "text": {"type": "plain_text", "text": text, "emoji": True},
         "action_id": action_id, "value": value}
    if style:
        b["style"] = style
    if url:
        b["url"] = url
    return b


def _actions(block_id: str, *elements: dict) -> dict:
    return {"type": "actions", "block_id": block_id, "elements": list(elements)}


def what(d: Deployment) -> str:
    """`deploy of web v2 to production for DEMO-1` in the team's words."""
    if d.kind is DeploymentKind.ROLLBACK:
        text = f"rollback of {d.service} to {d.version} in {d.environment}"
        return text + (f" (after {d.ticket_id})" if d.ticket_id != "none" else "")
    dry = "dry run of " if d.dry_run else ""
    return f"{dry}deploy of {d.service} {d.version} to {d.environment} for {d.ticket_id}"


def status_line(d: Deployment) -> tuple[str, str]:
    """STATUS_LINE's emoji and words; a dry run that passed never reads "deployed"."""
    if d.dry_run and d.status is DeploymentStatus.SUCCEEDED:
        return ":white_check_mark:", "dry run passed: nothing was deployed"
    return STATUS_LINE[d.status]


def status_text(d: Deployment) -> str:
    emoji, words = status_line(d)
    text = f"{emoji} *{words}*"
    if d.failure and d.status.terminal:
        text += f": {escape(d.failure)}"
    return text


def rollback_target(d: Deployment) -> str | None:
    """Which version a "Roll back" click on this deployment puts back (None: none known)."""
    if d.kind is DeploymentKind.ROLLBACK and d.status is not DeploymentStatus.SUCCEEDED:
        return d.version  # the rollback itself failed: try the same target again
    return d.previous_version


def can_roll_back(d: Deployment) -> bool:
    if d.dry_run or not rollback_target(d):
        return False
    return d.status in (DeploymentStatus.SUCCEEDED, DeploymentStatus.ROLLBACK_FAILED,
                        DeploymentStatus.FAILED, DeploymentStatus.INTERRUPTED) and \
        not (d.status is DeploymentStatus.SUCCEEDED and d.kind is DeploymentKind.ROLLBACK)


# -- the thread ------------------------------------------------------------------------------------

def root_message(config: Config, d: Deployment) -> Message:
    """The channel message that heads the thread; it always shows the current status."""
    head = f"{escape(what(d))} requested by {person(config, d.requested_by)}"
    blocks = [_section(head), _context(f"{status_text(d)}  ·  deployment #{d.id}")]
    buttons = []
    if d.status in CANCELLABLE:
        buttons.append(_button("Cancel", CANCEL, str(d.id)))
    if can_roll_back(d):
        buttons.append(_button(f"Roll back to {rollback_target(d)}", ROLLBACK, str(d.id),
                               style="danger"))
    if buttons:
        blocks.append(_actions(f"root-{d.id}", *buttons))
    emoji, words = status_line(d)
    return Message(f"{what(d)} requested by {d.requested_by}: {words}", blocks)


def checklist_message(config: Config, d: Deployment, checks: list[CheckResult]) -> Message:
    title = "Rollback checks" if d.kind is DeploymentKind.ROLLBACK else "Pre-deployment checklist"
    lines = []
    for c in checks:
        line = f"{CHECK_MARK[c.status]} *{escape(c.title)}* — {c.status.value}"
        if c.reason:
            line += f": {escape(c.reason)}"
        lines.append(line)
    body = "\n".join(lines) or "_starting…_"
    blocks = [_section(f"*{title}* — {escape(d.service)} {escape(d.version)} → "
                       f"{escape(d.environment)}")]
    blocks += [_section(chunk) for chunk in _chunks(body)]
    blocks.append(_context(status_text(d)))
    done = sum(c.status in (CheckStatus.PASSED, CheckStatus.SKIPPED) for c in checks)
    failed = sum(c.status is CheckStatus.FAILED for c in checks)
    return Message(f"{title}: {done}/{len(checks)} done" + (f", {failed} failed" if failed else ""),
                   blocks[:MAX_BLOCKS])


def gate_message(config: Config, d: Deployment, gate: Gate) -> Message:
    """A gate with its buttons while it is open; afterwards, who decided and how."""
    kind = {GateKind.NOTES_ACK: "Deployment notes",
            GateKind.BREAK_GLASS: "Break-glass approval"}.get(gate.kind, "Approval")
    blocks = [_section(f"*{kind}* (gate #{gate.id})")]
    blocks += [_section(chunk) for chunk in _chunks(escape(gate.prompt))][:20]
    if gate.status is GateStatus.PENDING and d.status is DeploymentStatus.AWAITING_APPROVAL:
        if gate.kind is GateKind.NOTES_ACK:
            first = _button("I have read the deployment notes", ACK_NOTES, str(gate.id), "primary")
            blocks.append(_actions(f"gate-{gate.id}", first, _button("Cancel", CANCEL, str(d.id))))
        else:
            env = config.environments[d.environment]
            who = ", ".join(person(config, a) for a in env.approvers) or "any approver"
            if env.approver_groups:
                who += " or " + ", ".join(f"<!subteam^{g}>" for g in env.approver_groups)
            blocks.append(_context(f"Who may approve: {who}"
                                   + ("" if env.allow_self_approval
                                      and gate.kind is not GateKind.BREAK_GLASS else
                                      f" — not {person(config, d.requested_by)}, who requested it")))
            blocks.append(_actions(
                f"gate-{gate.id}",
                _button("Approve", APPROVE, str(gate.id), "primary"),
                _button("Reject", REJECT, str(gate.id), "danger"),
                _button("Cancel", CANCEL, str(d.id))))
        text = f"{kind} needed for {what(d)}"
    elif gate.status is GateStatus.PENDING:
        blocks.append(_context(f":heavy_minus_sign: not decided: the deployment is "
                               f"{STATUS_LINE[d.status][1]}"))
        text = f"{kind}: no longer needed"
    else:
        verb = ("acknowledged" if gate.kind is GateKind.NOTES_ACK else "approved") \
            if gate.status is GateStatus.APPROVED else "rejected"
        emoji = ":white_check_mark:" if gate.status is GateStatus.APPROVED else ":no_entry_sign:"
        line = f"{emoji} {verb} by {person(config, gate.decided_by)}"
        if gate.decided_at:
            line += f" at {gate.decided_at:%Y-%m-%d %H:%M UTC}"
        if gate.reason:
            line += f": {escape(gate.reason)}"
        blocks.append(_context(line))
        text = f"{kind} {verb} by {gate.decided_by}"
    return Message(text, blocks[:MAX_BLOCKS])


def step_message(d: Deployment, text: str) -> Message:
    return Message(f"→ {text}", [_context(f":arrow_right: {escape(text)}")])


def steps_message(lines: list[str]) -> Message:
    """Steps that waited for Slack's budget together, as one thread message."""
    return Message("\n".join(f"→ {line}" for line in lines),
                   [_context(f":arrow_right: {escape(line)}") for line in lines])


def markdown_to_mrkdwn(markdown: str) -> str:
    """The record's markdown (headings, **bold**, task boxes) in Slack's mrkdwn dialect."""
    out = []
    for line in escape(markdown).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*)$", line)
        if heading:
            line = f"*{heading.group(1)}*"
        line = re.sub(r"\*\*(.+?)\*\*", r"*\1*", line)
        line = re.sub(r"^(\s*)- \[[xX]\]", r"\1:white_check_mark:", line)
        line = re.sub(r"^(\s*)- \[ \]", r"\1:white_large_square:", line)
        line = re.sub(r"^(\s*)[-*] ", r"\1• ", line)
        out.append(line)
    return "\n".join(out)


def _chunks(text: str, limit: int = SECTION_LIMIT) -> list[str]:
    chunks, current = [], ""
    for line in text.splitlines():
        while len(line) > limit:  # one very long line: cut it
            if current:
                chunks.append(current)
                current = ""
            chunks.append(line[:limit])
            line = line[limit:]
        if len(current) + len(line) + 1 > limit:
            chunks.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current.strip():
        chunks.append(current)
    return chunks


def final_message(config: Config, d: Deployment, record: str) -> Message:
    """The last thread message: the deployment record, or why there is none."""
    if record:
        blocks = [_section(chunk) for chunk in _chunks(markdown_to_mrkdwn(record))]
        blocks.append(_context(f"{status_text(d)}  ·  deployment #{d.id}"))
        return Message(f"Deployment record for {what(d)}: {d.status.value}", blocks[:MAX_BLOCKS])
    return Message(f"{what(d)}: {d.status.value}", [_section(status_text(d))])


def blocker_message(config: Config, d: Deployment, blockers: list[CheckResult],
                    thread_url: str | None) -> Message:
    lines = "\n".join(f"• *{escape(c.title)}*: {escape(c.reason)}" for c in blockers)
    head = (f":no_entry: *Blocked:* {escape(what(d))} (requested by "
            f"{person(config, d.requested_by)}). Nothing was deployed.")
    blocks = [_section(head), _section(lines or "no reason recorded")]
    if d.ticket_id != "none" and not d.dry_run:
        blocks.append(_context(f"The blockers are also on {escape(d.ticket_id)}."))
    if thread_url:
        blocks.append(_actions(f"blocked-{d.id}", _button("Open thread", OPEN_THREAD, str(d.id),
                                                          url=thread_url)))
    return Message(f"Blocked: {what(d)}: " + "; ".join(f"{c.title}: {c.reason}" for c in blockers),
                   blocks)


def alert_message(config: Config, d: Deployment, message: str, thread_url: str | None) -> Message:
    mention = config.slack.alert_mention
    head = f"{mention + ' ' if mention else ''}:rotating_light: {escape(message)}"
    blocks = [_section(head), _context(f"{escape(what(d))} · requested by "
                                       f"{person(config, d.requested_by)} · deployment #{d.id}")]
    buttons = []
    if thread_url:
        buttons.append(_button("Open thread", OPEN_THREAD, str(d.id), url=thread_url))
    if can_roll_back(d):
        buttons.append(_button(f"Roll back to {rollback_target(d)}", ROLLBACK, str(d.id),
                               style="danger"))
    if buttons:
        blocks.append(_actions(f"alert-{d.id}", *buttons))
    return Message(f"{mention + ' ' if mention else ''}{message}", blocks)


def reject_modal(gate: Gate, d: Deployment, *, channel: str, thread_ts: str) -> dict:
    return {
        "type": "modal",
        "callback_id": REJECT_VIEW,
        "private_metadata": json.dumps({"gate_id": gate.id, "channel": channel,
                                        "thread_ts": thread_ts}),
        "title": {"type": "plain_text", "text": "Reject deployment"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Back"},
        "blocks": [
            _section(f"Reject {escape(what(d))}?"),
            {"type": "input", "block_id": REASON_BLOCK,
             "label": {"type": "plain_text", "text": "Why? (goes into the thread and the ticket)"},
             "element": {"type": "plain_text_input", "action_id": REASON_INPUT,
                         "multiline": True, "max_length": 1000}},
        ],
    }


# -- answers to commands, App Home -----------------------------------------------------------------

def deployment_line(config: Config, d: Deployment) -> str:
    when = f"{d.created_at:%Y-%m-%d %H:%M}" if d.created_at else ""
    prev = f" (was {escape(d.previous_version)})" if d.previous_version else ""
    return (f"`#{d.id}` {when} *{escape(d.environment)}* {escape(d.service)} "
            f"{'rollback to ' if d.kind is DeploymentKind.ROLLBACK else ''}{escape(d.version)}"
            f"{prev} — {STATUS_LINE[d.status][0]} {d.status.value}"
            f"{' (dry run)' if d.dry_run else ''} · {escape(d.ticket_id)} by "
            f"{person(config, d.requested_by)}")


def lock_line(config: Config, lock: Lock) -> str:
    owner = f"deployment #{lock.deployment_id}" if lock.deployment_id else "manual lock"
    return (f":lock: *{escape(lock.scope)}* held by {person(config, lock.holder)} since "
            f"{lock.acquired_at:%Y-%m-%d %H:%M UTC} ({owner}: {escape(lock.reason)})")


def status_message(config: Config, locks: list[Lock], active: list[Deployment],
                   running: Iterable[str]) -> Message:
    blocks = [_section("*Locks*\n" + ("\n".join(lock_line(config, lk) for lk in locks)
                                      or "none")),
              _section("*In progress*\n" + ("\n".join(deployment_line(config, d) for d in active)
                                            or "none"))]
    running = list(running)
    if running:
        blocks += [_section(chunk) for chunk in _chunks("*Running now*\n" + "\n".join(running))]
    return Message(f"{len(locks)} lock(s), {len(active)} deployment(s) in progress",
                   blocks[:MAX_BLOCKS])


def history_message(config: Config, rows: list[Deployment], service: str | None) -> Message:
    title = f"*Last deployments{' of ' + escape(service) if service else ''}*"
    body = "\n".join(deployment_line(config, d) for d in rows) or "no deployments yet"
    return Message(f"{len(rows)} deployment(s)",
                   [_section(c) for c in _chunks(f"{title}\n{body}")][:MAX_BLOCKS])


def home_view(config: Config, locks: list[Lock], active: list[Deployment],
              recent: dict[str, list[Deployment]], figures: Sequence[str] = ()) -> dict:
    """`figures`: the DORA figures as lines (bot/dora.py as_lines), the first one a title."""
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": "deploybot"}},
        _section("*Locks*\n" + ("\n".join(lock_line(config, lk) for lk in locks) or "none")),
        {"type": "divider"},
        _section("*In progress*\n" + ("\n".join(deployment_line(config, d) for d in active)
                                      or "none")),
        {"type": "divider"},
    ]
    if figures:
        text = f"*{escape(figures[0])}*\n" + "\n".join(f"• {escape(line)}" for line in figures[1:])
        blocks += [_section(c) for c in _chunks(text)] + [{"type": "divider"}]
    for env, rows in recent.items():
        body = "\n".join(deployment_line(config, d) for d in rows) or "none yet"
        blocks += [_section(c) for c in _chunks(f"*Last deployments to {escape(env)}*\n{body}")]
    blocks.append(_context("`/deploy help` for the commands"))
    return {"type": "home", "blocks": blocks[:95]}
