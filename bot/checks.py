"""The pre-deployment checklist: one small unit per item, each answering passed/failed/skipped."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from bot import approvals
from bot.childenv import allowed_environ
from bot.config import CommentRule, Config, Environment, Service, TrackerRules
from bot.envfile import env_file_problem, read_env_file
from bot.errors import InputError, TrackerError
from bot.redact import clip
from bot.identity import TrackerIdentities
from bot.models import Account, CheckStatus, Comment, Deployment, Ticket
from bot.monitoring_setup import monitoring_setup
from bot.ports import DeployBackend, HttpProbe


@dataclass
class Outcome:
    status: CheckStatus
    reason: str
    evidence: str = ""  # what the item relied on (a comment id + digest), re-checked at rollout

    @classmethod
    def passed(cls, reason: str, evidence: str = "") -> "Outcome":
        return cls(CheckStatus.PASSED, reason, evidence)

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
    comments: list[Comment]  # in the tracker's own order, oldest first
    ticket_error: str  # why the ticket could not be read, when it could not
    backend_for: Callable[[str], DeployBackend]  # service name -> backend in this environment
    probe: HttpProbe
    identities: TrackerIdentities
    bot_account: Account | None = None  # deploybot's own comments never count
    environ: Mapping[str, str] = field(default_factory=dict)
    previous_version: str | None = None  # filled by the rollback plan item
    rollback_steps: list[str] = field(default_factory=list)


def comment_digest(comment: Comment) -> str:
    """Identifies a comment as it was read: its id and its text (an edit changes it)."""
    return f"{comment.id}:{hashlib.sha256(comment.body.encode()).hexdigest()[:16]}"


def _shown(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


@dataclass
class _Said:
    """One line of one comment that the rule's pattern matched, with who wrote it."""

    position: tuple[int, int]  # (comment index in tracker order, line index)
    comment: Comment
    verdict: approvals.LineVerdict
    standing: str  # ok | requester | not-allowed | cannot-tell
    who: str  # the person (or account) for messages
    why_unknown: str = ""  # for cannot-tell: what to fix


class ApprovalReader:
    """Reads a rule's comments the way the design says: by account, line by line, in order."""

    def __init__(self, ctx: CheckContext, rule: CommentRule, what: str) -> None:
        self.ctx, self.rule, self.what = ctx, rule, what
        self.config = ctx.config
        self.identities = ctx.identities
        self.tracker_name = ctx.identities.tracker.name
        requester = ctx.deployment.requested_by
        self.requester = self.config.canonical(requester)
        self.requester_person = self.config.person_named(requester)
        self.requester_account: Account | None = None
        self.requester_problem = ""
        if self.requester_person is None:
            self.requester_problem = (
                f"the requester {requester} is not in people:, so deploybot cannot tell whether "
                f"a {what} comment is their own; add them to people: with their "
                f"{self.tracker_name} account (tracker: LOGIN_OR_ID)")
        else:
            try:
                self.requester_account = self.identities.of_person(self.requester_person)
            except TrackerError as exc:
                self.requester_problem = (
                    f"cannot tell whether a {what} comment is the requester's own: {exc.message}"
                    + (f"; {exc.hint}" if exc.hint else ""))
        self.allowed: list[tuple[str, Account]] = []
        self.unresolved: list[str] = []
        for entry in rule.authors:
            try:
                self.allowed.append(self.identities.of_rule_entry(entry))
            except TrackerError as exc:
                self.unresolved.append(f"{entry}: {exc.message}")

    def _standing(self, c: Comment) -> tuple[str, str, str]:
        """(standing, who, what to fix) of a comment's author for this rule."""
        if self.requester_account is not None and c.author == self.requester_account.id:
            return "requester", self.requester, ""
        if self.rule.authors:
            named = next((name for name, acc in self.allowed if acc.id == c.author), None)
            if named is None:
                if self.unresolved:
                    return ("cannot-tell", self._unknown(c),
                            f"cannot tell whether {self._unknown(c)} may give it: "
                            + "; ".join(self.unresolved))
                return "not-allowed", self._unknown(c), ""
            if self.requester_account is None:
                person = self.config.person_named(named)
                if person is not None and person == self.requester_person:
                    return "requester", named, ""
                if person is None:
                    return "cannot-tell", named, self.requester_problem
            return "ok", named, ""
        person = self.identities.person_of(c)
        if self.requester_account is not None:
            return "ok", person or self._unknown(c), ""
        if person is not None and person != self.requester_person:
            return "ok", person, ""
        if person is not None:
            return "requester", person, ""
        return "cannot-tell", self._unknown(c), self.requester_problem

    def _unknown(self, c: Comment) -> str:
        person = self.identities.person_of(c) if self.config.people else None
        if person:
            return person
        if c.author_name:
            return f"{self.tracker_name} user {c.author_name!r}, id {c.author}"
        return f"{self.tracker_name} account id {c.author}"

    def read(self) -> Outcome:
        bot_id = self.ctx.bot_account.id if self.ctx.bot_account else None
        said: list[_Said] = []
        builds: list[tuple[tuple[int, int], Comment]] = []
        rules = self.config.tracker.rules
        for ci, c in enumerate(self.ctx.comments):
            if bot_id is not None and c.author == bot_id:
                continue  # deploybot's own records and blockers
            verdicts = approvals.read(self.rule, c.body)
            if verdicts:
                standing, who, fix = self._standing(c)
                said += [_Said((ci, v.line), c, v, standing, who, fix) for v in verdicts]
            builds += [((ci, li), c) for li in approvals.new_build_lines(rules, c.body)]
        what = self.what
        if not said:
            return Outcome.failed(f"no {what} comment on the ticket")
        ok = [s for s in said if s.standing == "ok"]
        if not ok:
            unknown = [s for s in said if s.standing == "cannot-tell" and s.verdict.approves]
            if unknown:
                return Outcome.failed(unknown[-1].why_unknown)
            approving = [s for s in said if s.verdict.approves]
            if approving and all(s.standing == "requester" for s in approving):
                return Outcome.failed(
                    f"the only {what} comment is by the requester ({self.requester}); "
                    "someone else has to give it")
            others = [s for s in approving if s.standing == "not-allowed"]
            if others:
                allowed = ", ".join(self.rule.authors) or "anyone but the requester"
                authors = ", ".join(dict.fromkeys(s.who for s in others))
                return Outcome.failed(f"{what} comment by {authors}, who may not give it "
                                      f"(allowed: {allowed})")
            return self._denied(said[-1])
        newest = max(ok, key=lambda s: s.position)
        if not newest.verdict.approves:
            return self._denied(newest)
        later = [b for b in builds if b[0] > newest.position]
        if later:
            position, nb = max(later, key=lambda b: b[0])
            by = self.identities.person_of(nb) or nb.author_name or nb.author
            return Outcome.failed(
                f"{what} by {newest.who} is stale: a new build was announced after it by {by} "
                f"(comment #{nb.id}, {nb.created_at:%Y-%m-%d %H:%M}); it must be given again")
        c = newest.comment
        return Outcome.passed(f"by {newest.who} on {c.created_at:%Y-%m-%d %H:%M %Z}".strip(),
                              evidence=comment_digest(c))

    def _denied(self, s: _Said) -> Outcome:
        return Outcome.failed(
            f"the newest {self.what} comment, by {s.who}, does not give it: "
            f"{_shown(s.verdict.text)!r} (says {s.verdict.denied_by!r})")


