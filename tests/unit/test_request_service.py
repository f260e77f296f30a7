"""The request service (bot/service.py): every request kind, the actor resolved once per request
for the environment it acts in, the authorization table applied once, and the same refusal for
the terminal and Slack."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bot.authorization import Authorization
from bot.errors import InputError, NotAllowed, StateError
from bot.identity import Actor
from bot.models import DeploymentStatus, GateStatus
from bot.requests import (CancelRequest, DecideRequest, DeployRequest, HistoryRequest,
                          LockRequest, RollbackRequest, StartRequest, StatusRequest,
                          UnlockRequest)
from bot.service import (SCHEDULER, Cancelled, Decided, HistoryRows, Locked, Ran, Refused,
                         RequestService, Requested, StatusView, Unlocked)
from bot.store import Store
from handlers import cli
from handlers.slack_app import SlackFrontEnd, explain, web_client
from fakes.core import FakeBackend, FakeProbe, InstantClock
from fakes.schedule import ScheduleWorld
from fakes.slack_api import FakeSlack, fake_token

PRODUCTION = {"production": True, "approvers": ["bob", "dana", "erin"], "approvals_required": 1}
GATED = {"environments": {"staging": {"lock_ttl": 600}, "production": PRODUCTION}}
DEPLOYERS = {"environments": {"staging": {"lock_ttl": 600},
                              "production": {**PRODUCTION, "deployers": ["alice"]}}}


@pytest.fixture
def world(tmp_path):
    w = ScheduleWorld(tmp_path / "d.db", overrides=GATED)
    yield w
    w.close()


@pytest.fixture
def service(world):
    return RequestService(world.pipeline)


class Who:
    """A front end's resolver: records for which environments it was asked."""

    def __init__(self, name: str) -> None:
        self.name, self.asked = name, []

    def __call__(self, environment):
        self.asked.append(environment)
        return Actor(self.name, self.name, "terminal")


def deploy(service, world, env="staging", who="alice", **kw):
    requested = service.handle(DeployRequest(world.ticket(), "web@v2", env, **kw), Who(who))
    assert isinstance(requested, Requested), requested
    return requested.deployment


# -- every request kind ----------------------------------------------------------------------

def test_deploy_then_start_runs_it_to_the_end(service, world):
    d = deploy(service, world)
    assert d.status is DeploymentStatus.REQUESTED and not Requested(d).scheduled
    ran = service.handle(StartRequest(d.id), SCHEDULER)
    assert isinstance(ran, Ran) and ran.deployment.status is DeploymentStatus.SUCCEEDED
    assert world.backend.running == "v2" and ran.pending == () and not ran.queued


def test_a_scheduled_deploy_is_requested_for_later_and_prechecked_now(service, world):
    d = deploy(service, world, at="23:00")
    assert Requested(d).scheduled and d.status is DeploymentStatus.REQUESTED
    dry = service.precheck(d)
    assert dry.dry_run and dry.status is DeploymentStatus.SUCCEEDED
    assert world.backend.running == "v1"


def test_a_queued_deploy_waits_behind_a_held_lock(service, world):
    service.handle(LockRequest("staging", "db migration"), Who("bob"))
    d = deploy(service, world, queue=True)
    ran = service.handle(StartRequest(d.id), SCHEDULER)
    assert ran.queued and "queued for env:staging, position 1" in ran.waiting


def test_a_production_deploy_waits_for_its_gate_and_an_approval_resumes_it(service, world):
    d = deploy(service, world, env="production")
    ran = service.handle(StartRequest(d.id), SCHEDULER)
    assert ran.deployment.status is DeploymentStatus.AWAITING_APPROVAL and ran.pending
    decided = service.handle(DecideRequest(d.id, approved=True), Who("bob"))
    assert isinstance(decided, Decided) and decided.notes == () and decided.already == ()
    assert decided.deployment.status is DeploymentStatus.SUCCEEDED and decided.pending == ()
    again = service.handle(DecideRequest(d.id, approved=True), Who("dana"))
    assert again.nothing_pending and [g.status for g in again.gates] == [GateStatus.APPROVED]


def test_who_may_not_approve_is_refused(service, world):
    d = deploy(service, world, env="production", who="dana")
    service.handle(StartRequest(d.id), SCHEDULER)
    refused = service.handle(DecideRequest(d.id, approved=True), Who("dana"))
    assert isinstance(refused, Refused) and "cannot approve" in refused.message
    refused = service.handle(DecideRequest(d.id, approved=True), Who("carol"))
    assert refused.message == f"carol may not approve deployment #{d.id} (web v2 to production)."
    assert world.store.deployment(d.id).status is DeploymentStatus.AWAITING_APPROVAL


