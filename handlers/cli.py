"""The `deploybot` command: the terminal front end and the start-up of every other one."""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from bot.errors import ConfigError, DeploybotError, InputError, NotAllowed
from bot.models import Deployment, DeploymentStatus, Gate, GateKind
from handlers import logsetup
from handlers.lazy import Lazy
from handlers.logsetup import FORMAT_ENV, FORMATS, LEVEL_ENV, LEVELS
from bot.logcontext import waiting_for
from bot.redact import slack_redactor
from handlers.safe_output import SafeStream, is_text

if TYPE_CHECKING:
    from bot.identity import Actor
    from bot.pipeline import Pipeline

# What only some commands use is imported when first used (benchmarks/startup.py).
configuration = Lazy("bot.config")
freezing = Lazy("bot.freeze")
outboxing = Lazy("bot.outbox")
commands = Lazy("handlers.commands")
exports = Lazy("handlers.exports")
metadata = Lazy("importlib.metadata")
DeployScheduler = Lazy("bot.scheduler", "DeployScheduler")
Store = Lazy("bot.store", "Store")
TerminalApprover = Lazy("handlers.terminal", "TerminalApprover")
TerminalReporter = Lazy("handlers.terminal", "TerminalReporter")
terminal_actor = Lazy("handlers.terminal", "terminal_actor")
build_pipeline = Lazy("handlers.wiring", "build_pipeline")
open_store = Lazy("handlers.wiring", "open_store")
start_redaction = Lazy("handlers.wiring", "start_redaction")

log = logging.getLogger("deploybot.cli")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PENDING, EXIT_REFUSED = 0, 1, 2, 3, 4
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a killed writer

EPILOG = """examples:
  deploybot deploy DEMO-1                       service@version from the ticket
  deploybot deploy DEMO-1 web@v2 --env production --approve-as bob
  deploybot deploy DEMO-1 --dry-run
  deploybot deploy DEMO-1 --at 22:00            schedule it (checked now and again at 22:00)
  deploybot deploy DEMO-1 --queue               wait in line when the lock is held
  deploybot deploy DEMO-1 --env production --break-glass "payments down"   inside a freeze
  deploybot scheduler                           run scheduled and queued deployments (foreground)
  deploybot approve 7 --as bob                  decide a pending gate, resume the deployment
  deploybot rollback web --to v1 --env staging
  deploybot status | deploybot history web
  deploybot lock production --reason "release freeze" | deploybot unlock production --reason done
  deploybot ticket create "Ship v2" | ticket comment DEMO-1 --as carol "QA PASS" | ticket show DEMO-1
  deploybot check-config --config deploybot.yaml --live
  deploybot run --log-format json               Slack front end, JSON logs on stderr

logs: stderr; --log-level (DEPLOYBOT_LOG_LEVEL, default INFO for run/scheduler, WARNING for
the other commands), --log-format text|json (DEPLOYBOT_LOG_FORMAT, default text)

exit codes:
  0    done (deployment succeeded, command ran)
  1    failed (blocked by the checklist, failed, rolled back; check-config found problems)
  2    usage or configuration error (bad arguments, invalid or missing config)
  3    pending (waiting for a gate's approval, or queued behind a lock)
  4    refused (not allowed: permissions, freeze window, trust rules)
  130  interrupted (Ctrl-C or SIGTERM before the rollout started)
  141  the reader of the output went away (broken pipe, e.g. `| head`)
"""


def _claimed(args: argparse.Namespace) -> str | None:
    return getattr(args, "user", None) or os.environ.get("DEPLOYBOT_USER") or None


def _actor(ctx: "Context", args: argparse.Namespace) -> Actor:
    """The person at the terminal (see handlers.terminal.terminal_actor)."""
    flag = "--as" if getattr(args, "user", None) else "DEPLOYBOT_USER"
    return terminal_actor(ctx.config, _claimed(args), flag=flag)


@dataclass
class Edges:
    """What an embedder or a test swaps at the edges: backends, tracker, probe, clock."""

    backend_for: Callable | None = None
    tracker: object | None = None
    probe: object | None = None
    clock: object | None = None
    now: Callable | None = None  # the store's clock (stored times: backoff, ages)


