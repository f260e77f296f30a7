"""The chat command grammar: `/deploy …` and `/rollback …` text -> the core's requests.

One parser for every front end: Slack slash commands, `@deploybot` mentions, and any terminal
front end that takes the same words. Parsing does no I/O and changes nothing; what it cannot
understand raises UsageError, whose `usage` is the text to show the person.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Collection, Union

from bot.errors import InputError
from bot.intake import shown
from bot.pipeline import parse_target, validate_version
from bot.requests import (CancelRequest, DeployRequest, HistoryRequest, LockRequest,
                          RollbackRequest, StatusRequest, UnlockRequest)

DEPLOY_USAGE = """\
*Usage*
• `/deploy TICKET-123 [service@version] [to ENV] [--dry-run]`  deploy a ticket
• `/deploy TICKET-123 … at 22:00` (or `at 2026-11-27T22:00`)  schedule it; `--queue` waits for a held lock
• `/deploy TICKET-123 … --break-glass REASON`  inside a freeze window: two approvers must approve
• `/deploy status`  locks and deployments in progress
• `/deploy history [service]`  the last deployments
• `/deploy lock [ENV] reason`  ·  `/deploy unlock [ENV] reason`
• `/deploy cancel TICKET-123`  cancel a deployment that has not started deploying
• `/rollback TICKET-123 | SERVICE [to VERSION] [in ENV]`  roll back
• `/deploy help`  this text
The same works as a mention: `@deploybot deploy TICKET-123`, `@deploybot rollback web`."""

ROLLBACK_USAGE = """\
*Usage*  `/rollback TICKET-123 | SERVICE [to VERSION] [in ENV]`
• `/rollback DEMO-7`  undo the last successful deployment of a ticket
• `/rollback web to v1 in production`  put a given version back"""

SUBCOMMANDS = ("status", "history", "lock", "unlock", "cancel", "help")
SERVICE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Slack wraps links and mentions: <https://x|label>, <@U123>, <#C123|name>, <!here>.
SLACK_LINK_RE = re.compile(r"<([^<>|]+)(?:\|[^<>]*)?>")
MENTION_RE = re.compile(r"^\s*(<@[A-Z0-9]+(\|[^>]*)?>\s*)+")
# Phones and Slack turn "--" into dashes: accept every spelling of the flag.
DRY_RUN_FLAGS = {"--dry-run", "—dry-run", "–dry-run", "-dry-run", "dry-run", "--dryrun", "—dryrun"}
AT_WORDS = {"at", "--at", "—at", "–at"}
QUEUE_FLAGS = {"--queue", "—queue", "–queue", "queue"}
BREAK_GLASS_FLAGS = {"--break-glass", "—break-glass", "–break-glass", "break-glass"}
PUNCTUATION = ".,:;!?*_`'\""  # "lock production: freeze" names production
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_TICKET = 300  # an issue's URL fits; a pasted log line is not sent to the tracker


class UsageError(InputError):
    """The words do not fit the grammar; `usage` is what to show (nothing changed)."""

    def __init__(self, message: str, usage: str = DEPLOY_USAGE) -> None:
        super().__init__(message, hint="see the usage below")
        self.usage = usage

    def text(self) -> str:
        return f"{self.message}\n\n{self.usage}"


@dataclass(frozen=True)
class HelpRequest:
    """Chat only: the front end shows `usage`; the service has nothing to do."""

    usage: str = DEPLOY_USAGE


# The requests are the core's (bot/requests.py); this module only turns words into them.
Request = Union[DeployRequest, StatusRequest, HistoryRequest, LockRequest, UnlockRequest,
                CancelRequest, HelpRequest, RollbackRequest]


def words(text: str) -> list[str]:
    """Split chat text into words, unwrapping Slack's <link|label> markup and smart quotes."""
    text = SLACK_LINK_RE.sub(lambda m: m.group(1), text or "")
    text = text.replace("\u00a0", " ")
    return text.split()


def _environment(word: str, environments: Collection[str]) -> str:
    env = word.strip().lower()
    if environments and env not in environments:
        raise UsageError(f"unknown environment {shown(word)} (known: {', '.join(environments)})")
    if not SERVICE_RE.match(env):
        raise UsageError(f"{shown(word)} is not an environment name")
    return env