def test_a_rejection_needs_a_reason_and_ends_the_deployment(service, world):
    d = deploy(service, world, env="production")
    service.handle(StartRequest(d.id), SCHEDULER)
    with pytest.raises(InputError, match="needs a reason"):
        service.handle(DecideRequest(d.id, approved=False), Who("bob"))
    decided = service.handle(DecideRequest(d.id, approved=False, reason="not tonight"),
                             Who("bob"))
    assert decided.deployment.status is DeploymentStatus.REJECTED


def test_rollback_puts_the_previous_version_back(service, world):
    service.handle(StartRequest(deploy(service, world).id), SCHEDULER)
    requested = service.handle(RollbackRequest(service="web", environment="staging"),
                               Who("alice"))
    assert requested.deployment.version == "v1"
    service.handle(StartRequest(requested.deployment.id), SCHEDULER)
    assert world.backend.running == "v1"


def test_status_shows_locks_active_deployments_and_what_runs(service, world):
    service.handle(LockRequest("staging", "db migration"), Who("bob"))
    d = deploy(service, world, queue=True)
    service.handle(StartRequest(d.id), SCHEDULER)
    view = service.handle(StatusRequest(), Who("carol"))
    assert isinstance(view, StatusView)
    assert [line.lock.scope for line in view.locks] == ["env:staging"]
    assert "held by bob" in view.locks[0].description
    assert "db migration" in view.locks[0].description
    assert [a.deployment.id for a in view.active] == [d.id]
    assert [a.deployment.id for a in view.waiting] == [d.id]
    running = {(r.environment, r.service): r for r in view.running}
    assert running["staging", "web"].version == "v1" and running["staging", "web"].error is None
    assert view.undelivered == () and view.now == world.clock.now()
    assert service.status(running=False).running == ()


def test_history_rows(service, world):
    service.handle(StartRequest(deploy(service, world).id), SCHEDULER)
    rows = service.handle(HistoryRequest("web", limit=5), Who("carol"))
    assert isinstance(rows, HistoryRows) and [d.version for d in rows.rows] == ["v2"]
    with pytest.raises(InputError, match="unknown service"):
        service.handle(HistoryRequest("nope"), Who("carol"))


def test_lock_and_unlock(service, world):
    locked = service.handle(LockRequest("staging", "release freeze"), Who("bob"))
    assert isinstance(locked, Locked) and locked.lock.holder == "bob"
    unlocked = service.handle(UnlockRequest("staging", "done"), Who("bob"))
    assert isinstance(unlocked, Unlocked) and unlocked.lock.reason == "release freeze"
    assert world.store.locks() == []


def test_cancel_by_number_or_by_ticket(service, world):
    d = deploy(service, world, at="23:00")
    cancelled = service.handle(CancelRequest(ticket=d.ticket_id), Who("alice"))
    assert isinstance(cancelled, Cancelled)
    assert cancelled.deployment.status is DeploymentStatus.CANCELLED
    with pytest.raises(StateError, match="waiting to be cancelled"):
        service.handle(CancelRequest(ticket=d.ticket_id), Who("alice"))
    other = deploy(service, world, at="23:30")
    assert service.handle(CancelRequest(deployment_id=other.id, reason="later"),
                          Who("alice")).deployment.status is DeploymentStatus.CANCELLED


def test_cancel_by_ticket_asks_which_when_two_wait(service, world):
    tid = world.ticket()
    for env in ("staging", "production"):
        service.handle(DeployRequest(tid, "web@v2", env, at="23:00"), Who("alice"))
    with pytest.raises(InputError, match="say which one"):
        service.handle(CancelRequest(ticket=tid), Who("alice"))


def test_the_scheduler_starts_deployments_through_the_service(world, monkeypatch):
    seen = []
    real = RequestService.handle
    monkeypatch.setattr(RequestService, "handle",
                        lambda self, req, who, **kw: seen.append((req, who)) or
                        real(self, req, who, **kw))
    world.open()  # a new scheduler, built with the spy in place
    d = deploy(RequestService(world.pipeline), world, at="13:30")  # Berlin: 12:30 UTC
    seen.clear()
    world.clock.advance(minutes=31)
    world.scheduler.run_due()
    assert seen == [(StartRequest(d.id), SCHEDULER)]
    assert world.store.deployment(d.id).status is DeploymentStatus.SUCCEEDED


# -- who, once ----------------------------------------------------------------------------------