class Context:
    """Lazily built pieces, so `ticket` and `check-config` do not need a Docker engine."""

    def __init__(self, args: argparse.Namespace, edges: Edges | None = None) -> None:
        self.args = args
        self.edges = edges or Edges()
        self._config = None
        self._store: Store | None = None
        self._role = None
        self._delivered = False
        self.redact = slack_redactor(os.environ)  # until the config names the rest

    @property
    def config(self) -> configuration.Config:
        if self._config is None:
            self._config = configuration.load(self.args.config)
            self.redact = start_redaction(self._config, self._store, os.environ)
        return self._config

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(clock=self.edges.now)
            self._store.redact = self.redact
            if self.args.command not in ("run", "scheduler"):  # those are replicas of their own
                self._heartbeat()
            # `run` recovers through its Slack pipeline (DeployScheduler.start), not here.
            if self.args.command != "run":
                self._recover()
        return self._store

    def _heartbeat(self) -> None:
        """On a shared store, a deployment this command drives must not look dead to the
        replicas on other machines: its process heartbeats like they do (bot/leadership.py)."""
        from handlers.wiring import ReplicaRole

        role = ReplicaRole(self._store, elect=False)
        if role.shared:
            self._role = role.start()

    def close(self) -> None:
        """The command ended: its heartbeat row goes (nothing it drove is left running)."""
        if self._role is not None:
            self._role.stop()
            self._role = None
        # Closed here, not by the interpreter's last collection (main: gc.freeze at exit), so
        # SQLite folds its WAL back into the file. `run` and `scheduler` may still have
        # daemon threads reading it while they stop.
        if self._store is not None and self.args.command not in ("run", "scheduler"):
            self._store.close()
            self._store = None

    def _recover(self) -> None:
        """Before any command: deployments whose process died are recovered (bot/recovery.py);
        quick when there are none (one query, no engine)."""
        from bot.recovery import recover

        if not (self._store.recovery_candidates() or self._store.unrecorded()):
            return
        try:
            pipeline = build_pipeline(
                self.config, self._store, reporter=TerminalReporter(),
                approver=TerminalApprover(None, interactive=False, config=self.config),
                tracker=self.edges.tracker, backend_for=self.edges.backend_for,
                probe=self.edges.probe, clock=self.edges.clock, redact=self.redact)
            for d in recover(pipeline):
                print(f"note: deployment #{d.id} was interrupted and is now {d.status.value}: "
                      f"{d.failure or d.verification}", file=sys.stderr)
        except DeploybotError as exc:  # e.g. no config here: the command itself may not need one
            print(f"note: interrupted deployments were not recovered: {exc.message}",
                  file=sys.stderr)

    def pipeline(self, approve_as: str | None = None, interactive: bool | None = None) -> Pipeline:
        me = _actor(self, self.args)
        approver = (terminal_actor(self.config, approve_as, flag="--approve-as")
                    if approve_as else None)
        pipeline = build_pipeline(self.config, self.store, reporter=TerminalReporter(),
                                  approver=TerminalApprover(approver, interactive=interactive,
                                                            me=me, config=self.config),
                                  tracker=self.edges.tracker,
                                  backend_for=self.edges.backend_for, probe=self.edges.probe,
                                  clock=self.edges.clock, redact=self.redact)
        if not self._delivered:
            self._delivered = True
            _deliver_waiting(pipeline)
        return pipeline


def _deliver_waiting(pipeline: Pipeline) -> None:
    """Before the command: what earlier processes could not tell the tracker, within a short
    budget (each call has its own timeout; a tracker that fails is not asked again now)."""
    done = pipeline.outbox.deliver(budget=pipeline.config.outbox.command_budget_seconds)
    if done.delivered:
        print(f"note: delivered {len(done.delivered)} waiting message(s) from the outbox",
              file=sys.stderr)
    for text in done.said:
        print(f"note: {text}", file=sys.stderr)
    if done.retrying:
        item, error = done.retrying[-1]
        print(f"note: {len(done.retrying)} waiting message(s) still not delivered "
              f"({outboxing.describe(item)}: {error}); `deploybot status` lists them",
              file=sys.stderr)


def _outcome(d: Deployment, pending: Sequence[Gate], config: configuration.Config) -> int:
    if d.status is DeploymentStatus.SUCCEEDED:
        return EXIT_OK
    if d.status is DeploymentStatus.AWAITING_APPROVAL:
        print(f"deployment #{d.id} is waiting for {len(pending)} gate(s):", file=sys.stderr)
        for g in pending:
            verb = "acknowledge the notes" if g.kind is GateKind.NOTES_ACK else "approve"
            who = ("--as NAME" if config.terminal.trust_as
                   else "(run by the approver, under their own login)")
            print(f"  gate #{g.id}: {verb}: deploybot approve {d.id} {who}", file=sys.stderr)
        return EXIT_PENDING
    return EXIT_FAILED


# -- commands ------------------------------------------------------------------------------------

def _service(ctx: Context, approve_as: str | None = None, interactive: bool | None = None):
    """The core's request service (bot/service.py) on this command's pipeline."""
    from bot.service import RequestService

    return RequestService(ctx.pipeline(approve_as, interactive))


def _who(ctx: Context, args: argparse.Namespace) -> Callable[[str | None], Actor]:
    """The person at the terminal, resolved by the service when a request needs them."""
    return lambda _environment: _actor(ctx, args)


def _allowed(outcome):
    """A refusal leaves through _run, like every NotAllowed: one rendering, exit code 4."""
    from bot.service import Refused

    if isinstance(outcome, Refused):
        raise outcome.error
    return outcome


def _env_flag(text: str | None) -> str | None:
    return text.strip().lower() if text else None


