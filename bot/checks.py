"""The pre-deployment checklist: one small unit per item, each answering passed/failed/skipped."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from bot.config import CommentRule, Config, Environment, Service, TrackerRules
from bot.models import CheckStatus, Comment, Deployment, Ticket
from bot.monitoring_setup import monitoring_setup
from bot.ports import DeployBackend, HttpProbe


@dataclass
class Outcome:
    status: CheckStatus
    reason: str

    @classmethod
    def passed(cls, reason: str) -> "Outcome":
        return cls(CheckStatus.PASSED, reason)

    @classmethod
    def failed(cls, reason: str) -> "Outcome":
        return cls(CheckStatus.FAILED, reason)

    @classmethod
    def skipped(cls, reason: str) -> "Outcome":
        return cls(CheckStatus.SKIPPED, reason)


@dataclass
class CheckContext:
    deployment: Deployment
    config: Config
    service: Service
    environment: Environment
    ticket: Ticket | None
    comments: list[Comment]
    ticket_error: str  # why the ticket could not be read, when it could not
    backend_for: Callable[[str], DeployBackend]  # service name -> backend in this environment
    probe: HttpProbe
    environ: Mapping[str, str] = field(default_factory=dict)
    previous_version: str | None = None  # filled by the rollback plan item
    rollback_steps: list[str] = field(default_factory=list)


SamePerson = Callable[[str, str], bool]


def plain_same_person(a: str, b: str) -> bool:
    return a.strip().lstrip("@").casefold() == b.strip().lstrip("@").casefold()


def _is(comment: Comment, who: str, same: SamePerson) -> bool:
    return same(comment.author, who) or bool(comment.author_name and same(comment.author_name, who))


def _author_allowed(comment: Comment, rule: CommentRule, same: SamePerson) -> bool:
    return not rule.authors or any(_is(comment, a, same) for a in rule.authors)


def find_approval(comments: list[Comment], rule: CommentRule, rules: TrackerRules,
                  requester: str, what: str, same: SamePerson = plain_same_person) -> Outcome:
    """The newest comment matching `rule` by an allowed author other than the requester.

    An approval older than the last "new build" announcement is stale: the build it approved
    is not the one being deployed.
    """
    pattern = re.compile(rule.pattern)
    matching = [c for c in comments if pattern.search(c.body)]
    if not matching:
        return Outcome.failed(f"no {what} comment on the ticket")
    valid = [c for c in matching
             if _author_allowed(c, rule, same) and not _is(c, requester, same)]
    if not valid:
        own = [c for c in matching if _is(c, requester, same)]
        if own and len(own) == len(matching):
            return Outcome.failed(
                f"the only {what} comment is by the requester ({requester}); "
                "someone else has to give it")
        allowed = ", ".join(rule.authors) or "anyone but the requester"
        authors = ", ".join(sorted({c.author_name or c.author for c in matching}))
        return Outcome.failed(f"{what} comment by {authors}, who may not give it (allowed: {allowed})")
    latest = max(valid, key=lambda c: c.created_at)
    if rules.new_build:
        build_res = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in rules.new_build]
        newer_builds = [c for c in comments
                        if any(b.search(c.body) for b in build_res)
                        and c.created_at > latest.created_at]
        if newer_builds:
            nb = max(newer_builds, key=lambda c: c.created_at)
            return Outcome.failed(
                f"{what} by {latest.author_name or latest.author} is stale: a new build was "
                f"announced after it by {nb.author_name or nb.author} "
                f"({nb.created_at:%Y-%m-%d %H:%M}); it must be given again")
    return Outcome.passed(
        f"by {latest.author_name or latest.author} on {latest.created_at:%Y-%m-%d %H:%M %Z}".strip())


def deployment_notes(comments: list[Comment], rules: TrackerRules,
                     same: SamePerson = plain_same_person) -> list[Comment]:
    pattern = re.compile(rules.notes.pattern)
    return [c for c in comments if pattern.search(c.body) and _author_allowed(c, rules.notes, same)]


def version_from_ticket(ticket: Ticket, comments: list[Comment],
                        rules: TrackerRules) -> list[tuple[str, str]]:
    """Every distinct service@version the ticket asks for (field first, then comments)."""
    found: list[tuple[str, str]] = []
    pattern = re.compile(rules.version_pattern)
    texts = []
    if rules.version_field and ticket.fields.get(rules.version_field):
        texts.append(ticket.fields[rules.version_field])
        texts_are_field = True
    else:
        texts_are_field = False
        texts.extend([ticket.description] + [c.body for c in comments])
    for text in texts:
        for m in pattern.finditer(text or ""):
            pair = (m.group("service"), m.group("version"))
            if pair not in found:
                found.append(pair)
    if texts_are_field and not found:
        # A field may hold just "service@version" without the comment marker.
        m = re.fullmatch(r"\s*([a-z0-9][a-z0-9_-]*)@(\S+)\s*", texts[0])
        if m:
            found.append((m.group(1), m.group(2)))
    return found


# -- the items ----------------------------------------------------------------------------------

def approval_check(rule: str, what: str) -> Callable[[CheckContext], Outcome]:
    """The CQ and QA items: the same search, each with its own rule from the config."""

    def check(ctx: CheckContext) -> Outcome:
        if ctx.ticket is None:
            return Outcome.failed(ctx.ticket_error)
        rules = ctx.config.tracker.rules
        return find_approval(ctx.comments, getattr(rules, rule), rules,
                             ctx.deployment.requested_by, what, ctx.config.same_person)

    return check


def check_ticket_status(ctx: CheckContext) -> Outcome:
    if ctx.ticket is None:
        return Outcome.failed(ctx.ticket_error)
    wanted = ctx.config.tracker.rules.ready_status
    if ctx.ticket.status.casefold() == wanted.casefold():
        return Outcome.passed(f"status is {ctx.ticket.status!r}")
    return Outcome.failed(f"status is {ctx.ticket.status!r}, not {wanted!r}")


def check_infrastructure(ctx: CheckContext) -> Outcome:
    """Every service of this environment is running and answers its health URL."""
    env = ctx.deployment.environment
    problems, checked = [], []
    for name in ctx.config.services:
        if not ctx.config.deployable(name, env):
            continue
        svc = ctx.config.service(name, env)
        backend = ctx.backend_for(name)
        try:
            state = backend.status()
        except Exception as exc:  # a backend that cannot answer is not green
            problems.append(f"{name}: backend did not answer ({exc})")
            continue
        first_deploy = name == ctx.deployment.service and state.version is None
        if first_deploy:
            checked.append(f"{name}: not running yet (first deployment)")
            continue
        if not state.running:
            problems.append(f"{name}: not running ({state.detail or 'no details'})")
            continue
        if svc.health:
            result = ctx.probe.get(str(svc.health.url), svc.health.timeout)
            if not result.ok:
                problems.append(f"{name}: {svc.health.url} answered "
                                f"{result.status_code or result.error}")
                continue
            checked.append(f"{name} healthy ({result.status_code} in {result.elapsed_ms:.0f} ms)")
        else:
            checked.append(f"{name} running (no health URL configured)")
        if name == ctx.deployment.service and svc.metrics_url:
            # the monitoring setup check: what the watch window will read must be there
            failures, warnings, _ = monitoring_setup(svc, ctx.probe)
            problems += [f"{name}: {f}" for f in failures if f.startswith("metrics")]
            checked += [f"{name}: warning: {w}" for w in warnings]
    if problems:
        return Outcome.failed("; ".join(problems))
    return Outcome.passed("; ".join(checked) or "no services in this environment")


def read_env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines as Docker's --env-file reads them (no quotes processing, # comments)."""
    out = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value
    return out


