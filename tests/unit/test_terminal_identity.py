"""At the terminal the person is the OS login mapped through people:; naming someone else needs
`terminal.trust_as`, and the audit trail keeps both names."""

from __future__ import annotations

import pytest
import yaml

from backends.trackers.local import LocalTracker
from bot import config as configuration
from bot.errors import NotAllowed
from bot.models import DeploymentStatus, GateStatus
from bot.store import Store
from handlers import cli
from handlers.terminal import TerminalApprover, os_login, terminal_actor
from fakes.core import FakeBackend, FakeProbe, InstantClock

LOGIN = os_login()


def data(trust_as: bool = False) -> dict:
    return {
        "tracker": {"kind": "local", "rules": {
            "cq_approval": {"pattern": r"^CQ approved", "authors": ["dana"]},
            "qa_pass": {"pattern": r"^QA PASS", "authors": ["carol"]}}},
        "environments": {"staging": {}, "production": {
            "production": True, "approvals_required": 1, "approvers": ["bob"]}},
        "services": {"web": {"image": "demo-web",
                             "health": {"url": "http://127.0.0.1:9/health"}}},
        "people": {"alice": {"tracker": "alice", "os": LOGIN},  # this process is alice
                   "bob": {"tracker": "bob"}, "carol": {"tracker": "carol"},
                   "dana": {"tracker": "dana"}},
        "terminal": {"trust_as": trust_as},
    }


class Terminal:
    def __init__(self, tmp_path, monkeypatch, trust_as: bool = False) -> None:
        self.path = tmp_path / "deploybot.yaml"
        self.path.write_text(yaml.safe_dump(data(trust_as)))
        self.config = configuration.load(self.path)
        self.db = tmp_path / "deploybot.db"
        self.store = Store(self.db)
        self.tracker = LocalTracker(self.store)
        self.backend = FakeBackend(running="v1")
        monkeypatch.setenv("DEPLOYBOT_DB", str(self.db))
        monkeypatch.delenv("DEPLOYBOT_USER", raising=False)
        self.monkeypatch = monkeypatch
        self.edges = cli.Edges(backend_for=lambda s, e: self.backend, tracker=self.tracker,
                               probe=FakeProbe(self.backend), clock=InstantClock())

    def __call__(self, *argv: str) -> int:
        return cli.main(["--config", str(self.path), *argv], edges=self.edges)

    def ticket(self) -> str:
        tid = self.tracker.create_ticket("Ship it", status="Ready for Production")
        self.tracker.add_comment(tid, "CQ approved", author="dana")
        self.tracker.add_comment(tid, "QA PASS", author="carol")
        return tid


def test_the_os_login_is_the_person():
    cfg = configuration.parse(data())
    me = terminal_actor(cfg)
    assert (me.person, me.os_login, me.via) == ("alice", LOGIN, "terminal")
    assert terminal_actor(cfg, "alice").person == "alice"  # naming yourself is fine
    stranger = terminal_actor(cfg, login="nobody-here")
    assert stranger.person is None and stranger.name == "nobody-here"


def test_naming_someone_else_is_refused_without_trust_as():
    cfg = configuration.parse(data())
    with pytest.raises(NotAllowed) as info:
        terminal_actor(cfg, "bob")
    assert f"you are alice (OS login {LOGIN})" in info.value.message
    assert "trust_as: true" in info.value.hint


def test_trust_as_lets_a_shared_box_name_the_person_and_keeps_the_login():
    cfg = configuration.parse(data(trust_as=True))
    bob = terminal_actor(cfg, "bob")
    assert (bob.person, bob.os_login) == ("bob", LOGIN)
    assert bob.audit() == f"terminal, OS login {LOGIN}"


def test_trust_as_naming_nobody_in_people_is_refused_with_the_names(tmp_path, monkeypatch,
                                                                   capsys):
    # A typo would otherwise deploy as "alcie", a requester nobody can map to a person.
    t = Terminal(tmp_path, monkeypatch, trust_as=True)
    assert t("deploy", t.ticket(), "web@v2", "--as", "alcie") == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "--as alcie: nobody of that name in people:" in err and "alice" in err
    assert t.store.deployments() == []


def test_deploybot_user_cannot_approve_production_as_someone_else(tmp_path, monkeypatch, capsys):
    t = Terminal(tmp_path, monkeypatch)
    assert t("deploy", t.ticket(), "web@v2", "--env", "production") == cli.EXIT_PENDING
    monkeypatch.setenv("DEPLOYBOT_USER", "bob")
    assert t("approve", "1") == cli.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "refused: DEPLOYBOT_USER bob was refused" in err
    assert t.store.gates(1)[0].status is GateStatus.PENDING
    assert t.backend.running == "v1"


def test_with_trust_as_the_audit_trail_keeps_person_and_os_login(tmp_path, monkeypatch, capsys):
    t = Terminal(tmp_path, monkeypatch, trust_as=True)
    assert t("deploy", t.ticket(), "web@v2", "--env", "production") == cli.EXIT_PENDING
    assert t("approve", "1", "--as", "bob") == cli.EXIT_OK
    event = next(e for e in t.store.events(1) if e["kind"] == "gate.approved")
    assert event["actor"] == "bob" and event["via"] == f"terminal, OS login {LOGIN}"
    assert t("show", "1") == cli.EXIT_OK
    assert f"gate.approved      approval [terminal, OS login {LOGIN}]" in capsys.readouterr().out


def test_approve_as_and_comment_by_need_trust_as_too(tmp_path, monkeypatch, capsys):
    t = Terminal(tmp_path, monkeypatch)
    tid = t.ticket()
    assert t("deploy", tid, "web@v2", "--env", "production", "--approve-as", "bob") == \
        cli.EXIT_REFUSED
    assert "--approve-as bob was refused" in capsys.readouterr().err
    assert t.store.deployments() == []
    assert t("ticket", "comment", tid, "--by", "carol", "QA PASS") == cli.EXIT_REFUSED
    # without --by the comment is yours, under your tracker account
    assert t("ticket", "comment", tid, "QA PASS from me") == cli.EXIT_OK
    assert t.tracker.comments(tid)[-1].author == "alice"


def test_the_interactive_prompt_never_asks_for_an_approvers_name_without_trust_as():
    cfg = configuration.parse(data())
    asked = []
    approver = TerminalApprover(interactive=True, ask=lambda q: asked.append(q) or "bob",
                                me=terminal_actor(cfg), config=cfg)
    from bot.models import Deployment, Gate, GateKind
    d = Deployment(1, "DEMO-1", "web", "v2", "production", "alice",
                   DeploymentStatus.AWAITING_APPROVAL)
    assert approver.request(d, Gate(1, 1, GateKind.APPROVAL, "approve?")) is None
    assert asked == []
