"""The outbox at the terminal: a command delivers what waits before it starts, `status` lists
what is still undelivered, with its age, attempts and last error."""

from __future__ import annotations

import yaml

from handlers import cli
from handlers.terminal import os_login
from fakes.core import FakeBackend, FakeProbe
from fakes.outbox import FlakyTracker
from fakes.schedule import ManualClock


def test_status_lists_the_waiting_record_and_the_next_command_delivers_it(
        tmp_path, monkeypatch, capsys):
    path = tmp_path / "deploybot.yaml"
    path.write_text(yaml.safe_dump({
        "tracker": {"kind": "redmine", "url": "http://127.0.0.1:9", "rules": {
            "cq_approval": {"authors": ["bob"]}, "qa_pass": {"authors": ["carol"]}}},
        "environments": {"production": {"production": True}},
        "services": {"web": {"image": "demo-web",
                             "health": {"url": "http://127.0.0.1:9/health"}}},
        "people": {"alice": {"tracker": "alice", "os": os_login()},
                   "bob": {"tracker": "bob"}, "carol": {"tracker": "carol"}},
    }))
    monkeypatch.setenv("DEPLOYBOT_DB", str(tmp_path / "deploybot.db"))
    monkeypatch.delenv("DEPLOYBOT_USER", raising=False)
    clock = ManualClock()
    tracker = FlakyTracker()
    for login, uid in (("alice", "11"), ("bob", "12"), ("carol", "13")):
        tracker.user(login, uid)
    tracker.ticket("7")
    tracker.say("7", "bob", "CQ approved")
    tracker.say("7", "carol", "QA PASS")
    backend = FakeBackend(running="v1")
    real = backend.deploy

    def deploy_then_tracker_down(version, **kw):
        real(version, **kw)
        tracker.down = "connection refused"
    backend.deploy = deploy_then_tracker_down

    def run(*argv: str) -> tuple[int, str, str]:
        edges = cli.Edges(backend_for=lambda s, e: backend, tracker=tracker,
                          probe=FakeProbe(backend), clock=clock, now=clock.now)
        code = cli.main(["--config", str(path), *argv], edges=edges)
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("deploy", "7", "web@v2")
    assert code == cli.EXIT_OK
    assert "record comment on 7 not delivered yet: Redmine did not answer: connection " \
           "refused; kept in the outbox" in out
    clock.advance(minutes=3)
    code, out, err = run("status")  # tried again first: still down
    assert "1 waiting message(s) still not delivered" in err
    assert "Undelivered (outbox):\n  #1 record comment on 7: waiting for 3 min, 2 attempt(s), " \
           "next try 12:03:10 UTC\n       last error: Redmine did not answer: connection " \
           "refused\n  #1 the move of 7 to 'Deployed': waiting for 3 min, 0 attempt(s)" in out

    tracker.down = ""
    clock.advance(seconds=10)
    code, out, err = run("history")
    assert "note: delivered 2 waiting message(s) from the outbox" in err
    assert len([c for c in tracker.notes["7"] if c.body.startswith("## Deployment Record")]) == 1
    assert [key for _, key in tracker.posts] == ["deploybot-record-1"]
    assert tracker.tickets["7"].status == "Deployed"
    code, out, err = run("status")
    assert "Undelivered (outbox): none" in out and err == ""
