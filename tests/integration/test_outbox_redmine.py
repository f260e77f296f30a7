"""The outbox against a real Redmine that goes away mid-deployment (stopped by its PID) and comes
back on the same port with the same data: the deployment completes, the record and the move to
Deployed wait in the outbox with their error (`deploybot status` shows them), and the next
deploybot process delivers them: exactly one record note, the status moved."""

from __future__ import annotations

from datetime import datetime, timezone

import httpx
import yaml

from bot import outbox as outboxing
from handlers import cli
from handlers.terminal import os_login
from fakes.core import FakeProbe
from fakes.schedule import ManualClock
from tests.integration.test_redmine import _gates, _helper, _new_issue, _tracker


def _notes(instance, number: str) -> list[str]:
    issue = httpx.get(f"{instance.url}/issues/{number}.json", params={"include": "journals"},
                      timeout=10, headers={"X-Redmine-API-Key": instance.keys["deploybot"]})
    return [j["notes"] for j in issue.json()["issue"]["journals"] if j.get("notes")]


def _status(instance, number: str) -> str:
    return _tracker(instance).get_ticket(number).status


def test_redmine_stopped_mid_deployment_gets_the_record_exactly_once_when_back(
        tmp_path, monkeypatch, capsys) -> None:
    instance = _helper().up()
    try:
        number = _new_issue(instance, "Checkout: Redmine goes away during the rollout")
        _tracker(instance).transition(number, "Ready for Production")
        pipeline = _gates(instance, tmp_path, cq=("carol",), environments={
            "production": {"production": True, "approvals_required": 1,
                           "approvers": ["bob"]}})
        d = pipeline.run(pipeline.request_deploy(number, requested_by="alice", target="web@v2",
                                                 environment="production").id)
        assert d.status.value == "awaiting_approval", d.failure
        backend = pipeline.backend
        real_deploy = backend.deploy

        def deploy_while_redmine_goes_away(version, **kw):
            real_deploy(version, **kw)
            instance.halt()  # by its PID; its files stay for the restart
        backend.deploy = deploy_while_redmine_goes_away

        gate = pipeline.pending_gates(d.id)[0]
        d = pipeline.decide_gate(gate.id, decided_by="bob", approved=True).deployment
        assert d.status.value == "succeeded", d.failure
        assert backend.running == "v2"
        waiting = pipeline.outbox.undelivered(d.id)
        assert [(i.kind, i.state) for i in waiting] == [("comment", "pending"),
                                                        ("transition", "pending")]
        assert waiting[0].attempts == 1 and instance.url.split("//")[1] in waiting[0].last_error
        trail = [e["detail"] for e in pipeline.store.events(d.id)
                 if e["kind"] == "outbox.retrying"]
        assert trail and trail[0].startswith(f"record comment on {number} not delivered")

        # The next deploybot processes: CLI commands on the same database, the tracker built
        # from the configuration. Stored times are real; the clock the CLI reads is ours.
        config = tmp_path / "deploybot.yaml"
        settings = pipeline.config.model_dump(mode="json", exclude_none=True,
                                              exclude={"source_path"})
        settings["people"]["alice"]["os"] = os_login()
        config.write_text(yaml.safe_dump(settings))
        monkeypatch.setenv("DEPLOYBOT_DB", str(tmp_path / "deploybot.db"))
        monkeypatch.setenv("REDMINE_KEY", instance.keys["deploybot"])
        monkeypatch.delenv("DEPLOYBOT_USER", raising=False)
        clock = ManualClock(datetime.now(timezone.utc))
        capsys.readouterr()

        def deploybot(*argv: str) -> tuple[str, str]:
            edges = cli.Edges(backend_for=lambda s, e: backend, probe=FakeProbe(backend),
                              clock=clock, now=clock.now)
            assert cli.main(["--config", str(config), *argv], edges=edges) == cli.EXIT_OK
            return capsys.readouterr()

        clock.advance(minutes=2)
        out, err = deploybot("status")  # Redmine is still down: tried, still waiting
        assert "waiting message(s) still not delivered" in err
        assert f"#{d.id} record comment on {number}: waiting for 2 min, 2 attempt(s)" in out
        assert f"#{d.id} the move of {number} to 'Deployed': waiting for 2 min" in out
        assert "last error: " in out and _status_line_error(out)

        instance.start()  # same port, same workdir: the same Redmine, back
        assert _status(instance, number) == "Ready for Production"
        clock.advance(hours=1)
        out, err = deploybot("status")
        assert "delivered 2 waiting message(s)" in err
        assert "Undelivered (outbox): none" in out
        records = [n for n in _notes(instance, number) if n.startswith("## Deployment Record")]
        assert len(records) == 1 and "web" in records[0]
        assert _status(instance, number) == "Deployed"

        # A write that reached Redmine but whose deliverer died before storing it: the next
        # deliverer sends it again under the same key and Redmine's marker says it is there.
        outbox = pipeline.outbox
        outbox.store.now = clock.now
        outbox.enqueue([outboxing.comment(d, f"deploybot-note-{d.id}", "Rolled forward.",
                                          "note")])
        item = outbox.table.claim("a-process-that-died", outboxing.LEASE_SECONDS, ["comment"])
        pipeline.tracker.add_comment(number, "Rolled forward.", key=item.key)
        clock.advance(seconds=outboxing.LEASE_SECONDS + 1)
        out, err = deploybot("history")
        assert "delivered 1 waiting message(s)" in err
        assert [n.startswith("Rolled forward.") for n in _notes(instance, number)].count(True) == 1
        assert len([n for n in _notes(instance, number)
                    if n.startswith("## Deployment Record")]) == 1
    finally:
        instance.stop()


def _status_line_error(out: str) -> bool:
    """The error says which Redmine did not answer (never a key)."""
    line = next(x for x in out.splitlines() if "last error:" in x)
    return "127.0.0.1" in line or "Redmine" in line