def cmd_deploy(ctx: Context, args: argparse.Namespace) -> int:
    from bot.requests import StartRequest

    # The words after the ticket read as in Slack (`DEMO-1 web@v2 to production`); the flags
    # go into the request as they are.
    said = commands.parse_deploy(" ".join([args.ticket, *args.words]),
                                 environments=list(ctx.config.environments),
                                 services=list(ctx.config.services))
    if not isinstance(said, commands.DeployRequest):
        raise InputError(f"{args.ticket!r} is not a ticket",
                         hint="status, history, lock and unlock are commands of their own here")
    if args.env and said.environment:
        raise commands.UsageError("give the environment once")
    if args.at and said.at:
        raise commands.UsageError("give the time once")
    req = replace(said, environment=_env_flag(args.env) or said.environment,
                  dry_run=args.dry_run or said.dry_run, at=args.at or said.at,
                  queue=args.queue or said.queue,
                  break_glass=(args.break_glass or "").strip() or said.break_glass)
    if req.at and req.dry_run:
        raise commands.UsageError("a dry run runs now; schedule the deployment itself")
    service = _service(ctx, args.approve_as)
    d = _allowed(service.handle(req, _who(ctx, args))).deployment
    if d.scheduled_for:
        return _scheduled(ctx, service, d)
    with _stopping_gracefully(service.pipeline, d):
        ran = _allowed(service.handle(StartRequest(d.id), _who(ctx, args)))
    if ran.queued:
        print(f"deployment #{d.id} is {ran.waiting}; `deploybot scheduler` (or "
              "`deploybot run`) starts it when the lock frees", file=sys.stderr)
        return EXIT_PENDING
    return _outcome(ran.deployment, ran.pending, ctx.config)