def service_env_file(service: Service) -> str | None:
    return getattr(service.backend, "env_file", None)


def check_dependencies(ctx: CheckContext) -> Outcome:
    svc = ctx.service
    problems, done = [], []
    if svc.required_env:
        env_file = service_env_file(svc)
        if not env_file:
            problems.append("required_env is set but the service has no env_file")
        elif not Path(env_file).is_file():
            problems.append(f"env file {env_file} does not exist")
        else:
            present = read_env_file(env_file)
            missing = [k for k in svc.required_env if not present.get(k)]
            if missing:
                problems.append(f"{env_file} lacks {', '.join(missing)}")
            else:
                done.append(f"env vars set ({', '.join(svc.required_env)})")
    for dep in svc.dependencies:
        result = ctx.probe.get(str(dep.url), 5.0)
        if result.ok:
            done.append(f"{dep.name} up")
        else:
            problems.append(f"{dep.name} ({dep.url}) answered {result.status_code or result.error}")
    if svc.migration_check:
        outcome = run_migration_check(svc.migration_check, svc.migration_timeout)
        (done if outcome.status is CheckStatus.PASSED else problems).append(outcome.reason)
    if problems:
        return Outcome.failed("; ".join(problems))
    if not done:
        return Outcome.skipped("no env vars, dependency URLs or migration check configured")
    return Outcome.passed("; ".join(done))


def run_migration_check(argv: list[str], timeout: float) -> Outcome:
    name = Path(argv[0]).name
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return Outcome.failed(f"migration check: {argv[0]} not found")
    except subprocess.TimeoutExpired:
        return Outcome.failed(f"migration check: {name} did not finish in {timeout:.0f} s")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return Outcome.failed(f"migration check: {name} exited {proc.returncode} {tail[0][:200]}".strip())
    return Outcome.passed(f"migrations staged ({name} exited 0)")


def check_rollback_plan(ctx: CheckContext) -> Outcome:
    backend = ctx.backend_for(ctx.deployment.service)
    try:
        previous = backend.current_version()
    except Exception as exc:
        return Outcome.failed(f"cannot tell what runs now: {exc}")
    ctx.previous_version = previous
    if previous is None:
        ctx.rollback_steps = backend.rollback_steps(None)
        return Outcome.passed("first deployment: rolling back means taking the new version down")
    if previous == ctx.deployment.version:
        return Outcome.failed(f"{ctx.deployment.service} already runs {previous}")
    ctx.rollback_steps = backend.rollback_steps(previous)
    return Outcome.passed(f"previous version {previous} recorded; {len(ctx.rollback_steps)} steps")


@dataclass(frozen=True)
class ChecklistItem:
    name: str
    title: str
    run: Callable[[CheckContext], Outcome]


# In the process's order. Notes and lock are driven by the pipeline (a gate and the lock table).
CHECKLIST: list[ChecklistItem] = [
    ChecklistItem("cq_approval", "CQ approval", approval_check("cq_approval", "CQ approval")),
    ChecklistItem("qa_pass", "QA PASS", approval_check("qa_pass", "QA PASS")),
    ChecklistItem("ticket_status", "Ready for production", check_ticket_status),
    ChecklistItem("infrastructure", "Infrastructure health", check_infrastructure),
    ChecklistItem("dependencies", "Dependencies in place", check_dependencies),
    ChecklistItem("rollback_plan", "Rollback plan", check_rollback_plan),
]
NOTES_ITEM = ("deployment_notes", "Deployment notes acknowledged")
LOCK_ITEM = ("lock", "No conflicting deployment")