def _plain(ticket: str, usage: str) -> None:
    """Ticket ids (and their URLs) are ASCII. A look-alike ('DEMO-４２' with full-width digits)
    would be another ticket to deploybot and maybe the same one to a tracker: the adapters take
    ASCII digits only too, and this says which character it was."""
    odd = next((c for c in ticket if not (c.isascii() and c.isprintable())), None)
    if odd is not None:
        name = unicodedata.name(odd, f"U+{ord(odd):04X}")
        raise UsageError(f"{shown(ticket)} is not a ticket: it contains {name} "
                         f"(U+{ord(odd):04X}); type the id in plain letters and digits", usage)


def _input(exc: InputError, usage: str) -> UsageError:
    return UsageError(f"{exc.message}" + (f" ({exc.hint})" if exc.hint else ""), usage)


def parse_deploy(text: str, *, environments: Collection[str] = (),
                 services: Collection[str] = ()) -> Request:
    """`/deploy …` text -> a request. `environments` and `services` (the config's) sharpen the
    messages."""
    args = words(text)
    if not args:
        raise UsageError("say which ticket to deploy")
    head = args[0].lower()
    if head in SUBCOMMANDS:
        return _parse_subcommand(head, args[1:], environments)
    ticket, rest = args[0], args[1:]
    if ticket.startswith("-") or ticket.startswith("—") or "@" in ticket or \
            len(ticket) > MAX_TICKET:
        raise UsageError(f"{shown(ticket)} is not a ticket; the ticket comes first")
    _plain(ticket, DEPLOY_USAGE)
    target = environment = at = None
    dry_run = queue = False
    break_glass = ""
    i = 0
    while i < len(rest):
        word, low = rest[i], rest[i].lower()
        if low in DRY_RUN_FLAGS:
            dry_run = True
        elif low in QUEUE_FLAGS:
            queue = True
        elif low in BREAK_GLASS_FLAGS:
            break_glass = " ".join(rest[i + 1:]).strip().strip('"\'“”')
            if not break_glass:
                raise UsageError("break-glass needs a reason after it")
            break
        elif low in AT_WORDS:
            if i + 1 >= len(rest):
                raise UsageError(f"'{word}' needs a time after it, like 22:00")
            if at:
                raise UsageError("give the time once")
            at = rest[i + 1]
            i += 1
            if DATE_RE.match(at) and i + 1 < len(rest) and ":" in rest[i + 1]:
                at, i = f"{at}T{rest[i + 1]}", i + 1  # "at 2026-11-27 22:00"
        elif low in ("to", "in", "--env", "—env"):
            if i + 1 >= len(rest):
                raise UsageError(f"'{word}' needs an environment after it")
            if environment:
                raise UsageError("give the environment once")
            environment = _environment(rest[i + 1], environments)
            i += 1
        elif "@" in word:
            if target:
                raise UsageError("give one service@version")
            try:
                service, version = parse_target(word)
            except InputError as exc:
                raise _input(exc, DEPLOY_USAGE) from None
            target = f"{service}@{version}"
        elif low in environments:
            raise UsageError(f"{word!r} is an environment: write `to {low}` (or --env {low})")
        elif low in services and not target:
            raise UsageError(f"{word!r} has no version: write {low}@VERSION, or leave it out "
                             f"and the ticket's `deploy: {low}@VERSION` comment says it")
        else:
            raise UsageError(f"I do not understand {shown(word)}")
        i += 1
    if at and dry_run:
        raise UsageError("a dry run runs now; schedule the deployment itself")
    return DeployRequest(ticket=ticket, target=target, environment=environment, dry_run=dry_run,
                         at=at, queue=queue, break_glass=break_glass)


def _split_env(head: str, args: list[str],
               environments: Collection[str]) -> tuple[str | None, str]:
    """`[ENV] reason…`: the first word is the environment when it names one."""
    first = args[0].lower().strip(PUNCTUATION) if args else ""
    if first in environments:
        return first, " ".join(args[1:])
    if args and not environments and SERVICE_RE.match(args[0]) and len(args) == 1:
        return args[0], ""
    near = [env for env in environments if _near(first, env)]
    if near:  # "lock prod freeze" locked the default environment, not production
        raise UsageError(f"{shown(args[0])} is not an environment (known: "
                         f"{', '.join(environments)}): write `/deploy {head} {near[0]} REASON`")
    return None, " ".join(args)