def test_the_actor_is_resolved_once_for_the_environment_acted_in(service, world):
    who = Who("alice")
    service.handle(DeployRequest(world.ticket(), "web@v2", "production", at="23:00"), who)
    assert who.asked == ["production"]
    who = Who("alice")
    d = deploy(service, world, env=None, at="23:00")  # the default environment
    service.handle(CancelRequest(ticket=d.ticket_id), who)
    assert who.asked == ["staging"]
    who = Who("alice")  # an unknown environment: resolved without one (Slack: no groups asked)
    with pytest.raises(InputError, match="unknown environment"):
        service.handle(DeployRequest(world.ticket(), "web@v2", "mars"), who)
    assert who.asked == [None]
    who = Who("carol")
    service.handle(StatusRequest(), who)
    assert who.asked == []  # nobody needs to be known to read the status


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = Authorization.require
    monkeypatch.setattr(Authorization, "require",
                        lambda self, action, actor, env, **kw: calls.append(action) or
                        real(self, action, actor, env, **kw))
    return calls


def test_the_table_is_applied_once_per_request(service, world, counted):
    d = deploy(service, world, env="production")
    assert len(counted) == 1
    service.handle(StartRequest(d.id), SCHEDULER)
    counted.clear()
    service.handle(DecideRequest(d.id, approved=True), Who("bob"))
    assert len(counted) == 1
    for request, who in ((LockRequest("staging", "x"), "bob"),
                         (UnlockRequest("staging", "y"), "bob"),
                         (RollbackRequest(service="web", environment="production"), "alice"),
                         (CancelRequest(deployment_id=deploy(service, world, at="23:00").id),
                          "alice")):
        counted.clear()
        outcome = service.handle(request, Who(who))
        assert not isinstance(outcome, Refused), outcome
        assert len(counted) == 1, (request, counted)


def test_a_refusal_is_an_outcome_and_changes_nothing(tmp_path):
    w = ScheduleWorld(tmp_path / "d.db", overrides=DEPLOYERS)
    try:
        service = RequestService(w.pipeline)
        refused = service.handle(DeployRequest(w.ticket(), "web@v2", "production"),
                                 Who("mallory"))
        assert isinstance(refused, Refused) and isinstance(refused.error, NotAllowed)
        assert refused.message == "mallory may not deploy in production."
        assert "Only the deployers of production (alice)" in refused.hint
        assert w.store.deployments() == []
    finally:
        w.close()


# -- the same refusal at the terminal and in Slack --------------------------------------------

PEOPLE = {"alice": {"tracker": "alice", "slack": "U0ALICE"},
          "bob": {"tracker": "bob", "slack": "U0BOB"},
          "carol": {"tracker": "carol"},
          "mallory": {"tracker": "mallory", "slack": "U0MALLORY"}}


class Terminal:
    """deploybot at a terminal: config and database in tmp_path, fakes at the edges."""

    def __init__(self, tmp_path, monkeypatch) -> None:
        data = {"tracker": {"kind": "local"}, "channel": "#deploys",
                "environments": {"staging": {}, "production": {
                    "production": True, "approvers": ["bob"], "deployers": ["alice"]}},
                "services": {"web": {"image": "demo-web"}},
                "people": PEOPLE, "terminal": {"trust_as": True}}
        self.path = tmp_path / "deploybot.yaml"
        self.path.write_text(yaml.safe_dump(data))
        monkeypatch.setenv("DEPLOYBOT_DB", str(tmp_path / "d.db"))
        for name in ("DEPLOYBOT_USER", "SLACK_BOT_TOKEN", "DEPLOYBOT_CONFIG"):
            monkeypatch.delenv(name, raising=False)
        self.store = Store(tmp_path / "d.db")
        from backends.trackers.local import LocalTracker

        self.tracker = LocalTracker(self.store)
        self.tid = self.tracker.create_ticket("Ship it", status="Ready for Production")
        self.backend = FakeBackend(running="v1")
        self.edges = cli.Edges(backend_for=lambda s, e: self.backend, tracker=self.tracker,
                               probe=FakeProbe(self.backend), clock=InstantClock())

    def __call__(self, *argv: str) -> int:
        return cli.main(["--config", str(self.path), *argv], edges=self.edges)