@contextmanager
def _stopping_gracefully(pipeline: Pipeline, d: Deployment) -> Iterator[None]:
    """SIGTERM / Ctrl-C: before the rollout, stop at once (nothing changed; the deployment is
    marked interrupted); once it started, finish the current step, then complete or roll back.
    A second signal during that is ignored, with a message."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if not pipeline.stop.rollout_started:
            raise KeyboardInterrupt
        if pipeline.stop:
            print(f"{name}: already stopping; deploybot finishes the rollback (or the "
                  "verification) first, so that the service is left running", file=sys.stderr,
                  flush=True)
            return
        pipeline.stop.set(name)
        print(f"{name}: finishing the current step of deployment #{d.id}, then it completes "
              "or rolls back", file=sys.stderr, flush=True)
        for line in waiting_for(pipeline.store):
            log.info("%s: %s", name, line)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except KeyboardInterrupt:
        now = pipeline.store.deployment(d.id)
        if now.status in (DeploymentStatus.REQUESTED, DeploymentStatus.CHECKING):
            text = "stopped before the rollout (signal); nothing was changed"
            pipeline.store.transition(d.id, DeploymentStatus.INTERRUPTED, failure=text,
                                      detail=text)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _scheduled(ctx: Context, service, d: Deployment) -> int:
    """The checklist now, as a dry run; the deployment itself waits for the scheduler."""
    print(f"deployment #{d.id} scheduled for "
          f"{freezing.local(d.scheduled_for, ctx.config.timezone)}; checking it now (dry run):")
    dry = service.precheck(d)
    verdict = ("passes now" if dry.status is DeploymentStatus.SUCCEEDED
               else "does not pass now; it is checked again at its time")
    print(f"deployment #{d.id}: the checklist {verdict} (dry run #{dry.id}); "
          "`deploybot scheduler` (or `deploybot run`) must be running then; "
          f"`deploybot cancel {d.id}` cancels it")
    return EXIT_OK


def cmd_rollback(ctx: Context, args: argparse.Namespace) -> int:
    from bot.requests import StartRequest

    # The words read as in Slack (`web to v1 in staging`); --to and --env as they are.
    said = commands.parse_rollback(" ".join([args.what, *args.words]),
                                   services=list(ctx.config.services),
                                   environments=list(ctx.config.environments))
    if args.to and said.to_version:
        raise commands.UsageError("give the version once", commands.ROLLBACK_USAGE)
    if args.env and said.environment:
        raise commands.UsageError("give the environment once", commands.ROLLBACK_USAGE)
    req = replace(said, to_version=args.to or said.to_version,
                  environment=_env_flag(args.env) or said.environment)
    service = _service(ctx)
    d = _allowed(service.handle(req, _who(ctx, args))).deployment
    with _stopping_gracefully(service.pipeline, d):
        ran = _allowed(service.handle(StartRequest(d.id), _who(ctx, args)))
    return EXIT_OK if ran.deployment.status is DeploymentStatus.SUCCEEDED else EXIT_FAILED


def _decide(ctx: Context, args: argparse.Namespace, approved: bool) -> int:
    from bot.requests import DecideRequest

    service = _service(ctx, interactive=False)
    outcome = _allowed(service.handle(
        DecideRequest(args.deployment, approved, gate_id=args.gate, reason=args.reason or ""),
        _who(ctx, args)))
    d = outcome.deployment
    if outcome.nothing_pending:
        decided = ", ".join(f"gate #{g.id} {g.status.value} by {g.decided_by}"
                            for g in outcome.gates)
        print(f"deployment #{d.id} ({d.status.value}) has no pending gate"
              + (f": {decided}" if decided else ""), file=sys.stderr)
        return EXIT_FAILED
    for note in outcome.notes:
        print(note, file=sys.stderr)
    for gate in outcome.already:
        print(f"gate #{gate.id} was already {gate.status.value} by {gate.decided_by}",
              file=sys.stderr)
    return _outcome(d, outcome.pending, ctx.config)


def cmd_approve(ctx: Context, args: argparse.Namespace) -> int:
    return _decide(ctx, args, True)


def cmd_reject(ctx: Context, args: argparse.Namespace) -> int:
    _decide(ctx, args, False)
    return EXIT_OK if ctx.store.deployment(args.deployment).status is DeploymentStatus.REJECTED \
        else EXIT_FAILED


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    from bot.requests import CancelRequest

    outcome = _allowed(_service(ctx).handle(
        CancelRequest(deployment_id=args.deployment, reason=args.reason or ""), _who(ctx, args)))
    return EXIT_OK if outcome.deployment.status is DeploymentStatus.CANCELLED else EXIT_FAILED


def _line(d: Deployment) -> str:
    when = f"{d.created_at:%Y-%m-%d %H:%M}" if d.created_at else ""
    kind = " rollback" if d.kind.value == "rollback" else ""
    dry = " (dry run)" if d.dry_run else ""
    prev = f" (was {d.previous_version})" if d.previous_version else ""
    return (f"#{d.id:<4} {when}  {d.environment:<11} {d.service}{kind} {d.version}{prev}  "
            f"{d.status.value}{dry}  {d.ticket_id} by {d.requested_by}"
            + (f"\n       {d.failure}" if d.failure else ""))


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    from bot.requests import StatusRequest

    view = _service(ctx).handle(StatusRequest(), _who(ctx, args))
    print("Locks:" if view.locks else "Locks: none")
    for line in view.locks:
        lock = line.lock
        ttl = (f"; expires {lock.expires_at:%H:%M:%S UTC} without a heartbeat"
               if lock.expires_at else "")
        print(f"  {line.description}{ttl}")
    print("In progress:" if view.active else "In progress: none")
    for a in view.active:
        print(f"  {_line(a.deployment)}" + (f"\n       waiting: {a.waiting}" if a.waiting else ""))
    print("Running now:")
    for r in view.running:
        if r.error is not None:
            print(f"  {r.environment:<11} {r.service:<14} ?            {r.error}")
        else:
            print(f"  {r.environment:<11} {r.service:<14} {r.version or '-':<12} {r.detail}")
    print("Undelivered (outbox):" if view.undelivered else "Undelivered (outbox): none")
    for item in view.undelivered:
        print("  " + outboxing.waiting_line(item, view.now).replace("\n", "\n       "))
    return EXIT_OK


def cmd_history(ctx: Context, args: argparse.Namespace) -> int:
    from bot.requests import HistoryRequest

    rows = list(_service(ctx).handle(HistoryRequest(args.service, args.env, args.limit),
                                     _who(ctx, args)).rows)
    if args.format:
        exports.history(rows, args.format)
        return EXIT_OK
    if not rows:
        print("no deployments yet")
    for d in rows:
        print(_line(d))
    return EXIT_OK


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    d = ctx.store.deployment(args.deployment)
    if args.format:
        exports.show(ctx.store, d)
        return EXIT_OK
    print(_line(d))
    for c in ctx.store.checks(d.id):
        print(f"  [{c.status.value:>7}] {c.title}" + (f" — {c.reason}" if c.reason else ""))
    for g in ctx.store.gates(d.id):
        print(f"  gate #{g.id} {g.kind.value}: {g.status.value}"
              + (f" by {g.decided_by}" if g.decided_by else ""))
    print("Audit trail:")
    for e in ctx.store.events(d.id):
        via = f" [{e['via']}]" if e.get("via") else ""
        print(f"  {e['at'][:19]}  {e['actor']:<12} {e['kind']:<18} {e['detail'] or ''}{via}")
    if d.record:
        print()
        print(d.record.rstrip())
    return EXIT_OK


def cmd_lock(ctx: Context, args: argparse.Namespace) -> int:
    from bot.requests import LockRequest

    lock = _allowed(_service(ctx).handle(LockRequest(args.env, args.reason, args.service),
                                         _who(ctx, args))).lock
    print(f"locked {lock.scope}: {lock.reason}")
    return EXIT_OK


def cmd_unlock(ctx: Context, args: argparse.Namespace) -> int:
    from bot.requests import UnlockRequest

    lock = _allowed(_service(ctx).handle(UnlockRequest(args.env, args.reason, args.service),
                                         _who(ctx, args))).lock
    print(f"unlocked {lock.scope} (was held by {lock.holder}: {lock.reason})")
    return EXIT_OK


def cmd_check_config(ctx: Context, args: argparse.Namespace) -> int:
    cfg = ctx.config
    from backends.deploy import build_backend
    from handlers.wiring import build_tracker

    projects: dict[str, list[str]] = {}
    listens: dict[str, list[str]] = {}
    for name in cfg.services:
        for env in cfg.environments:
            if cfg.deployable(name, env):
                backend = build_backend(name, env, cfg.service(name, env))
                if cfg.service(name, env).backend.kind == "compose":
                    projects.setdefault(backend.project, []).append(f"{name} in {env}")
                listen = _proxy_listen(cfg.service(name, env).backend)
                if listen:
                    listens.setdefault(listen, []).append(f"{name} in {env}")
    tracker = build_tracker(cfg, Store(":memory:") if cfg.tracker.kind != "local" else ctx.store,
                            os.environ)
    failures = (_check_env_files(cfg) + _check_compose_projects(projects)
                + _check_proxy_listens(listens))
    if args.live:
        tracker.check_credentials()
        for level, text in _check_markup(tracker):
            print(f"[{level}] {text}")
        people = _check_people(cfg, tracker)
        failures += people + _check_monitoring_setup(cfg)
    if failures:
        print(f"{cfg.source_path}: valid, but {failures} problem(s) above")
        return EXIT_FAILED
    print(f"{cfg.source_path}: ok — {len(cfg.environments)} environment(s), "
          f"{len(cfg.services)} service(s), tracker {cfg.tracker.kind}")
    return EXIT_OK


def _check_markup(tracker) -> list[tuple[str, str]]:
    """Redmine renders the record in its own text formatting, which its REST API does not
    expose: when tracker.markup does not name it, say which one deploybot writes."""
    if getattr(tracker, "markup_configured", True):
        return []
    return [("warning", f"{tracker.name}: tracker.markup is not set, so the record is written as "
                        f"{tracker.markup} (Redmine's default); Redmine's API does not tell its text "
                        "formatting: set tracker.markup to what Administration » Settings » General » "
                        "Text formatting says (textile or common_mark)")]


def _check_compose_projects(projects: dict[str, list[str]]) -> int:
    """One compose project per service and environment: `up --remove-orphans` of one would
    remove the other's containers, and a deploy to one environment recreate the other's."""
    count = 0
    for project, users in sorted(projects.items()):
        if len(users) > 1:
            print(f"[FAILED] compose project {project} is used by {', '.join(users)}: deploying "
                  "one removes or replaces the containers of the others; give each its own "
                  "backend.project (per environment in overrides:) or leave it out (default: "
                  "SERVICE-ENVIRONMENT)")
            count += 1
    return count


def _proxy_listen(backend) -> str | None:
    proxy = getattr(backend, "proxy", None)  # compose keeps its own options as a dict
    listen = proxy.get("listen") if isinstance(proxy, dict) else getattr(proxy, "listen", None)
    return str(listen) if listen else None


def _check_proxy_listens(listens: dict[str, list[str]]) -> int:
    """A proxy's `listen` serves one service in one environment (a deploy refuses the second
    at prepare; said here first)."""
    count = 0
    for listen, users in sorted(listens.items()):
        if len(users) > 1:
            print(f"[FAILED] proxy listen {listen} is used by {', '.join(users)}: only the first "
                  "deployed can have it; give each its own listen (per environment in "
                  "overrides:)")
            count += 1
    return count


def _check_env_files(cfg) -> int:
    """Every env_file that exists reads cleanly (a line without a name is named by number)."""
    from bot.envfile import read_env_file

    count = 0
    for name in cfg.services:
        paths = {getattr(cfg.service(name, env).backend, "env_file", None)
                 for env in cfg.environments}
        for path in sorted(p for p in paths if p and os.path.lexists(p)):
            try:
                read_env_file(path)
            except InputError as exc:
                print(f"[FAILED] services.{name}: {exc.message}")
                count += 1
    return count


def _check_people(cfg, tracker) -> int:
    """Who every person, approver, author and deployer is, on the tracker and in Slack."""
    from bot.identity import check_people

    lines = check_people(cfg, tracker)
    lines += _check_slack_people(cfg)
    for level, text in lines:
        print(f"[{level}] {text}")
    return sum(1 for level, _ in lines if level == "FAILED")


def _check_slack_people(cfg) -> list[tuple[str, str]]:
    token = os.environ.get("SLACK_BOT_TOKEN", "").strip()
    ids = [(name, p.slack) for name, p in cfg.people.items() if p.slack]
    if not ids:
        return []
    if not token:
        return [("warning", "Slack: SLACK_BOT_TOKEN is not set, so the people's Slack ids "
                            "were not checked")]
    from slack_sdk.errors import SlackApiError

    from handlers.slack_app import web_client

    client = web_client(token, os.environ.get("SLACK_API_URL") or None, rate_limit_retries=2)
    out = []
    for name, uid in ids:
        try:
            user = client.users_info(user=uid).data.get("user") or {}
        except SlackApiError as exc:
            out.append(("FAILED", f"people.{name}.slack: Slack does not know {uid} "
                                  f"({exc.response.get('error', '?')})"))
            continue
        except Exception as exc:
            out.append(("FAILED", f"people.{name}.slack: cannot ask Slack about {uid}: "
                                  f"{type(exc).__name__}"))
            continue
        if user.get("deleted"):
            out.append(("FAILED", f"people.{name}.slack: {uid} is a deactivated Slack account"))
        else:
            shown = (user.get("profile") or {}).get("real_name") or user.get("name") or uid
            out.append(("ok", f"people.{name}: Slack {uid} ({shown})"))
    return out


def _check_monitoring_setup(cfg) -> int:
    """The monitoring setup check of every running service: health 200, metrics in text format."""
    from backends.monitoring.probe import HttpxProbe
    from backends.monitoring.prometheus import PrometheusSource
    from bot.monitoring_setup import monitoring_setup
    from bot.errors import MetricsUnavailable

    probe, count = HttpxProbe.for_config(cfg, os.environ), 0
    try:
        for name in cfg.services:
            for env in cfg.environments:
                svc = cfg.service(name, env)
                if not cfg.deployable(name, env) or not (svc.health or svc.metrics_url):
                    continue
                failures, warnings, fine = monitoring_setup(svc, probe)
                # a health URL not answering may be a service not deployed there yet: a warning
                warnings += [f for f in failures if f.startswith("health")]
                failures = [f for f in failures if not f.startswith("health")]
                if svc.prometheus:
                    source = PrometheusSource(str(svc.prometheus.url), svc.prometheus.timeout)
                    try:
                        source.query("vector(1)")
                        fine.append(f"Prometheus {svc.prometheus.url} answers queries")
                    except MetricsUnavailable as exc:
                        warnings.append(f"Prometheus: {exc} (the watch will be inconclusive)")
                for text in fine:
                    print(f"[ok] {name} in {env}: {text}")
                for text in warnings:
                    print(f"[warning] {name} in {env}: {text}")
                for text in failures:
                    print(f"[FAILED] {name} in {env}: {text}")
                count += len(failures)
    finally:
        probe.close()
    return count


def _local_tracker(ctx: Context):
    from backends.trackers.local import LocalTracker

    return LocalTracker(ctx.store)


def cmd_ticket(ctx: Context, args: argparse.Namespace) -> int:
    tracker = _local_tracker(ctx)
    if args.ticket_cmd == "create":
        fields = {}
        for item in args.field or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise InputError(f"--field {item!r} is not KEY=VALUE")
            fields[key] = value
        tid = tracker.create_ticket(args.title, project=args.project, status=args.status,
                                    description=args.description or "", fields=fields,
                                    ticket_id=args.id)
        print(tid)
    elif args.ticket_cmd == "comment":
        tid = tracker.parse_ref(args.ticket)
        # Comments are what the gates read: their author is who runs this, like any other
        # command (--by someone else only where terminal.trust_as allows it).
        who = terminal_actor(ctx.config, args.author, flag="--by")
        entry = ctx.config.people.get(who.person) if who.person else None
        author = (entry.tracker if entry and entry.tracker else who.name)
        tracker.add_comment(tid, args.text, author=author)
        print(f"{tid}: comment by {author} added")
    elif args.ticket_cmd == "status":
        tid = tracker.parse_ref(args.ticket)
        tracker.transition(tid, args.status)
        print(f"{tid}: {tracker.get_ticket(tid).status}")
    else:
        tid = tracker.parse_ref(args.ticket)
        t = tracker.get_ticket(tid)
        print(f"{t.id}: {t.title}\nstatus: {t.status}")
        if t.description:
            print(t.description)
        for c in tracker.comments(tid):
            print(f"\n--- {c.author} at {c.created_at:%Y-%m-%d %H:%M:%S}\n{c.body.rstrip()}")
    return EXIT_OK


def cmd_scheduler(ctx: Context, args: argparse.Namespace,
                  stop: threading.Event | None = None) -> int:
    """Terminal-only teams: scheduled and queued deployments start here, in the foreground."""
    from handlers.wiring import ReplicaRole

    pipeline = ctx.pipeline(interactive=False)
    scheduler = DeployScheduler(pipeline, tick_seconds=args.tick)
    role = ReplicaRole(ctx.store, scheduler).start()
    stop = stop or threading.Event()
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is \
        threading.main_thread() else None
    def on_sigterm(*_: object) -> None:
        log.info("SIGTERM: shutting down")
        stop.set()
    if previous is not None:
        signal.signal(signal.SIGTERM, on_sigterm)
    ops = None
    if getattr(args, "metrics_port", None) is not None:  # /healthz /readyz /metrics
        from handlers.ops_http import serve_scheduler

        ops = serve_scheduler(ctx.store, scheduler, args.metrics_host or "127.0.0.1",
                              args.metrics_port, role)
    print(f"deploybot scheduler: every {args.tick:g} s; Ctrl-C stops it"
          + (f"; /healthz /readyz /metrics on {ops.url}" if ops else ""), flush=True)
    try:
        scheduler.run_forever(stop, on_line=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        scheduler.shutdown()
    finally:
        role.stop()
        if ops is not None:
            ops.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


def cmd_run(ctx: Context, args: argparse.Namespace) -> int:
    try:
        from handlers.slack_app import serve
    except ImportError:
        raise ConfigError("the Slack front end is not part of this build",
                          hint="use the terminal commands") from None
    return serve(ctx, args)


# -- parser --------------------------------------------------------------------------------------

def _bounded(kind: type, low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number in [low, high] (nan, inf and 10**20 are usage errors)."""
    def parse(text: str):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:  # False for nan too
            raise argparse.ArgumentTypeError(f"{text!r} is not between {low:g} and {high:g}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deploybot", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Walks the deployment process: checklist, gates, deploy, verify, roll back, record.")
    p.add_argument("--version", action=_VersionAction)
    # Global options work before or after the command: `deploybot --as bob approve 3` or
    # `approve 3 --as bob`, `check-config --config FILE`.
    common = argparse.ArgumentParser(add_help=False)
    for parser, default in ((p, None), (common, argparse.SUPPRESS)):
        parser.add_argument("--config", default=default, help="configuration file (default: "
                            "$DEPLOYBOT_CONFIG or ./deploybot.yaml)")
        parser.add_argument("--as", dest="user", metavar="NAME", default=default,
                            help="who you are (default: $DEPLOYBOT_USER or your login)")
        parser.add_argument("--log-level", type=str.upper, choices=LEVELS, default=default,
                            help=f"log level (default: ${LEVEL_ENV}, else INFO for run and "
                                 "scheduler, WARNING otherwise)")
        parser.add_argument("--log-format", choices=FORMATS, default=default,
                            help=f"log lines as text or one JSON object per line (default: "
                                 f"${FORMAT_ENV}, else text)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _with_common(sub, common)

    d = sub.add_parser("deploy", help="deploy a ticket")
    d.add_argument("ticket", help="the ticket to deploy, like DEMO-1")
    d.add_argument("words", nargs="*", metavar="SERVICE@VERSION | to ENV",
                   help="as in Slack; service@version defaults to what the ticket says")
    d.add_argument("--env", help="environment (default: the config's default)")
    d.add_argument("--dry-run", action="store_true", help="run the checklist, change nothing")
    d.add_argument("--approve-as", metavar="NAME", help="decide every gate as NAME (scripts)")
    d.add_argument("--at", metavar="WHEN", help="schedule it: 22:00 (the next one, in the "
                   "config's timezone) or 2026-11-27T22:00")
    d.add_argument("--queue", action="store_true",
                   help="when the lock is held, wait in line instead of being blocked")
    d.add_argument("--break-glass", metavar="REASON",
                   help="deploy inside a freeze window; two approvers must approve")
    d.set_defaults(func=cmd_deploy)

    r = sub.add_parser("rollback", help="roll a service (or a ticket's deployment) back")
    r.add_argument("what", metavar="SERVICE|TICKET",
                   help="the service to roll back, or the ticket whose deployment to undo")
    r.add_argument("words", nargs="*", metavar="to VERSION | in ENV", help="as in Slack")
    r.add_argument("--to", metavar="VERSION", help="default: the version before the current one")
    r.add_argument("--env", help="environment (default: the config's default)")
    r.set_defaults(func=cmd_rollback)

    for name, func, help_ in (("approve", cmd_approve, "approve a deployment's pending gates"),
                              ("reject", cmd_reject, "reject a deployment's pending gate")):
        g = sub.add_parser(name, help=help_)
        g.add_argument("deployment", type=int, help="the deployment's number (#7: 7)")
        g.add_argument("--gate", type=int, help="only this gate")
        g.add_argument("--reason", required=name == "reject",
                       help="why (kept in the audit trail" + ("; required)" if name == "reject"
                                                              else ")"))
        g.set_defaults(func=func)

    c = sub.add_parser("cancel", help="cancel a deployment that has not started deploying")
    c.add_argument("deployment", type=int, help="the deployment's number")
    c.add_argument("--reason", help="why (kept in the audit trail)")
    c.set_defaults(func=cmd_cancel)

    sub.add_parser("status", help="locks, deployments in progress, what runs, what the "
                   "tracker and Slack have not been told yet").set_defaults(
        func=cmd_status)
    h = sub.add_parser("history", help="past deployments")
    h.add_argument("service", nargs="?", help="only this service's deployments")
    h.add_argument("--env", help="only this environment's deployments")
    h.add_argument("--limit", type=_bounded(int, 1, 10_000), default=20,
                   help="at most this many, newest first (default: 20)")
    exports.add_format(h)
    h.set_defaults(func=cmd_history)
    s = sub.add_parser("show", help="one deployment: checks, gates, audit trail, record")
    s.add_argument("deployment", type=int, help="the deployment's number")
    exports.add_format(s, csv_too=False)
    s.set_defaults(func=cmd_show)
    exports.add_parsers(sub)  # stats, events

    for name, func in (("lock", cmd_lock), ("unlock", cmd_unlock)):
        lk = sub.add_parser(name, help=f"{name} an environment")
        lk.add_argument("env", help="the environment")
        lk.add_argument("--service", help="only this service's lock")
        lk.add_argument("--reason", required=True, help="why (shown to whoever is blocked)")
        lk.set_defaults(func=func)

    cc = sub.add_parser("check-config", help="validate the configuration file")
    cc.add_argument("--live", action="store_true",
                    help="also check the tracker credentials and each running service's "
                         "monitoring setup (health 200, metrics endpoint, Prometheus)")
    cc.set_defaults(func=cmd_check_config)

    t = sub.add_parser("ticket", help="the embedded tracker: create, comment, status, show")
    tsub = t.add_subparsers(dest="ticket_cmd", required=True, metavar="ACTION")
    _with_common(tsub, common)
    tc = tsub.add_parser("create", help="create a ticket; prints its id")
    tc.add_argument("title", help="the ticket's title")
    tc.add_argument("--project", default="DEMO", help="project key (default: DEMO)")
    tc.add_argument("--id", help="explicit ticket id, like DEMO-7")
    tc.add_argument("--status", default="Open", help="initial status (default: Open)")
    tc.add_argument("--description", help="the ticket's description")
    tc.add_argument("--field", action="append", metavar="KEY=VALUE",
                    help="a custom field (repeatable)")
    tm = tsub.add_parser("comment", help="comment on a ticket (what the gates read)")
    tm.add_argument("ticket", help="the ticket, like DEMO-1")
    tm.add_argument("text", help="the comment, e.g. \"QA PASS\"")
    tm.add_argument("--author", "--by", metavar="NAME",
                    help="who writes it (default: you; someone else needs terminal.trust_as)")
    ts = tsub.add_parser("status", help="move a ticket to another status")
    ts.add_argument("ticket", help="the ticket, like DEMO-1")
    ts.add_argument("status", help="the new status, e.g. \"Ready for Production\"")
    tw = tsub.add_parser("show", help="a ticket with its comments")
    tw.add_argument("ticket", help="the ticket, like DEMO-1")
    t.set_defaults(func=cmd_ticket)

    sc = sub.add_parser("scheduler", help="run scheduled and queued deployments (foreground)")
    sc.add_argument("--tick", type=_bounded(float, 0.01, 3600), default=5.0, metavar="SECONDS",
                    help="how often the store is read for due and queued deployments")
    sc.add_argument("--metrics-host", metavar="HOST", default="127.0.0.1",
                    help="where --metrics-port listens (default 127.0.0.1)")
    sc.add_argument("--metrics-port", type=_bounded(int, 0, 65535), metavar="PORT",
                    help="serve /healthz, /readyz, /metrics on this port (default: none)")
    sc.set_defaults(func=cmd_scheduler)

    rn = sub.add_parser("run", help="start the Slack front end")
    rn.add_argument("--http", action="store_true", help="serve HTTP instead of Socket Mode")
    rn.add_argument("--host", default="127.0.0.1",
                    help="HTTP mode: the address to listen on (default: 127.0.0.1)")
    rn.add_argument("--port", type=_bounded(int, 0, 65535), default=3000,
                    help="HTTP mode: the port to listen on (default: 3000; 0: any free port)")
    rn.add_argument("--metrics-host", metavar="HOST",
                    help="Socket Mode: where /healthz, /readyz, /metrics listen (default: "
                         "$DEPLOYBOT_METRICS_HOST or 127.0.0.1; HTTP mode: on --host/--port)")
    rn.add_argument("--metrics-port", type=_bounded(int, 0, 65535), metavar="PORT",
                    help="Socket Mode: their port (default: $DEPLOYBOT_METRICS_PORT or 9464)")
    rn.set_defaults(func=cmd_run)

    from handlers.demo import add_parser as add_demo_parser  # its own module: set-up, not ops
    add_demo_parser(sub)
    from handlers.db_commands import add_parser as add_db_parser  # db info, db copy
    add_db_parser(sub)
    co = sub.add_parser("completion", help="print a shell completion script")
    co.add_argument("shell", choices=("bash", "zsh", "tcsh"),
                    help="e.g. `deploybot completion bash > /etc/bash_completion.d/deploybot`")
    co.set_defaults(func=cmd_completion)
    return p


def _with_common(sub, common: argparse.ArgumentParser) -> None:
    """Every parser `sub` adds takes the global options too (after the command)."""
    real_add_parser = sub.add_parser
    sub.add_parser = lambda *a, **kw: real_add_parser(*a, parents=[common], **kw)


class _VersionAction(argparse.Action):
    """--version, the installed package read only when asked (it costs start-up time)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show program's version number and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _version() -> str:
    try:
        return metadata.version("deploybot")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def cmd_completion(ctx: Context, args: argparse.Namespace) -> int:
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK


def main(argv: Sequence[str] | None = None, *, edges: Edges | None = None) -> int:
    """Everything written to the terminal goes through SafeStream: configured secrets
    redacted, control characters escaped."""
    ctx: Context | None = None
    stdout, stderr = sys.stdout, sys.stderr
    before = slack_redactor(os.environ)
    if argv is None:  # the process's own command line: it exits after this
        # The interpreter's last garbage collection walks every object the imports made
        # (pydantic, the Docker SDK): about 0.3 s of a deploy's exit. Nothing needs it then.
        atexit.register(gc.freeze)

    def redact() -> Callable[[str], str]:
        return ctx.redact if ctx is not None else before

    sys.stdout, sys.stderr = SafeStream(stdout, redact), SafeStream(stderr, redact)
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        bad = [n for n, arg in enumerate(argv, 1) if not is_text(arg)]
        if bad:
            print(f"error: argument {bad[0]} is not valid UTF-8 text", file=sys.stderr)
            return EXIT_USAGE
        args = build_parser().parse_args(argv)
        try:
            level, fmt = logsetup.choose(args.command, args.log_level, args.log_format,
                                         os.environ)
        except InputError as exc:
            print(f"error: {exc.message}\n  hint: {exc.hint}", file=sys.stderr)
            return EXIT_USAGE
        with logsetup.configured(level, fmt, lambda text: redact()(text)):
            ctx = Context(args, edges)
            try:
                code = _run(ctx, args)
            finally:
                ctx.close()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`deploybot history | head -1`): stop quietly, as the Python
        # documentation says, so the interpreter's final flush does not complain either.
        _silence(stdout)
        return EXIT_BROKEN_PIPE
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _silence(stream) -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture)
        pass


def _run(ctx: Context, args: argparse.Namespace) -> int:
    try:
        return args.func(ctx, args)
    except commands.UsageError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        print(f"  hint: deploybot {args.command} --help", file=sys.stderr)
        return EXIT_USAGE
    except (InputError, ConfigError) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return EXIT_USAGE
    except NotAllowed as exc:
        print(f"refused: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return EXIT_REFUSED
    except DeploybotError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