def deployment_notes(ctx: CheckContext) -> list[Comment]:
    """Comments with deployment notes (by allowed authors when the rule names them)."""
    rules = ctx.config.tracker.rules
    bot_id = ctx.bot_account.id if ctx.bot_account else None
    allowed: set[str] | None = None
    if rules.notes.authors:
        allowed = set()
        for entry in rules.notes.authors:
            try:
                allowed.add(ctx.identities.of_rule_entry(entry)[1].id)
            except TrackerError:
                allowed = None  # cannot tell who may write notes: show them all (more to read)
                break
    pattern = re.compile(rules.notes.pattern)
    return [c for c in ctx.comments
            if c.author != bot_id and pattern.search(c.body)
            and (allowed is None or c.author in allowed)]


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
        text = text or ""
        for m in pattern.finditer(text):
            following = text[m.end():m.end() + 1]
            if following and not following.isspace() and following not in ",)":
                # "deploy: web@v2;reboot" is not v2: refuse what was not fully understood
                token = text[m.start("version"):].split(None, 1)[0]
                raise InputError(
                    f"the ticket says {text[m.start():m.end()]}{text[m.end():].split(None, 1)[0]!s}"
                    f" and {token!r} is not a version",
                    hint="a version is an image tag: letters, digits, '_', '.', '-'; fix the "
                         "comment or give SERVICE@VERSION with the command")
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
    """The CQ and QA items: the same reading, each with its own rule from the config."""

    def check(ctx: CheckContext) -> Outcome:
        if ctx.ticket is None:
            return Outcome.failed(ctx.ticket_error)
        return ApprovalReader(ctx, getattr(ctx.config.tracker.rules, rule), what).read()

    return check


def check_ticket_status(ctx: CheckContext) -> Outcome:
    if ctx.ticket is None:
        return Outcome.failed(ctx.ticket_error)
    wanted = ctx.config.tracker.rules.ready_status
    if ctx.ticket.status.casefold() == wanted.casefold():
        return Outcome.passed(f"status is {ctx.ticket.status!r}", evidence=ctx.ticket.status)
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


def service_env_file(service: Service) -> str | None:
    return getattr(service.backend, "env_file", None)


def check_dependencies(ctx: CheckContext) -> Outcome:
    svc = ctx.service
    problems, done = [], []
    if svc.required_env:
        env_file = service_env_file(svc)
        if not env_file:
            problems.append("required_env is set but the service has no env_file")
        elif problem := env_file_problem(env_file):
            problems.append(problem)
        else:
            try:
                present = read_env_file(env_file)
            except InputError as exc:
                problems.append(exc.message)
            else:
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
        outcome = run_migration_check(svc.migration_check, svc.migration_timeout,
                                      env=allowed_environ(ctx.environ, ctx.config.child_env))
        (done if outcome.status is CheckStatus.PASSED else problems).append(outcome.reason)
    if problems:
        return Outcome.failed("; ".join(problems))
    if not done:
        return Outcome.skipped("no env vars, dependency URLs or migration check configured")
    return Outcome.passed("; ".join(done))


def run_migration_check(argv: list[str], timeout: float,
                        env: Mapping[str, str] | None = None) -> Outcome:
    """`env`: the child's whole environment (allowed_environ), never deploybot's own."""
    name = Path(argv[0]).name
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL,
                              env=dict(allowed_environ(os.environ) if env is None else env))
    except FileNotFoundError:
        return Outcome.failed(f"migration check: {argv[0]} not found")
    except OSError as exc:
        return Outcome.failed(f"migration check: cannot run {name}: {exc.strerror or exc}")
    except subprocess.TimeoutExpired:
        return Outcome.failed(f"migration check: {name} did not finish in {timeout:.0f} s")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return Outcome.failed(f"migration check: {name} exited {proc.returncode} {clip(tail[0], 200)}".strip())
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