def test_the_terminal_builds_requests_from_its_flags(tmp_path, monkeypatch):
    term = Terminal(tmp_path, monkeypatch)
    asked = []

    def handle(self, request, who, **kw):
        asked.append((request, who(None)))
        return Refused(NotAllowed("stop here"))
    monkeypatch.setattr(RequestService, "handle", handle)
    assert term("deploy", term.tid, "web@v2", "--env", "Production", "--queue",
                "--break-glass", " payments down ", "--as", "alice") == cli.EXIT_REFUSED
    assert term("rollback", "web", "--to", "v1", "--env", "staging", "--as", "bob") == \
        cli.EXIT_REFUSED
    assert term("rollback", "web", "to", "v1", "in", "staging", "--as", "bob") == \
        cli.EXIT_REFUSED
    assert term("lock", "staging", "--service", "web", "--reason", "db work") == cli.EXIT_REFUSED
    assert term("approve", "7", "--gate", "3", "--as", "bob") == cli.EXIT_REFUSED
    assert [r for r, _ in asked] == [
        DeployRequest(term.tid, "web@v2", "production", queue=True, break_glass="payments down"),
        RollbackRequest(service="web", to_version="v1", environment="staging"),
        RollbackRequest(service="web", to_version="v1", environment="staging"),
        LockRequest("staging", "db work", service="web"),
        DecideRequest(7, approved=True, gate_id=3)]
    assert [who.name for _, who in asked][:3] == ["alice", "bob", "bob"]
    assert term("deploy", term.tid, "to", "staging", "--env", "staging") == cli.EXIT_USAGE
    assert term("deploy", term.tid, "--dry-run", "--at", "22:00") == cli.EXIT_USAGE
    assert len(asked) == 5  # a usage error asks nothing
    term.store.close()


def test_terminal_and_slack_give_the_same_refusal(tmp_path, monkeypatch, capsys):
    term = Terminal(tmp_path, monkeypatch)
    store, tracker, tid, backend = term.store, term.tracker, term.tid, term.backend
    assert term("deploy", tid, "web@v2", "--env", "production", "--as", "mallory") == \
        cli.EXIT_REFUSED
    terminal = capsys.readouterr().err

    from bot import config as configuration

    config = configuration.load(str(term.path))
    told: list[str] = []
    with FakeSlack(bot_token=fake_token("bot", "service")) as slack:
        front = SlackFrontEnd(config, store, web_client(slack.bot_token, slack.api_url),
                              environ={}, tracker=tracker, backend_for=lambda s, e: backend,
                              probe=FakeProbe(backend), clock=InstantClock())
        monkeypatch.setattr(front, "ephemeral",
                            lambda channel, user, text, **kw: told.append(text))
        try:
            front.execute(DeployRequest(tid, "web@v2", "production"), "U0MALLORY", "C0DEPLOYS",
                          "cmd:trigger-1")
        finally:
            front.close()
    refusal = RequestService(front.pipeline).handle(
        DeployRequest(tid, "web@v2", "production"),
        Actor("mallory", "mallory", "terminal")).error
    assert terminal == f"refused: {refusal.message}\n  hint: {refusal.hint}\n"
    assert told == [explain(refusal)]
    assert told[0].startswith(":no_entry: mallory may not deploy in production.")
    assert store.deployments() == []
    store.close()


def test_requests_live_in_the_core_and_the_grammar_makes_them():
    from handlers import commands

    assert commands.DeployRequest is DeployRequest
    assert commands.parse_deploy("DEMO-1 web@v2 to production",
                                 environments=["production"]) == \
        DeployRequest("DEMO-1", "web@v2", "production")
    assert Path(commands.__file__).read_text().count("@dataclass") == 1  # HelpRequest only


def test_approving_every_pending_gate_counts_one_break_glass_approval_per_person(tmp_path):
    frozen = {**PRODUCTION, "freeze": [{"start": "fri 16:00", "end": "mon 08:00",
                                        "reason": "weekend"}]}
    w = ScheduleWorld(tmp_path / "d.db", overrides={"environments": {"production": frozen}})
    try:
        w.clock.advance(days=2)  # Saturday
        service = RequestService(w.pipeline)
        d = service.handle(DeployRequest(w.ticket(), "web@v2", "production",
                                         break_glass="payments down"), Who("alice")).deployment
        service.handle(StartRequest(d.id), SCHEDULER)
        decided = service.handle(DecideRequest(d.id, approved=True), Who("bob"))
        assert any("bob gave one break-glass approval already" in n for n in decided.notes)
        assert decided.deployment.status is DeploymentStatus.AWAITING_APPROVAL
        assert len(decided.pending) == 1
        done = service.handle(DecideRequest(d.id, approved=True), Who("dana"))
        assert done.notes == () and done.deployment.status is DeploymentStatus.SUCCEEDED
    finally:
        w.close()
