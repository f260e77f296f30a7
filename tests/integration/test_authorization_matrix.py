"""Every cell of the authorization table, through the core, the terminal and Slack.

Who plays which role: alice requests (or took the lock), bob approves production, erin is an
admin, frank is anyone (a person of people: with no role). The expected table is written out here
as the team expects it; the README's table is rendered from bot/authorization.py and both must
agree with it. Backends are in-memory (the edges), everything else is real: the CLI's main() with
the OS login mapped through people:, the Bolt app served over HTTP with signed requests against
the fake Slack Web API.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from backends.trackers.local import LocalTracker
from bot import config as configuration
from bot.authorization import ADMIN, ANYONE, APPROVER, REQUESTER, TABLE, Action, render_table
from bot.errors import DeploybotError, NotAllowed
from bot.identity import Actor
from bot.models import DeploymentKind, DeploymentStatus, GateKind, GateStatus
from bot.store import Store
from fakes.slack_api import FakeSlack, SlackRequests
from handlers import cli
from handlers.slack_app import SlackFrontEnd, make_http_server, web_client
from handlers.terminal import TerminalApprover, TerminalReporter, os_login
from handlers.wiring import build_pipeline
from fakes.core import FakeBackend, FakeProbe, InstantClock

ROLES = {"requester": "alice", "approver": "bob", "admin": "erin", "anyone": "frank"}
SLACK = {"alice": "U0ALICE", "bob": "U0BOB", "carol": "U0CAROL", "dana": "U0DANA",
         "erin": "U0ERIN", "frank": "U0FRANK"}
Y, N = True, False
EXPECTED = {  # action: (requester, approver, admin, anyone)
    Action.DEPLOY: (Y, Y, Y, Y),
    Action.APPROVE: (N, Y, N, N),
    Action.REJECT: (Y, Y, N, N),
    Action.BREAK_GLASS: (N, Y, N, N),
    Action.CANCEL: (Y, Y, Y, N),
    Action.LOCK: (Y, Y, Y, Y),
    Action.UNLOCK: (Y, Y, Y, N),
    Action.BREAK_LOCK: (N, Y, Y, N),
    Action.ROLLBACK: (Y, Y, Y, Y),
    Action.ACK_NOTES: (Y, Y, N, N),
}
CELLS = [(action, role) for action in EXPECTED for role in ROLES]


def config_for(os_person: str | None = None):
    """production: one approval by bob or dana; frozen: in a freeze (break-glass); admins: erin.
    `os_person` is the person this process's OS login belongs to (the terminal's identity)."""
    people = {name: {"slack": uid, "tracker": name} for name, uid in SLACK.items()}
    login = os_login()
    for name in people:
        people[name]["os"] = login if name == os_person else f"{name}-login"
    return {
        "tracker": {"kind": "local", "rules": {
            "cq_approval": {"pattern": r"^CQ approved", "authors": ["carol", "dana"]},
            "qa_pass": {"pattern": r"^QA PASS", "authors": ["carol"]}}},
        "environments": {
            "staging": {},
            "production": {"production": True, "approvals_required": 1,
                           "approvers": ["bob", "dana"]},
            "frozen": {"approvers": ["bob", "dana"],
                       "freeze": [{"date": "2026-11-26", "reason": "release day"}]},
        },
        "services": {"web": {"image": "demo-web", "health": {"url": "http://127.0.0.1:9/health"},
                             "verify": {"timeout": 1, "interval": 0.1}}},
        "people": people, "admins": ["erin"], "channel": "#standup",
    }


@dataclass
class Scene:
    """The state a cell starts from, and how to see whether the action took effect."""

    args: dict  # what the action needs: ticket, deployment id, gate id
    took_effect: Callable[[], bool]


class World:
    def __init__(self, tmp_path: Path, os_person: str | None = None) -> None:
        self.data = config_for(os_person)
        self.config = configuration.parse(self.data, "matrix.yaml")
        self.db = tmp_path / "deploybot.db"
        self.store = Store(self.db)
        self.tracker = LocalTracker(self.store)
        self.backend = FakeBackend(running="v1")
        self.probe = FakeProbe(self.backend)
        self.clock = InstantClock()  # Thu 2026-11-26 12:00 UTC: inside the `frozen` window
        self.pipeline = self.make_pipeline()

    def make_pipeline(self, reporter=None, approver=None):
        return build_pipeline(self.config, self.store, reporter=reporter or TerminalReporter(),
                              approver=approver or TerminalApprover(interactive=False),
                              tracker=self.tracker, backend_for=lambda s, e: self.backend,
                              probe=self.probe, clock=self.clock, environ={})

    def ticket(self, notes: bool = False) -> str:
        tid = self.tracker.create_ticket("Ship it", status="Ready for Production")
        self.tracker.add_comment(tid, "CQ approved", author="dana")
        self.tracker.add_comment(tid, "QA PASS", author="carol")
        if notes:
            self.tracker.add_comment(tid, "Deployment notes: run the cache warm-up", author="carol")
        return tid

    def waiting(self, env: str = "production", notes: bool = False, break_glass: str = ""):
        d = self.pipeline.request_deploy(self.ticket(notes), requested_by="alice",
                                         target="web@v2", environment=env,
                                         break_glass=break_glass)
        d = self.pipeline.run(d.id)
        assert d.status is DeploymentStatus.AWAITING_APPROVAL, d.failure
        return d

    def gate(self, d, kind: GateKind):
        return next(g for g in self.store.gates(d.id) if g.kind is kind)

    def scene(self, action: Action) -> Scene:
        s = self.store
        if action is Action.DEPLOY:
            tid = self.ticket()
            return Scene({"ticket": tid}, lambda: any(
                d.ticket_id == tid for d in s.deployments(limit=50)))
        if action in (Action.APPROVE, Action.REJECT, Action.CANCEL):
            d = self.waiting()
            gate = self.gate(d, GateKind.APPROVAL)
            want = {Action.APPROVE: lambda: s.gate(gate.id).status is GateStatus.APPROVED,
                    Action.REJECT: lambda: s.gate(gate.id).status is GateStatus.REJECTED,
                    Action.CANCEL: lambda: s.deployment(d.id).status
                    is DeploymentStatus.CANCELLED}[action]
            return Scene({"deployment": d.id, "gate": gate.id}, want)
        if action is Action.BREAK_GLASS:
            d = self.waiting("frozen", break_glass="payments down")
            gate = self.gate(d, GateKind.BREAK_GLASS)
            return Scene({"deployment": d.id, "gate": gate.id},
                         lambda: s.gate(gate.id).status is GateStatus.APPROVED)
        if action is Action.ACK_NOTES:
            d = self.waiting("production", notes=True)
            gate = self.gate(d, GateKind.NOTES_ACK)
            return Scene({"deployment": d.id, "gate": gate.id},
                         lambda: s.gate(gate.id).status is GateStatus.APPROVED)
        if action is Action.LOCK:
            return Scene({}, lambda: s.lock("env:production") is not None)
        if action is Action.UNLOCK:
            self.pipeline.lock("production", user="alice", reason="change freeze")
            return Scene({}, lambda: s.lock("env:production") is None)
        if action is Action.BREAK_LOCK:
            d = self.waiting()
            assert s.lock("env:production").deployment_id == d.id
            return Scene({"deployment": d.id}, lambda: s.lock("env:production") is None)
        if action is Action.ROLLBACK:
            self.backend.running = "v2"
            # v1 ran in production before v2: a rollback goes back to a version that ran there
            d, _ = s.create_deployment(ticket_id=self.ticket(), service="web", version="v2",
                                       environment="production", requested_by="alice")
            s.update_deployment(d.id, status="succeeded", previous_version="v1")
            return Scene({}, lambda: any(d.kind is DeploymentKind.ROLLBACK
                                         for d in s.deployments(limit=50)))
        raise AssertionError(action)


def expected(action: Action, role: str) -> bool:
    return EXPECTED[action][list(ROLES).index(role)]


# -- the table itself ------------------------------------------------------------------------------

def test_the_enforced_table_is_the_teams_table():
    for action, row in EXPECTED.items():
        roles = TABLE[action].roles
        got = tuple(ANYONE in roles or r in roles for r in (REQUESTER, APPROVER, ADMIN, ANYONE))
        assert got == row, action


def test_the_readme_shows_the_enforced_table():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert render_table() in readme


# -- the core ----------------------------------------------------------------------------------

def act_core(world: World, action: Action, role: str, args: dict) -> None:
    p, who = world.pipeline, Actor.named(world.config, ROLES[role])
    if action is Action.DEPLOY:
        d = p.request_deploy(args["ticket"], requested_by=who, target="web@v2",
                             environment="production")
        p.run(d.id)
    elif action in (Action.APPROVE, Action.BREAK_GLASS, Action.ACK_NOTES):
        p.decide_gate(args["gate"], decided_by=who, approved=True)
    elif action is Action.REJECT:
        p.decide_gate(args["gate"], decided_by=who, approved=False, reason="not today")
    elif action is Action.CANCEL:
        p.cancel(args["deployment"], user=who, reason="not today")
    elif action is Action.LOCK:
        p.lock("production", user=who, reason="db migration")
    elif action in (Action.UNLOCK, Action.BREAK_LOCK):
        p.unlock("production", user=who, reason="done")
    elif action is Action.ROLLBACK:
        d = p.request_rollback(requested_by=who, service="web", environment="production",
                               to_version="v1")
        p.run(d.id)


@pytest.mark.parametrize("action,role", CELLS, ids=[f"{a.name}-{r}" for a, r in CELLS])
def test_core(tmp_path, action, role):
    world = World(tmp_path)
    scene = world.scene(action)
    try:
        act_core(world, action, role, scene.args)
        refused = None
    except NotAllowed as exc:
        refused = exc
    assert scene.took_effect() is expected(action, role), refused
    if refused is not None:
        text = f"{refused.message} {refused.hint}"
        assert refused.message.endswith(".") and "ask one of them" in text or \
            "cannot approve it" in text, text
    world.store.close()


# -- the terminal --------------------------------------------------------------------------------

def terminal_argv(action: Action, args: dict) -> list[str]:
    if action is Action.DEPLOY:
        return ["deploy", args["ticket"], "web@v2", "--env", "production"]
    if action in (Action.APPROVE, Action.BREAK_GLASS, Action.ACK_NOTES):
        return ["approve", str(args["deployment"]), "--gate", str(args["gate"])]
    if action is Action.REJECT:
        return ["reject", str(args["deployment"]), "--gate", str(args["gate"]),
                "--reason", "not today"]
    if action is Action.CANCEL:
        return ["cancel", str(args["deployment"]), "--reason", "not today"]
    if action is Action.LOCK:
        return ["lock", "production", "--reason", "db migration"]
    if action in (Action.UNLOCK, Action.BREAK_LOCK):
        return ["unlock", "production", "--reason", "done"]
    return ["rollback", "web", "--to", "v1", "--env", "production"]


@pytest.mark.parametrize("action,role", CELLS, ids=[f"{a.name}-{r}" for a, r in CELLS])
def test_terminal(tmp_path, monkeypatch, capsys, action, role):
    """The person at the terminal is the OS login mapped through people: (no --as)."""
    world = World(tmp_path, os_person=ROLES[role])
    scene = world.scene(action)
    path = tmp_path / "deploybot.yaml"
    import yaml
    path.write_text(yaml.safe_dump(world.data))
    monkeypatch.setenv("DEPLOYBOT_DB", str(world.db))
    monkeypatch.delenv("DEPLOYBOT_USER", raising=False)
    edges = cli.Edges(backend_for=lambda s, e: world.backend, tracker=world.tracker,
                      probe=world.probe, clock=world.clock)
    code = cli.main(["--config", str(path), *terminal_argv(action, scene.args)], edges=edges)
    err = capsys.readouterr().err
    assert scene.took_effect() is expected(action, role), err
    assert (code == cli.EXIT_REFUSED) is not expected(action, role), (code, err)
    if not expected(action, role):
        assert "refused:" in err and ("ask one of them" in err or "cannot approve" in err), err
    world.store.close()


# -- Slack ---------------------------------------------------------------------------------------

SECRET = "matrix-signing-secret-0123456789"


@pytest.fixture
def slack_world(tmp_path):
    world = World(tmp_path)
    slack = FakeSlack().start()
    front = SlackFrontEnd(world.config, world.store, web_client(slack.bot_token, slack.api_url),
                          signing_secret=SECRET, environ={}, tracker=world.tracker,
                          backend_for=lambda s, e: world.backend, probe=world.probe,
                          clock=world.clock)
    world.pipeline = front.pipeline  # scenes are set up through the bot itself
    server = make_http_server(front.app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True, name=f"matrix-{uuid.uuid4().hex[:6]}")
    thread.start()
    send = SlackRequests(f"http://127.0.0.1:{server.server_port}/slack/events", SECRET)
    try:
        yield world, slack, send, front
    finally:
        server.shutdown()
        server.server_close()
        send.close()
        front.close()
        slack.stop()
        world.store.close()


def gate_message(slack: FakeSlack, gate_id: int, action_id: str):
    def find():
        return next((m for m in list(slack.messages.values())
                     if m.buttons().get(action_id, {}).get("value") == str(gate_id)), None)
    return slack.wait_for(find, 10, f"the {action_id} button of gate #{gate_id}")


@pytest.mark.parametrize("action,role", CELLS, ids=[f"{a.name}-{r}" for a, r in CELLS])
def test_slack(slack_world, action, role):
    world, slack, send, front = slack_world
    scene = world.scene(action)
    user = SLACK[ROLES[role]]
    args = scene.args
    if action is Action.DEPLOY:
        send.command(f"{args['ticket']} web@v2 to production", user=user)
    elif action in (Action.APPROVE, Action.BREAK_GLASS):
        send.click(gate_message(slack, args["gate"], "gate_approve"), "gate_approve", user=user)
    elif action is Action.ACK_NOTES:
        send.click(gate_message(slack, args["gate"], "gate_ack_notes"), "gate_ack_notes",
                   user=user)
    elif action is Action.REJECT:
        send.click(gate_message(slack, args["gate"], "gate_reject"), "gate_reject", user=user)
    elif action is Action.CANCEL:
        send.command(f"cancel #{args['deployment']}", user=user)
    elif action is Action.LOCK:
        send.command("lock production db migration", user=user)
    elif action in (Action.UNLOCK, Action.BREAK_LOCK):
        send.command("unlock production done", user=user)
    else:
        send.command("web to v1 in production", user=user, command="/rollback")

    def opened_modal():
        return bool(slack.calls_to("views.open"))

    effect = opened_modal if action is Action.REJECT else scene.took_effect

    def refusals():
        return [t for t in slack.ephemerals(user) if ":no_entry:" in t]

    slack.wait_for(lambda: effect() or refusals(), 15, f"{action.value} by {role} to be "
                   "carried out or refused")
    assert effect() is expected(action, role), (refusals(), slack.ephemerals(user))
    if not expected(action, role):
        (text,) = refusals()
        assert "ask one of them" in text or "cannot approve it" in text, text
        assert "Nothing changed" in text or action not in (Action.APPROVE, Action.BREAK_GLASS,
                                                           Action.ACK_NOTES, Action.REJECT)