def _near(word: str, env: str) -> bool:
    """`prod`, `stage`: a word meant as `env`, by its first four letters (or all of them)."""
    return len(word) >= 3 and (env.startswith(word) or word[:4] == env[:4])


def _parse_subcommand(head: str, args: list[str], environments: Collection[str]) -> Request:
    if head == "help":
        return HelpRequest()
    if head == "status":
        if args:
            raise UsageError("`/deploy status` takes nothing after it")
        return StatusRequest()
    if head == "history":
        service = environment = None
        i = 0
        while i < len(args):
            low = args[i].lower()
            if low in ("in", "to", "--env") and i + 1 < len(args):
                environment = _environment(args[i + 1], environments)
                i += 2
                continue
            if service is None and SERVICE_RE.match(low):
                service = low
            else:
                raise UsageError(f"I do not understand {shown(args[i])}")
            i += 1
        return HistoryRequest(service=service, environment=environment)
    if head in ("lock", "unlock"):
        environment, reason = _split_env(head, args, environments)
        cls = LockRequest if head == "lock" else UnlockRequest
        return cls(environment=environment, reason=reason.strip())
    # cancel
    if not args:
        raise UsageError("say which deployment to cancel: `/deploy cancel TICKET-123`")
    what, reason = args[0], " ".join(args[1:]).strip()
    if len(what) > MAX_TICKET:
        raise UsageError(f"{shown(what)} is not a ticket")
    _plain(what, DEPLOY_USAGE)
    if re.fullmatch(r"#\d+", what):
        return CancelRequest(deployment_id=int(what[1:]), reason=reason)
    return CancelRequest(ticket=what, reason=reason)


def parse_rollback(text: str, *, services: Collection[str] = (),
                   environments: Collection[str] = ()) -> RollbackRequest:
    """`/rollback TICKET-123 | SERVICE [to VERSION] [in ENV]` -> a RollbackRequest."""
    args = words(text)
    if not args:
        raise UsageError("say what to roll back", ROLLBACK_USAGE)
    if args[0].lower() == "help":
        raise UsageError("how to roll back:", ROLLBACK_USAGE)
    what, rest = args[0], args[1:]
    if len(what) > MAX_TICKET:
        raise UsageError(f"{shown(what)} is neither a ticket nor a service", ROLLBACK_USAGE)
    _plain(what, ROLLBACK_USAGE)
    is_service = (what in services) if services else bool(SERVICE_RE.match(what))
    to_version = environment = None
    i = 0
    while i < len(rest):
        low = rest[i].lower()
        if low in ("to", "--to") and i + 1 < len(rest) and to_version is None:
            try:
                to_version = validate_version(rest[i + 1])
            except InputError as exc:
                raise _input(exc, ROLLBACK_USAGE) from None
        elif low in ("in", "--env", "on") and i + 1 < len(rest) and environment is None:
            try:
                environment = _environment(rest[i + 1], environments)
            except UsageError as exc:
                raise UsageError(exc.message, ROLLBACK_USAGE) from None
        else:
            raise UsageError(f"I do not understand {shown(rest[i])}", ROLLBACK_USAGE)
        i += 2
    if is_service:
        return RollbackRequest(service=what, to_version=to_version, environment=environment)
    if services and SERVICE_RE.match(what) and "-" not in what:
        raise UsageError(f"unknown service {what!r} (known: {', '.join(services)})",
                         ROLLBACK_USAGE)
    return RollbackRequest(ticket=what, to_version=to_version, environment=environment)


def strip_mention(text: str) -> str:
    """`<@UBOT> deploy X` -> `deploy X`."""
    return MENTION_RE.sub("", text or "", count=1).strip()


def parse_mention(text: str, *, services: Collection[str] = (),
                  environments: Collection[str] = ()) -> Request:
    """`@deploybot deploy …` / `@deploybot rollback …` / `@deploybot help`."""
    args = words(strip_mention(text))
    if not args:
        return HelpRequest()
    verb, rest = args[0].lower().lstrip("/"), " ".join(args[1:])
    if verb == "deploy":
        return parse_deploy(rest, environments=environments, services=services)
    if verb == "rollback":
        return parse_rollback(rest, services=services, environments=environments)
    if verb in ("help", "?"):
        return HelpRequest()
    raise UsageError(f"I know `deploy` and `rollback`, not {shown(args[0])}")
